"""The one CUDA variant of a source install for a custom GPU: `KBIT_CUDA_ARCHS=87 pip install .`.

This module owns turning a user's arch list into the CMake arguments of that variant's build: finding the nvcc
(the one CMake was told, else CUDA_HOME, CUDA_PATH, nvcc on PATH, else the places ci/build_variant.py searches for
each matrix.toml row, newest toolkit first), mapping its release to its matrix.toml row (cuda130 for 13.0), and
validating the archs with the row validator of ci/matrix.py (the same check every release row passes) before CMake
has enabled CUDA. So sm_70 with CUDA 13.0 is refused here, with the fix, and never reaches nvcc's "Unsupported gpu
architecture". It builds nothing: cmake/source_cuda.cmake runs it at configure time and builds the variant.

CLI:  python ci/source_cuda.py --archs 87[,90] [--nvcc PATH]
      prints the -D arguments of the variant's CMake configure, one per line; exit 2 with the problem and the fix
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ci import build_variant, cuda_catalog, matrix  # noqa: E402


class SourceCudaError(Exception):
    """The custom CUDA variant cannot be built as asked; the message says why and the fix."""


def parse_archs(text: str) -> tuple[int, ...]:
    """"87" / "80,87" / "8.7" / "sm_87" / "80;87" -> (80, 87), sorted; SourceCudaError for anything else."""
    items = [i for i in re.split(r"[,; ]+", text.strip()) if i]
    archs = []
    for item in items:
        m = re.fullmatch(r"(?:sm_)?(\d+)(?:\.(\d))?", item)
        if not m:
            raise SourceCudaError(f"KBIT_CUDA_ARCHS={text!r}: {item!r} is not a compute capability. fix: write them "
                                  f"as numbers, e.g. KBIT_CUDA_ARCHS=87 (Jetson Orin) or KBIT_CUDA_ARCHS=80,86")
        archs.append(int(m.group(1) + m.group(2)) if m.group(2) else int(m.group(1)))
    if not archs:
        raise SourceCudaError("KBIT_CUDA_ARCHS is empty. fix: name your GPU's compute capability, e.g. "
                              "KBIT_CUDA_ARCHS=87, or unset it for a CPU-only install")
    return tuple(sorted(set(archs)))


def _release(nvcc: Path) -> str | None:
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def find_nvcc(explicit: str | None, variants: dict[str, matrix.Variant]) -> tuple[Path, str]:
    """(nvcc, its "major.minor" release): the one named, else CUDA_HOME/CUDA_PATH/PATH, else the newest row's toolkit
    found where ci/build_variant.py looks."""
    exe = "nvcc.exe" if sys.platform == "win32" else "nvcc"
    named = [explicit, *(str(Path(os.environ[k]) / "bin" / exe) for k in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(k)),
             shutil.which("nvcc")]
    looked = []
    for candidate in filter(None, named):
        release = _release(Path(candidate))
        if release:
            return Path(candidate), release
        looked.append(f"{candidate}: does not run")
    rows = sorted((v for v in variants.values() if v.backend == "cuda"),
                  key=lambda v: cuda_catalog.version_tuple(v.toolkit), reverse=True)
    for row in rows:
        try:
            return build_variant.find_toolkit(row), row.toolkit
        except build_variant.ToolkitNotFoundError:
            looked.append(f"CUDA {row.toolkit}: not found where build-{row.name} looks")
    raise SourceCudaError("KBIT_CUDA_ARCHS asks for a CUDA library, but no nvcc was found (" + "; ".join(looked)
                          + "). fix: set CUDA_HOME to your CUDA toolkit, or put its nvcc on PATH; or unset "
                            "KBIT_CUDA_ARCHS for a CPU-only install")


def custom_row(variants: dict[str, matrix.Variant], toolkit: str, archs: tuple[int, ...]) -> matrix.Variant:
    """The matrix.toml row of `toolkit` with the user's archs (SASS for each, PTX for the newest), validated by
    ci/matrix.py's row validator; SourceCudaError with its problems and fixes otherwise."""
    name = matrix.variant_name_for_toolkit(toolkit)
    if name not in variants:
        rows = ", ".join(v.toolkit for v in variants.values() if v.backend == "cuda")
        raise SourceCudaError(f"nvcc is CUDA {toolkit}, which has no row in matrix.toml (kbit's runtime knows a CUDA "
                              f"library by its row: driver floor, compression). fix: build with one of CUDA {rows} "
                              f"(set CUDA_HOME to it)")
    row = variants[name]
    table = {"backend": "cuda", "reason": row.reason, "platforms": list(row.platforms),
             "host_compiler": row.host_compiler, "toolkit": toolkit, "release": row.release, "sass": list(archs),
             "ptx": max(archs),
             "compression": row.compression, "min_driver": row.min_driver}
    problems = matrix.validate_row(name, table)
    if problems:
        raise SourceCudaError(f"KBIT_CUDA_ARCHS={','.join(map(str, archs))} cannot be built with CUDA {toolkit}:\n"
                              + "\n".join(f"  {p}" for p in problems) + "\n" + _user_fix(variants, toolkit, archs))
    return replace(row, sass=archs, ptx=max(archs))


def _user_fix(variants: dict[str, matrix.Variant], toolkit: str, archs: tuple[int, ...]) -> str:
    entry = cuda_catalog.toolkit_archs(toolkit)
    keep = [a for a in archs if entry is not None and a in entry.sass]
    able = [v.toolkit for v in variants.values() if v.backend == "cuda"
            and all(a in getattr(cuda_catalog.toolkit_archs(v.toolkit), "sass", ()) for a in archs)]
    fixes = [f"KBIT_CUDA_ARCHS={','.join(map(str, keep))} (what CUDA {toolkit} can build)"] if keep else []
    if able:
        fixes.append(f"a toolkit that builds all of them (CUDA {' or '.join(able)}) through CUDA_HOME")
    return "  fix for this install: " + ("; or ".join(fixes) or "choose archs your toolkit supports")


def cmake_args(archs_text: str, nvcc: str | None = None) -> list[str]:
    """The -D arguments of the custom variant's configure (the same ci/matrix.py derives for a release row)."""
    variants = matrix.load()
    archs = parse_archs(archs_text)
    found, toolkit = find_nvcc(nvcc, variants)
    row = custom_row(variants, toolkit, archs)
    args = [*matrix.cmake_args(row), f"-DCMAKE_CUDA_COMPILER={found}"]
    try:
        cxx = build_variant.find_host_compiler(row)
    except build_variant.HostCompilerNotFoundError:
        cxx = None  # the system's default C++ compiler; nvcc says so when it does not support it
    if cxx:
        args += [f"-DCMAKE_CXX_COMPILER={cxx}", f"-DCMAKE_CUDA_HOST_COMPILER={cxx}"]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ci/source_cuda.py", description=__doc__.splitlines()[0])
    parser.add_argument("--archs", required=True, help="compute capabilities, e.g. 87 or 80,86")
    parser.add_argument("--nvcc", help="the nvcc to use (CMAKE_CUDA_COMPILER)")
    args = parser.parse_args(argv)
    try:
        print("\n".join(cmake_args(args.archs, args.nvcc)))
    except (SourceCudaError, matrix.MatrixError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
