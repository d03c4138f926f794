"""ci/smoke_old_glibc.py: the judgement on fake probe outputs, and the real run in a Debian bullseye root.

The real run (slow: debootstrap once, about 50 s, then seconds) needs root, chroot and debootstrap; it is
skipped on a developer machine without them and fails in CI, where .ci/run installs debootstrap."""
from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

import pytest

from ci import smoke_old_glibc as smoke

from conftest import require_tool

MANIFEST_CPU = {"abi": 1, "backend": "cpu", "variant": "cpu"}
MANIFEST_CUDA = {"abi": 1, "backend": "cuda", "variant": "cuda130"}


def _ok(name, manifest, **extra):
    entry = {"library": name, "manifest": manifest, "abi": 1, "build_info": dict(manifest),
             "device_count_status": 2 if manifest["backend"] == "cuda" else 0, "device_count": 0, "last_error": ""}
    if manifest["backend"] == "cpu":
        entry["round_trips"] = {"8bit": "aa", "nf4": "bb", "fp4": "cc"}
    entry.update(extra)
    return entry


def _outputs(*inside):
    host = {"python": "3.11", "without_manifest": [],
            "libraries": [_ok("libkbit_cpu.so", MANIFEST_CPU), _ok("libkbit_cuda130.so", MANIFEST_CUDA)]}
    return {"python": "3.9", "without_manifest": [], "libraries": list(inside)}, host


def test_all_good_is_no_failure(tmp_path):
    inside, host = _outputs(_ok("libkbit_cpu.so", MANIFEST_CPU), _ok("libkbit_cuda130.so", MANIFEST_CUDA))
    assert smoke.judge(inside, host, tmp_path) == []


def test_a_library_that_does_not_load_is_named_with_the_loaders_message(tmp_path):
    message = "libgomp.so.1: cannot open shared object file: No such file or directory"
    inside, host = _outputs({"library": "libkbit_cpu.so", "manifest": MANIFEST_CPU, "load_error": message})
    (failure,) = smoke.judge(inside, host, tmp_path)
    assert failure.startswith("libkbit_cpu.so: does not load on bullseye") and "libgomp.so.1" in failure


@pytest.mark.parametrize("change, expect", [
    ({"abi": 2}, "kbit_abi_version() = 2"),
    ({"build_info": {"abi": 1, "backend": "cpu", "variant": "cuda124"}}, "differs from its manifest"),
    ({"round_trips": {"8bit": "aa", "nf4": "XX", "fp4": "cc"}}, "round trips differ"),
])
def test_each_cpu_disagreement_fails(tmp_path, change, expect):
    inside, host = _outputs(_ok("libkbit_cpu.so", MANIFEST_CPU, **change))
    (failure,) = smoke.judge(inside, host, tmp_path)
    assert expect in failure


def test_a_cuda_library_must_report_no_driver_cleanly(tmp_path):
    inside, host = _outputs(_ok("libkbit_cuda130.so", MANIFEST_CUDA, device_count_status=5, device_count=0))
    (failure,) = smoke.judge(inside, host, tmp_path)
    assert "KBIT_ERR_NO_DRIVER" in failure


def test_a_library_without_manifest_fails(tmp_path):
    inside, host = _outputs(_ok("libkbit_cpu.so", MANIFEST_CPU))
    inside["without_manifest"] = ["libkbit_cuda999.so"]
    (failure,) = smoke.judge(inside, host, tmp_path)
    assert failure.startswith("libkbit_cuda999.so: has no")


def test_a_folder_that_is_not_a_root_is_never_deleted(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("building a root needs root")
    (tmp_path / "precious.txt").write_text("keep")
    with pytest.raises(smoke.SmokeError, match="not a Debian root"):
        smoke.ensure_root(tmp_path, log=lambda s: None)
    assert (tmp_path / "precious.txt").read_text() == "keep"


def test_no_target_says_how_to_make_one(tmp_path):
    with pytest.raises(smoke.SmokeError, match="nox -s wheel"):
        smoke.newest_wheel(tmp_path)


def _can_make_a_root(root: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("chroot"):
        return False
    return (root / smoke.MARKER).is_file() or bool(shutil.which("debootstrap")) or Path("/usr/sbin/debootstrap").is_file()


@pytest.mark.slow
def test_the_installed_cpu_library_loads_and_matches_the_host_on_bullseye(tmp_path):
    root = smoke.default_root()
    require_tool("root, chroot and debootstrap (or a finished bullseye root)", _can_make_a_root(root))
    folder = tmp_path / "libs"
    folder.mkdir()
    for p in Path(str(resources.files("kbit"))).iterdir():
        if p.name.endswith((".so", ".build.json")):
            shutil.copy2(p, folder / p.name)
    lines = []
    failures = smoke.smoke(folder, root, log=lines.append)
    assert failures == [], "\n".join(lines + failures)
    assert any("libkbit_cpu.so: loaded" in line and "(= host)" in line for line in lines), lines


def test_the_probes_abi_numbers_are_kbit_abis():
    """The probe runs where no kbit package exists, so it carries its own copy of four ABI numbers; they must be
    kbit._abi's (itself checked against csrc/kbit.h by tests/runtime/test_abi.py)."""
    from ci import smoke_probe
    from kbit import _abi

    assert (smoke_probe.F32, smoke_probe.NF4, smoke_probe.FP4) == (_abi.F32, _abi.NF4, _abi.FP4)
    assert smoke.KBIT_ERR_NO_DRIVER == _abi.ERR_NO_DRIVER
