"""`python -m kbit` and kbit.show_config(): the real machine in a subprocess (text, JSON, exit codes), and
simulated machines end to end in-process (fake driver through the platform layer, fake torch CUDA version,
fake bundles), one per failure pattern of the users' reports that a machine can show."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

import kbit
from kbit import __main__ as cli
from kbit import _facts, _native, _platform, _report, _runtime

from conftest import bundled_cuda_variants
from helpers import FakeCuda, FakeDriverPlatform, cuda_manifest

SECTIONS = ["kbit: ", "platform: ", "glibc: ", "python: ", "torch: ", "driver: ", "gpus: ", "bundled variants:",
            "decision: ", "load:", "self-test:", "diagnosis:", "result: "]


def exit_code_here() -> tuple[int, str]:
    """What `python -m kbit` must exit with on this machine, and the words of its diagnosis: 0 with a CPU-only
    torch; under a CUDA torch, 5 when the package bundles no variant of torch's CUDA major (as after
    `pip install .`), 8 when it does but there is no driver, else 0."""
    import ctypes

    import torch

    if torch.version.cuda is None:
        return 0, "result: usable"
    major = torch.version.cuda.split(".")[0]
    if not any(v.startswith(f"cuda{major}") for v in bundled_cuda_variants()):
        return 5, "no bundled CUDA variant matches torch's CUDA version"
    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return 8, "no usable NVIDIA driver was found"
    return 0, "result: usable"


def kbit_cli(*args, env=None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "BNB_CUDA_VERSION"}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "kbit", *args], capture_output=True, text=True, env=environ)


def test_text_report_on_this_machine():
    done = kbit_cli()
    code, words = exit_code_here()
    assert done.returncode == code, done.stdout + done.stderr
    positions = [done.stdout.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert "cpu: ok" in done.stdout and "self-test:\n  cpu: ok: 256 map values exact" in done.stdout
    assert words in done.stdout and f"(exit code {code})" in done.stdout and done.stderr == ""


def test_a_stream_that_cannot_encode_the_report_still_gets_the_diagnosis():
    # e.g. a Windows console or a redirected file in cp1252; here: ASCII stdout and Arabic-Indic digits
    done = kbit_cli("--no-self-test", env={"PYTHONIOENCODING": "ascii", "BNB_CUDA_VERSION": "\u0661\u0662\u0664"})
    assert done.returncode == 3, done.stdout + done.stderr
    assert "\\u0661\\u0662\\u0664" in done.stdout and "BNB_CUDA_VERSION is malformed" in done.stdout
    assert "Traceback" not in done.stderr


def test_json_report_on_this_machine():
    report = json.loads(kbit_cli("--json").stdout)
    code, _ = exit_code_here()
    assert report["usable"] is (code == 0) and report["exit_code"] == code
    assert {"facts", "decision", "loads", "self_tests", "findings"} <= report.keys()
    assert report["facts"]["torch"]["version"] and report["facts"]["host"]["python"] == sys.version.split()[0]
    assert report["loads"][0]["variant"] == "cpu" and report["loads"][0]["error"] is None
    assert report["self_tests"][0] == {"backend": "cpu", "ok": True, "detail": report["self_tests"][0]["detail"]}


@pytest.mark.parametrize("value, code, words", [
    ("abc", 3, "BNB_CUDA_VERSION is malformed"), ("12.4/..", 3, "BNB_CUDA_VERSION is malformed"),
    ("125", 4, "names a variant not bundled")])  # CUDA 12.5: a valid version no wheel bundles
def test_bad_overrides_exit_with_their_code(value, code, words):
    done = kbit_cli(env={"BNB_CUDA_VERSION": value})
    assert done.returncode == code and words in done.stdout and f"(exit {code})" in done.stdout
    assert json.loads(kbit_cli("--json", env={"BNB_CUDA_VERSION": value}).stdout)["exit_code"] == code


def test_show_config_prints_and_returns_the_exit_code(capsys):
    code, _ = exit_code_here()
    assert kbit.show_config(self_test=False) == code
    out = capsys.readouterr().out
    assert "decision: " in out and "self-test:" in out
    assert kbit.show_config(json=True, self_test=False) == code
    assert json.loads(capsys.readouterr().out)["usable"] is (code == 0)


# ---------------------------------------------------------------------------------- simulated machines

def manifest(variant, toolkit, sass, min_driver="550.54.14"):
    return cuda_manifest(variant, toolkit, sass, min_driver)


BUNDLES = {
    "cuda118": manifest("cuda118", "11.8.89", (50, 60, 70, 75, 80, 86, 89, 90), "520.61.05"),
    "cuda124": manifest("cuda124", "12.4.131", (50, 60, 70, 75, 80, 86, 89, 90)),
    "cuda128": manifest("cuda128", "12.8.93", (70, 75, 80, 86, 89, 90, 100, 120), "570.26"),
    "cuda130": manifest("cuda130", "13.0.88", (75, 80, 86, 89, 90, 100, 120), "580.65.06"),
}


@pytest.fixture
def simulate(monkeypatch, capsys):
    """simulate(torch_cuda, driver_version or None, gpus, bundle, ...) -> (exit code, text, findings keys)."""
    real_manifests, real_load = _native.bundled_manifests, _report._load

    def fake_load(variant):
        if variant == "cpu":
            return real_load("cpu")
        return _report.LoadResult(variant, f"/sim/libkbit_{variant}.so", build_info=BUNDLES[variant], device_status=0,
                                  device_count=1)

    def run(torch_cuda, driver, gpus=((8, 9),), bundle=("cuda124", "cuda128", "cuda130"), *, libc="2.36",
            override=None, packages=None, installed=None, fail=None):
        devices = tuple((f"Sim GPU sm_{a}{b}", a, b) for a, b in gpus)
        fake = None if driver is None else FakeCuda(version=driver, devices=devices, fail=fail)
        monkeypatch.setattr(_facts, "gather_torch", lambda: _facts.TorchFacts(
            f"2.13.0+{'cu' + torch_cuda.replace('.', '') if torch_cuda else 'cpu'}", torch_cuda))
        monkeypatch.setattr(_native, "bundled_manifests",
                            lambda: {**{k: BUNDLES[k] for k in bundle}, "cpu": real_manifests()["cpu"]})
        monkeypatch.setattr(_report, "_load", fake_load)
        monkeypatch.setattr(_report, "_installed_packages", lambda names: packages or {})
        monkeypatch.setattr(_report, "_installed_version", lambda: installed or kbit.__version__)
        if override is None:
            monkeypatch.delenv("BNB_CUDA_VERSION", raising=False)
        else:
            monkeypatch.setenv("BNB_CUDA_VERSION", override)
        _runtime.reset()
        try:
            with _platform.use(FakeDriverPlatform(fake, libc)):
                code = cli.main([])
                text = capsys.readouterr().out
                cli.main(["--json", "--no-self-test"])
                report = json.loads(capsys.readouterr().out)
        finally:
            _runtime.reset()
        assert report["exit_code"] == code
        return code, text, [f["key"] for f in report["findings"]]
    return run


def test_torch126_driver124_sm89_chooses_cuda124_and_says_why(simulate):
    code, text, keys = simulate("12.6", 12040, [(8, 9)])
    assert code == 0 and keys == []
    assert "decision: CUDA tensors -> cuda124 (default); CPU tensors -> cpu" in text
    assert "reason: not cuda128: cuda128 is built with CUDA 12.8, but the driver supports CUDA 12.4" in text
    assert "gpu 0: SASS sm_89" in text and "driver: CUDA 12.4" in text
    assert "0: Sim GPU sm_89, compute capability 8.9 (sm_89)" in text
    assert "cuda124   CUDA 12.4.131  SASS sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_89 sm_90, PTX compute_90" in text


def test_sm120_with_only_pre_128_variants_takes_the_ptx_path(simulate):
    code, text, keys = simulate("12.4", 12080, [(12, 0)], ("cuda118", "cuda124"))
    assert code == 0 and keys == ["ptx_jit"]
    assert "decision: CUDA tensors -> cuda124" in text and "gpu 0: PTX compute_90 (JIT-compiled" in text


@pytest.mark.parametrize("args, code, key, words", [
    (("12.6", 12020), 7, "driver_too_old", "update the NVIDIA driver"),
    (("12.1", 12080, [(8, 9)], ("cuda118", "cuda130")), 5, "cuda_version_mismatch", "bundles none"),
    (("12.6", 12080, [(3, 5)]), 6, "arch_not_covered", "older than every bundled variant"),
    (("13.0", 13000, [(7, 0)]), 6, "arch_not_covered", "covers neither"),
    (("12.6", None), 8, "no_driver", "install the NVIDIA driver"),
])
def test_each_machine_level_failure_has_its_finding_fix_and_exit_code(simulate, args, code, key, words):
    got, text, keys = simulate(*args)
    assert got == code and keys[0] == key and words in text
    assert "1. [error]" in text and f"(exit {code})" in text and "fix: " in text


def test_cpu_torch_on_a_gpu_machine_is_a_warning_with_the_install_command(simulate):
    code, text, keys = simulate(None, 12080, [(8, 9)])
    assert code == 0 and keys == ["cpu_torch_with_gpu"]
    assert "download.pytorch.org/whl/cu" in text and "decision: CUDA tensors -> none" in text


def test_another_quantization_package_is_reported(simulate):
    code, text, keys = simulate("12.6", 12080, packages={"auto-gptq": "0.7.1", "bitsandbytes": "0.43.3"})
    assert code == 0 and keys == ["other_quantization_package"]
    assert "auto-gptq 0.7.1, bitsandbytes 0.43.3" in text and "separate virtual environment" in text


def test_a_stale_import_after_an_upgrade_says_restart(simulate):
    code, text, keys = simulate("12.6", 12080, installed="9.9.9")
    assert code == 14 and keys == ["stale_import"]
    assert "kbit 9.9.9 is installed on disk now" in text and "restart the kernel" in text


def test_glibc_too_old_for_the_bundled_libraries(simulate):
    from kbit import _binfile

    need = _binfile.glibc_needed(_native.cpu().path)
    code, text, keys = simulate(None, None, libc="2.2")
    assert code == 9 and keys[0] == "glibc_too_old" and f"libkbit_cpu.so needs glibc {need}" in text


def test_an_override_against_torch_is_honoured_with_a_warning(simulate):
    code, text, keys = simulate("12.6", 13000, override="130")
    assert code == 0 and keys == ["override_contradicts_facts"]
    assert "decision: CUDA tensors -> cuda130 (override)" in text and "kbit's default would pick a CUDA 12" in text


def test_an_override_onto_an_uncovered_gpu_is_an_error(simulate):
    code, text, keys = simulate("12.6", 13000, [(7, 0)], override="130")
    assert code == 6 and keys[0] == "arch_not_covered"


def test_no_gpu_visible_is_a_warning(simulate, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    code, text, keys = simulate("12.6", 12080, [])
    assert code == 0 and keys == ["no_gpu_visible"]
    assert "     evidence: cuDeviceGetCount returned 0\n" in text


def test_an_empty_cuda_visible_devices_is_in_the_evidence_beside_the_drivers_error(simulate, monkeypatch):
    """CUDA_VISIBLE_DEVICES="" makes cuInit fail with CUDA_ERROR_NO_DEVICE: both facts are the evidence."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code, text, keys = simulate("12.6", 12080, [], fail={"cuInit": 100})
    assert code == 0 and keys == ["no_gpu_visible"]
    assert "evidence: cuInit: CUDA_ERROR_NO_DEVICE (100); CUDA_VISIBLE_DEVICES=''" in text


def test_the_runtime_refuses_a_cuda_tensor_on_an_uncovered_gpu_under_override(monkeypatch):
    monkeypatch.setattr(_facts, "gather_torch", lambda: _facts.TorchFacts("2.13.0+cu126", "12.6"))
    monkeypatch.setattr(_native, "bundled_manifests", lambda: {"cuda130": BUNDLES["cuda130"]})
    monkeypatch.setattr(_native, "library", lambda variant: f"<{variant}>")
    monkeypatch.setenv("BNB_CUDA_VERSION", "130")
    _runtime.reset()
    try:
        with _platform.use(FakeDriverPlatform(FakeCuda(13000, (("Sim A", 8, 9), ("Sim V100", 7, 0))))):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert _runtime.cuda_library(0, "A") == "<cuda130>"
            texts = [str(w.message) for w in caught if w.category is kbit.KbitWarning]
            assert len(texts) == 2 and "CUDA 12.6" in texts[0] and "covers neither" in texts[1]
            with pytest.raises(kbit.ArchNotCoveredError, match=r"A is on cuda:1, GPU Sim V100 \(sm_70\)"):
                _runtime.cuda_library(1, "A")
    finally:
        _runtime.reset()


def test_the_default_decision_with_a_gpu_serves_it(monkeypatch):
    monkeypatch.setattr(_facts, "gather_torch", lambda: _facts.TorchFacts("2.13.0+cu126", "12.6"))
    monkeypatch.setattr(_native, "bundled_manifests", lambda: {k: BUNDLES[k] for k in ("cuda124", "cuda128")})
    monkeypatch.setattr(_native, "library", lambda variant: f"<{variant}>")
    monkeypatch.delenv("BNB_CUDA_VERSION", raising=False)
    _runtime.reset()
    try:
        with _platform.use(FakeDriverPlatform(FakeCuda(12040, (("Sim 4090", 8, 9),)))):
            assert _runtime.cuda_library(0, "A") == "<cuda124>"
        with _platform.use(FakeDriverPlatform(FakeCuda(12020, (("Sim 4090", 8, 9),)))):
            _runtime.reset()
            with pytest.warns(kbit.KbitWarning), pytest.raises(kbit.DriverTooOldError, match="A is on cuda:0"):
                _runtime.cuda_library(0, "A")
    finally:
        _runtime.reset()
