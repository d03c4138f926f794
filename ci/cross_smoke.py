"""What the cross-platform smokes share (ci/smoke_windows.py, ci/smoke_aarch64.py): a CMake build of one matrix.toml
variant with a cross toolchain file, the C ABI probe (ci/smoke/abi_smoke.c) compiled for a target, the native Linux
x86_64 reference run, and the byte-for-byte comparison of a foreign run against it.

It owns no platform knowledge (the callers pass toolchain files, compilers and how to run a program) and builds no
wheel. Every failure is a SmokeError that names the command, its output and the fix.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ci import matrix

ROOT = matrix.ROOT
SMOKE_DIR = ROOT / "build" / "smoke"
PROBE_SOURCE = ROOT / "ci" / "smoke" / "abi_smoke.c"
TOOLCHAINS = ROOT / "cmake" / "toolchains"


class SmokeError(Exception):
    """A smoke step failed; the message has the command, the tail of its output and the fix."""


def run(cmd: Sequence[object], *, fix: str, env: dict[str, str] | None = None, timeout: float = 900,
        log=print) -> str:
    """Run a command; its stdout, or SmokeError with the output's tail and the fix."""
    argv = [str(c) for c in cmd]
    log("$ " + " ".join(argv))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                              env={**os.environ, **(env or {})})
    except FileNotFoundError as exc:
        raise SmokeError(f"cannot run {argv[0]}: {exc}. fix: {fix}") from None
    except subprocess.TimeoutExpired:
        raise SmokeError(f"`{' '.join(argv)}` ran over {timeout:.0f} s. fix: {fix}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        raise SmokeError(f"`{' '.join(argv)}` exited with {done.returncode}:\n{tail}\nfix: {fix}")
    return done.stdout


def require(*tools: str, fix: str) -> None:
    """Every tool must be on PATH, else SmokeError naming the missing ones and the fix."""
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        raise SmokeError(f"{', '.join(missing)} not found on PATH. fix: {fix}")


def cmake_build(variant: matrix.Variant, name: str, *, toolchain: Path | None = None, extra: Sequence[str] = (),
                log=print) -> Path:
    """Configure, build and install one variant into build/smoke/<name>/stage/kbit; the folder, with timings logged."""
    build, stage = SMOKE_DIR / name / "build", SMOKE_DIR / name / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    cmd = ["cmake", "-S", ROOT, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
           f"-DCMAKE_INSTALL_PREFIX={stage}", *matrix.cmake_args(variant), *extra]
    if toolchain is not None:
        cmd.append(f"-DCMAKE_TOOLCHAIN_FILE={toolchain}")
    fix = f"read the CMake output above; `rm -rf {build}` if a stale cache is the cause"
    start = time.perf_counter()
    run(cmd, fix=fix, log=log)
    run(["cmake", "--build", build], fix=fix, log=log)
    run(["cmake", "--install", build, "--strip"], fix=fix, log=log)
    log(f"{name}: {variant.name} built in {time.perf_counter() - start:.1f} s")
    return stage / "kbit"


def compile_probe(cc: str, out: Path, *flags: str, log=print) -> Path:
    """The C ABI probe, compiled with `cc` (a cross compiler or the host's gcc)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    run([cc, "-O1", "-std=gnu11", "-Wall", "-Werror", f"-I{ROOT / 'csrc'}", "-o", out, PROBE_SOURCE, *flags],
        fix=f"install {cc}, or fix {PROBE_SOURCE.relative_to(ROOT)} (it must compile warning-free everywhere)",
        log=log)
    return out


def probe_lines(stdout: str) -> list[str]:
    """The probe's output without its `info` line (the build info differs by platform by design)."""
    return [line for line in stdout.replace("\r\n", "\n").splitlines() if not line.startswith("info ")]


def reference_run(log=print) -> list[str]:
    """The probe against a native Linux x86_64 build of the CPU library: the bytes every other platform must give."""
    lib = cmake_build(matrix.load()["cpu"], "linux-x86_64", log=log) / matrix.library_filename("cpu", "linux-x86_64")
    probe = compile_probe("gcc", SMOKE_DIR / "linux-x86_64" / "abi_smoke", "-ldl", log=log)
    return probe_lines(run([probe, lib.resolve()], fix="the native library fails its own probe: a bug in kbit",
                           log=log))


def compare(platform: str, reference: list[str], lines: list[str]) -> list[str]:
    """The lines where `platform`'s run differs from the reference (empty: byte-identical results)."""
    if lines == reference:
        return []
    width = max(len(reference), len(lines))
    pad = [*reference, *[""] * (width - len(reference))], [*lines, *[""] * (width - len(lines))]
    return [f"linux-x86_64: {a!r}  {platform}: {b!r}" for a, b in zip(*pad) if a != b]


def main(smoke: Callable[[], list[str]], errors: tuple[type[BaseException], ...]) -> int:
    """A smoke's command line: 0 when `smoke()` finds no failure; 1 after printing each failure, or the error
    (one of `errors`, or SmokeError) that stopped it."""
    try:
        failures = smoke()
    except (SmokeError, *errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0
