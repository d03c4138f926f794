"""`nox -s wheel -- --prebuilt DIR`, as the release pipeline calls it with libraries built on other machines: the same
assembly and the same gates as a local build. The "artifacts" are the libraries and manifests of the wheel that
`nox -s tests` built (dist/, or KBIT_TEST_WHEEL)."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ci import wheel

from conftest import ROOT, require_tool

pytestmark = pytest.mark.slow


@pytest.fixture
def artifacts(tmp_path) -> tuple[Path, Path]:
    """(a folder holding the built wheel's libraries and manifests, that wheel)."""
    import os

    whl = Path(os.environ["KBIT_TEST_WHEEL"]) if os.environ.get("KBIT_TEST_WHEEL") else None
    if whl is None:
        try:
            whl = wheel.built_wheel()
        except wheel.WheelError:
            whl = None
    require_tool("a kbit wheel (nox -s wheel, or KBIT_TEST_WHEEL=path)", whl)
    folder = tmp_path / "artifacts"
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if name.startswith("kbit/") and ("kbit_" in name) and name.count("/") == 1:
                (folder / Path(name).name).parent.mkdir(parents=True, exist_ok=True)
                (folder / Path(name).name).write_bytes(z.read(name))
    return folder, whl


def _assemble(folder: Path, dist: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "ci" / "wheel.py"), "--prebuilt", str(folder), "--dist", str(dist),
                           "--work", str(dist.parent / "work")], capture_output=True, text=True)


def test_prebuilt_libraries_make_the_same_wheel_with_the_same_bytes(artifacts, tmp_path):
    folder, whl = artifacts
    done = _assemble(folder, tmp_path / "dist")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (made,) = (tmp_path / "dist").glob("kbit-*.whl")
    assert wheel.wheel_tag(made) == wheel.wheel_tag(whl)  # the tag auditwheel proved, both times
    with zipfile.ZipFile(made) as z:
        for lib in folder.iterdir():
            assert z.read(f"kbit/{lib.name}") == lib.read_bytes(), lib.name
    assert "variant   toolkit   SASS" in done.stdout and "cuda" in done.stdout


def test_a_prebuilt_manifest_that_differs_from_its_library_and_row_fails_the_gates(artifacts, tmp_path):
    folder, _ = artifacts
    cuda = sorted(folder.glob("kbit_cuda*.build.json"))
    if not cuda:
        require_tool("a CUDA variant in the wheel", None)
    info = json.loads(cuda[0].read_text())
    info["sass"] = info["sass"][:1]
    cuda[0].write_text(json.dumps(info))
    done = _assemble(folder, tmp_path / "dist")
    assert done.returncode == 2 and not (tmp_path / "dist").exists()
    assert "differs from its manifest" in done.stderr and "manifest sass is" in done.stderr


def test_a_prebuilt_folder_missing_a_library_names_it(artifacts, tmp_path):
    folder, _ = artifacts
    lib = next(folder.glob("libkbit_cuda*.so"), None) or next(folder.glob("libkbit_cpu.so"))
    lib.unlink()
    done = _assemble(folder, tmp_path / "dist")
    assert done.returncode == 2 and f"{lib.name} is missing" in done.stderr
