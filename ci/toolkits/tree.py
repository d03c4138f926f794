"""A provisioned tree on disk: its marker (hash of toolkit + source, verified flag, file list), idempotent reuse,
the build-beside-then-rename dance, and a cross-process lock (flock on POSIX, msvcrt on Windows: fcntl is never
imported at module level). Platform-neutral; it knows nothing about where the files come from."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import sys
from collections.abc import Iterable, Iterator

from ci.toolkits.errors import ToolkitFetchError

# Bump when the produced layout changes: every existing tree is then rebuilt (its marker hash no longer matches).
LAYOUT_VERSION = 2
MARKER_NAME = ".kbit-toolkit.json"
DOWNLOADS_DIRNAME = "_downloads"

# Files whose presence (with a matching marker) makes a tree "complete"; relative to CUDA_HOME.
REQUIRED_FILES = (
    "bin/nvcc", "bin/nvcc.profile", "bin/ptxas", "bin/fatbinary", "bin/nvlink", "bin/cudafe++",
    "nvvm/bin/cicc", "include/cuda_runtime.h", "lib64/libcudart_static.a", "lib64/libcudadevrt.a",
)



def _lock_file(handle, lock: bool) -> None:
    """Exclusive lock (or unlock) of an open file across processes: flock on POSIX, msvcrt.locking on Windows.
    Imported here, not at module level: Windows has no fcntl, POSIX no msvcrt."""
    if sys.platform == "win32":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK if lock else msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX if lock else fcntl.LOCK_UN)


@contextlib.contextmanager
def locked(path: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) so concurrent provisions do not collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        _lock_file(handle, True)
        try:
            yield
        finally:
            _lock_file(handle, False)


def remove_tree(path: pathlib.Path) -> None:
    """Remove a file, link or directory tree if it exists."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def tree_size(path: pathlib.Path) -> int:
    """Bytes used by the regular files under `path` (links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


# ------------------------------------------------------------------------------------ marker / idempotence


def source_hash(toolkit: str, source: dict) -> str:
    """Stable hash of (toolkit, source, LAYOUT_VERSION): what a tree was built from."""
    payload = json.dumps({"toolkit": toolkit, "source": source, "layout": LAYOUT_VERSION},
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def read_marker(dest: pathlib.Path) -> dict | None:
    """The marker of `dest`, or None if it is missing or unreadable."""
    try:
        data = json.loads((dest / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(dest: pathlib.Path, *, digest: str, home_rel: str, files: Iterable[str], verified: bool,
                 **extra: object) -> None:
    """Write the marker atomically. An unverified marker (written before the tree moves into place) only says
    "this directory is ours"; the verified one, written last, makes the tree reusable."""
    data = {"hash": digest, "cuda_home": home_rel, "files": sorted(files), "verified": verified, **extra}
    tmp = dest / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(dest / MARKER_NAME)


def complete_tree(dest: pathlib.Path, digest: str) -> pathlib.Path | None:
    """If `dest` holds a verified tree built from `digest` with all its files, return its CUDA_HOME."""
    marker = read_marker(dest)
    if not marker or marker.get("hash") != digest or marker.get("verified") is not True:
        return None
    home_rel = str(marker.get("cuda_home", "."))
    home = dest / home_rel
    files = marker.get("files") or []
    if not all((dest / f).exists() for f in files):
        return None
    return home if home_rel != "." else dest


def prepare_workdir(dest: pathlib.Path) -> pathlib.Path:
    """A fresh sibling directory of `dest` to build in (same filesystem, so the final rename is cheap)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".{dest.name}.building"
    remove_tree(work)
    work.mkdir()
    return work


def check_dest_replaceable(dest: pathlib.Path) -> None:
    """Refuse (before any work) a `dest` that exists and was not made by this module: it is never deleted."""
    if not (dest.exists() or dest.is_symlink()):
        return
    if dest.is_dir() and not dest.is_symlink() and (read_marker(dest) is not None or not any(dest.iterdir())):
        return
    raise ToolkitFetchError(
        "check destination", f"{dest} exists and is not a tree made by ci/toolkit_fetch.py (no {MARKER_NAME})",
        f"choose another --dest, or remove {dest} yourself")


def install_workdir(work: pathlib.Path, dest: pathlib.Path) -> None:
    """Replace `dest` (ours, or empty, or absent) by `work`."""
    check_dest_replaceable(dest)
    remove_tree(dest)
    work.rename(dest)




def downloads_dir(dest: pathlib.Path) -> pathlib.Path:
    """The shared download cache beside the trees."""
    return dest.parent / DOWNLOADS_DIRNAME
