"""The GPU bench's logic that needs no GPU: verdicts against issue 10's targets, fractions of copy bandwidth,
the table, and the clear stop of `--device cuda` on a machine without a GPU."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ci import bench

from conftest import ROOT


def rows(**overrides) -> list[bench.CudaRow]:
    """Figures of a plausible H200 run; each keyword replaces one row's (median_ms, gbps)."""
    base = {
        "copy_ fp16 (preallocated)": (0.07, 3800.0, None, None),
        "quantize_blockwise fp16 (8-bit, bs 4096)": (0.09, 2200.0, None, None),
        "dequantize_blockwise fp16 (8-bit, bs 4096)": (0.07, 2900.0, None, None),
        "F.linear fp16 dense 4096x4096": (0.012, 2800.0, None, None),
        "gemv_4bit fp16 batch 1 4096x4096": (0.004, 2500.0, "F.linear fp16 dense 4096x4096", 0.012),
        "torch.optim.AdamW(fused=True) step fp32": (0.20, 2300.0, None, None),
        "AdamW8bit step fp32": (0.11, 2400.0, "torch.optim.AdamW(fused=True) step fp32", 0.20),
    }
    base.update(overrides)
    out = [bench.CudaRow(name, ms, gbps, None, "", baseline or "", baseline_ms)
           for name, (ms, gbps, baseline, baseline_ms) in base.items()]
    bench.cuda_fractions(out, out[0].gbps)
    bench.cuda_judge(out)
    return out


def by_name(found: list[bench.CudaRow]) -> dict[str, bench.CudaRow]:
    return {r.operation: r for r in found}


def test_targets_met_on_good_figures():
    found = by_name(rows())
    assert found["dequantize_blockwise fp16 (8-bit, bs 4096)"].verdict == "met"  # 2900 / 3800 = 76% >= 70%
    assert found["quantize_blockwise fp16 (8-bit, bs 4096)"].verdict == "met"    # 58% >= 50%
    assert found["gemv_4bit fp16 batch 1 4096x4096"].verdict == "met"            # 3.0x >= 2.5x
    assert found["AdamW8bit step fp32"].verdict == "met"                         # 0.55x <= 0.6x
    assert found["copy_ fp16 (preallocated)"].verdict == "" and found["F.linear fp16 dense 4096x4096"].verdict == ""
    assert found["dequantize_blockwise fp16 (8-bit, bs 4096)"].copy_fraction == pytest.approx(2900 / 3800)


@pytest.mark.parametrize("operation, figures, shown", [
    ("dequantize_blockwise fp16 (8-bit, bs 4096)", (0.1, 2600.0, None, None), ">= 70% of copy"),   # 68%
    ("quantize_blockwise fp16 (8-bit, bs 4096)", (0.2, 1850.0, None, None), ">= 50% of copy"),     # 49%
    ("gemv_4bit fp16 batch 1 4096x4096", (0.005, 2000.0, "F.linear fp16 dense 4096x4096", 0.012), "is 2.40x"),
    ("AdamW8bit step fp32", (0.125, 2000.0, "torch.optim.AdamW(fused=True) step fp32", 0.20), "is 0.62x"),
])
def test_each_target_is_missed_just_below_its_threshold(operation, figures, shown):
    row = by_name(rows(**{operation: figures}))[operation]
    assert row.verdict == "MISSED" and shown in row.target


def test_the_boundaries_count_as_met():
    found = by_name(rows(**{"dequantize_blockwise fp16 (8-bit, bs 4096)": (0.1, 0.70 * 3800.0, None, None),
                            "gemv_4bit fp16 batch 1 4096x4096": (0.004, 1.0, "F.linear fp16 dense 4096x4096", 0.010),
                            "AdamW8bit step fp32": (0.12, 1.0, "torch.optim.AdamW(fused=True) step fp32", 0.20)}))
    assert found["dequantize_blockwise fp16 (8-bit, bs 4096)"].verdict == "met"
    assert found["gemv_4bit fp16 batch 1 4096x4096"].verdict == "met"
    assert found["AdamW8bit step fp32"].verdict == "met"


def test_the_table_shows_every_row_with_its_fraction_and_verdict():
    text = bench.render_cuda(rows(), {"device": "NVIDIA_H200", "sm": "90"})
    lines = text.splitlines()
    assert lines[0] == "device=NVIDIA_H200 sm=90"
    deq = next(line for line in lines if line.startswith("dequantize_blockwise"))
    assert "76%" in deq and deq.endswith("met") and "2900.0" in deq
    assert any(line.startswith("copy_ fp16") and "100%" in line for line in lines)
    assert "bytes moved (read + written)" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_stops_with_the_reason():
    done = subprocess.run([sys.executable, str(ROOT / "ci" / "bench.py"), "--device", "cuda"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "--device cuda needs an NVIDIA GPU" in done.stderr and "ci/gpu_check.py" in done.stderr
    assert ("CPU-only build" in done.stderr) == (torch.version.cuda is None)


def test_nox_bench_routes_device_cuda_to_the_gpu_check():
    pytest.importorskip("nox")
    from noxfile import _device_cuda

    assert _device_cuda(["--device", "cuda", "--repeats", "5"]) == (True, ["--repeats", "5"])
    assert _device_cuda(["--device=cuda", "--json"]) == (True, ["--json"])
    assert _device_cuda(["--device", "cpu", "--json"]) == (False, ["--json"])
    assert _device_cuda(["--size", "256"]) == (False, ["--size", "256"])
