"""Build one variant of matrix.toml into the per-platform staging folder.

This module owns a variant build end to end: validating matrix.toml (before CMake is ever called), finding
the toolkit and the host compiler a CUDA row names and checking that they are what the row says, running
CMake with the arguments ci/matrix.py derives, and checking what came out (the library's own build info,
loaded in a fresh process, and on Linux its portability: ci/portability.py against the platform's manylinux
policy). It does not fetch toolkits (ci/toolkit_fetch.py) or assemble wheels. It imports only the platform-neutral
parts of ci/toolkits/ (nvcc version, markers), so it runs on Windows.

CLI:  python ci/build_variant.py VARIANT [--archs 80,86 [--no-ptx]] [--cmake PATH] [--matrix PATH]
Output: build/staging/<platform>/kbit/libkbit_<variant>.so (+ kbit_<variant>.build.json);
        a build of an arch subset goes to build/staging/<platform>-sm<archs>/ instead, and a test build without
        PTX (--no-ptx: SASS only, the manifest says "ptx": null) to build/staging/<platform>-sm<archs>-noptx/
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ci import matrix  # noqa: E402
from ci.toolkits.errors import ToolkitFetchError  # noqa: E402
from ci.toolkits.nvcc import nvcc_env, parse_nvcc_release  # noqa: E402
from ci.toolkits.tree import read_marker  # noqa: E402

ROOT = matrix.ROOT
BUILD_ROOT = ROOT / "build"
TOOLKITS_DIR = ROOT / ".toolkits"


class BuildError(Exception):
    """A variant could not be built; the message says what was looked at and the fix."""


class ToolkitNotFoundError(BuildError):
    """No nvcc of the row's toolkit version was found in any of the places looked at."""


class HostCompilerNotFoundError(BuildError):
    """The row's host compiler is not on this machine."""


def current_platform() -> str:
    """This machine as a matrix.toml platform name."""
    machine = platform.machine().lower()
    if sys.platform == "win32":
        return "win-amd64"
    return {"x86_64": "linux-x86_64", "amd64": "linux-x86_64", "aarch64": "linux-aarch64",
            "arm64": "linux-aarch64"}.get(machine, f"linux-{machine}")


# ------------------------------------------------------------------------------------ toolkit

def toolkit_env_key(toolkit: str) -> str:
    """KBIT_CUDA_HOME_124 for "12.4": the variable that names a toolkit for one variant only."""
    return "KBIT_CUDA_HOME_" + toolkit.replace(".", "")


def nvcc_release(nvcc: Path) -> str | None:
    """The "major.minor" release an nvcc reports, or None when it does not run."""
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60,
                             env=nvcc_env()).stdout
        return parse_nvcc_release(out)[0]
    except (OSError, subprocess.TimeoutExpired, ToolkitFetchError):
        return None


def _candidates(variant: matrix.Variant) -> list[tuple[str, Path]]:
    key = toolkit_env_key(variant.toolkit)
    places = [(f"${key}", os.environ.get(key)), ("$CUDA_HOME", os.environ.get("CUDA_HOME")),
              ("$CUDA_PATH", os.environ.get("CUDA_PATH")),
              (f"nox -s toolkit-{variant.name}", str(provisioned_home(TOOLKITS_DIR / variant.name))),
              ("default install", f"/usr/local/cuda-{variant.toolkit}"), ("default link", "/usr/local/cuda")]
    on_path = shutil.which("nvcc")
    if on_path:
        places.append(("nvcc on PATH", str(Path(on_path).resolve().parent.parent)))
    return [(origin, Path(p)) for origin, p in places if p]


def provisioned_home(dest: Path) -> Path:
    """The CUDA_HOME inside a tree made by ci/toolkit_fetch.py (its marker names it), else dest itself."""
    marker = read_marker(dest) or {}
    return dest / str(marker.get("cuda_home", "."))


def find_toolkit(variant: matrix.Variant) -> Path:
    """The nvcc of a toolkit whose release is exactly the row's, or ToolkitNotFoundError listing every place."""
    looked = []
    for origin, home in _candidates(variant):
        nvcc = home / "bin" / ("nvcc.exe" if sys.platform == "win32" else "nvcc")
        if not nvcc.is_file():
            looked.append(f"{origin}: {home}: no bin/nvcc")
            continue
        release = nvcc_release(nvcc)
        if release == variant.toolkit:
            return nvcc
        looked.append(f"{origin}: {nvcc} reports CUDA {release or 'nothing (it did not run)'}, not {variant.toolkit}")
    raise ToolkitNotFoundError(_toolkit_message(variant, looked))


def _toolkit_message(variant: matrix.Variant, looked: list[str]) -> str:
    key = toolkit_env_key(variant.toolkit)
    fixes = [f"set {key}=/path/to/cuda-{variant.toolkit} (used for {variant.name} only)",
             f"or set CUDA_HOME to a toolkit whose nvcc reports release {variant.toolkit}"]
    if variant.toolkit_source:
        fixes.append(f"or run `nox -s toolkit-{variant.name}` to fetch it into {TOOLKITS_DIR / variant.name} "
                     f"({', '.join(variant.toolkit_source)}; see matrix.toml toolkit_source)")
    else:
        fixes.append(f"CUDA {variant.toolkit} is not obtainable from PyPI or Debian: install NVIDIA's toolkit "
                     f"(the release pipeline does)")
    lines = "\n".join(f"  - {line}" for line in looked) or "  - (no candidate places were set)"
    return (f"build-{variant.name} needs the CUDA {variant.toolkit} toolkit (nvcc release {variant.toolkit}); "
            f"looked at:\n{lines}\nfix:\n" + "\n".join(f"  - {fix}" for fix in fixes))


def find_host_compiler(variant: matrix.Variant) -> str | None:
    """The C++ compiler for this row (KBIT_HOST_CXX overrides); None on Windows, where MSVC is found by CMake."""
    if sys.platform == "win32":
        return None
    wanted = os.environ.get("KBIT_HOST_CXX") or variant.host_compiler
    fetched = TOOLKITS_DIR / f"host-{wanted}" / "usr" / "bin" / wanted  # where `nox -s toolkit-*` puts one
    found = shutil.which(wanted) or (str(fetched) if fetched.is_file() else None)
    if not found:
        raise HostCompilerNotFoundError(
            f"build-{variant.name} uses the host compiler {wanted!r} (matrix.toml host_compiler), which is not "
            f"on PATH nor in {fetched.parent}. fix: install it (Debian: apt-get install {variant.host_compiler}), "
            f"or run `nox -s toolkit-{variant.name}` (it fetches the toolkit's host compiler), or set KBIT_HOST_CXX to "
            f"a compiler nvcc {variant.toolkit or ''} supports")
    return found


# ------------------------------------------------------------------------------------ build

@dataclass(frozen=True)
class BuildResult:
    """What a build produced and how long it took."""

    variant: str
    library: Path
    build_info: dict
    configure_seconds: float
    build_seconds: float

    @property
    def size(self) -> int:
        return self.library.stat().st_size


def _compiler_launcher() -> list[str]:
    # KBIT_COMPILER_LAUNCHER=none: no cache at all (the release pipeline's tag builds: no cache poisoning)
    launcher = os.environ.get("KBIT_COMPILER_LAUNCHER") or shutil.which("sccache") or shutil.which("ccache")
    if not launcher or launcher == "none":
        return []
    return [f"-DCMAKE_{lang}_COMPILER_LAUNCHER={launcher}" for lang in ("CXX", "CUDA")]


def configure_command(variant: matrix.Variant, *, cmake: str, build_dir: Path, prefix: Path,
                      sass: tuple[int, ...] | None, nvcc: Path | None, cxx: str | None,
                      no_ptx: bool = False) -> list[str]:
    """The CMake configure command line for one variant."""
    cmd = [cmake, "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
           f"-DCMAKE_INSTALL_PREFIX={prefix}", *matrix.cmake_args(variant, sass, no_ptx=no_ptx),
           *_compiler_launcher()]
    if cxx:
        cmd.append(f"-DCMAKE_CXX_COMPILER={cxx}")
    if nvcc:
        cmd.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        if cxx:
            cmd.append(f"-DCMAKE_CUDA_HOST_COMPILER={cxx}")
    return cmd


def _run(cmd: list[str], log) -> float:
    log("$ " + " ".join(cmd))
    start = time.perf_counter()
    done = subprocess.run(cmd)
    if done.returncode != 0:
        raise BuildError(f"command failed with exit code {done.returncode}: {' '.join(cmd)}")
    return time.perf_counter() - start


def _select_sass(variant: matrix.Variant, archs: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if not archs:
        return None
    extra = [a for a in archs if a not in variant.sass]
    if extra or variant.backend != "cuda":
        raise BuildError(f"--archs {','.join(map(str, archs))} is not a subset of {variant.name}'s SASS list "
                         f"{list(variant.sass)} in matrix.toml. fix: choose archs from that list")
    return tuple(sorted(set(archs)))


def read_build_info(library: Path) -> dict:
    """Load a library in a fresh interpreter and return what it says about itself (kbit_build_info)."""
    code = ("import ctypes,sys; lib=ctypes.CDLL(sys.argv[1]); lib.kbit_build_info.restype=ctypes.c_char_p; "
            "print(lib.kbit_build_info().decode())")
    done = subprocess.run([sys.executable, "-c", code, str(library)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"the freshly built {library} does not load: {done.stderr.strip()}")
    return json.loads(done.stdout)


def staging_suffix(sass: tuple[int, ...] | None, no_ptx: bool = False) -> str:
    """"" for a release build, "-sm80_86" for a subset, "-sm80-noptx" for a test build without PTX."""
    return ("-sm" + "_".join(map(str, sass)) if sass else "") + ("-noptx" if no_ptx else "")


def build(name: str, *, matrix_path: Path = matrix.MATRIX_PATH, archs: tuple[int, ...] | None = None,
          cmake: str = "cmake", build_root: Path = BUILD_ROOT, log=print, no_ptx: bool = False) -> BuildResult:
    """Validate the matrix, find the tools, configure, build and install one variant; check the result.

    no_ptx (with archs only): a test build with SASS and no PTX entry (CMake's KBIT_TEST_NO_PTX), which a GPU
    outside its SASS list cannot run; ci/gpu_check.py uses it to prove that kbit refuses such a GPU itself."""
    variants = matrix.load(matrix_path)  # raises MatrixError before anything else runs
    if name not in variants:
        raise BuildError(f"no variant {name!r} in {matrix_path}; it has: {', '.join(variants)}")
    variant, plat = variants[name].on(current_platform()), current_platform()  # the platform's SASS list
    if plat not in variant.platforms:
        raise BuildError(f"{name} is not built for {plat} (matrix.toml platforms: {', '.join(variant.platforms)})")
    sass = _select_sass(variant, archs)
    if no_ptx and not sass:
        raise BuildError("--no-ptx makes a test build and needs --archs (e.g. --archs 80 --no-ptx); a release "
                         "build always embeds the row's PTX")
    nvcc = find_toolkit(variant) if variant.backend == "cuda" else None  # CMake then checks its arch list
    cxx = find_host_compiler(variant)
    # a subset build (--archs) is a developer's build: it never lands where the release library is staged
    suffix = staging_suffix(sass, no_ptx)
    build_dir, prefix = build_root / f"{name}-{plat}{suffix}", build_root / "staging" / f"{plat}{suffix}"
    configure = _run(configure_command(variant, cmake=cmake, build_dir=build_dir, prefix=prefix, sass=sass,
                                       nvcc=nvcc, cxx=cxx, no_ptx=no_ptx), log)
    compile_seconds = _run([cmake, "--build", str(build_dir)], log)
    # stripped, as pip's install of the same build is (scikit-build-core's install.strip): a release library staged
    # here and the one a user gets from `pip install .` are the same bytes; tests/test_cpu_isa.py builds its own
    _run([cmake, "--install", str(build_dir), "--strip"], log)
    library = prefix / "kbit" / matrix.library_filename(name, plat)
    info = read_build_info(library)
    check_manifest(variant, library, info, list(sass or variant.sass), no_ptx=no_ptx)
    check_portable(library, plat, log)
    return BuildResult(name, library, info, configure, compile_seconds)


def check_manifest(variant: matrix.Variant, library: Path, info: dict, expected_sass: list[int], *,
                   no_ptx: bool = False) -> None:
    """The built library, its installed manifest and matrix.toml agree: the manifest file is what the library
    reports, it holds the archs that were asked for, and ci/matrix.py finds nothing that drifted from the row
    (a --no-ptx test build: no PTX at all)."""
    manifest_path = library.with_name(f"kbit_{variant.name}.build.json")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else None
    if manifest != info:
        raise BuildError(f"{manifest_path} holds {manifest}, but {library} reports {info}. fix: rebuild from a clean "
                         f"build folder (rm -rf build/{variant.name}-*)")
    if info.get("sass") != expected_sass:
        raise BuildError(f"{library} reports sass {info.get('sass')}, which is not what was asked for "
                         f"({variant.name}, sass {expected_sass})")
    problems = matrix.manifest_problems(variant, info, no_ptx=no_ptx)
    if problems:
        raise BuildError(f"{manifest_path} drifted from matrix.toml's {variant.name} row: {'; '.join(problems)}. "
                         f"fix: rebuild with nox -s build-{variant.name}, or correct matrix.toml")


def check_portable(library: Path, plat: str, log=print) -> None:
    """Refuse a Linux library that would not load on the oldest system of the platform's manylinux policy."""
    if not plat.startswith("linux-"):
        return
    from ci import portability

    try:
        problems = portability.check(library, plat)
        log(f"portability: {portability.summary(library)}")
    except portability.PortabilityError as exc:
        raise BuildError(f"cannot check {library}'s portability: {exc}") from exc
    if problems:
        raise BuildError(f"{library} is not portable to {portability.policy_name(plat)}:\n"
                         + "\n".join(f"  {p.what}\n    fix: {p.fix}" for p in problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ci/build_variant.py", description=__doc__.splitlines()[0])
    parser.add_argument("variant")
    parser.add_argument("--archs", help="comma-separated subset of the row's SASS archs (PTX: the newest of them)")
    parser.add_argument("--no-ptx", action="store_true",
                        help="test builds only (with --archs): embed no PTX; the manifest records ptx null")
    parser.add_argument("--cmake", default="cmake", help="the cmake executable to use")
    parser.add_argument("--matrix", type=Path, default=matrix.MATRIX_PATH)
    parser.add_argument("--build-root", type=Path, default=BUILD_ROOT)
    args = parser.parse_args(argv)
    archs = tuple(int(a) for a in args.archs.split(",")) if args.archs else None
    try:
        result = build(args.variant, matrix_path=args.matrix, archs=archs, cmake=args.cmake,
                       build_root=args.build_root, no_ptx=args.no_ptx)
    except (matrix.MatrixError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"built {result.library} ({result.size / 2**20:.2f} MiB) in {result.build_seconds:.1f} s "
          f"(configure {result.configure_seconds:.1f} s)")
    print(f"build info: {json.dumps(result.build_info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
