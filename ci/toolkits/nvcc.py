"""What an nvcc says about itself: `nvcc --version` parsing, the flag-free environment nvcc runs in, and the
check that a tree's nvcc is the release a matrix row wants. Platform-neutral (no fcntl, no apt): ci/build_variant.py
imports it on Windows too."""

from __future__ import annotations

import os
import pathlib
import re

from ci.toolkits.errors import ToolkitFetchError, run


def parse_nvcc_release(text: str) -> tuple[str, str]:
    """`nvcc --version` output -> ("12.4", "12.4.131") from 'release 12.4, V12.4.131'."""
    m = re.search(r"release (\d+\.\d+), V(\d+(?:\.\d+)+)", text)
    if not m:
        raise ToolkitFetchError("check nvcc version", "no 'release X.Y, VX.Y.Z' line in `nvcc --version` output",
                                "the tree's bin/nvcc is not a CUDA nvcc; delete the tree and provision again", text)
    return m.group(1), m.group(2)


def nvcc_env() -> dict[str, str]:
    """The environment for nvcc runs, without variables that would inject flags."""
    env = dict(os.environ)
    for var in ("NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS", "NVCC_CCBIN"):
        env.pop(var, None)
    return env


def check_nvcc_version(home: pathlib.Path, toolkit: str) -> str:
    """Require bin/nvcc to report release == toolkit; return its 'release …' line."""
    nvcc = home / "bin" / "nvcc"
    out = run([nvcc, "--version"], step="nvcc --version", env=nvcc_env(),
              fix=f"delete {home} and provision again; check bin/, nvvm/ and bin/nvcc.profile").stdout
    release, _full = parse_nvcc_release(out)
    if release != toolkit:
        raise ToolkitFetchError("check nvcc version", f"{nvcc} reports release {release}, matrix.toml wants {toolkit}",
                                "fix the toolkit_source pins of this variant in matrix.toml", out)
    return next(line.strip() for line in out.splitlines() if "release" in line)


