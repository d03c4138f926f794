"""The full picture of one process for `python -m kbit` and `kbit.show_config()`: facts, decision, load
results and self-tests, as data (kbit._diagnose turns it into findings; kbit.__main__ prints it).

This module owns running the checks that need to act (loading the libraries, asking a CUDA library for its
devices, a quantize/dequantize round trip on each usable backend) and recording every outcome, including
failures, as data. It never raises a kbit error to its caller.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from kbit import _errors, _facts, _native, _policy, _runtime


@dataclass(frozen=True)
class ErrorInfo:
    """A kbit error caught while building the report: its class (`kind`, not in the JSON form), the class
    name, the whole message, its two halves (evidence, fix) and its exit code."""

    type: str
    message: str
    exit_code: int
    evidence: str = ""
    fix: str = ""
    kind: type = field(default=_errors.KbitError, compare=False, metadata={"json": False})

    @classmethod
    def of(cls, exc: _errors.KbitError) -> ErrorInfo:
        return cls(type(exc).__name__, str(exc), exc.exit_code, exc.evidence, exc.fix, type(exc))

    def is_a(self, error_class: type) -> bool:
        return issubclass(self.kind, error_class)


@dataclass(frozen=True)
class CpuThreads:
    """What kbit_cpu_threads said: the kind (kbit._abi.THREADS_*), the OpenMP runtime's file for the host's team,
    torch's thread count (the team size a loop asks for) and whether this torch has OpenMP at all."""

    kind: int
    where: str
    count: int
    torch_openmp: bool


@dataclass(frozen=True)
class LoadResult:
    """Loading one variant's library: its path and build info, or the typed error; for a CUDA library also
    what kbit_device_count said (status 0 and a count, or the library's own "no driver" text)."""

    variant: str
    path: str | None
    error: ErrorInfo | None = None
    build_info: dict | None = None
    device_status: int | None = None
    device_count: int | None = None
    device_detail: str = ""
    threads: CpuThreads | None = None  # the CPU library's: which threads run its loops

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class SelfTest:
    """One round trip; ok is None when it was skipped (detail says why)."""

    backend: str
    ok: bool | None
    detail: str


@dataclass
class Report:
    kbit_version: str
    kbit_path: str
    installed_version: str | None
    facts: _facts.Facts
    decision: _policy.Decision | None
    decision_error: ErrorInfo | None
    loads: list[LoadResult] = field(default_factory=list)
    self_tests: list[SelfTest] = field(default_factory=list)
    conflicts: dict[str, str] = field(default_factory=dict)
    missing_runtime_libraries: tuple[str, ...] = ()
    findings: list = field(default_factory=list)

    def load(self, variant: str) -> LoadResult | None:
        return next((r for r in self.loads if r.variant == variant), None)


# packages that ship their own quantization CUDA kernels and loaders (the seeds' "conflicting package" case)
QUANTIZATION_PACKAGES = ("bitsandbytes", "auto-gptq", "auto_gptq", "gptqmodel", "autoawq", "autoawq-kernels",
                         "optimum-quanto", "exllamav2", "hqq", "torchao", "llmcompressor", "quanto")


def build(*, self_test: bool = True) -> Report:
    """Everything about this process; failures are recorded, never raised."""
    import kbit

    decision, decision_error = None, None
    try:
        facts = _runtime.facts(probe_driver=True)
        decision = _policy.decide(facts, _runtime.override())
    except _errors.KbitError as exc:  # a bad override, or a damaged manifest (then no variant is known)
        decision_error = ErrorInfo.of(exc)
        facts = _facts_without_variants()
    report = Report(kbit.__version__, _native.package_dir(), _installed_version(), facts, decision, decision_error)
    report.loads.append(_load("cpu"))
    if decision is not None and decision.variant is not None:
        report.loads.append(_load(decision.variant))
    if self_test:
        report.self_tests = _self_tests(report)
    report.conflicts = _installed_packages(QUANTIZATION_PACKAGES)
    report.missing_runtime_libraries = _missing_runtime_libraries()
    from kbit import _diagnose

    report.findings = _diagnose.diagnose(report)
    return report


def _facts_without_variants() -> _facts.Facts:
    from kbit import _platform

    platform = _platform.current()
    return _facts.Facts(_facts.gather_host(platform), _facts.gather_torch(), _facts.gather_driver(platform), (),
                        _facts.gather_env())


def _installed_version() -> str | None:
    """The version of kbit installed on disk now (it differs from kbit.__version__ after an in-process upgrade)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("kbit")
    except importlib.metadata.PackageNotFoundError:
        return None


def _installed_packages(names: tuple[str, ...]) -> dict[str, str]:
    import importlib.metadata

    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _missing_runtime_libraries() -> tuple[str, ...]:
    from kbit import _platform

    platform = _platform.current()
    return tuple(name for name in platform.runtime_libraries() if not platform.find_system_library(name))


def _load(variant: str) -> LoadResult:
    path = _native.expected_library_path(variant)
    try:
        lib = _native.library(variant)
    except _errors.KbitError as exc:
        return LoadResult(variant, str(path) if path else None, ErrorInfo.of(exc))
    if variant == "cpu":
        return LoadResult(variant, str(lib.path), build_info=lib.build_info, threads=_cpu_threads(lib))
    count = ctypes.c_int32(-1)
    status = lib.handle.kbit_device_count(ctypes.byref(count))
    detail = lib.handle.kbit_last_error().decode("utf-8", "replace") if status else ""
    return LoadResult(variant, str(lib.path), build_info=lib.build_info, device_status=status,
                      device_count=count.value, device_detail=detail)


def _cpu_threads(lib) -> CpuThreads | None:
    import torch

    try:
        kind, where = _native.cpu_threads(lib)
    except _errors.KbitError:
        return None
    return CpuThreads(kind, where, torch.get_num_threads(), torch.backends.openmp.is_available())


# ---------------------------------------------------------------------------------------------- self-test

def _self_tests(report: Report) -> list[SelfTest]:
    tests = [_round_trip_test("cpu", "cpu") if report.load("cpu").ok else
             SelfTest("cpu", None, "the CPU library did not load")]
    variant = report.decision.variant if report.decision else None
    if variant is None:
        tests.append(SelfTest("cuda", None, "no CUDA variant serves CUDA tensors here"))
    elif not report.load(variant).ok:
        tests.append(SelfTest(variant, None, f"{variant} did not load"))
    elif not _torch_cuda_usable():
        tests.append(SelfTest(variant, None, "torch.cuda.is_available() is False (no CUDA tensors)"))
    else:
        tests.append(_round_trip_test(variant, "cuda"))
    return tests


def _torch_cuda_usable() -> bool:
    import torch

    return torch.version.cuda is not None and torch.cuda.is_available()


def _round_trip_test(backend: str, device: str) -> SelfTest:
    try:
        return SelfTest(backend, True, round_trip(device))
    except _errors.SelfTestError as exc:
        return SelfTest(backend, False, str(exc))
    except _errors.KbitError as exc:
        return SelfTest(backend, False, f"{type(exc).__name__}: {exc}")


def round_trip(device: str) -> str:
    """Quantize and dequantize on `device`: values of the map itself (times 3) must come back exactly, random
    values within the map's reach (half its largest gap, or its distance to +-1) times the block's absmax, and on
    CUDA the codes must equal the CPU library's. Raises SelfTestError with the numbers when not."""
    import torch

    from kbit import functional as F

    code = F.create_dynamic_map(True)
    exact = code * 3.0
    codes, state = F.quantize_blockwise(exact.to(device), blocksize=256)
    back = F.dequantize_blockwise(codes, state).cpu()
    if not torch.equal(back, exact):
        wrong = int((back != exact).sum())
        raise _errors.SelfTestError(f"{device}: {wrong} of 256 map values did not survive the round trip exactly")
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    codes, state = F.quantize_blockwise(x.to(device), blocksize=256)
    back = F.dequantize_blockwise(codes, state).cpu()
    # normalized values lie in [-1, 1]: the nearest code is within half the largest gap, or within the distance
    # from an end of [-1, 1] to the map's extreme value (the signed map stops at -0.993)
    reach = max(float((code[1:] - code[:-1]).max()) / 2, float(code.min()) + 1, 1 - float(code.max()))
    bound = (reach * (1 + 1e-5)) * state.absmax.cpu().repeat_interleave(256)
    err = (back - x).abs()
    if bool((err > bound).any()):
        raise _errors.SelfTestError(f"{device}: round-trip error {float(err.max()):.3g} exceeds the bound")
    if device != "cpu":
        cpu_codes, _ = F.quantize_blockwise(x, blocksize=256)
        if not torch.equal(codes.cpu(), cpu_codes):
            raise _errors.SelfTestError(f"{device}: codes differ from the CPU library's in "
                                        f"{int((codes.cpu() != cpu_codes).sum())} of 4096 places")
        return "256 map values exact, 4096 random values within bound, codes equal to the CPU library's"
    return f"256 map values exact, 4096 random values within bound (max error {float(err.max()):.3g})"
