"""Shared fixtures. Tests import the installed kbit package and the repository's ci/ modules."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytest_plugins = ["hf_fixtures"]  # the transformers/PEFT fixtures of tests/hf/


def cmake_binaries() -> list[str]:
    """Every distinct CMake here: Debian's (3.25) and PyPI's (4.x, in the test venv), to test both."""
    found = {}
    for candidate in (str(Path(sys.executable).parent / "cmake"), shutil.which("cmake"), "/usr/bin/cmake"):
        if candidate and Path(candidate).is_file():
            found.setdefault(Path(candidate).resolve(), candidate)
    return list(found.values())


def require_tool(what: str, found: object) -> None:
    """Skip when a tool is missing on a developer machine, but fail in CI, where .ci/run provides it."""
    if not found:
        if IN_CI:
            pytest.fail(f"{what} is missing in CI; .ci/run must provide it")
        pytest.skip(f"{what} not available")


# Set by ci/gpu_check.py: on the GPU machine a `cuda` test that cannot run is a failure of the check, not a skip.
REQUIRE_GPU = os.environ.get("KBIT_REQUIRE_GPU", "") == "1"


def bundled_cuda_variants() -> list[str]:
    """The CUDA variants the installed package bundles (their kbit_<variant>.build.json manifests, README)."""
    import kbit

    return sorted(p.name[len("kbit_"):-len(".build.json")]
                  for p in Path(kbit.__file__).parent.glob("kbit_cuda*.build.json"))


def _why_cuda_tests_cannot_run() -> str | None:
    import torch

    if not torch.cuda.is_available():
        why = "needs an NVIDIA GPU (torch.cuda.is_available() is False"
        return why + (f"; torch {torch.__version__} is a CPU-only build)" if torch.version.cuda is None else ")")
    if not bundled_cuda_variants():
        import kbit

        return (f"the installed kbit ({Path(kbit.__file__).parent}) bundles no CUDA variant, only the CPU library: "
                f"run `python ci/gpu_check.py`, which builds one for this GPU and installs both")
    return None


def pytest_collection_modifyitems(config, items):
    why = _why_cuda_tests_cannot_run()
    if why is None:
        return
    if REQUIRE_GPU and any("cuda" in item.keywords for item in items):
        raise pytest.UsageError(f"KBIT_REQUIRE_GPU=1 but the cuda tests cannot run: {why}")
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
