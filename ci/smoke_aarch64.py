"""`nox -s smoke-aarch64`: the linux-aarch64 libraries, cross-built on this x86_64 machine and run under qemu-user.

This module owns the aarch64 smoke:
  1. the CPU library, cross-compiled by CMake with Debian's aarch64-linux-gnu toolchain (cmake/toolchains/), linked
     with the same glibc pinning as every Linux build (cmake/KbitPortability.cmake, floor from matrix.toml);
  2. the newest CUDA row that names linux-aarch64 (cuda130), cross-compiled with this machine's x86_64 nvcc of that
     release, aarch64-linux-gnu-g++ as host compiler and the aarch64 static CUDA runtime from PyPI's
     nvidia-cuda-runtime wheel (`pip download --platform manylinux2014_aarch64`), laid out as nvcc's
     targets/sbsa-linux beside hard links of the toolkit's bin/ (nvcc finds its target tree relative to itself);
     its manifest and cuobjdump must show the row's aarch64 SASS list (matrix.toml platform_sass: Orin, Thor);
  3. the C ABI probe (ci/smoke/abi_smoke.c), compiled for aarch64 and run under qemu-aarch64 in a Debian bookworm
     arm64 root (debootstrap --foreign; every downloaded package unpacked, since no second stage can run without
     binfmt_misc): the CPU library's results must be byte-identical to the x86_64 library's, the CUDA library must
     load and report KBIT_ERR_NO_DRIVER.
Roots, the runtime wheel and the toolkit overlay are cached outside the clone in ~/.cache/kbit ($KBIT_SMOKE_CACHE).
It builds no wheel: the release pipeline builds aarch64 natively on ARM runners in manylinux containers.

CLI: python ci/smoke_aarch64.py     exit 0 when every check passed, 1 with the failed checks listed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ci import build_variant, cross_smoke, cuda_catalog, matrix, wheel  # noqa: E402
from ci.cross_smoke import SmokeError  # noqa: E402

PLATFORM = "linux-aarch64"
CC, CXX = "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64-static"
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
CACHE = Path(os.environ.get("KBIT_SMOKE_CACHE", Path.home() / ".cache" / "kbit"))
ROOTFS = CACHE / f"{SUITE}-arm64-root"
MARKER = ".kbit-root-complete"
RUNTIME_WHEEL = {"13": "nvidia-cuda-runtime=={version}"}  # the PyPI wheel with the aarch64 static cudart, per major
RUNTIME_VERSIONS = {"13.0": "13.0.96"}  # toolchains.md: the release whose wheel has manylinux2014_aarch64
APT_FIX = "apt-get install g++-aarch64-linux-gnu qemu-user-static debootstrap (.ci/run installs them in CI)"


def ensure_root(log=print) -> Path:
    """A Debian arm64 root (debootstrap --foreign, then every fetched package unpacked), made once and cached."""
    if (ROOTFS / MARKER).is_file():
        log(f"[aarch64] reusing the arm64 root {ROOTFS}")
        return ROOTFS
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise SmokeError(f"making the arm64 root needs root (debootstrap). fix: run as root once, or point "
                         f"KBIT_SMOKE_CACHE at a cache holding {ROOTFS.name}")
    shutil.rmtree(ROOTFS, ignore_errors=True)
    ROOTFS.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cross_smoke.run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", SUITE, ROOTFS, MIRROR],
                    fix="check that the Debian archive is reachable; see debootstrap's log above", log=log)
    debs = sorted((ROOTFS / "var" / "cache" / "apt" / "archives").glob("*.deb"))
    for deb in debs:  # the first stage unpacks only the required set; the libraries a program needs are all here
        cross_smoke.run(["dpkg-deb", "-x", deb, ROOTFS], fix=f"{deb} is damaged: remove {ROOTFS} and retry", log=lambda m: None)
    (ROOTFS / MARKER).write_text(json.dumps({"suite": SUITE, "packages": len(debs),
                                             "seconds": round(time.perf_counter() - start, 1)}) + "\n")
    log(f"[aarch64] made the {SUITE} arm64 root in {time.perf_counter() - start:.0f} s ({len(debs)} packages)")
    return ROOTFS


def runtime_lib(toolkit: str, log=print) -> Path:
    """The lib/ folder of PyPI's aarch64 nvidia-cuda-runtime wheel for `toolkit` (downloaded once, cached)."""
    if toolkit not in RUNTIME_VERSIONS:
        raise SmokeError(f"no aarch64 runtime wheel is known for CUDA {toolkit}. fix: add its nvidia-cuda-runtime "
                         f"release to RUNTIME_VERSIONS in ci/smoke_aarch64.py")
    req = RUNTIME_WHEEL[toolkit.split(".")[0]].format(version=RUNTIME_VERSIONS[toolkit])
    dest = CACHE / f"cudart-aarch64-{RUNTIME_VERSIONS[toolkit]}"
    lib = dest / "nvidia" / f"cu{toolkit.split('.')[0]}" / "lib"
    if not (lib / "libcudart_static.a").is_file():
        download = CACHE / "wheels"
        cross_smoke.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform",
                         "manylinux2014_aarch64", "--python-version", "3.11", "-d", download, req],
                        fix="check that PyPI is reachable", log=log)
        wheel_file = next(download.glob(f"nvidia_cuda_runtime-{RUNTIME_VERSIONS[toolkit]}-*aarch64*.whl"))
        shutil.rmtree(dest, ignore_errors=True)
        cross_smoke.run([sys.executable, "-m", "zipfile", "-e", wheel_file, dest], fix=f"remove {wheel_file}",
                        log=log)
    return lib


def sbsa_home(nvcc: Path, lib: Path, toolkit: str) -> Path:
    """A CUDA_HOME whose bin/ is hard links of the real one (nvcc.profile resolves the tree from nvcc's own folder)
    and whose targets/sbsa-linux holds the real headers and the aarch64 runtime libraries."""
    real = nvcc.resolve().parent.parent
    home = CACHE / f"cuda{toolkit.replace('.', '')}-sbsa"
    shutil.rmtree(home, ignore_errors=True)
    (home / "bin").mkdir(parents=True)
    for item in (real / "bin").iterdir():
        (home / "bin" / item.name).symlink_to(item) if item.is_dir() else os.link(item, home / "bin" / item.name)
    (home / "nvvm").symlink_to(real / "nvvm")
    (home / "targets").mkdir()
    (home / "targets" / "x86_64-linux").symlink_to(real / "targets" / "x86_64-linux")
    (home / "targets" / "sbsa-linux").mkdir()
    (home / "targets" / "sbsa-linux" / "include").symlink_to(real / "targets" / "x86_64-linux" / "include")
    (home / "targets" / "sbsa-linux" / "lib").symlink_to(lib)
    for name in ("include", "lib64"):
        (home / name).symlink_to(Path("targets") / "sbsa-linux" / ("include" if name == "include" else "lib"))
    return home


def build_cuda(variant: matrix.Variant, log=print) -> tuple[Path, list[str]]:
    """Cross-build the CUDA row for aarch64; the library and what its manifest and cuobjdump disagree on."""
    nvcc = build_variant.find_toolkit(variant)  # this machine's x86_64 nvcc of the row's release
    home = sbsa_home(nvcc, runtime_lib(variant.toolkit, log), variant.toolkit)
    built = cross_smoke.cmake_build(variant, f"{PLATFORM}-{variant.name}",
                                    toolchain=cross_smoke.TOOLCHAINS / "aarch64-linux-gnu.cmake", log=log,
                                    extra=[f"-DCMAKE_CUDA_COMPILER={home / 'bin' / 'nvcc'}",
                                           f"-DCMAKE_CUDA_HOST_COMPILER={shutil.which(CXX)}"])
    library = built / matrix.library_filename(variant.name, PLATFORM)
    manifest = json.loads((built / f"{variant.library_stem}.build.json").read_text(encoding="utf-8"))
    problems = [f"{library.name} manifest: {p}" for p in matrix.manifest_problems(variant, manifest)]
    if manifest.get("sass") != list(variant.sass):
        problems.append(f"{library.name} manifest SASS {manifest.get('sass')} is not the aarch64 list {list(variant.sass)}")
    problems += wheel.cuobjdump_check(variant, library, wheel.find_cuobjdump())
    log(f"[aarch64] {library.name}: {library.stat().st_size:,} bytes, SASS {' '.join(map(str, manifest['sass']))} "
        f"+ PTX {manifest['ptx']} (manifest; cuobjdump {'agrees' if not problems else 'DISAGREES'})")
    return library, problems


def run_in_root(root: Path, probe: Path, library: Path, log=print) -> str:
    """The probe under qemu-aarch64, its loader and libraries taken from the arm64 root (-L), not from this host."""
    start = time.perf_counter()
    out = cross_smoke.run([QEMU, "-L", root, probe, library.resolve()], log=log, timeout=600,
                          fix=f"run `{QEMU} -L {root} {probe} {library}` by hand")
    log(f"[aarch64] qemu run of {library.name} ({time.perf_counter() - start:.1f} s):\n" + out.rstrip())
    return out


def newest_cuda_row(variants: dict[str, matrix.Variant]) -> matrix.Variant | None:
    """The CUDA row of linux-aarch64 whose toolkit is newest and on this machine (cuda130 here)."""
    rows = [v for v in variants.values() if v.backend == "cuda" and PLATFORM in v.platforms]
    rows = [v for v in rows if wheel.toolkit_here(v)]
    return max(rows, key=lambda v: cuda_catalog.version_tuple(v.toolkit), default=None)


def smoke(log=print) -> list[str]:
    """Every check of the smoke; the failures (an empty list when all passed)."""
    cross_smoke.require(CC, CXX, QEMU, "debootstrap", "dpkg-deb", "cmake", "ninja", "gcc", fix=APT_FIX)
    start, failures = time.perf_counter(), []
    variants = matrix.load()
    root = ensure_root(log)
    toolchain = cross_smoke.TOOLCHAINS / "aarch64-linux-gnu.cmake"
    cpu = cross_smoke.cmake_build(variants["cpu"].on(PLATFORM), PLATFORM, toolchain=toolchain, log=log)
    cpu_lib = cpu / matrix.library_filename("cpu", PLATFORM)
    probe = cross_smoke.compile_probe(CC, cross_smoke.SMOKE_DIR / PLATFORM / "abi_smoke", "-ldl", log=log)
    out = run_in_root(root, probe, cpu_lib, log)
    reference = cross_smoke.reference_run(log=log)
    diff = cross_smoke.compare(PLATFORM, reference, cross_smoke.probe_lines(out))
    failures += [f"the aarch64 CPU library's bytes differ from x86_64's: {d}" for d in diff]
    if not diff:
        log(f"[aarch64] linux-aarch64 (qemu) and linux-x86_64 agree on all {len(reference)} result lines")
    row = newest_cuda_row(variants)
    if row is None:
        failures.append("no CUDA toolkit of a linux-aarch64 row is on this machine. fix: nox -s toolkit-cuda130")
    else:
        library, problems = build_cuda(row.on(PLATFORM), log)
        failures += problems
        cuda_out = run_in_root(root, probe, library, log)
        if "cuda device_count status 2 count 0" not in cuda_out or not cuda_out.rstrip().endswith("ok"):
            failures.append(f"{library.name} under qemu did not report KBIT_ERR_NO_DRIVER cleanly")
    log(f"smoke-aarch64: {'ok' if not failures else 'FAILED'} in {time.perf_counter() - start:.1f} s")
    return failures


def main() -> int:
    return cross_smoke.main(smoke, (build_variant.BuildError, matrix.MatrixError, subprocess.SubprocessError))


if __name__ == "__main__":
    sys.exit(main())
