"""The selection policy (kbit._policy.decide) as one table of cases: simulated machines and bundles, with the
expected variant (or typed error), the failure class and words the reasons or warnings must contain."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import kbit
from kbit import _policy
from kbit._facts import NOT_PROBED, DriverFacts, Facts, Gpu, Host, TorchFacts, Variant


def variant(name: str, toolkit: str | None, sass=(), ptx=None, min_driver=None) -> Variant:
    tk = tuple(int(p) for p in toolkit.split(".")[:2]) if toolkit else None
    return Variant(name=name, backend="cuda" if toolkit else "cpu", toolkit=tk, toolkit_text=toolkit, sass=tuple(sass),
                   ptx=ptx, min_driver=min_driver, kbit_version="0.1.0", library=Path(f"/pkg/libkbit_{name}.so"),
                   present=True)


CPU = variant("cpu", None)
CU118 = variant("cuda118", "11.8.89", (50, 60, 70, 75, 80, 86, 89, 90), 90, "520.61.05")
CU124 = variant("cuda124", "12.4.131", (50, 60, 70, 75, 80, 86, 89, 90), 90, "550.54.14")
CU128 = variant("cuda128", "12.8.93", (70, 75, 80, 86, 89, 90, 100, 120), 120, "570.26")
CU130 = variant("cuda130", "13.0.88", (75, 80, 86, 89, 90, 100, 120), 120, "580.65.06")
CU126_80 = variant("cuda126", "12.6.85", (80,), 80)
ALL = (CPU, CU118, CU124, CU128, CU130)
PRE_128 = (CPU, CU118, CU124)
BUNDLED_TEXT = "cpu, cuda118, cuda124, cuda128, cuda130"


def machine(torch_cuda: str | None = "12.6", driver: tuple[int, int] | str | None = (12, 8), gpus=(89,),
            variants=ALL) -> Facts:
    """driver: (major, minor), "missing" (no libcuda), "unprobed", or None (libcuda without a version)."""
    cards = tuple(Gpu(i, f"GPU sm_{sm}", (sm // 10, sm % 10)) for i, sm in enumerate(gpus))
    if driver == "missing":
        drv = DriverFacts("not_found", "libcuda.so.1", errors=("open: libcuda.so.1: cannot open shared object file",))
    elif driver == "unprobed":
        drv = NOT_PROBED
    elif driver is None:
        drv = DriverFacts("error", "libcuda.so.1", errors=("cuDriverGetVersion: CUDA_ERROR_STUB_LIBRARY (34)",))
    else:
        drv = DriverFacts("ok", "libcuda.so.1", driver, cards if driver else ())
    torch = TorchFacts(f"2.13.0+{'cu' + torch_cuda.replace('.', '') if torch_cuda else 'cpu'}", torch_cuda)
    return Facts(Host("Linux", "x86_64", "2.36", "3.11", "linux"), torch, drv, tuple(variants))


# id, facts, BNB_CUDA_VERSION, expected variant (or error class), failure class, words in reasons+warnings
CASES = [
    ("rocm-torch", dataclasses.replace(machine(None), torch=TorchFacts("2.13.0+rocm6.4", None, "6.4.1")), None, None,
     "torch_rocm", ["ROCm build (HIP 6.4.1)", "NVIDIA CUDA variants only"]),
    ("unreadable-torch-cuda", machine("12.x"), None, None, "torch_cuda_unreadable", ["CUDA '12.x'", "reinstall torch"]),
    ("torch126-driver128-sm89", machine(), None, "cuda128", None, ["newest toolkit first", "GPU 0 runs SASS sm_89"]),
    ("torch126-driver124-sm89", machine(driver=(12, 4)), None, "cuda124", None,
     ["not cuda128", "driver supports CUDA 12.4", "minor-version compatibility", "GPU 0 runs SASS sm_89"]),
    ("same-major-only", machine(driver=(13, 0)), None, "cuda128", None, ["candidates are the CUDA 12 variants"]),
    ("torch130-sm120", machine("13.0", (13, 0), (120,)), None, "cuda130", None, ["SASS sm_120"]),
    ("sm120-pre128-ptx", machine("12.4", (12, 4), (120,), PRE_128), None, "cuda124", None,
     ["PTX compute_90", "JIT-compiled"]),
    ("sm120-pre128-new-driver", machine("12.8", (12, 8), (120,), PRE_128), None, "cuda124", None, ["PTX compute_90"]),
    ("sm120-driver124-128-bundled", machine("12.8", (12, 4), (120,)), None, "cuda124", None,
     ["not cuda128", "PTX compute_90"]),
    ("torch118-sm86", machine("11.8", (12, 4), (86,)), None, "cuda118", None, ["SASS sm_86"]),
    ("driver-too-old", machine(driver=(12, 2)), None, None, "driver_too_old",
     ["driver supports CUDA 12.2", "update the NVIDIA driver", ">= 550.54.14"]),
    ("kepler-sm35", machine(driver=(12, 8), gpus=(35,)), None, None, "arch_not_covered",
     ["sm_35", "older than every bundled variant"]),
    ("cuda13-dropped-sm70", machine("13.0", (13, 0), (70,)), None, None, "arch_not_covered",
     ["GPU 0 GPU sm_70 (sm_70)", "covers neither"]),
    ("binary-compatible-sass", machine("12.6", (12, 6), (86,), (CPU, CU126_80)), None, "cuda126", None,
     ["SASS sm_80 (binary compatible with sm_86)"]),
    ("sm87-jetson-compatible", machine("12.6", (12, 6), (87,), (CPU, CU126_80)), None, "cuda126", None,
     ["binary compatible with sm_87"]),
    ("sm75-older-than-sass80", machine("12.6", (12, 6), (75,), (CPU, CU126_80)), None, None, "arch_not_covered",
     ["covers neither"]),
    ("two-gpus-need-128", machine(gpus=(89, 120)), None, "cuda128", None, ["GPU 1 runs SASS sm_120"]),
    ("two-gpus-driver124", machine(driver=(12, 4), gpus=(89, 120)), None, "cuda124", None,
     ["GPU 0 runs SASS sm_89", "GPU 1 runs PTX compute_90"]),
    ("no-variant-for-torch-major", machine("12.1", (12, 4), (89,), (CPU, CU118, CU130)), None, None,
     "no_variant_for_major", ["bundles none", "cuda118, cuda130", "BNB_CUDA_VERSION"]),
    ("torch-cpu-only", machine(None), None, None, "torch_cpu_only", ["CPU-only build"]),
    ("torch-cpu-only-with-gpu", machine(None, (12, 8), (89,)), None, None, "torch_cpu_only", ["CPU-only build"]),
    ("torch-cuda-no-driver", machine(driver="missing"), None, None, "no_driver",
     ["no usable NVIDIA driver", "cannot open shared object file", "install the NVIDIA driver"]),
    ("driver-without-version", machine(driver=None), None, None, "no_driver", ["CUDA_ERROR_STUB_LIBRARY"]),
    ("driver-no-gpu", machine(driver=(12, 8), gpus=()), None, "cuda128", None, ["the driver reports no GPU"]),
    ("driver-unprobed", machine(driver="unprobed"), None, "cuda128", None, ["the driver was not asked"]),
    ("override-124", machine(), "124", "cuda124", None, ["BNB_CUDA_VERSION=124 selects cuda124"]),
    ("override-12.4", machine(), "12.4", "cuda124", None, ["BNB_CUDA_VERSION=12.4 selects cuda124"]),
    ("override-cpu", machine(), "cpu", None, "override_cpu", ["turns kbit's CUDA support off"]),
    ("override-CPU-uppercase", machine(), "CPU", None, "override_cpu", ["no CUDA variant"]),
    ("override-cpu-on-cpu-torch", machine(None), "cpu", None, "override_cpu", ["no CUDA variant"]),
    ("override-other-major", machine(), "130", "cuda130", None, ["kbit's default would pick a CUDA 12 variant"]),
    ("override-without-torch-cuda", machine(None, "missing"), "13.0", "cuda130", None,
     ["CPU-only build", "no NVIDIA driver was found"]),
    ("override-driver-too-old", machine(driver=(12, 4)), "128", "cuda128", None, ["driver supports CUDA 12.4"]),
    ("override-arch-not-covered", machine("11.8", (12, 4), (35,)), "118", "cuda118", None,
     ["GPU 0 GPU sm_35 (sm_35)", "covers neither"]),
    ("override-ptx-covers-newer-gpu", machine("11.8", (12, 4), (120,)), "118", "cuda118", None,
     ["GPU 0 runs PTX compute_90 (JIT-compiled by the driver for sm_120"]),
    ("override-not-bundled", machine(), "125", kbit.VariantNotBundledError, None, ["cuda125", BUNDLED_TEXT]),
    ("override-not-bundled-dotted", machine(), "12.10", kbit.VariantNotBundledError, None, ["cuda1210"]),
    ("override-not-bundled-cpu-torch", machine(None), "126", kbit.VariantNotBundledError, None, [BUNDLED_TEXT]),
]
BAD_OVERRIDES = ["abc", "cuda124", "12.4.1", "12,4", "1", "12", "../124", "/usr/lib/libkbit_cuda124.so", "./124",
                 "", " ", " 124", "124 ", "12.4\n", "1" * 10_000, "-124", "1e2", "12.", ".4", "12.4a", "１２４",
                 "0124", "01.24", "12.04", "1204", "00.0"]


def _text(decision) -> str:
    return " ".join(decision.reasons + decision.warnings)


@pytest.mark.parametrize("facts, override, expected, problem, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_policy_table(facts, override, expected, problem, words):
    if isinstance(expected, type):
        with pytest.raises(expected) as info:
            _policy.decide(facts, override)
        text = str(info.value)
    else:
        decision = _policy.decide(facts, override)
        assert decision.variant == expected, _text(decision)
        assert decision.problem == problem
        assert decision.source == ("override" if override is not None else "default")
        text = _text(decision)
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"


@pytest.mark.parametrize("value", BAD_OVERRIDES, ids=lambda v: repr(v[:12]))
@pytest.mark.parametrize("torch_cuda", ["12.6", None])
def test_malformed_overrides_are_refused_listing_the_bundle(value, torch_cuda):
    with pytest.raises(kbit.BadOverrideError) as info:
        _policy.decide(machine(torch_cuda), value)
    text = str(info.value)
    assert BUNDLED_TEXT in text and "fix:" in text and len(text) < 600
    assert info.value.exit_code == 3 and isinstance(info.value, ValueError)


def test_the_cpu_only_fallback_is_one_warning_saying_why_and_what_to_install():
    decision = _policy.decide(machine(driver=(12, 2)))
    assert len(decision.warnings) == 1
    assert "fix:" in decision.warnings[0] and "CUDA tensors cannot be served" in decision.warnings[0]
    assert [r.variant for r in decision.rejected] == ["cuda128", "cuda124"]


def test_a_consistent_override_has_no_warning():
    assert _policy.decide(machine(driver=(12, 8)), "128").warnings == ()


def test_no_cuda_torch_without_override_has_no_warning_even_with_a_gpu():
    assert _policy.decide(machine(None, (12, 8), (89,))).warnings == ()


@pytest.mark.parametrize("problem, error", [
    ("driver_too_old", kbit.DriverTooOldError), ("arch_not_covered", kbit.ArchNotCoveredError),
    ("no_variant_for_major", kbit.CudaVersionMismatchError), ("no_driver", kbit.DriverNotFoundError),
    ("torch_cpu_only", kbit.BackendUnavailableError), ("override_cpu", kbit.BackendUnavailableError)])
def test_each_failure_class_has_its_typed_error(problem, error):
    decision = _policy.Decision(None, "default", ("why",), ("what happened. fix: this",), problem=_policy.Problem(problem),
                                evidence="what happened.", fix="this")
    assert type(decision.error()) is error and "fix: this" in str(decision.error())
    assert decision.error().fix == "this" and decision.error().evidence == "what happened."


def test_every_failure_class_has_its_own_exit_code():
    classes = [kbit.BadOverrideError, kbit.VariantNotBundledError, kbit.CudaVersionMismatchError,
               kbit.ArchNotCoveredError, kbit.DriverTooOldError, kbit.DriverNotFoundError, kbit.GlibcTooOldError,
               kbit.LibraryLoadError, kbit.AbiMismatchError, kbit.SelfTestError, kbit.BackendUnavailableError,
               kbit.StaleImportError]
    codes = [c.exit_code for c in classes]
    assert len(set(codes)) == len(codes) and 0 not in codes and 2 not in codes  # 2 is argparse's usage error


@pytest.mark.parametrize("value, name", [("124", "cuda124"), ("12.4", "cuda124"), ("118", "cuda118"),
                                         ("13.0", "cuda130"), ("130", "cuda130"), ("1210", "cuda1210"),
                                         ("12.10", "cuda1210"), ("cpu", "cpu"), ("Cpu", "cpu"), (None, None)])
def test_override_forms(value, name):
    assert _policy.parse_override(value, ("cpu",)) == name


def test_the_decision_reads_only_its_arguments(monkeypatch):
    """No environment, file, library or subprocess is consulted: a BNB_CUDA_VERSION in the environment and
    refusing every I/O entry point change nothing; only the `override` argument does."""
    import builtins
    import ctypes
    import subprocess

    facts = machine(driver=(12, 4), gpus=(89, 120))
    monkeypatch.setenv("BNB_CUDA_VERSION", "118")

    def refuse(*args, **kwargs):
        raise AssertionError(f"decide() did I/O: {args[:1]}")

    for owner, name in ((builtins, "open"), (ctypes, "CDLL"), (subprocess, "run"), (subprocess, "Popen")):
        monkeypatch.setattr(owner, name, refuse)
    decision = _policy.decide(facts)
    assert decision.variant == "cuda124" and decision.problem is None
    assert [(c.gpu, c.route, c.arch) for c in decision.coverage] == [(0, _policy.Route.SASS, 89),
                                                                     (1, _policy.Route.PTX, 90)]
    assert _policy.decide(facts, "118").variant == "cuda118"


def test_a_failure_keeps_its_evidence_and_fix_apart_and_the_diagnosis_reads_them():
    """The diagnosis takes the decision's typed fields, not its text: a reworded warning changes nothing."""
    from kbit import _diagnose

    decision = _policy.decide(machine(driver=(12, 2)))
    assert decision.problem is _policy.Problem.DRIVER_TOO_OLD
    assert decision.warnings == (f"{decision.evidence} fix: {decision.fix}",) and decision.fix.startswith("update")
    reworded = dataclasses.replace(decision, warnings=("something else entirely",))
    report = type("R", (), {"decision": reworded})()
    (finding,) = _diagnose.check_decision(report)
    assert (finding.key, finding.evidence, finding.fix) == ("driver_too_old", decision.evidence, decision.fix)
    error = reworded.error()
    assert isinstance(error, kbit.DriverTooOldError) and (error.evidence, error.fix) == (decision.evidence, decision.fix)
