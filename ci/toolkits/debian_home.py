"""A CUDA_HOME from Debian's toolkit packages: which members of which package are extracted, the extraction
(dpkg-deb | tar), the layout (bin/, nvvm/, include/, lib64/), the nvcc.profile relative to the tree, and the
libcudart package nvidia-cuda-dev implies. Linux/Debian only."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence

from ci.toolkits.apt import parse_depends, parse_package_spec
from ci.toolkits.errors import Log, ToolkitFetchError, fmt_cmd
from ci.toolkits.tree import remove_tree

MULTIARCH = "x86_64-linux-gnu"

# Which members of which Debian package are extracted (tar --wildcards patterns on the dpkg-deb fsys tarfile).
_TK = "./usr/lib/nvidia-cuda-toolkit"
_LIB = f"./usr/lib/{MULTIARCH}"
DEB_MEMBERS: dict[str, tuple[str, ...]] = {
    "nvidia-cuda-toolkit": (
        f"{_TK}/bin/nvcc", f"{_TK}/bin/crt", f"{_TK}/bin/cicc", f"{_TK}/libdevice",
        "./usr/bin/ptxas", "./usr/bin/fatbinary", "./usr/bin/nvlink", "./usr/bin/cudafe++",
        "./usr/bin/bin2c", "./usr/bin/cuobjdump",
    ),
    "nvidia-cuda-dev": (
        "./usr/include", f"{_LIB}/libcudart_static.a", f"{_LIB}/libcudadevrt.a", f"{_LIB}/libculibos.a",
        f"{_LIB}/libcudart.so*", f"{_LIB}/stubs/libcuda.so",
    ),
}
_LIBCUDART_PACKAGE = re.compile(r"libcudart\d+(\.\d+)?")

# (path inside the extracted packages, path inside CUDA_HOME); every one is required.
DEBIAN_LAYOUT: tuple[tuple[str, str], ...] = (
    ("usr/lib/nvidia-cuda-toolkit/bin/nvcc", "bin/nvcc"),
    ("usr/lib/nvidia-cuda-toolkit/bin/crt", "bin/crt"),
    ("usr/bin/ptxas", "bin/ptxas"),
    ("usr/bin/fatbinary", "bin/fatbinary"),
    ("usr/bin/nvlink", "bin/nvlink"),
    ("usr/bin/cudafe++", "bin/cudafe++"),
    ("usr/bin/bin2c", "bin/bin2c"),
    ("usr/bin/cuobjdump", "bin/cuobjdump"),
    ("usr/lib/nvidia-cuda-toolkit/bin/cicc", "nvvm/bin/cicc"),
    ("usr/lib/nvidia-cuda-toolkit/libdevice", "nvvm/libdevice"),
    ("usr/include", "include"),
    (f"usr/lib/{MULTIARCH}/libcudart_static.a", "lib64/libcudart_static.a"),
    (f"usr/lib/{MULTIARCH}/libcudadevrt.a", "lib64/libcudadevrt.a"),
    (f"usr/lib/{MULTIARCH}/libculibos.a", "lib64/libculibos.a"),
    (f"usr/lib/{MULTIARCH}/stubs/libcuda.so", "lib64/stubs/libcuda.so"),
)

# Debian's bin/nvcc.profile is a link to /etc/nvcc.profile with /usr paths; this one is relative to the tree.
NVCC_PROFILE_TEXT = """\
# Written by kbit ci/toolkit_fetch.py: a CUDA_HOME relative to this file (Debian's points at /usr).
TOP              = $(_HERE_)/..

NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice

LD_LIBRARY_PATH += $(TOP)/lib64:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):

INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)

LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64/stubs" "-L$(TOP)/lib64"

CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
"""

# The verification source: a kernel (using cuda_fp16.h, which needs CCCL's nv/target on 12.x) and an


def implied_runtime_packages(specs: Sequence[str], show: Callable[[str], dict[str, str] | None]) -> list[str]:
    """The libcudartN package that nvidia-cuda-dev pins, when `specs` list nvidia-cuda-dev but no libcudart*.

    nvidia-cuda-dev ships only the link libcudart.so -> libcudart.so.N; without the runtime package the link
    dangles and CMake's FindCUDAToolkit fails with "missing: CUDA_CUDART". Returns ['libcudart12=VERSION'] or [].
    """
    parsed = [parse_package_spec(s) for s in specs]
    if any(_LIBCUDART_PACKAGE.fullmatch(n) for n, _ in parsed):
        return []
    dev = next(((n, v) for n, v in parsed if n == "nvidia-cuda-dev"), None)
    if dev is None:
        return []
    record = show(f"{dev[0]}={dev[1]}" if dev[1] else dev[0])
    if not record:
        raise ToolkitFetchError("find the CUDA runtime package", f"apt-cache show {dev[0]}={dev[1]} found nothing",
                                "check the nvidia-cuda-dev pin in matrix.toml against the suite")
    for group in parse_depends(record.get("Depends", "")):
        for dep in group:
            if _LIBCUDART_PACKAGE.fullmatch(dep.name):
                return [f"{dep.name}={dep.version}" if dep.op == "=" and dep.version else dep.name]
    return []



# ------------------------------------------------------------------------------------------- extraction


def extract_deb(deb: pathlib.Path, into: pathlib.Path, members: Sequence[str] = (),
                excludes: Sequence[str] = ()) -> None:
    """`dpkg-deb --fsys-tarfile deb | tar -x -C into --wildcards members` (all of it if no members)."""
    into.mkdir(parents=True, exist_ok=True)
    tar_cmd = ["tar", "-x", "-C", str(into), "--no-same-owner",
               *[f"--exclude={e}" for e in excludes], "--wildcards", *members]
    fix = f"check that {deb} is a complete .deb (delete it to re-download) and holds {', '.join(members) or 'data'}"
    with tempfile.TemporaryFile() as dpkg_err:
        try:
            dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=dpkg_err)
        except FileNotFoundError as exc:
            raise ToolkitFetchError("extract .deb", f"cannot run dpkg-deb: {exc}", "run this on Debian") from exc
        try:
            tar = subprocess.run(tar_cmd, stdin=dpkg.stdout, capture_output=True, text=True, errors="replace",
                                 check=False)
        finally:
            assert dpkg.stdout is not None
            dpkg.stdout.close()
            dpkg.wait()
        dpkg_err.seek(0)
        dpkg_output = dpkg_err.read().decode(errors="replace")
    cmd_text = f"dpkg-deb --fsys-tarfile {deb} | {fmt_cmd(tar_cmd)}"
    if dpkg.returncode != 0 and tar.returncode == 0:
        raise ToolkitFetchError("extract .deb", f"`{cmd_text}`: dpkg-deb exited with {dpkg.returncode}", fix,
                                dpkg_output)
    if tar.returncode != 0:
        raise ToolkitFetchError("extract .deb", f"`{cmd_text}`: tar exited with {tar.returncode}", fix,
                                dpkg_output + tar.stdout + tar.stderr)


def deb_members(package: str) -> tuple[str, ...]:
    """The member patterns to extract from a toolkit package; unknown packages are refused."""
    if package in DEB_MEMBERS:
        return DEB_MEMBERS[package]
    if _LIBCUDART_PACKAGE.fullmatch(package):
        return (f"{_LIB}/libcudart.so*",)
    raise ToolkitFetchError(
        "choose files to extract", f"no rule says which files of Debian package {package!r} belong in a CUDA_HOME",
        f"add {package!r} to DEB_MEMBERS in ci/toolkit_fetch.py, or drop it from matrix.toml")


def _find_in_roots(roots: Sequence[pathlib.Path], rel: str) -> pathlib.Path | None:
    """The first extracted package root that contains `rel`."""
    for root in roots:
        if (root / rel).exists() or (root / rel).is_symlink():
            return root / rel
    return None


def assemble_debian_home(roots: Sequence[pathlib.Path], home: pathlib.Path, log: Log = print) -> None:
    """Move the extracted files into a CUDA_HOME layout and write its relative bin/nvcc.profile."""
    for src_rel, dst_rel in DEBIAN_LAYOUT:
        src = _find_in_roots(roots, src_rel)
        if src is None:
            raise ToolkitFetchError("lay out CUDA_HOME", f"{src_rel} is in none of the extracted packages "
                                    f"({', '.join(str(r) for r in roots)})",
                                    "the Debian package layout changed: update DEBIAN_LAYOUT in ci/toolkit_fetch.py")
        dst = home / dst_rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))
    lib64 = home / "lib64"
    for root in roots:
        for so in sorted((root / "usr/lib" / MULTIARCH).glob("libcudart.so*")):
            shutil.move(str(so), str(lib64 / so.name))
    for so in sorted(lib64.glob("libcudart.so*")):
        if so.is_symlink() and not so.exists():
            log(f"[toolkit_fetch] dropping dangling {so.name} -> {os.readlink(so)} (its runtime package is not listed)")
            so.unlink()
    write_nvcc_profile(home / "bin")


def write_nvcc_profile(bindir: pathlib.Path) -> None:
    """Replace Debian's link to /etc/nvcc.profile with a profile relative to $(_HERE_)."""
    profile = bindir / "nvcc.profile"
    remove_tree(profile)
    profile.write_text(NVCC_PROFILE_TEXT)


