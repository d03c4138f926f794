"""What each CUDA toolkit can compile for: an authored catalog of facts about NVIDIA's toolkits.

This module owns one thing: the compute capabilities a toolkit release accepts as SASS targets
(`nvcc --list-gpu-code`), and the notes that explain why an arch is missing. It knows nothing about
kbit's own choices; those are in matrix.toml. A build also asks the real nvcc (`nvcc --list-gpu-code`)
and refuses when the two disagree, so a wrong row here cannot slip through to CMake.
"""
from __future__ import annotations

from dataclasses import dataclass

_MAXWELL_TO_HOPPER = (50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90)


@dataclass(frozen=True)
class ToolkitArchs:
    """The SASS targets of one toolkit release, and a sentence on what changed."""

    toolkit: str
    sass: tuple[int, ...]
    note: str


_CATALOG: tuple[ToolkitArchs, ...] = (
    ToolkitArchs("11.8", (35, 37) + _MAXWELL_TO_HOPPER, "11.8 is the last toolkit with Kepler (sm_35/37)"),
    *(ToolkitArchs(f"12.{m}", _MAXWELL_TO_HOPPER, "12.0 dropped Kepler; Blackwell (sm_100/120) arrived in 12.8")
      for m in range(0, 8)),
    ToolkitArchs("12.8", _MAXWELL_TO_HOPPER + (100, 101, 120), "12.8 is the first toolkit with sm_100/101/120"),
    ToolkitArchs("12.9", _MAXWELL_TO_HOPPER + (100, 101, 103, 120, 121), "12.9 added sm_103 and sm_121"),
    ToolkitArchs("13.0", (75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121),
                 "13.0 dropped everything below sm_75 (Maxwell, Pascal, Volta) and renamed sm_101 to sm_110"),
)

_BY_TOOLKIT = {entry.toolkit: entry for entry in _CATALOG}


def known_toolkits() -> tuple[str, ...]:
    """Toolkit versions ("major.minor") this catalog describes."""
    return tuple(_BY_TOOLKIT)


def toolkit_archs(toolkit: str) -> ToolkitArchs | None:
    """The catalog entry for `toolkit`, or None when the catalog does not know it."""
    return _BY_TOOLKIT.get(toolkit)


def version_tuple(version: str) -> tuple[int, ...]:
    """"12.10" -> (12, 10): versions compare as numbers, never as strings ('11.10' > '11.7')."""
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True)
class GpuGeneration:
    """One GPU generation as the README's coverage table names it: its name and its compute capability."""

    name: str
    cc: int


# The generations kbit's coverage table lists, oldest first (one compute capability each; e.g. Ampere's A100 is
# sm_80 and its GeForce/workstation parts sm_86).
GPU_GENERATIONS: tuple[GpuGeneration, ...] = (
    GpuGeneration("Maxwell", 50), GpuGeneration("Pascal", 60), GpuGeneration("Volta", 70),
    GpuGeneration("Turing", 75), GpuGeneration("Ampere A100", 80), GpuGeneration("Ampere RTX 30", 86),
    GpuGeneration("Ada", 89), GpuGeneration("Hopper", 90), GpuGeneration("Blackwell B200", 100),
    GpuGeneration("Blackwell RTX 50", 120),
)


def runs_sass(sass: int, gpu: int) -> bool:
    """Whether SASS built for `sass` runs on a GPU of compute capability `gpu`: same major, minor at least."""
    return sass // 10 == gpu // 10 and sass <= gpu


def runs_ptx(ptx: int, gpu: int) -> bool:
    """Whether the driver can JIT-compile PTX of `ptx` for a GPU of `gpu` (PTX runs on its arch and every newer)."""
    return ptx <= gpu
