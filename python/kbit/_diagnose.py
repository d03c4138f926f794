"""The diagnosis: every known failure pattern that can be detected on this machine, checked in order of
likelihood, each finding with its evidence, its fix and the exit code of its class.

This module owns the checks; they are plain functions of a kbit._report.Report in one ordered tuple
(`CHECKS`). The patterns come from users' failure reports about bitsandbytes-style loaders: a variant for
another CUDA version than torch's, a GPU arch the build does not cover, a driver too old, no driver with a
CUDA torch, a CPU-only torch on a GPU machine, a bad BNB_CUDA_VERSION, a glibc too old for the wheel, a
library that does not load (missing, truncated, foreign, missing runtime DLLs), a stale import after an
upgrade in a running notebook, another quantization package in the same environment, kbit's CPU loops on
threads apart from torch's OpenMP team, and a GPU reached only through PTX JIT. A finding is an `error` (kbit
cannot do what this machine needs: non-zero exit code), a `warning` (kbit works, but something is likely wrong)
or `info`. The checks read typed values only (the
decision's Problem and Coverage, the errors' classes, evidence and fix); they never parse a message.
"""
from __future__ import annotations

from dataclasses import dataclass

from kbit import _abi, _binfile, _errors, _policy
from kbit._facts import cuda_version_text


@dataclass(frozen=True)
class Finding:
    key: str
    severity: str  # error | warning | info
    title: str
    evidence: str
    fix: str
    exit_code: int = 0


def diagnose(report) -> list:
    """Every finding, most likely first (errors before warnings before info, each group in CHECKS order)."""
    found = [f for check in CHECKS for f in check(report)]
    rank = {"error": 0, "warning": 1, "info": 2}
    return sorted(found, key=lambda f: rank[f.severity])


def exit_code(findings: list) -> int:
    """0 when usable, else the exit code of the most likely error."""
    return next((f.exit_code for f in findings if f.severity == "error"), 0)


# ------------------------------------------------------------------------------------------------ checks

def check_override(report) -> list[Finding]:
    err = report.decision_error
    if err is None:
        return []
    if err.is_a(_errors.VariantNotBundledError):
        key, title = "variant_not_bundled", "BNB_CUDA_VERSION names a variant not bundled"
    elif err.is_a(_errors.BadOverrideError):
        key, title = "bad_override", "BNB_CUDA_VERSION is malformed"
    else:
        key, title = "installation_damaged", "kbit's installation cannot be read"
    return [Finding(key, "error", title, err.evidence, err.fix or "reinstall kbit", err.exit_code)]


def check_stale_import(report) -> list[Finding]:
    built = {v.name: v.kbit_version for v in report.facts.variants if v.kbit_version}
    odd = {n: v for n, v in built.items() if v != report.kbit_version}
    if report.installed_version in (None, report.kbit_version) and not odd:
        return []
    evidence = f"the kbit modules in memory are version {report.kbit_version}"
    if report.installed_version not in (None, report.kbit_version):
        evidence += f", but kbit {report.installed_version} is installed on disk now"
    if odd:
        evidence += "; bundled libraries built for " + ", ".join(f"{n}: {v}" for n, v in odd.items())
    return [Finding("stale_import", "error", "kbit was upgraded but this process still runs the old modules",
                    evidence, "restart the Python process (in Jupyter/Colab: restart the kernel/runtime) after "
                    "`pip install -U kbit`; if it persists, pip install --force-reinstall kbit",
                    _errors.StaleImportError.exit_code)]


_PROBLEM_TITLES = {
    _policy.Problem.NO_VARIANT_FOR_MAJOR: ("cuda_version_mismatch",
                                           "no bundled CUDA variant matches torch's CUDA version"),
    _policy.Problem.ARCH_NOT_COVERED: ("arch_not_covered",
                                       "the GPU's compute capability is not covered by any usable variant"),
    _policy.Problem.DRIVER_TOO_OLD: ("driver_too_old",
                                     "the NVIDIA driver is too old for every bundled variant of torch's CUDA"),
    _policy.Problem.NO_DRIVER: ("no_driver", "torch has CUDA but no usable NVIDIA driver was found"),
    _policy.Problem.TORCH_ROCM: ("torch_rocm", "torch is a ROCm build; kbit has no ROCm variant for its GPU tensors"),
    _policy.Problem.TORCH_CUDA_UNREADABLE: ("torch_cuda_unreadable", "torch reports a CUDA version kbit cannot read"),
}


def check_decision(report) -> list[Finding]:
    d = report.decision
    if d is None or d.problem not in _PROBLEM_TITLES:
        return []
    key, title = _PROBLEM_TITLES[d.problem]
    evidence = d.evidence or " ".join(d.warnings or d.reasons)
    return [Finding(key, "error", title, evidence, d.fix or "see the evidence",
                    _policy.PROBLEM_ERRORS[d.problem].exit_code)]


def check_override_contradictions(report) -> list[Finding]:
    d = report.decision
    if d is None or d.source != "override" or not d.warnings:
        return []
    uncovered = [c for c in d.coverage if not c.covered]
    if uncovered:
        return [Finding("arch_not_covered", "error", "BNB_CUDA_VERSION selects a variant that cannot run on this GPU",
                        "; ".join(d.warnings), "unset BNB_CUDA_VERSION to let kbit choose a covering variant",
                        _errors.ArchNotCoveredError.exit_code)]
    return [Finding("override_contradicts_facts", "warning", "BNB_CUDA_VERSION contradicts this machine",
                    "; ".join(d.warnings), "unset BNB_CUDA_VERSION unless you know why it is set")]


def check_cpu_torch_with_gpu(report) -> list[Finding]:
    f = report.facts
    if f.torch.cuda is not None or not f.driver.gpus:
        return []
    gpus = ", ".join(f"{g.name} (sm_{g.sm})" for g in f.driver.gpus)
    return [Finding("cpu_torch_with_gpu", "warning", "torch is a CPU-only build on a machine with an NVIDIA GPU",
                    f"torch {f.torch.version} has torch.version.cuda None; the driver (CUDA "
                    f"{cuda_version_text(f.driver.cuda_version)}) sees {gpus}",
                    "install a CUDA build of torch matching the driver, e.g. pip install torch --index-url "
                    "https://download.pytorch.org/whl/cu126 (see https://pytorch.org/get-started/locally/)")]


def check_glibc(report) -> list[Finding]:
    have = report.facts.host.libc
    if not have:
        return []
    found = []
    for v in report.facts.variants:
        need = _binfile.glibc_needed(v.library) if v.present else None
        if need and _binfile.version_key(need) > _binfile.version_key(have):
            found.append(f"{v.library.name} needs glibc {need}")
    if not found:
        return []
    return [Finding("glibc_too_old", "error", "this system's glibc is older than kbit's libraries need",
                    f"glibc {have} here; " + "; ".join(found),
                    "use a newer distribution (or a container) with that glibc, or build kbit from source here",
                    _errors.GlibcTooOldError.exit_code)]


def check_loads(report) -> list[Finding]:
    found = []
    for r in report.loads:
        if r.error is not None and not r.error.is_a(_errors.GlibcTooOldError):
            found.append(Finding("library_load_failed", "error", f"the {r.variant} library does not load",
                                 r.error.evidence, r.error.fix or "reinstall kbit", r.error.exit_code))
    missing = report.missing_runtime_libraries
    if missing:
        severity = "error" if found else "warning"
        found.append(Finding("runtime_library_missing", severity, "system runtime libraries kbit needs are missing",
                             ", ".join(missing) + " cannot be opened by the system loader",
                             "install them (Linux: the distribution's libstdc++6 package; Windows: the "
                             "Microsoft Visual C++ 2015-2022 Redistributable x64)", _errors.LibraryLoadError.exit_code))
    return found


def check_cuda_library_devices(report) -> list[Finding]:
    d = report.decision
    r = report.load(d.variant) if d is not None and d.variant else None
    if r is None or not r.ok or r.device_status in (None, 0) or report.facts.torch.cuda is None:
        return []
    return [Finding("cuda_library_no_device", "error", f"{r.variant} loaded but cannot use a GPU",
                    f"kbit_device_count returned status {r.device_status}: {r.device_detail}",
                    "see the evidence: install or update the NVIDIA driver, check CUDA_VISIBLE_DEVICES",
                    _errors.DriverNotFoundError.exit_code)]


def check_self_tests(report) -> list[Finding]:
    return [Finding("self_test_failed", "error", f"the {t.backend} round trip gave wrong results", t.detail,
                    "please report this with the output of python -m kbit --json", _errors.SelfTestError.exit_code)
            for t in report.self_tests if t.ok is False]


def check_no_gpu(report) -> list[Finding]:
    f = report.facts
    if f.torch.cuda is None or f.driver.cuda_version is None or f.driver.gpus:
        return []
    visible = f.env.get("CUDA_VISIBLE_DEVICES")
    extra = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return [Finding("no_gpu_visible", "warning", "the NVIDIA driver sees no GPU",
                    ("; ".join(f.driver.errors) or "cuDeviceGetCount returned 0") + extra,
                    "check nvidia-smi and CUDA_VISIBLE_DEVICES")]


def check_conflicting_packages(report) -> list[Finding]:
    if not report.conflicts:
        return []
    pkgs = ", ".join(f"{n} {v}" for n, v in sorted(report.conflicts.items()))
    return [Finding("other_quantization_package", "warning", "another quantization package is installed here", pkgs,
                    "kbit loads only its own libraries by absolute path and links the CUDA runtime statically, so "
                    "they cannot replace kbit's; but they ship CUDA kernels and loaders of their own and often pin "
                    "torch: if anything misbehaves, use a separate virtual environment "
                    "(python -m venv .venv-kbit) for kbit")]


def check_cpu_threads(report) -> list[Finding]:
    """kbit's CPU loops on a team of their own while torch has OpenMP: the two teams compete for the cores (torch's
    idle workers poll after each of its loops), and a kbit call right after a torch op can take twice as long."""
    cpu = report.load("cpu")
    t = cpu.threads if cpu is not None and cpu.ok else None
    if t is None or t.kind != _abi.THREADS_OWN_TEAM or not t.torch_openmp or t.count < 2:
        return []
    return [Finding("cpu_threads_apart", "warning", "kbit's CPU loops do not run on torch's OpenMP threads",
                    f"kbit_cpu_threads: kbit's own team; torch.backends.openmp.is_available() is True; "
                    f"{t.count} threads",
                    "kbit runs its loops on torch's OpenMP team when torch's runtime is in the process's global "
                    "scope (import torch puts it there); here it is not (a process that loaded torch's libraries "
                    "another way, or a forked child). Start the process with OMP_WAIT_POLICY=PASSIVE so that "
                    "torch's idle threads do not hold the cores kbit's loops need")]


def check_ptx_path(report) -> list[Finding]:
    d = report.decision
    if d is None or d.variant is None:
        return []
    jit = [c for c in d.coverage if c.route is _policy.Route.PTX]
    if not jit:
        return []
    return [Finding("ptx_jit", "info", "a GPU runs kbit through PTX JIT compilation",
                    "; ".join(f"GPU {c.gpu}: {c}" for c in jit),
                    "nothing required; the first call per kernel is slower. A kbit build whose variant lists this "
                    "GPU's sm arch runs native SASS")]


def check_toolkit_environment(report) -> list[Finding]:
    env = {k: v for k, v in report.facts.env.items() if k in ("LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH")}
    if not env:
        return []
    return [Finding("toolkit_environment_ignored", "info", "CUDA toolkit variables are set; kbit does not use them",
                    ", ".join(f"{k}={v}" for k, v in env.items()),
                    "nothing required: kbit loads its libraries by absolute path from its package and links the "
                    "CUDA runtime statically; only the driver (libcuda) comes from the system")]


CHECKS = (check_override, check_stale_import, check_decision, check_override_contradictions, check_glibc,
          check_loads, check_cuda_library_devices, check_cpu_torch_with_gpu, check_no_gpu, check_self_tests,
          check_conflicting_packages, check_cpu_threads, check_ptx_path, check_toolkit_environment)
