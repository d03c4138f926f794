"""Benchmark of kbit's kernels and layers against the machine's memory bandwidth, torch and (when installed)
bitsandbytes.

This module owns `nox -s bench`. On the CPU (default) it times, each row the way a user calls it (outputs
allocated by the call) with the `out=` form beside it where the function has one:
 - the limits: read bandwidth (`x.sum()` over a tensor several times the last-level cache), copy bandwidth
   (`copy_` between preallocated tensors) and `torch.empty` + a first touch of a fresh output (the page faults a
   user-form call pays for its result);
 - 8-bit blockwise and 4-bit (nf4, fp4) quantize and dequantize of one size x size float32 tensor (default 4096);
 - gemv_4bit as a model runs it: one pass over a stack of distinct layers whose weights together exceed twice the
   last-level cache (a single weight called again and again is served from the cache and proves nothing),
   batch 1 and 8, fp32/fp16/bf16 activations, 4096x4096 and 11008x4096, nf4/fp4, blocksizes 64 and 128, each row
   beside F.linear on the dense weight of the activation's dtype (a stack of its own of the same kind); and
   nf4 bs 64 batch 1 (fp32, bf16) once more with a decode step's attention (torch's own parallel loop) run before
   each layer, timing the layers only, against the same layers back to back: kbit's loops and torch's share
   torch's threads, so a layer after a torch op must not wait for cores (csrc/cpu/parallel.cpp);
 - Linear4bit (nf4, bs 64, fp32 and bf16) at batches 1 to 512 beside the dense layer and dequantize_4bit +
   F.linear, on the same kind of stack; and its input gradient (the backward pass QLoRA runs through it) beside
   the dense layer's grad @ W and grad @ dequantize_4bit(W);
 - one optimizer step of AdamW8bit and AdamW32bit, beside torch.optim.AdamW's step;
 - Linear8bitLt's forward at batch 1 and 32 beside the dense nn.Linear of the same weight (linear8bit_ops);
 - bitsandbytes' versions of quantize / dequantize / AdamW8bit when it is importable.
Each row states its bytes and its fraction of the limit that bounds it: rows that read (quantize, gemv, the
linear layers, sum) against the read bandwidth, rows that write an output (dequantize, copy, first touch)
against the copy bandwidth. Timings are medians of `--repeats` round-robin rounds (one call of every op of a
group per round, after a warm-up), so a burst of load elsewhere on the machine hits the operations being compared
alike. It reports figures; it fails on a missed target only with --check. tests/ops/test_bench.py runs it tiny.

With --device cuda it times the CUDA kernels instead (one GPU, CUDA events; see the "GPU bench" section below):
quantize/dequantize 8-bit and 4-bit, gemv_4bit at batch 1 against F.linear on the dense weight, and the AdamW8bit /
AdamW32bit steps against torch.optim.AdamW(fused=True), each as GB/s and as a fraction of the device's measured
copy bandwidth, with the verdicts of issue 10's targets. Without a GPU it stops with a message (exit code 2).

CLI: python ci/bench.py [--device cpu|cuda] [--size N] [--repeats R] [--threads T] [--gemv-shapes S]
                        [--stack-bytes B] [--json] [--check]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

COPY_FRACTION = 0.80      # dequantize (bytes written, out= form) must reach this fraction of the copy bandwidth
QUANTIZE_GBPS = 2.0       # quantize_4bit and quantize_blockwise: GB/s of float32 input
GEMV_SPEEDUP = 3.0        # gemv_4bit: at least this much faster than F.linear on the dense weight of A's dtype
GEMV_READ_FACTOR = 1.5    # ... and within this factor of the time to read its packed weight at the read bandwidth
BETWEEN = " (sdpa between)"  # a gemv_4bit row with torch's attention of a decode step run between its layers
BETWEEN_FACTOR = 1.25     # ... whose gemv calls take at most this factor of the same layers called back to back
CPU_GEMV_SHAPES = "4096x4096,11008x4096"  # out_features x in_features
LINEAR_BATCHES = (1, 2, 4, 8, 16, 64, 512)
FALLBACK_LLC = 32 << 20   # when sysfs does not say


@dataclass
class Row:
    """One measured operation. `limit` names the bandwidth that bounds it (read or copy) and `fraction` is its
    GB/s over that bandwidth; `baseline` is the row its target compares with."""

    library: str
    operation: str
    median_ms: float
    gbps: float | None
    counted: str
    form: str = ""
    limit: str = ""
    fraction: float | None = None
    baseline: str = ""
    baseline_ms: float | None = None
    spread: str = ""
    target: str = ""
    verdict: str = ""
    macs: int = 0
    nbytes: int | None = None
    floor_ms: float | None = None
    floor: str = ""


@dataclass
class Op:
    """One operation to time: a call, how its throughput is counted, and what bounds it."""

    library: str
    operation: str
    fn: Callable[[], object]
    nbytes: int | None = None
    counted: str = ""
    form: str = "user"
    limit: str = ""
    baseline: str = ""
    per_call: int = 1  # calls of the op one fn() makes (a stack pass: its layers); times are per call
    macs: int = 0      # float32 multiply-adds per call (matrix products: their compute floor)
    self_timed: bool = False  # fn() returns the seconds of its timed part (other work runs between its calls)


def round_robin(ops: list[Op], repeats: int) -> list[Row]:
    """Median wall time of each op over `repeats` rounds, each round calling every op once, after a warm-up."""
    for op in ops:
        op.fn()
    times: list[list[float]] = [[] for _ in ops]
    for _ in range(repeats):
        for op, bucket in zip(ops, times):
            start = time.perf_counter()
            spent = op.fn()
            bucket.append((spent if op.self_timed else time.perf_counter() - start) / op.per_call)
    return [_row(op, bucket) for op, bucket in zip(ops, times)]


def _row(op: Op, bucket: list[float]) -> Row:
    seconds = statistics.median(bucket)
    gbps = op.nbytes / seconds / 1e9 if op.nbytes else None
    spread = f"{min(bucket) * 1e3:.2f}-{max(bucket) * 1e3:.2f}" if len(bucket) > 1 else ""
    return Row(op.library, op.operation, seconds * 1e3, gbps, op.counted, op.form, op.limit, baseline=op.baseline,
               spread=spread, macs=op.macs, nbytes=op.nbytes)


def last_level_cache_bytes() -> int:
    """The largest CPU cache sysfs reports (FALLBACK_LLC when it reports none)."""
    sizes = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    for entry in (os.listdir(base) if os.path.isdir(base) else []):
        try:
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes) if sizes else FALLBACK_LLC


# ------------------------------------------------------------------------------------------ limits

MM_SIZE = 2048  # the fp32 matmul that measures the machine's multiply-add rate (torch's BLAS, every thread)


def limit_ops(torch, x, stack_bytes: int) -> list[Op]:
    big = torch.ones(max(stack_bytes, x.numel() * 4) // 4)
    dst = torch.empty_like(x)
    n = x.numel()
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(MM_SIZE, MM_SIZE, generator=gen), torch.randn(MM_SIZE, MM_SIZE, generator=gen)
    return [Op("torch", f"sum (read bandwidth, {big.numel() * 4 >> 20} MiB)", big.sum, big.numel() * 4, "bytes read",
               limit="read"),
            Op("torch", f"mm fp32 {MM_SIZE}^3 (multiply-add rate)", lambda: torch.mm(a, b), form="user",
               macs=MM_SIZE ** 3),
            Op("torch", "copy_ (copy bandwidth)", lambda: dst.copy_(x), n * 4, "bytes written", "out=", "copy")]


def first_touch_op(torch, x) -> Op:
    """torch.empty + a first touch of x's size: what a fresh output costs. Timed in a group of its own: freeing the
    touched pages slows whatever runs next (here the sum right after it took 6-8 ms instead of 1.5), and the limits
    must be measured undisturbed."""
    n = x.numel()
    return Op("torch", "empty + first touch (fp32, page faults)", lambda: torch.empty(n).fill_(0.0), n * 4,
              "bytes written", limit="copy")


# ------------------------------------------------------------------------------------------ quantize / dequantize

def kbit_quant_ops(torch, x) -> list[Op]:
    import kbit.functional as F

    nbytes, out = x.numel() * 4, torch.empty_like(x)
    codes, state = F.quantize_blockwise(x)
    ops = [Op("kbit", "quantize_blockwise (8-bit, bs 4096)", lambda: F.quantize_blockwise(x), nbytes, "fp32 input read",
              limit="read"),
           Op("kbit", "dequantize_blockwise (8-bit, bs 4096)", lambda: F.dequantize_blockwise(codes, state), nbytes,
              "fp32 output written", limit="copy"),
           Op("kbit", "dequantize_blockwise (8-bit, bs 4096)", lambda: F.dequantize_blockwise(codes, state, out=out),
              nbytes, "fp32 output written", "out=", "copy")]
    for quant_type in ("nf4", "fp4"):
        packed, qstate = F.quantize_4bit(x, blocksize=64, quant_type=quant_type)
        ops.append(Op("kbit", f"quantize_4bit ({quant_type}, bs 64)",
                      lambda q=quant_type: F.quantize_4bit(x, blocksize=64, quant_type=q), nbytes, "fp32 input read",
                      limit="read"))
        ops.append(Op("kbit", f"dequantize_4bit ({quant_type}, bs 64)", lambda p=packed, s=qstate: F.dequantize_4bit(p, s),
                      nbytes, "fp32 output written", limit="copy"))
        ops.append(Op("kbit", f"dequantize_4bit ({quant_type}, bs 64)",
                      lambda p=packed, s=qstate: F.dequantize_4bit(p, s, out=out), nbytes, "fp32 output written",
                      "out=", "copy"))
    return ops


def _optimizer_step(torch, make: Callable, size: int) -> Callable[[], object]:
    gen = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(size, size, generator=gen))
    param.grad = torch.randn(size, size, generator=gen) * 1e-3
    return make([param]).step


def optimizer_ops(torch, size: int) -> list[Op]:
    import kbit.optim

    return [Op("torch", "AdamW step (fp32 state, foreach)", _optimizer_step(torch, lambda p: torch.optim.AdamW(p, lr=1e-3), size),
               form="in place"),
            Op("kbit", "AdamW8bit step", _optimizer_step(torch, lambda p: kbit.optim.AdamW8bit(p, lr=1e-3), size),
               form="in place"),
            Op("kbit", "AdamW32bit step", _optimizer_step(torch, lambda p: kbit.optim.AdamW32bit(p, lr=1e-3), size),
               form="in place")]


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
            ops.append(Op(library, f"{name} batch {batch}", call, size * size * weight_bytes, "weight bytes read",
                          limit="read"))
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
    ops = [Op("bitsandbytes", "quantize_blockwise (8-bit)", lambda: BF.quantize_blockwise(x), nbytes, "fp32 input read",
              limit="read"),
           Op("bitsandbytes", "dequantize_blockwise (8-bit)", lambda: BF.dequantize_blockwise(codes, state), nbytes,
              "fp32 output written", limit="copy"),
           Op("bitsandbytes", "quantize_4bit (nf4, bs 64)", lambda: BF.quantize_4bit(x, blocksize=64, quant_type="nf4"),
              nbytes, "fp32 input read", limit="read"),
           Op("bitsandbytes", "dequantize_4bit (nf4, bs 64)", lambda: BF.dequantize_4bit(packed, qstate), nbytes,
              "fp32 output written", limit="copy")]
    try:
        ops.append(Op("bitsandbytes", "AdamW8bit step", _optimizer_step(torch, lambda p: bnb.optim.AdamW8bit(p, lr=1e-3), size),
                      form="in place"))
    except Exception as exc:
        return ops, [_not_measured("AdamW8bit", exc)]
    return ops, []


# ------------------------------------------------------------------------------------------ gemv and Linear4bit stacks

DTYPE_NAMES = (("fp32", "float32"), ("fp16", "float16"), ("bf16", "bfloat16"))


def _layers(bytes_each: int, stack_bytes: int) -> int:
    """Distinct layers in a stack: together at least stack_bytes (and at least 2)."""
    return max(2, -(-stack_bytes // max(1, bytes_each)))


def _stack_pass(fns: list[Callable[[], object]]) -> Callable[[], object]:
    def run_all():
        for fn in fns:
            fn()
    return run_all


def _between(fns: list[Callable[[], object]], other: Callable[[], object]) -> Callable[[], float]:
    """A stack pass with other() before each layer; returns the seconds spent in the layers only."""
    def run_all() -> float:
        spent = 0.0
        for fn in fns:
            other()
            start = time.perf_counter()
            fn()
            spent += time.perf_counter() - start
        return spent
    return run_all


def _decode_attention(torch, dtype) -> Callable[[], object]:
    """What a decoder runs between two of its linear layers at batch 1: attention of one query over a 512-token
    cache, 32 heads of 128 (torch's own parallel loop, on torch's OpenMP threads)."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 32, 1, 128, generator=gen).to(dtype)
    kv = torch.randn(1, 32, 512, 128, generator=gen).to(dtype)
    return lambda: torch.nn.functional.scaled_dot_product_attention(q, kv, kv)


def _packed_stack(torch, F, W, blocksize: int, quant_type: str, stack_bytes: int):
    """Distinct copies of W quantized (one quantization, cloned), enough to exceed stack_bytes; and their bytes."""
    packed, state = F.quantize_4bit(W, blocksize=blocksize, quant_type=quant_type)
    nbytes = packed.numel() + state.absmax.numel() * 4
    stack = [(packed.clone(), F.QuantState(state.absmax.clone(), state.shape, state.code, blocksize, quant_type,
                                           state.dtype)) for _ in range(_layers(nbytes, stack_bytes))]
    return stack, nbytes


def gemv_ops(torch, shapes: list[tuple[int, int]], stack_bytes: int) -> list[Op]:
    """gemv_4bit rows (a stack pass per call, time per layer) and the dense F.linear rows they compare with."""
    import kbit.functional as F

    gen = torch.Generator().manual_seed(1)
    ops = []
    for n_out, k in shapes:
        W = torch.randn(n_out, k, generator=gen) * 0.02
        for name, attr in DTYPE_NAMES:
            dtype = getattr(torch, attr)
            dense = [W.to(dtype) for _ in range(_layers(n_out * k * dtype.itemsize, stack_bytes))]
            for batch in (1, 8):
                A = torch.randn(batch, k, generator=gen).to(dtype)
                linear = f"F.linear {name} dense {n_out}x{k} batch {batch}"
                ops.append(Op("torch", linear, _stack_pass([lambda w=w, A=A: torch.nn.functional.linear(A, w) for w in dense]),
                              n_out * k * dtype.itemsize, "dense weight read", limit="read", per_call=len(dense)))
        for quant_type in ("nf4", "fp4"):
            for blocksize in (64, 128):
                stack, nbytes = _packed_stack(torch, F, W, blocksize, quant_type, stack_bytes)
                for name, attr in DTYPE_NAMES:
                    dtype = getattr(torch, attr)
                    for batch in (1, 8):
                        A = torch.randn(batch, k, generator=gen).to(dtype)
                        fns = [lambda p=p, s=s, A=A: F.gemv_4bit(A, p, s) for p, s in stack]
                        row = f"gemv_4bit {name} {quant_type} bs {blocksize} {n_out}x{k} batch {batch}"
                        ops.append(Op("kbit", row, _stack_pass(fns), nbytes, "4-bit weight + absmax read",
                                      limit="read", baseline=f"F.linear {name} dense {n_out}x{k} batch {batch}",
                                      per_call=len(stack), macs=batch * n_out * k))
                        if batch == 1 and quant_type == "nf4" and blocksize == 64 and name != "fp16":
                            ops.append(Op("kbit", row + BETWEEN, _between(fns, _decode_attention(torch, dtype)), nbytes,
                                          "4-bit weight + absmax read", limit="read", baseline=row,
                                          per_call=len(stack), macs=n_out * k, self_timed=True))
    return ops


def linear4bit_ops(torch, shape: tuple[int, int], stack_bytes: int, batches=LINEAR_BATCHES) -> list[list[Op]]:
    """Per batch: Linear4bit, the dense nn.Linear and dequantize_4bit + F.linear on stacks of one layer shape."""
    import kbit.functional as F
    from kbit.nn import Linear4bit

    n_out, k = shape
    gen = torch.Generator().manual_seed(2)
    groups = []
    for name, attr in (("fp32", "float32"), ("bf16", "bfloat16")):
        dtype = getattr(torch, attr)
        dense = torch.nn.Linear(k, n_out, bias=False, dtype=dtype)
        with torch.no_grad():
            dense.weight.copy_(torch.randn(n_out, k, generator=gen) * 0.02)
        base = Linear4bit.from_linear(dense, blocksize=64, compress_statistics=False)
        qbytes = base.weight.numel() + base.quant_state.absmax.numel() * 4
        layers = []
        for _ in range(_layers(qbytes, stack_bytes)):
            layer = Linear4bit(k, n_out, bias=False, compress_statistics=False, device="meta")
            layer.load_state_dict({key: v.clone() for key, v in base.state_dict().items()}, assign=False)
            layers.append(layer)
        denses = [torch.nn.Linear(k, n_out, bias=False, dtype=dtype) for _ in range(_layers(n_out * k * dtype.itemsize,
                                                                                              stack_bytes))]
        for batch in batches:
            x = torch.randn(batch, k, generator=gen).to(dtype)
            label = f"{name} {n_out}x{k} batch {batch}"
            group = [Op("torch", f"nn.Linear {label} (dense)", _stack_pass([lambda d=d, x=x: d(x) for d in denses]),
                        n_out * k * dtype.itemsize, "dense weight read", limit="read", per_call=len(denses)),
                     Op("kbit", f"dequantize_4bit + F.linear {label}",
                        _stack_pass([lambda q=q, x=x, dt=dtype: torch.nn.functional.linear(
                            x, F.dequantize_4bit(q.weight, q.quant_state).to(dt)) for q in layers]),
                        qbytes, "4-bit weight + absmax read", limit="read", baseline=f"nn.Linear {label} (dense)",
                        per_call=len(layers)),
                     Op("kbit", f"Linear4bit {label}", _stack_pass([lambda q=q, x=x: q(x) for q in layers]), qbytes,
                        "4-bit weight + absmax read", limit="read", baseline=f"nn.Linear {label} (dense)",
                        per_call=len(layers), macs=batch * n_out * k)]
            groups.append(group)
            groups.append(_grad_input_group(torch, F, label, layers, denses, batch, gen, dtype))
    return groups


def _grad_input_group(torch, F, label: str, layers, denses, batch: int, gen, dtype) -> list[Op]:
    """The backward pass of the same stacks with respect to the input (QLoRA trains adapters through it): what
    autograd runs for Linear4bit (kbit::linear_4bit_grad_input, dequantized tiles + torch's matmul), beside the
    dense layer's grad @ W and grad @ dequantize_4bit(W)."""
    from kbit import _quant4

    n_out, k = layers[0].out_features, layers[0].in_features
    g = torch.randn(batch, n_out, generator=gen).to(dtype)
    qbytes = layers[0].weight.numel() + layers[0].quant_state.absmax.numel() * 4
    dense_name = f"grad @ W {label} (dense input gradient)"
    grad_input = torch.ops.kbit.linear_4bit_grad_input
    return [Op("torch", dense_name, _stack_pass([lambda d=d: torch.mm(g, d.weight) for d in denses]),
               n_out * k * dtype.itemsize, "dense weight read", limit="read", per_call=len(denses)),
            Op("kbit", f"dequantize_4bit + grad @ W {label}",
               _stack_pass([lambda q=q: torch.mm(g, F.dequantize_4bit(q.weight, q.quant_state).to(dtype))
                            for q in layers]),
               qbytes, "4-bit weight + absmax read", limit="read", baseline=dense_name, per_call=len(layers)),
            Op("kbit", f"Linear4bit input gradient {label}",
               _stack_pass([lambda q=q: grad_input(g, q.weight, *_quant4.absmax_parts(q.quant_state), k,
                                                   q.quant_state.blocksize, q.quant_state.quant_type)
                            for q in layers]),
               qbytes, "4-bit weight + absmax read", limit="read", baseline=dense_name, per_call=len(layers),
               macs=batch * n_out * k)]


# ------------------------------------------------------------------------------------------ verdicts and table

def fractions(rows: list[Row], read_gbps: float | None, copy_gbps: float | None) -> None:
    for r in rows:
        limit = {"read": read_gbps, "copy": copy_gbps}.get(r.limit)
        r.fraction = r.gbps / limit if r.gbps and limit else None


def mac_rate(rows: list[Row]) -> float | None:
    """Multiply-adds per second of the mm row (the machine's fp32 compute rate, as torch's BLAS reaches it)."""
    mm = next((r for r in rows if r.operation.startswith("mm fp32")), None)
    return mm.macs / (mm.median_ms / 1e3) if mm and mm.median_ms > 0 else None


def floors(rows: list[Row], read_gbps: float | None, macs_per_s: float | None) -> None:
    """Each matrix-product row's floor: the larger of reading its bytes at the read bandwidth and doing its
    multiply-adds at the mm row's rate (a roofline; the row cannot beat it), and which of the two it is."""
    for r in rows:
        if not r.macs or r.operation.startswith("mm fp32") or not read_gbps or not macs_per_s or not r.nbytes:
            continue
        read_ms = r.nbytes / (read_gbps * 1e9) * 1e3
        compute_ms = r.macs / macs_per_s * 1e3
        r.floor_ms, r.floor = (read_ms, "read") if read_ms >= compute_ms else (compute_ms, "compute")


def judge(rows: list[Row], read_gbps: float | None, copy_gbps: float | None) -> None:
    """Fill each kbit row's target and verdict."""
    by_op = {(r.library, r.operation, r.form): r for r in rows}
    torch_adamw = by_op.get(("torch", "AdamW step (fp32 state, foreach)", "in place"))
    bnb_dequant = by_op.get(("bitsandbytes", "dequantize_4bit (nf4, bs 64)", "user"))
    for r in rows:
        if r.library != "kbit":
            continue
        base = by_op.get(("torch", r.baseline, "user")) if r.baseline else None
        if base:
            r.baseline_ms = base.median_ms
        ok = None
        if r.operation.endswith(BETWEEN):
            plain = by_op.get(("kbit", r.baseline, "user"))
            if plain:
                r.baseline_ms = plain.median_ms
                r.target = f"<= {BETWEEN_FACTOR:g}x back to back ({plain.median_ms:.3f} ms)"
                ok = r.median_ms <= BETWEEN_FACTOR * plain.median_ms
        elif r.operation.startswith("dequantize_4bit (nf4") and r.form == "user" and bnb_dequant:
            r.target, ok = f"<= {bnb_dequant.median_ms:.2f} ms (bitsandbytes, user form)", r.median_ms <= bnb_dequant.median_ms
        elif r.operation.startswith("dequantize") and r.form == "out=" and copy_gbps:
            goal = COPY_FRACTION * copy_gbps
            r.target, ok = f">= {goal:.2f} GB/s ({COPY_FRACTION:.0%} of copy)", r.gbps >= goal
        elif r.operation.startswith("quantize"):
            r.target, ok = f">= {QUANTIZE_GBPS:.1f} GB/s", r.gbps >= QUANTIZE_GBPS
        elif r.operation == "AdamW8bit step" and torch_adamw:
            r.target, ok = f"<= {torch_adamw.median_ms:.1f} ms (torch AdamW)", r.median_ms <= torch_adamw.median_ms
        elif r.operation.startswith("gemv_4bit") and base and read_gbps:
            speedup, of_read = base.median_ms / r.median_ms, (r.fraction or 0)
            r.target = (f">= {GEMV_SPEEDUP:g}x dense (is {speedup:.2f}x), >= {1 / GEMV_READ_FACTOR:.0%} of read "
                        f"(is {of_read:.0%})")
            ok = speedup >= GEMV_SPEEDUP and of_read >= 1 / GEMV_READ_FACTOR
        elif r.operation.startswith("Linear4bit input gradient") and base:
            deq = by_op.get(("kbit", r.operation.replace("Linear4bit input gradient", "dequantize_4bit + grad @ W"),
                             "user"))
            if deq:
                r.target = f"<= dequantize + grad @ W ({deq.median_ms:.2f} ms); {base.median_ms / r.median_ms:.2f}x dense"
                ok = r.median_ms <= deq.median_ms
        elif r.operation.startswith("Linear4bit") and base:
            deq = by_op.get(("kbit", r.operation.replace("Linear4bit", "dequantize_4bit + F.linear"), "user"))
            if deq:
                r.target = f"<= dequantize + F.linear ({deq.median_ms:.2f} ms); {base.median_ms / r.median_ms:.2f}x dense"
                ok = r.median_ms <= deq.median_ms
        if ok is not None:
            r.verdict = "met" if ok else "MISSED"


def render(rows: list[Row], header: dict) -> str:
    lines = [" ".join(f"{k}={v}" for k, v in header.items()), ""]
    lines.append(f"{'library':<13} {'operation':<46} {'form':<8} {'median ms':>10} {'min-max ms':>15} {'GB/s':>7} "
                 f"{'of limit':>12} {'floor ms':>17}  {'counted':<27} {'target':<62} verdict")
    for r in rows:
        gbps = f"{r.gbps:7.2f}" if r.gbps else f"{'':>7}"
        frac = f"{r.fraction:6.0%} {r.limit:<5}" if r.fraction is not None else f"{'':>12}"
        floor = f"{r.floor_ms:9.3f} {r.floor:<7}" if r.floor_ms is not None else f"{'':>17}"
        lines.append(f"{r.library:<13} {r.operation:<46} {r.form:<8} {r.median_ms:10.3f} {r.spread:>15} {gbps} {frac} "
                     f"{floor}  {r.counted:<27} {r.target:<62} {r.verdict}".rstrip())
    lines.append("")
    lines.append("times are per call (stack rows: per layer, one pass over a stack larger than the last-level cache); "
                 "'of limit' is GB/s over the read (sum) or copy (copy_) row; 'floor ms' is the larger of reading the "
                 "row's bytes at the read bandwidth and doing its multiply-adds at the mm row's rate")
    return "\n".join(lines)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in filter(None, text.split(",")):
        n_out, _, k = item.partition("x")
        shapes.append((int(n_out), int(k)))
    return shapes


def run(size: int, repeats: int, threads: int | None, shapes: list[tuple[int, int]] | None = None,
        stack_bytes: int | None = None, sections: tuple[str, ...] = ("quant", "gemv", "linear", "optim")
        ) -> tuple[dict, list[Row]]:
    import torch

    import kbit

    if threads:
        torch.set_num_threads(threads)
    llc = last_level_cache_bytes()
    stack_bytes = stack_bytes if stack_bytes is not None else 2 * llc
    shapes = shapes if shapes is not None else parse_shapes(CPU_GEMV_SHAPES)
    x = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    header = {"size": f"{size}x{size}", "dtype": "float32", "threads": torch.get_num_threads(),
              "repeats": repeats, "statistic": "median", "llc_MiB": llc >> 20, "stack_MiB": stack_bytes >> 20,
              "torch": torch.__version__, "kbit": kbit.__version__, "cpu": platform.processor() or platform.machine()}
    rows: list[Row] = []
    groups: list[list[Op]] = [limit_ops(torch, x, stack_bytes), [first_touch_op(torch, x)]]
    if "quant" in sections:
        bnb_ops, bnb_missing = bitsandbytes_ops(torch, x, size)
        groups.append(kbit_quant_ops(torch, x) + [op for op in bnb_ops if "AdamW" not in op.operation])
        rows += bnb_missing
    if "optim" in sections:
        groups.append(optimizer_ops(torch, size) + ([op for op in bnb_ops if "AdamW" in op.operation]
                                                    if "quant" in sections else []))
    for group in groups:  # each group round-robin on its own (its ops compared within one run), then freed
        rows += round_robin(group, repeats)
    if "gemv" in sections:
        for shape in shapes:  # a shape's stacks at a time, so that memory holds one shape's stacks
            rows += round_robin(gemv_ops(torch, [shape], stack_bytes), repeats)
    if "linear" in sections:
        for group in linear4bit_ops(torch, shapes[0], stack_bytes):
            rows += round_robin(group, max(1, repeats // 2) if " batch 512 " in group[0].operation else repeats)
        rows += round_robin(linear8bit_ops(torch, size), repeats)
    read = next((r.gbps for r in rows if r.operation.startswith("sum (read")), None)
    copy = next((r.gbps for r in rows if r.operation.startswith("copy_")), None)
    header["read_GBps"], header["copy_GBps"] = round(read or 0, 2), round(copy or 0, 2)
    rate = mac_rate(rows)
    header["fp32_GMACps"] = round((rate or 0) / 1e9, 1)
    fractions(rows, read, copy)
    floors(rows, read, rate)
    judge(rows, read, copy)
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
    parser.add_argument("--gemv-shapes", default=CPU_GEMV_SHAPES,
                        help=f"cpu: gemv / Linear4bit weight shapes, out x in, comma-separated (default {CPU_GEMV_SHAPES})")
    parser.add_argument("--stack-bytes", type=int, default=None,
                        help="cpu: bytes of each stack of layers (default: twice the last-level cache)")
    parser.add_argument("--sections", default="quant,gemv,linear,optim",
                        help="cpu: which groups of rows to time (default quant,gemv,linear,optim)")
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
    header, rows = run(size, repeats, args.threads, parse_shapes(args.gemv_shapes), args.stack_bytes,
                       tuple(args.sections.split(",")))
    if args.json:
        print(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(render(rows, header))
    missed = [r.operation for r in rows if r.verdict == "MISSED"]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
