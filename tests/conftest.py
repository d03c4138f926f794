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


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
