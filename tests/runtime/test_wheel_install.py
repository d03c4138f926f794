"""The wheel, installed as a user installs it: a fresh venv, `pip install torch==2.13.0 kbit-*.whl` from binaries only
(no compiler, no CUDA toolkit), then `python -m kbit` and each bundled CUDA variant forced by BNB_CUDA_VERSION.

The wheel is dist/'s (what `nox -s wheel` proved; `nox -s tests` builds it first), or KBIT_TEST_WHEEL. Nothing here
imports the checkout: every probe runs in the fresh venv, from a folder outside the repository."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import venv
import zipfile
from pathlib import Path

import pytest

from ci import matrix, wheel

from conftest import require_tool

pytestmark = pytest.mark.slow
TORCH = shlex.split(os.environ.get("KBIT_TEST_TORCH", "torch==2.13.0"))


def _wheel_file() -> Path | None:
    if os.environ.get("KBIT_TEST_WHEEL"):
        return Path(os.environ["KBIT_TEST_WHEEL"]).resolve()
    try:
        return wheel.built_wheel()
    except wheel.WheelError:
        return None


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with the wheel and CPU torch, the wheel's path, a folder to run in)."""
    whl = _wheel_file()
    require_tool("a kbit wheel (nox -s wheel, or KBIT_TEST_WHEEL=path)", whl)
    root = tmp_path_factory.mktemp("wheel-venv")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    # binaries only, and no compiler or toolkit reachable: installing must need neither
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "CC", "CXX", "CUDACXX")}
    env.update(CC="/bin/false", CXX="/bin/false", CUDACXX="/bin/false")
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--only-binary=:all:", *TORCH, str(whl)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return python, whl, root


def _kbit(installed, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    python, _, root = installed
    environ = {k: v for k, v in os.environ.items() if k not in ("BNB_CUDA_VERSION", "PYTHONPATH")}
    environ.update(env or {})
    return subprocess.run([str(python), "-m", "kbit", *args], capture_output=True, text=True, env=environ, cwd=root)


def _bundled(whl: Path) -> dict[str, dict]:
    with zipfile.ZipFile(whl) as z:
        return {json.loads(z.read(n))["variant"]: json.loads(z.read(n))
                for n in z.namelist() if n.startswith("kbit/kbit_") and n.endswith(".build.json")}


def test_the_installed_package_is_the_wheels_not_the_checkout(installed):
    python, whl, root = installed
    done = subprocess.run([str(python), "-c", "import kbit; print(kbit.__file__)"], capture_output=True, text=True, cwd=root)
    assert done.stdout.strip().startswith(str(root / "venv")), done.stdout + done.stderr
    assert "cpu" in _bundled(whl)


def test_python_m_kbit_lists_every_bundled_variant_with_toolkit_archs_and_glibc(installed):
    _, whl, _ = installed
    done = _kbit(installed, "--json")
    report = json.loads(done.stdout)
    rows = matrix.load()
    listed = {v["name"]: v for v in report["facts"]["variants"]}
    assert set(listed) == set(_bundled(whl)) and done.returncode == 0, done.stderr
    for name, v in listed.items():
        assert v["present"] and v["glibc"] and v["glibc"].startswith("2."), v
        assert tuple(v["sass"]) == rows[name].sass and v["ptx"] == rows[name].ptx
        if rows[name].toolkit:
            assert v["toolkit_text"].startswith(rows[name].toolkit + ".")
    text = _kbit(installed).stdout
    for name, v in listed.items():
        line = next(row for row in text.splitlines() if row.strip().startswith(name + " "))
        assert f"glibc >= {v['glibc']}" in line
        if rows[name].backend == "cuda":
            assert f"CUDA {v['toolkit_text']}" in line and f"PTX compute_{rows[name].ptx}" in line
            assert all(f"sm_{a}" in line for a in rows[name].sass)


@pytest.mark.parametrize("value", ["118", "124", "130"])
def test_each_forced_cuda_variant_loads_and_reports_no_driver_cleanly(installed, value):
    name = f"cuda{value}"
    if name not in _bundled(installed[1]):
        require_tool(f"{name} in the wheel (nox -s wheel -- --provision)", None)
    done = _kbit(installed, "--json", env={"BNB_CUDA_VERSION": value})
    report = json.loads(done.stdout)
    assert report["decision"]["variant"] == name
    load = next(r for r in report["loads"] if r["variant"] == name)
    assert load["error"] is None and load["build_info"]["variant"] == name
    # no GPU and no driver here: the library answers with a status and its reason, never a crash
    assert load["device_status"] != 0 and "no NVIDIA driver" in load["device_detail"]
    assert done.returncode == report["exit_code"] == 0  # usable for CPU tensors; the contradictions are warnings


def test_a_malformed_override_exits_3_and_warns_once_at_the_first_cpu_call(installed):
    python, _, root = installed
    assert _kbit(installed, env={"BNB_CUDA_VERSION": "abc"}).returncode == 3
    code = ("import warnings, torch, kbit.functional as F\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n"
            "    for _ in range(3): F.quantize_blockwise(torch.ones(128), blocksize=64)\n"
            "print(len([w for w in seen if w.category.__name__ == 'KbitWarning']), seen[0].message if seen else '')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=root,
                          env={**env, "BNB_CUDA_VERSION": "abc"})
    count, message = done.stdout.split(" ", 1)
    assert count == "1" and "BNB_CUDA_VERSION='abc'" in message
    assert "bundles: " + ", ".join(sorted(_bundled(installed[1]))) in message
