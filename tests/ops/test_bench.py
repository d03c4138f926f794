"""ci/bench.py (behind `nox -s bench`) runs end to end and reports sane figures; a tiny size keeps it fast."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import ROOT


def test_bench_reports_every_operation_with_positive_figures():
    out = subprocess.run([sys.executable, str(ROOT / "ci" / "bench.py"), "--size", "256", "--repeats", "2", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["header"]["size"] == "256x256" and report["header"]["statistic"] == "median"
    kbit_rows = {r["operation"]: r for r in report["rows"] if r["library"] == "kbit"}
    for op in ("quantize_blockwise (8-bit, bs 4096)", "dequantize_blockwise (8-bit, bs 4096)",
               "quantize_4bit (nf4, bs 64)", "dequantize_4bit (fp4, bs 64)", "AdamW8bit step", "AdamW32bit step"):
        assert kbit_rows[op]["median_ms"] > 0, op
    for op, row in kbit_rows.items():
        if "quantize" in op:
            assert row["gbps"] > 0 and row["verdict"] in ("met", "MISSED") and row["target"], op
    copy = [r for r in report["rows"] if r["operation"].startswith("copy_")][0]
    assert copy["gbps"] > 0 and math.isfinite(copy["gbps"])
    assert any(r["library"] == "bitsandbytes" for r in report["rows"])  # measured, or why not
