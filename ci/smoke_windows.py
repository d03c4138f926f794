"""`nox -s smoke-windows`: the Windows CPU library, built and run on this Linux machine.

This module owns the Windows smoke: cross-compile the CPU library with Debian's mingw-w64 (statically: no libgcc,
libstdc++, libwinpthread or libgomp DLL; CMakeLists.txt's -static for MinGW), check with ci/pe_imports.py that the
DLL exports only kbit_* and imports only Windows system DLLs, then run the C ABI probe (ci/smoke/abi_smoke.c, a
static mingw .exe) under wine64 against kbit_cpu.dll loaded by absolute path, and compare its output byte for byte
with the same probe against the native Linux library. It compiles csrc/cpu/parallel.h's CreateThread branch, which
no Linux build sees. The MSVC build, the CUDA DLLs and the Python side of Windows are the release pipeline's
(.github/workflows/release.yml) and the substituted-platform tests' (tests/build/test_ci_on_windows.py).

The wine prefix is kept outside the clone, in ~/.cache/kbit/wine (its first start takes tens of seconds).
CLI: python ci/smoke_windows.py     exit 0 when every check passed, 1 with the failed checks listed.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ci import cross_smoke, matrix, pe_imports  # noqa: E402

MINGW_CC = "x86_64-w64-mingw32-gcc-posix"
MINGW_CXX = "x86_64-w64-mingw32-g++-posix"
PREFIX = Path(os.environ.get("KBIT_SMOKE_CACHE", Path.home() / ".cache" / "kbit")) / "wine"
APT_FIX = "apt-get install g++-mingw-w64-x86-64-posix wine64 (Debian bookworm; .ci/run installs them in CI)"


def wine_path(path: Path) -> str:
    """`/abs/path` as wine's Z: drive sees it: the absolute path the probe passes to LoadLibraryA."""
    return "Z:" + str(path.resolve()).replace("/", "\\")


def run_under_wine(exe: Path, dll: Path, log=print, extra_env: dict[str, str] | None = None) -> str:
    """The probe's stdout under wine64, in the cached prefix, with wine's own chatter off (extra_env: variables
    the DLL reads, e.g. KBIT_CPU_BASELINE)."""
    PREFIX.mkdir(parents=True, exist_ok=True)
    env = {"WINEPREFIX": str(PREFIX), "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml=", "DISPLAY": "",
           **(extra_env or {})}
    return cross_smoke.run(["wine", exe, wine_path(dll)], env=env, timeout=600, log=log,
                           fix=f"run `WINEPREFIX={PREFIX} wine {exe} {wine_path(dll)}` by hand to see wine's error")


def agreement(exe: Path, dll: Path, reference: list[str], label: str, env: dict[str, str], log=print) -> list[str]:
    """Run the probe under wine against `dll` (env: variables the DLL reads); the lines where it differs from the
    Linux reference, as failures (none: logged as agreeing)."""
    start = time.perf_counter()
    out = run_under_wine(exe, dll, log=log, extra_env=env)
    log(f"{label}: wine64 run ({time.perf_counter() - start:.1f} s):\n" + out.rstrip())
    diff = cross_smoke.compare(label, reference, cross_smoke.probe_lines(out))
    if not diff:
        log(f"{label} and linux-x86_64 agree on all {len(reference)} result lines")
    return [f"{label} differs from linux-x86_64: {d}" for d in diff]


def smoke(log=print) -> list[str]:
    """Every check of the smoke; the failures (an empty list when all passed)."""
    cross_smoke.require(MINGW_CC, MINGW_CXX, "wine", "cmake", "ninja", "gcc", fix=APT_FIX)
    start = time.perf_counter()
    cpu = matrix.load()["cpu"]
    dll = cross_smoke.cmake_build(cpu, "win-amd64", toolchain=cross_smoke.TOOLCHAINS / "mingw-w64-x86_64.cmake",
                                  log=log) / matrix.library_filename("cpu", "win-amd64")
    info = pe_imports.read(dll)
    log(f"{dll.name}: {dll.stat().st_size:,} bytes; imports {', '.join(info.imports)}; delay-loads "
        f"{', '.join(info.delay_imports) or 'nothing'}; exports {len(info.exports)} names, all kbit_*: "
        f"{all(pe_imports.EXPORT_NAME.match(n) for n in info.exports)}")
    failures = pe_imports.problems(dll)
    exe = cross_smoke.compile_probe(MINGW_CC, cross_smoke.SMOKE_DIR / "win-amd64" / "abi_smoke.exe", "-static",
                                    log=log)
    failures += [f"the probe itself: {p}" for p in pe_imports.problems(exe) if "imports" in p]
    reference = cross_smoke.reference_run(log=log)
    failures += agreement(exe, dll, reference, "win-amd64 (mingw-w64, wine64)", {}, log=log)
    # the portable copies (what an MSVC build without its SIMD branch would run): mingw-w64's own libm must not
    # leak into the results (its fmaf rounds twice; numerics/blockwise4.h computes the fused step itself)
    failures += agreement(exe, dll, reference, "win-amd64 with KBIT_CPU_BASELINE=1", {"KBIT_CPU_BASELINE": "1"},
                          log=log)
    failures += plain_intrinsics(exe, reference, log=log)
    log(f"smoke-windows: {'ok' if not failures else 'FAILED'} in {time.perf_counter() - start:.1f} s")
    return failures


# MSVC's branch of csrc/cpu/simd4.h (intrinsics in plain functions, the CPU asked through cpuid and xgetbv), built
# by MinGW GCC: GCC needs the ISA flags for intrinsics outside a target attribute, which makes this build for this
# (AVX-512) machine only; it proves the branch compiles and that its CPU detection and copies give Linux's bytes.
PLAIN_FLAGS = "-DKBIT_SIMD_PLAIN_INTRINSICS=1 -mavx2 -mfma -mavx512f -mxsave"


def host_has_avx512f(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU reports avx512f (Linux's /proc/cpuinfo flags)."""
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


def plain_intrinsics(exe: Path, reference: list[str], log=print) -> list[str]:
    """The failures of the plain-intrinsics DLL under wine, with every copy (AVX-512, AVX2, portable) forced."""
    cpu = matrix.load()["cpu"]
    dll = cross_smoke.cmake_build(cpu, "win-amd64-plain", toolchain=cross_smoke.TOOLCHAINS / "mingw-w64-x86_64.cmake",
                                  extra=[f"-DCMAKE_CXX_FLAGS={PLAIN_FLAGS}"], log=log) / \
        matrix.library_filename("cpu", "win-amd64")
    label = f"win-amd64 with MSVC's simd4.h branch (MinGW, {PLAIN_FLAGS.split()[0]})"
    if not host_has_avx512f():
        # -mavx512f lets GCC use AVX-512 anywhere in the DLL, so on this CPU it would die of an illegal instruction
        log(f"{label}: built; not run: this CPU has no avx512f (the build is for AVX-512 machines only)")
        return []
    failures = []
    for copies, env in (("its default copies", {}), ("KBIT_CPU_NO_AVX512=1", {"KBIT_CPU_NO_AVX512": "1"}),
                        ("KBIT_CPU_BASELINE=1", {"KBIT_CPU_BASELINE": "1"})):
        failures += agreement(exe, dll, reference, f"{label}, {copies}", env, log=log)
    return failures


def main() -> int:
    return cross_smoke.main(smoke, (pe_imports.PEError, matrix.MatrixError))


if __name__ == "__main__":
    sys.exit(main())
