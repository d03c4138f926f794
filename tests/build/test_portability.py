"""ci/portability.py and ci/glibc_pin.py: crafted libraries that break each rule, and kbit's own libraries.

The crafted ones are compiled here with the machine's gcc/g++ (a second each): one that uses a glibc 2.34
symbol, one that NEEDs libgomp, one with an unversioned reference, one with a libstdc++ 3.4.21 symbol, and the
2.34 one again linked through ci/glibc_pin.py, which must bring it down to the floor."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from ci import elfdeps, glibc_pin, matrix, portability

from conftest import ROOT, require_tool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF libraries are Linux only")
PLATFORM = "linux-x86_64"
FLOOR = matrix.load_platforms()[PLATFORM].glibc_floor


def _host_glibc() -> tuple[int, ...]:
    return elfdeps.version_key(os.confstr("CS_GNU_LIBC_VERSION").split()[1])


def _compile(tmp_path: Path, name: str, source: str, *flags: str, cxx: bool = False,
             launcher: list[str] | None = None) -> Path:
    compiler = shutil.which("g++" if cxx else "gcc")
    require_tool("g++" if cxx else "gcc", compiler)
    src = tmp_path / (name + (".cpp" if cxx else ".c"))
    src.write_text(source)
    obj, lib = tmp_path / f"{name}.o", tmp_path / f"lib{name}.so"
    subprocess.run([compiler, "-c", "-fPIC", "-O1", str(src), "-o", str(obj)], check=True)
    link = [compiler, "-shared", "-o", str(lib), str(obj), *flags]
    done = subprocess.run([*(launcher or []), *link], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return lib


PTHREAD_SOURCE = """#include <pthread.h>
static void* run(void* arg) { return arg; }
int start(void) { pthread_t t; if (pthread_create(&t, 0, run, 0)) return 1; return pthread_join(t, 0); }
"""


def _pin_launcher(tmp_path: Path) -> list[str]:
    return [sys.executable, str(ROOT / "ci" / "glibc_pin.py"), "--platform", PLATFORM, "--work",
            str(tmp_path / "pin"), "--"]


def test_a_clean_library_passes(tmp_path):
    lib = _compile(tmp_path, "clean", "int add(int a, int b) { return a + b; }\n", "-Wl,-z,defs")
    assert portability.check(lib, PLATFORM) == []


@pytest.mark.skipif(_host_glibc() < (2, 34), reason="needs a glibc >= 2.34 host, where pthread_create is GLIBC_2.34")
def test_a_glibc_2_34_symbol_is_refused_by_name(tmp_path):
    lib = _compile(tmp_path, "newglibc", PTHREAD_SOURCE, "-Wl,-z,defs")
    problems = portability.check(lib, PLATFORM)
    assert any("pthread_create@GLIBC_2.34" in p.what for p in problems), problems
    assert all(p.fix for p in problems)
    done = subprocess.run([sys.executable, str(ROOT / "ci" / "portability.py"), str(lib)], capture_output=True,
                          text=True)
    assert done.returncode == 1 and "pthread_create@GLIBC_2.34" in done.stdout and "GLIBC 2.34" in done.stdout


@pytest.mark.skipif(_host_glibc() < (2, 34), reason="needs a glibc >= 2.34 host")
def test_glibc_pin_brings_the_same_library_down_to_the_floor(tmp_path):
    lib = _compile(tmp_path, "pinned", PTHREAD_SOURCE, "-Wl,-z,defs", launcher=_pin_launcher(tmp_path))
    assert portability.check(lib, PLATFORM) == []
    info = elfdeps.read(lib)
    assert "libpthread.so.0" in info.needed  # where an old glibc defines pthread_create@GLIBC_2.2.5
    versions = {n.version for n in info.needs if n.symbol == "pthread_create"}
    assert versions and all(elfdeps.version_key(v) <= elfdeps.version_key(FLOOR) for v in versions)
    # and the pinned library still works here
    done = subprocess.run([sys.executable, "-c", f"import ctypes; print(ctypes.CDLL({str(lib)!r}).start())"],
                          capture_output=True, text=True)
    assert done.stdout.strip() == "0", done.stderr


@pytest.mark.skipif(_host_glibc() < (2, 36), reason="arc4random is glibc 2.36")
def test_glibc_pin_refuses_a_symbol_no_old_glibc_has(tmp_path):
    source = "#include <stdlib.h>\nunsigned draw(void) { return arc4random(); }\n"
    with pytest.raises(RuntimeError, match="arc4random") as info:
        _compile(tmp_path, "arc4", source, "-Wl,-z,defs", launcher=_pin_launcher(tmp_path))
    assert "fix:" in str(info.value)


def test_libgomp_is_refused(tmp_path):
    source = "void fill(float* x, int n) {\n#pragma omp parallel for\n for (int i = 0; i < n; ++i) x[i] = i; }\n"
    try:
        lib = _compile(tmp_path, "omp", source, "-fopenmp", "-Wl,-z,defs")
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"this gcc has no OpenMP: {exc}")
    if "libgomp.so.1" not in elfdeps.read(lib).needed:  # -fopenmp ignored at compile time without -fopenmp there
        subprocess.run([shutil.which("gcc"), "-c", "-fPIC", "-fopenmp", str(tmp_path / "omp.c"), "-o",
                        str(tmp_path / "omp.o")], check=True)
        subprocess.run([shutil.which("gcc"), "-shared", "-fopenmp", "-o", str(lib), str(tmp_path / "omp.o")], check=True)
    problems = portability.check(lib, PLATFORM)
    assert any("libgomp.so.1" in p.what and "OpenMP" in p.fix for p in problems), problems


def test_an_unversioned_reference_is_refused(tmp_path):
    lib = _compile(tmp_path, "loose", "extern int elsewhere(void);\nint call(void) { return elsewhere(); }\n")
    problems = portability.check(lib, PLATFORM)
    assert any("unversioned" in p.what and "elsewhere" in p.what for p in problems), problems


def test_a_new_libstdcxx_symbol_is_refused(tmp_path):
    source = '#include <stdexcept>\nextern "C" void fail() { throw std::logic_error("x"); }\n'
    lib = _compile(tmp_path, "cxx", source, "-Wl,-z,defs", cxx=True)
    problems = portability.check(lib, PLATFORM)
    assert any("GLIBCXX_3.4.21" in p.what for p in problems), problems


def test_the_policy_comes_from_auditwheel():
    policy = portability.load_policy(portability.policy_name(PLATFORM), "x86_64")
    assert policy.name == "manylinux_" + FLOOR.replace(".", "_")
    assert "libc.so.6" in policy.whitelist and "libgomp.so.1" not in policy.whitelist
    assert f"GLIBC_{FLOOR}".split("_", 1)[1] in policy.versions["GLIBC"]


def test_the_pin_table_picks_the_newest_version_at_or_below_the_floor():
    versions = {"pthread_create": [("GLIBC_2.2.5", False), ("GLIBC_2.34", True)],
                "memcpy": [("GLIBC_2.2.5", False), ("GLIBC_2.14", True)],
                "dlmopen": [("GLIBC_2.3.4", False), ("GLIBC_2.34", True)],
                "arc4random": [("GLIBC_2.36", True)]}
    pins, unpinnable = glibc_pin.pin_table(versions, "2.17")
    assert pins == {"pthread_create": "pthread_create@GLIBC_2.2.5", "dlmopen": "dlmopen@GLIBC_2.3.4"}
    assert unpinnable == {"arc4random": "GLIBC_2.36"}


def _kbit_libraries() -> list[Path]:
    found = [Path(str(resources.files("kbit") / "libkbit_cpu.so"))]  # what `pip install .` built
    staging = ROOT / "build" / "staging" / PLATFORM / "kbit"
    found += sorted(staging.glob("libkbit_*.so")) if staging.is_dir() else []
    return [p for p in found if p.is_file()]


@pytest.mark.parametrize("library", _kbit_libraries(), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_every_built_kbit_library_is_within_the_floor(library):
    assert portability.check(library, PLATFORM) == []
    summary = portability.summary(library)
    assert elfdeps.version_key(summary.highest.get("GLIBC", "0")) <= elfdeps.version_key(FLOOR)
    assert not any(lib.startswith("libgomp") for lib in summary.needed)
