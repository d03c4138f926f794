"""CPU benchmark of kbit's kernels against the machine's copy bandwidth, torch and (when installed) bitsandbytes.

This module owns `nox -s bench`: it times, on one size x size float32 tensor (default 4096 x 4096),
 - the memory-copy bandwidth: `dst.copy_(src)` between preallocated tensors (no page faults counted),
 - 8-bit blockwise and 4-bit (nf4, fp4) quantize and dequantize,
 - one optimizer step of AdamW8bit and AdamW32bit, beside torch.optim.AdamW's step on the same parameter,
 - the same operations in bitsandbytes when it is importable in the environment,
and prints the median of `--repeats` timed runs (after one warm-up) with throughput and the targets of
issue 3. The runs are round-robin (one call of every operation per round), so a burst of load from
elsewhere on the machine hits the operations being compared alike. Bytes are counted as stated on each line:
quantize counts the float32 input read, dequantize the output written, copy the bytes written. It reports
figures; it does not fail on a missed target unless --check is given. It does not run in the test suite
(tests/ops/test_bench.py runs it on a tiny size).

CLI: python ci/bench.py [--size N] [--repeats R] [--threads T] [--json] [--check]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

COPY_FRACTION = 0.80   # dequantize (bytes written) must reach this fraction of the copy bandwidth
QUANTIZE_GBPS = 2.0    # quantize_4bit and quantize_blockwise: GB/s of float32 input


@dataclass
class Row:
    """One measured operation."""

    library: str
    operation: str
    median_ms: float
    gbps: float | None
    counted: str
    target: str = ""
    verdict: str = ""


@dataclass
class Op:
    """One operation to time: a call, and how its throughput is counted."""

    library: str
    operation: str
    fn: Callable[[], object]
    nbytes: int | None = None
    counted: str = ""


def round_robin(ops: list[Op], repeats: int) -> list[Row]:
    """Median wall time of each op over `repeats` rounds, each round calling every op once, after a warm-up."""
    for op in ops:
        op.fn()
    times: list[list[float]] = [[] for _ in ops]
    for _ in range(repeats):
        for op, bucket in zip(ops, times):
            start = time.perf_counter()
            op.fn()
            bucket.append(time.perf_counter() - start)
    return [_row(op, statistics.median(bucket)) for op, bucket in zip(ops, times)]


def _row(op: Op, seconds: float) -> Row:
    gbps = op.nbytes / seconds / 1e9 if op.nbytes else None
    return Row(op.library, op.operation, seconds * 1e3, gbps, op.counted)


def copy_op(torch, x) -> Op:
    dst = torch.empty_like(x)
    return Op("torch", "copy_ (preallocated)", lambda: dst.copy_(x), x.numel() * 4, "bytes written")


def kbit_quant_ops(torch, x) -> list[Op]:
    import kbit.functional as F

    nbytes, out = x.numel() * 4, torch.empty_like(x)
    codes, state = F.quantize_blockwise(x)
    ops = [Op("kbit", "quantize_blockwise (8-bit, bs 4096)", lambda: F.quantize_blockwise(x), nbytes, "fp32 input read"),
           Op("kbit", "dequantize_blockwise (8-bit, bs 4096)", lambda: F.dequantize_blockwise(codes, state, out=out),
              nbytes, "fp32 output written")]
    for quant_type in ("nf4", "fp4"):
        packed, qstate = F.quantize_4bit(x, blocksize=64, quant_type=quant_type)
        ops.append(Op("kbit", f"quantize_4bit ({quant_type}, bs 64)",
                      lambda q=quant_type: F.quantize_4bit(x, blocksize=64, quant_type=q), nbytes, "fp32 input read"))
        ops.append(Op("kbit", f"dequantize_4bit ({quant_type}, bs 64)",
                      lambda p=packed, s=qstate: F.dequantize_4bit(p, s, out=out), nbytes, "fp32 output written"))
    return ops


def _optimizer_step(torch, make: Callable, size: int) -> Callable[[], object]:
    gen = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(size, size, generator=gen))
    param.grad = torch.randn(size, size, generator=gen) * 1e-3
    return make([param]).step


def optimizer_ops(torch, size: int) -> list[Op]:
    import kbit.optim

    return [Op("torch", "AdamW step (fp32 state, foreach)", _optimizer_step(torch, lambda p: torch.optim.AdamW(p, lr=1e-3), size)),
            Op("kbit", "AdamW8bit step", _optimizer_step(torch, lambda p: kbit.optim.AdamW8bit(p, lr=1e-3), size)),
            Op("kbit", "AdamW32bit step", _optimizer_step(torch, lambda p: kbit.optim.AdamW32bit(p, lr=1e-3), size))]


def _not_measured(what: str, exc: Exception) -> Row:
    return Row("bitsandbytes", f"{what} not measured: {type(exc).__name__}: {exc}", float("nan"), None, "")


def bitsandbytes_ops(torch, x, size: int) -> tuple[list[Op], list[Row]]:
    """bitsandbytes' versions of the same operations when it is installed, or rows saying why not."""
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as BF

        codes, state = BF.quantize_blockwise(x)
        packed, qstate = BF.quantize_4bit(x, blocksize=64, quant_type="nf4")
    except Exception as exc:  # not installed, or broken: say which
        return [], [_not_measured("bitsandbytes", exc)]
    nbytes = x.numel() * 4
    ops = [Op("bitsandbytes", "quantize_blockwise (8-bit)", lambda: BF.quantize_blockwise(x), nbytes, "fp32 input read"),
           Op("bitsandbytes", "dequantize_blockwise (8-bit)", lambda: BF.dequantize_blockwise(codes, state), nbytes,
              "fp32 output written"),
           Op("bitsandbytes", "quantize_4bit (nf4, bs 64)", lambda: BF.quantize_4bit(x, blocksize=64, quant_type="nf4"),
              nbytes, "fp32 input read"),
           Op("bitsandbytes", "dequantize_4bit (nf4, bs 64)", lambda: BF.dequantize_4bit(packed, qstate), nbytes,
              "fp32 output written")]
    try:
        ops.append(Op("bitsandbytes", "AdamW8bit step", _optimizer_step(torch, lambda p: bnb.optim.AdamW8bit(p, lr=1e-3), size)))
    except Exception as exc:
        return ops, [_not_measured("AdamW8bit", exc)]
    return ops, []


def judge(rows: list[Row], copy: Row) -> None:
    """Fill each kbit row's target and verdict (issue 3's targets)."""
    by_op = {r.operation: r for r in rows if r.library in ("kbit", "torch")}
    torch_adamw = by_op.get("AdamW step (fp32 state, foreach)")
    for r in rows:
        if r.library != "kbit":
            continue
        if r.operation.startswith("dequantize"):
            goal = COPY_FRACTION * copy.gbps
            r.target, ok = f">= {goal:.2f} GB/s ({COPY_FRACTION:.0%} of copy)", r.gbps >= goal
        elif r.operation.startswith("quantize"):
            r.target, ok = f">= {QUANTIZE_GBPS:.1f} GB/s", r.gbps >= QUANTIZE_GBPS
        elif r.operation == "AdamW8bit step" and torch_adamw:
            r.target, ok = f"<= {torch_adamw.median_ms:.1f} ms (torch AdamW)", r.median_ms <= torch_adamw.median_ms
        else:
            continue
        r.verdict = "met" if ok else "MISSED"


def render(rows: list[Row], header: dict) -> str:
    lines = [" ".join(f"{k}={v}" for k, v in header.items()), ""]
    lines.append(f"{'library':<13} {'operation':<40} {'median ms':>10} {'GB/s':>7}  {'counted':<20} {'target':<34} verdict")
    for r in rows:
        gbps = f"{r.gbps:7.2f}" if r.gbps else f"{'':>7}"
        lines.append(f"{r.library:<13} {r.operation:<40} {r.median_ms:10.2f} {gbps}  {r.counted:<20} {r.target:<34} "
                     f"{r.verdict}".rstrip())
    return "\n".join(lines)


def run(size: int, repeats: int, threads: int | None) -> tuple[dict, list[Row]]:
    import torch

    import kbit

    if threads:
        torch.set_num_threads(threads)
    x = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    header = {"size": f"{size}x{size}", "dtype": "float32", "threads": torch.get_num_threads(),
              "repeats": repeats, "statistic": "median", "torch": torch.__version__, "kbit": kbit.__version__,
              "cpu": platform.processor() or platform.machine()}
    bnb_ops, bnb_missing = bitsandbytes_ops(torch, x, size)
    ops = [copy_op(torch, x)] + kbit_quant_ops(torch, x) + optimizer_ops(torch, size) + bnb_ops
    rows = round_robin(ops, repeats) + bnb_missing
    copy = rows[0]
    judge(rows, copy)
    return header, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="the tensor is size x size float32 (default 4096)")
    parser.add_argument("--repeats", type=int, default=11, help="timed runs per operation; the median is shown")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--check", action="store_true", help="exit 1 when a kbit target is missed")
    args = parser.parse_args(argv)
    if args.size < 16 or args.repeats < 1:
        parser.error("--size must be >= 16 and --repeats >= 1")
    header, rows = run(args.size, args.repeats, args.threads)
    if args.json:
        print(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(render(rows, header))
    missed = [r.operation for r in rows if r.verdict == "MISSED"]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
