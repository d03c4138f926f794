"""ci/bench.py (behind `nox -s bench`) runs end to end and reports sane figures; a tiny size keeps it fast."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import ROOT


def test_bench_reports_every_operation_with_positive_figures():
    out = subprocess.run([sys.executable, str(ROOT / "ci" / "bench.py"), "--size", "256", "--repeats", "2", "--json",
                          "--gemv-shapes", "64x96", "--stack-bytes", "200000"],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["header"]["size"] == "256x256" and report["header"]["statistic"] == "median"
    assert report["header"]["read_GBps"] > 0 and report["header"]["copy_GBps"] > 0
    rows = report["rows"]
    kbit_rows = {(r["operation"], r["form"]): r for r in rows if r["library"] == "kbit"}
    for op in ("quantize_blockwise (8-bit, bs 4096)", "quantize_4bit (nf4, bs 64)", "AdamW8bit step", "AdamW32bit step"):
        assert any(name == op and row["median_ms"] > 0 for (name, _), row in kbit_rows.items()), op
    for op in ("dequantize_blockwise (8-bit, bs 4096)", "dequantize_4bit (nf4, bs 64)", "dequantize_4bit (fp4, bs 64)"):
        assert kbit_rows[(op, "user")]["median_ms"] > 0 and kbit_rows[(op, "out=")]["median_ms"] > 0, op
    for (op, _), row in kbit_rows.items():
        if "quantize" in op:
            assert row["gbps"] > 0 and row["fraction"] > 0 and row["limit"] in ("read", "copy"), op
    # the bitsandbytes comparison of dequantize is made in the user form
    assert kbit_rows[("dequantize_4bit (nf4, bs 64)", "user")]["target"].endswith("(bitsandbytes, user form)") or \
        any(r["operation"].startswith("bitsandbytes not measured") for r in rows)
    limits = {r["operation"].split(" (")[0]: r for r in rows if r["library"] == "torch"}
    for name in ("sum", "copy_", "empty + first touch"):
        assert limits[name]["gbps"] > 0 and math.isfinite(limits[name]["gbps"]), name
    gemv = [r for r in rows if r["operation"].startswith("gemv_4bit") and not r["operation"].endswith(" between)")]
    assert len(gemv) == 2 * 2 * 3 * 2  # nf4/fp4 x bs 64/128 x fp32/fp16/bf16 x batch 1/8
    # nf4 bs 64 batch 1 (fp32, bf16) again with torch's attention between the layers, against back to back
    between = {r["operation"]: r for r in rows if r["operation"].endswith(" (sdpa between)")}
    assert set(between) == {f"gemv_4bit {d} nf4 bs 64 64x96 batch 1 (sdpa between)" for d in ("fp32", "bf16")}
    for r in between.values():
        assert r["baseline"] == r["operation"].removesuffix(" (sdpa between)") and r["baseline_ms"] > 0
        assert 0 < r["median_ms"] and r["verdict"] in ("met", "MISSED") and "back to back" in r["target"]
    assert report["header"]["fp32_GMACps"] > 0
    for r in gemv:
        assert r["baseline"].startswith("F.linear") and r["baseline_ms"] > 0 and r["fraction"] > 0
        assert r["verdict"] in ("met", "MISSED") and "x dense" in r["target"]
        assert r["floor"] in ("read", "compute") and 0 < r["floor_ms"]
    linear = [r for r in rows if r["operation"].startswith("Linear4bit") and "input gradient" not in r["operation"]]
    assert {r["operation"].rsplit(" ", 1)[1] for r in linear} == {"1", "2", "4", "8", "16", "64", "512"}
    for r in linear:
        assert r["baseline_ms"] > 0 and r["verdict"] in ("met", "MISSED") and "dequantize + F.linear" in r["target"]
    # the input gradient (QLoRA's backward) at the same batches, against grad @ dequantize_4bit(W) and dense
    backward = [r for r in rows if r["operation"].startswith("Linear4bit input gradient")]
    assert {(r["operation"].split()[3], r["operation"].rsplit(" ", 1)[1]) for r in backward} == \
        {(d, b) for d in ("fp32", "bf16") for b in ("1", "2", "4", "8", "16", "64", "512")}
    for r in backward:
        assert r["baseline"].startswith("grad @ W") and r["baseline_ms"] > 0 and r["fraction"] > 0
        assert r["verdict"] in ("met", "MISSED") and "dequantize + grad @ W" in r["target"]
    assert any(r["library"] == "bitsandbytes" for r in rows)  # measured, or why not


def test_floor_is_the_larger_of_reading_and_computing():
    sys.path.insert(0, str(ROOT / "ci"))
    import bench

    mm = bench.Row("torch", "mm fp32 2048^3 (multiply-add rate)", 100.0, None, "", macs=2048 ** 3)
    rate = bench.mac_rate([mm])
    assert math.isclose(rate, 2048 ** 3 / 0.1)
    # 2 MB at 10 GB/s read in 0.2 ms; 1e9 multiply-adds at that rate take 1e9 / rate s.
    few = bench.Row("kbit", "gemv batch 1", 2.0, 1.0, "", macs=10 ** 3, nbytes=2 * 10 ** 6)
    many = bench.Row("kbit", "gemv batch 8", 2.0, 1.0, "", macs=10 ** 9, nbytes=2 * 10 ** 6)
    bench.floors([mm, few, many], 10.0, rate)
    assert few.floor == "read" and math.isclose(few.floor_ms, 0.2)
    assert many.floor == "compute" and math.isclose(many.floor_ms, 10 ** 9 / rate * 1e3)
    assert mm.floor_ms is None
