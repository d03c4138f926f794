"""CPU benchmark of kbit's kernels against the machine's copy bandwidth, torch and (when installed) bitsandbytes.

This module owns `nox -s bench`: it times, on one size x size float32 tensor (default 4096 x 4096),
 - the memory-copy bandwidth: `dst.copy_(src)` between preallocated tensors (no page faults counted),
 - 8-bit blockwise and 4-bit (nf4, fp4) quantize and dequantize,
 - one optimizer step of AdamW8bit and AdamW32bit, beside torch.optim.AdamW's step on the same parameter,
 - Linear8bitLt's forward at batch 1 and 32 beside the dense nn.Linear of the same weight (linear8bit_ops),
 - the same operations in bitsandbytes when it is importable in the environment,
and prints the median of `--repeats` timed runs (after one warm-up) with throughput and the targets of
issue 3. The runs are round-robin (one call of every operation per round), so a burst of load from
elsewhere on the machine hits the operations being compared alike. Bytes are counted as stated on each line:
quantize counts the float32 input read, dequantize the output written, copy the bytes written. It reports
figures; it does not fail on a missed target unless --check is given. It does not run in the test suite
(tests/ops/test_bench.py runs it on a tiny size).

With --device cuda it times the CUDA kernels instead (one GPU, CUDA events; see the "GPU bench" section below):
quantize/dequantize 8-bit and 4-bit, gemv_4bit at batch 1 against F.linear on the dense weight, and the AdamW8bit /
AdamW32bit steps against torch.optim.AdamW(fused=True), each as GB/s and as a fraction of the device's measured
copy bandwidth, with the verdicts of issue 10's targets. Without a GPU it stops with a message (exit code 2).

CLI: python ci/bench.py [--device cpu|cuda] [--size N] [--repeats R] [--threads T] [--json] [--check]
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


def linear8bit_ops(torch, size: int, batches: tuple[int, ...] = (1, 32)) -> list[Op]:
    """Linear8bitLt (threshold 6.0, int8 weight) against the dense nn.Linear of the same size x size weight, on
    float32 activations with 1 % outlier columns (x25), at each batch; bitsandbytes' layer too when importable
    (in eval mode: in training mode its CPU path skips int8). Counted: the layer's weight bytes read (int8 for
    the 8-bit layers, float32 for the dense one). Self-contained, so the rest of the bench can change freely."""
    import kbit.nn

    gen = torch.Generator().manual_seed(0)
    dense = torch.nn.Linear(size, size).requires_grad_(False)
    ours = kbit.nn.Linear8bitLt(size, size, has_fp16_weights=False, threshold=6.0)
    ours.load_state_dict(dense.state_dict())
    ours.quantize_()
    layers = [("torch", "nn.Linear (dense fp32)", dense, 4), ("kbit", "Linear8bitLt (int8, threshold 6)", ours, 1)]
    try:
        import bitsandbytes as bnb

        theirs = bnb.nn.Linear8bitLt(size, size, has_fp16_weights=False, threshold=6.0)
        theirs.load_state_dict(dense.state_dict())
        layers.append(("bitsandbytes", "Linear8bitLt (int8, threshold 6)", theirs.to("cpu").eval(), 1))
    except Exception:  # not installed or broken: the bitsandbytes rows above already say why
        pass
    ops = []
    for batch in batches:
        x = torch.randn(batch, size, generator=gen)
        x[:, torch.randperm(size, generator=gen)[:max(1, size // 100)]] *= 25
        for library, name, layer, weight_bytes in layers:
            def call(layer=layer, x=x):
                with torch.no_grad():
                    return layer(x)
            ops.append(Op(library, f"{name} batch {batch}", call, size * size * weight_bytes, "weight bytes read"))
    return ops


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
    ops += linear8bit_ops(torch, size)
    rows = round_robin(ops, repeats) + bnb_missing
    copy = rows[0]
    judge(rows, copy)
    return header, rows


# ------------------------------------------------------------------------------------------ GPU bench
#
# Every GPU figure counts bytes moved (read + written) by the operation, the copy's too (a copy_ of N bytes moves
# 2N), so that "fraction of copy" compares like with like. Times are medians over rounds (round-robin as on the
# CPU); each sample is one CUDA-event interval around `inner` back-to-back calls, chosen so a sample lasts >= 2 ms.

CUDA_DEQUANTIZE_FRACTION = 0.70  # dequantize: >= 70% of the measured copy bandwidth
CUDA_QUANTIZE_FRACTION = 0.50    # quantize: >= 50%
CUDA_GEMV_SPEEDUP = 2.5          # gemv_4bit batch 1: >= 2.5x faster than F.linear on the dense weight
CUDA_ADAMW8BIT_RATIO = 0.60      # AdamW8bit step: <= 0.6x the time of torch.optim.AdamW(fused=True)
GEMV_SHAPES = ((4096, 4096), (11008, 4096))  # (out_features, in_features)


@dataclass
class CudaRow:
    """One measured GPU operation; baseline_ms is what its target compares against (when it has one)."""

    operation: str
    median_ms: float
    gbps: float | None
    copy_fraction: float | None
    counted: str = ""
    baseline: str = ""
    baseline_ms: float | None = None
    target: str = ""
    verdict: str = ""


class NoGpuError(Exception):
    """--device cuda on a machine where torch sees no GPU."""


def cuda_judge(rows: list[CudaRow]) -> None:
    """Fill each row's target and verdict from its figures (no GPU needed: tests/runtime/test_gpu_bench.py)."""
    for r in rows:
        op = r.operation
        if op.startswith("dequantize"):
            r.target, ok = f">= {CUDA_DEQUANTIZE_FRACTION:.0%} of copy", (r.copy_fraction or 0) >= CUDA_DEQUANTIZE_FRACTION
        elif op.startswith("quantize"):
            r.target, ok = f">= {CUDA_QUANTIZE_FRACTION:.0%} of copy", (r.copy_fraction or 0) >= CUDA_QUANTIZE_FRACTION
        elif op.startswith("gemv_4bit") and r.baseline_ms:
            speedup = r.baseline_ms / r.median_ms
            r.target, ok = f">= {CUDA_GEMV_SPEEDUP}x faster than {r.baseline} (is {speedup:.2f}x)", speedup >= CUDA_GEMV_SPEEDUP
        elif op.startswith("AdamW8bit") and r.baseline_ms:
            ratio = r.median_ms / r.baseline_ms
            r.target, ok = f"<= {CUDA_ADAMW8BIT_RATIO}x {r.baseline} (is {ratio:.2f}x)", ratio <= CUDA_ADAMW8BIT_RATIO
        else:
            continue
        r.verdict = "met" if ok else "MISSED"


def cuda_fractions(rows: list[CudaRow], copy_gbps: float) -> None:
    for r in rows:
        r.copy_fraction = r.gbps / copy_gbps if r.gbps and copy_gbps else None


def render_cuda(rows: list[CudaRow], header: dict) -> str:
    lines = [" ".join(f"{k}={v}" for k, v in header.items()), ""]
    lines.append(f"{'operation':<46} {'median ms':>10} {'GB/s':>8} {'of copy':>8}  {'target':<52} verdict")
    for r in rows:
        gbps = f"{r.gbps:8.1f}" if r.gbps else f"{'':>8}"
        frac = f"{r.copy_fraction:8.0%}" if r.copy_fraction is not None else f"{'':>8}"
        lines.append(f"{r.operation:<46} {r.median_ms:10.4f} {gbps} {frac}  {r.target:<52} {r.verdict}".rstrip())
    lines.append("")
    lines.append("GB/s counts bytes moved (read + written); 'of copy' is the fraction of the copy_ row's GB/s")
    return "\n".join(lines)


def _cuda_samples(torch, fn: Callable[[], object], inner: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / inner


class _Graphed:
    """`inner` calls of fn captured once in a CUDA graph: replaying it times the kernels without the host's
    per-call cost (Python, argument checks, the launch), which dominates a batch-1 gemv of a few microseconds."""

    def __init__(self, torch, fn: Callable[[], object], inner: int):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        self.graph, self.inner = torch.cuda.CUDAGraph(), inner
        with torch.cuda.graph(self.graph):
            for _ in range(inner):
                fn()

    def __call__(self):
        self.graph.replay()


def cuda_round_robin(torch, ops: list[tuple[str, Callable[[], object]]], repeats: int,
                     graphed: tuple[bool, ...] = ()) -> tuple[list[float], list[str]]:
    """Median seconds per call of each op (CUDA events), round-robin over `repeats` rounds after a warm-up; ops
    flagged in `graphed` are timed as CUDA-graph replays. Returns the times and, per op, how it was timed."""
    calls, inners, how = [], [], []
    for i, (_, fn) in enumerate(ops):
        fn()
        once = _cuda_samples(torch, fn, 3)
        inner = max(1, min(1000, int(2e-3 / max(once, 1e-7))))
        if i < len(graphed) and graphed[i]:
            try:
                g = _Graphed(torch, fn, inner)
                calls.append(g)
                inners.append(1)
                how.append(f"CUDA graph of {inner} calls")
                continue
            except Exception as exc:  # a capture that fails is timed eagerly, and the row says why
                how.append(f"eager (graph capture failed: {type(exc).__name__}: {exc})")
        else:
            how.append(f"eager, {inner} calls per sample")
        calls.append(fn)
        inners.append(inner)
    times: list[list[float]] = [[] for _ in ops]
    for _ in range(repeats):
        for fn, inner, bucket in zip(calls, inners, times):
            bucket.append(_cuda_samples(torch, fn, inner))
    per_call = [statistics.median(b) / (c.inner if isinstance(c, _Graphed) else 1) for b, c in zip(times, calls)]
    return per_call, how


def cuda_ops(torch, size: int) -> list[tuple[str, Callable[[], object], int, str, str | None]]:
    """(operation, call, bytes moved, what is counted, baseline operation) for every GPU row."""
    import kbit.functional as F
    import kbit.optim

    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    n = size * size
    x = torch.randn(size, size, device=dev, generator=gen, dtype=torch.float16)
    dst = torch.empty_like(x)
    ops = [("copy_ fp16 (preallocated)", lambda: dst.copy_(x), 2 * 2 * n, "read + write", None)]
    codes, state = F.quantize_blockwise(x, blocksize=4096)
    out = torch.empty_like(x)
    ops += [("quantize_blockwise fp16 (8-bit, bs 4096)", lambda: F.quantize_blockwise(x, blocksize=4096),
             2 * n + n + 4 * (n // 4096), "fp16 in, codes + absmax out", None),
            ("dequantize_blockwise fp16 (8-bit, bs 4096)", lambda: F.dequantize_blockwise(codes, state, out=out),
             n + 4 * (n // 4096) + 2 * n, "codes + absmax in, fp16 out", None)]
    packed, qstate = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    ops += [("quantize_4bit fp16 (nf4, bs 64)", lambda: F.quantize_4bit(x, blocksize=64, quant_type="nf4"),
             2 * n + n // 2 + 4 * (n // 64), "fp16 in, codes + absmax out", None),
            ("dequantize_4bit fp16 (nf4, bs 64)", lambda: F.dequantize_4bit(packed, qstate, out=out),
             n // 2 + 4 * (n // 64) + 2 * n, "codes + absmax in, fp16 out", None)]
    for n_out, k in GEMV_SHAPES:
        for dtype, name in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
            W = (torch.randn(n_out, k, device=dev, generator=gen) * 0.02).to(dtype)
            A = torch.randn(1, k, device=dev, generator=gen).to(dtype)
            wp, ws = F.quantize_4bit(W, blocksize=64, quant_type="nf4")
            for mode in ("graph", "eager"):  # graph: kernel time; eager: what a Python loop of calls gets
                linear = f"F.linear {name} dense {n_out}x{k} ({mode})"
                ops.append((linear, lambda A=A, W=W: torch.nn.functional.linear(A, W),
                            2 * n_out * k + 2 * k + 2 * n_out, "dense weight + A in, out", None))
                ops.append((f"gemv_4bit {name} batch 1 {n_out}x{k} ({mode})",
                            lambda A=A, wp=wp, ws=ws: F.gemv_4bit(A, wp, ws),
                            n_out * k // 2 + 4 * (n_out * k // 64) + 2 * k + 2 * n_out,
                            "4-bit weight + absmax + A in, out", linear))
    for label, make, per_element in (
            ("torch.optim.AdamW(fused=True) step fp32", lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True), 28),
            ("AdamW8bit step fp32", lambda p: kbit.optim.AdamW8bit(p, lr=1e-3), 16),
            ("AdamW32bit step fp32", lambda p: kbit.optim.AdamW32bit(p, lr=1e-3), 28)):
        param = torch.nn.Parameter(torch.randn(size, size, device=dev, generator=gen))
        param.grad = torch.randn(size, size, device=dev, generator=gen) * 1e-3
        baseline = None if label.startswith("torch") else "torch.optim.AdamW(fused=True) step fp32"
        ops.append((label, make([param]).step, per_element * n, "p, grad, states in; p, states out", baseline))
    return ops


def run_cuda(size: int, repeats: int) -> tuple[dict, list[CudaRow]]:
    import torch

    import kbit

    if not torch.cuda.is_available():
        why = ("torch is a CPU-only build (torch.version.cuda is None)" if torch.version.cuda is None else
               f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU (torch.cuda.is_available() is False)")
        raise NoGpuError(f"--device cuda needs an NVIDIA GPU: {why}. fix: run on a GPU machine (python ci/gpu_check.py "
                         f"builds and installs the CUDA variant first), or drop --device cuda for the CPU bench")
    ops = cuda_ops(torch, size)
    seconds, how = cuda_round_robin(torch, [(name, fn) for name, fn, *_ in ops], repeats,
                                    tuple(name.endswith("(graph)") for name, *_ in ops))
    ms = {name: s * 1e3 for (name, *_), s in zip(ops, seconds)}
    rows = [CudaRow(name, ms[name], nbytes / s / 1e9, None, f"{counted}; {timed}", baseline or "",
                    ms.get(baseline) if baseline else None)
            for (name, _, nbytes, counted, baseline), s, timed in zip(ops, seconds, how)]
    cuda_fractions(rows, rows[0].gbps)
    cuda_judge(rows)
    props = torch.cuda.get_device_properties(0)
    header = {"device": props.name.replace(" ", "_"), "sm": f"{props.major}{props.minor}", "size": f"{size}x{size}",
              "repeats": repeats, "statistic": "median", "timer": "cuda-events", "torch": torch.__version__,
              "torch_cuda": torch.version.cuda, "kbit": kbit.__version__}
    return header, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu: the CPU library (default); cuda: the CUDA kernels on GPU 0")
    parser.add_argument("--size", type=int, default=None,
                        help="the tensor is size x size (default 4096 float32 on cpu, 8192 fp16 on cuda)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per operation; the median is shown (default 11 on cpu, 25 on cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--check", action="store_true", help="exit 1 when a kbit target is missed")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    size = args.size if args.size is not None else (8192 if cuda else 4096)
    repeats = args.repeats if args.repeats is not None else (25 if cuda else 11)
    if size < 16 or repeats < 1:
        parser.error("--size must be >= 16 and --repeats >= 1")
    if cuda:
        try:
            header, cuda_rows = run_cuda(size, repeats)
        except NoGpuError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps({"header": header, "rows": [asdict(r) for r in cuda_rows]}, indent=2))
        else:
            print(render_cuda(cuda_rows, header))
        return 1 if args.check and any(r.verdict == "MISSED" for r in cuda_rows) else 0
    header, rows = run(size, repeats, args.threads)
    if args.json:
        print(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(render(rows, header))
    missed = [r.operation for r in rows if r.verdict == "MISSED"]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
