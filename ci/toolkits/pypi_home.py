"""A CUDA_HOME from NVIDIA's PyPI wheels: `pip install --no-deps --target` through a wheel cache, making the CUDA 13
wheel tree look like a CUDA_HOME (lib64, targets/ links, libcudart.so), and merging header-only wheels (CCCL) into a
Debian tree."""

from __future__ import annotations

import pathlib
import re
import shutil
import sys
from collections.abc import Sequence

from ci.toolkits.errors import Log, ToolkitFetchError, run, timed
from ci.toolkits.tree import remove_tree


def pip_install(requirements: Sequence[str], target: pathlib.Path, cache: pathlib.Path, log: Log) -> None:
    """`python -m pip install --no-deps --target` from the wheel cache; download into the cache first if needed."""
    pip = [sys.executable, "-m", "pip"]
    offline = [*pip, "install", "--no-deps", "--no-index", "--find-links", str(cache), "--target", str(target),
               *requirements]
    fix = "check the requirement pins in matrix.toml against PyPI, and that PyPI is reachable"
    cache.mkdir(parents=True, exist_ok=True)
    if all(cached_wheel(cache, r) for r in requirements):
        try:
            with timed(log, f"pip install (cached wheels) {' '.join(requirements)}"):
                run(offline, step="pip install from the wheel cache", fix=fix)
            return
        except ToolkitFetchError:
            log("[toolkit_fetch] wheel cache incomplete; downloading")
            remove_tree(target)
    with timed(log, f"pip download {' '.join(requirements)}"):
        run([*pip, "download", "--no-deps", "--only-binary=:all:", "--dest", str(cache), *requirements],
            step="pip download", fix=fix)
    with timed(log, f"pip install --no-deps --target {target}"):
        run(offline, step="pip install --no-deps --target", fix=fix)


def cached_wheel(cache: pathlib.Path, requirement: str) -> pathlib.Path | None:
    """The wheel of a pinned 'name==version' requirement in the cache, if any (unpinned ones never match)."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)\s*", requirement)
    if not m:
        return None
    name = re.sub(r"[-_.]+", "_", m.group(1)).lower()
    return next(iter(sorted(cache.glob(f"{name}-{m.group(2)}-*.whl"))), None)


def wheel_include_dirs(target: pathlib.Path) -> list[pathlib.Path]:
    """include/ directories of NVIDIA wheels installed under `target` (nvidia/*/include)."""
    return sorted(p for p in (target / "nvidia").glob("*/include") if p.is_dir())


def merge_headers(src: pathlib.Path, include: pathlib.Path) -> list[str]:
    """Copy header subtrees of a wheel's include dir into `include` (no python files); return what was merged."""
    merged = []
    for item in sorted(src.iterdir()):
        if item.name in ("__init__.py", "__pycache__"):
            continue
        if item.is_dir():
            shutil.copytree(item, include / item.name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
        else:
            shutil.copy2(item, include / item.name)
        merged.append(item.name)
    return merged


def link_wheel_cuda_home(home: pathlib.Path) -> None:
    """Make NVIDIA's CUDA 13 wheel tree look like a CUDA_HOME: lib64 -> lib, targets links, libcudart.so."""
    if not (home / "lib64").exists():
        (home / "lib64").symlink_to("lib")
    targets = home / "targets" / "x86_64-linux"
    targets.mkdir(parents=True, exist_ok=True)
    for name in ("include", "lib"):
        if not (targets / name).exists():
            (targets / name).symlink_to(f"../../{name}")
    if not (home / "lib" / "libcudart.so").exists():
        versioned = sorted(p.name for p in (home / "lib").glob("libcudart.so.*"))
        if not versioned:
            raise ToolkitFetchError("lay out CUDA_HOME", f"no libcudart.so.N in {home / 'lib'}",
                                    "add nvidia-cuda-runtime to the pypi requirements")
        (home / "lib" / "libcudart.so").symlink_to(versioned[0])


def find_wheel_cuda_home(target: pathlib.Path) -> pathlib.Path:
    """The directory under `target` holding bin/nvcc (nvidia/cu13 for CUDA 13 wheels)."""
    found = sorted(p.parent.parent for p in (target / "nvidia").glob("*/bin/nvcc"))
    if len(found) != 1:
        raise ToolkitFetchError(
            "lay out CUDA_HOME", f"expected exactly one nvidia/*/bin/nvcc under {target}, found {len(found)}",
            "the pypi requirements must include a full nvcc (CUDA 13's nvidia-cuda-nvcc + nvidia-cuda-crt + "
            "nvidia-nvvm); PyPI's 12.x nvidia-cuda-nvcc-cu12 has no nvcc, so 12.x needs the Debian source")
    return found[0]


