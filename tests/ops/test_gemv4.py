"""gemv_4bit on the CPU library: the documented summation order bit for bit, accuracy against float64, batch
shapes, bias, thread counts, gradients, errors.

The order reference below is written from csrc/numerics/blockwise4.h's description: 32 lanes, lane l runs over
k = l, l + 32, ... in increasing k, each step a fused multiply-add (one rounding; fma32 computes it exactly in
float64 with round-to-odd); then lanes l + 16, l + 8, ..., l + 1 are added into lane l (torch float32 additions);
then the bias.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import kbit
from kbit import functional as F

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a * b + c for float32 tensors with one rounding (C's fmaf), computed in float64: the product of two float32
    values is exact in float64; the sum s = RN(p + c) and its exact error e (TwoSum) give the exact value s + e,
    which is rounded to odd at 53 bits (truncated toward zero, last bit set when inexact) and then to nearest
    float32. Round-to-odd at 53 >= 24 + 2 bits makes that double rounding equal to one rounding."""
    p = a.double() * b.double()
    cd = c.double()
    s = p + cd
    bp = s - p
    e = (p - (s - bp)) + (cd - bp)
    inexact = (e != 0) & torch.isfinite(s)
    toward_zero = torch.where(inexact & ((e > 0) != (s > 0)), torch.nextafter(s, torch.zeros_like(s)), s)
    odd = (toward_zero.view(torch.int64) | 1).view(torch.float64)
    return torch.where(inexact, odd, s).float()


def test_fma32_rounds_once():
    a = torch.tensor([1 + 2.0 ** -12, 3.0, 1e30, 2.0 ** -70], dtype=torch.float32)
    c = torch.tensor([-1.0, 0.5, -1e30, 0.0], dtype=torch.float32)
    got = fma32(a, a, c).double()
    exact = a.double() * a.double() + c.double()  # exact for the first two, and the reference's own float64 below
    assert got[0].item() == 2.0 ** -11 + 2.0 ** -24  # a * a rounded first would give 2^-11
    assert (a * a + c)[0].item() == 2.0 ** -11
    assert got[1].item() == exact[1].item() == 9.5
    assert got[2].item() == torch.tensor(exact[2].item(), dtype=torch.float32).item()
    assert got[3].item() == torch.tensor(2.0 ** -140, dtype=torch.float32).item()  # a float32 subnormal, rounded once


def lane_order_reference(A: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, fused: bool = True
                         ) -> torch.Tensor:
    """A (M, K) and the dequantized W (N, K) in float32; returns (M, N) float32 in the documented order (fused
    steps; fused=False: a rounded product then a rounded add, kbit's order before ABI 4)."""
    M, K = A.shape
    N = W.shape[0]
    acc = torch.zeros(M, N, 32)
    for k0 in range(0, K, 32):
        width = min(32, K - k0)
        a, w = A[:, None, k0:k0 + width].expand(M, N, width), W[None, :, k0:k0 + width].expand(M, N, width)
        acc[:, :, :width] = fma32(a, w, acc[:, :, :width]) if fused else acc[:, :, :width] + a * w
    for offset in (16, 8, 4, 2, 1):
        acc[:, :, :offset] = acc[:, :, :offset] + acc[:, :, offset:2 * offset]
    out = acc[:, :, 0]
    return out if bias is None else out + bias.float()


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bytes of t (a fresh dense copy: views of size-1 dimensions can carry any stride)."""
    return t.new_empty(t.shape).copy_(t).reshape(-1).view(torch.uint8)


def weight_float32(packed: torch.Tensor, state: F.QuantState) -> torch.Tensor:
    """The dequantized weight in float32 (what the kernel multiplies by), whatever the state's dtype."""
    f32 = F.QuantState(state.absmax, state.shape, state.code, state.blocksize, state.quant_type, torch.float32,
                       state.offset, state.state2)
    return F.dequantize_4bit(packed, f32)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("M,N,K,blocksize", [(1, 7, 96, 64), (3, 5, 48, 32), (2, 9, 33, 32), (4, 3, 1000, 128),
                                             (1, 1, 1, 32), (5, 17, 4100, 4096),
                                             (8, 13, 128, 64), (3, 9, 4096, 64), (11, 6, 64, 32),
                                             # blocks of 2 and 4 chunks, sliced for 8 rows of A (AVX-512 unrolled
                                             # walks), and blocks of 8 chunks (the generic per-block walk)
                                             (9, 21, 1024, 64), (8, 19, 1024, 128), (1, 33, 256, 128),
                                             (2, 7, 512, 256), (5, 3, 8192, 1024),
                                             # AVX2: 8 rows through the decode buffer and 2 in registers, an odd
                                             # weight row left after the buffer's pairs
                                             (10, 9, 512, 64)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_results_follow_the_documented_order_bit_for_bit(quant_type, M, N, K, blocksize, dtype):
    g = torch.Generator().manual_seed(M * N + K)
    W = torch.randn(N, K, generator=g)
    A = torch.randn(M, K, generator=g).to(dtype)
    bias = torch.randn(N, generator=g).to(dtype)
    packed, state = F.quantize_4bit(W, blocksize=blocksize, quant_type=quant_type)
    w = weight_float32(packed, state)
    for b in (None, bias):
        expected = lane_order_reference(A.float(), w, b).to(dtype)
        got = F.gemv_4bit(A, packed, state, bias=b)
        assert got.dtype == dtype and got.shape == (M, N)
        assert torch.equal(bits(got), bits(expected))


def test_the_steps_are_fused():
    """On data where a separately rounded product changes float32 sums, gemv gives the fused order's bits."""
    g = torch.Generator().manual_seed(5)
    W, A = torch.randn(64, 4096, generator=g), torch.randn(8, 4096, generator=g)
    packed, state = F.quantize_4bit(W, blocksize=64)
    w = weight_float32(packed, state)
    fused, unfused = lane_order_reference(A, w, None), lane_order_reference(A, w, None, fused=False)
    got = F.gemv_4bit(A, packed, state)
    assert (fused != unfused).float().mean() > 0.5  # the two orders differ on most outputs here
    assert torch.equal(bits(got), bits(fused))


def documented_bound(A: torch.Tensor, w: torch.Tensor, K: int, dtype: torch.dtype) -> torch.Tensor:
    """The error bound of gemv_4bit against the float64 product with the dequantized weight (blockwise4.h):
    gamma_n * sum_k |a_k w_k| with n = ceil(K / 32) + 5 and gamma_n = n u / (1 - n u), u = 2^-24 (every term sees
    at most ceil(K / 32) fused lane steps, its own product exact inside the first, and 5 tree levels), then the
    rounding to A's dtype."""
    n = math.ceil(K / 32) + 5
    u = 2.0 ** -24
    float32_bound = n * u / (1 - n * u) * (A.double().abs() @ w.double().abs().T)
    out_u = {torch.float32: 0.0, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype]
    ref = A.double() @ w.double().T
    tiny = {torch.float32: 0.0, torch.float16: 2.0 ** -25, torch.bfloat16: 0.0}[dtype]  # half a subnormal step
    return float32_bound + out_u * (ref.abs() + float32_bound) + tiny


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("K", [1030, 4096])
def test_error_within_the_documented_bound_against_float64(dtype, nested, K):
    g = torch.Generator().manual_seed(3)
    W = torch.randn(300, K, generator=g)
    A = torch.randn(4, K, generator=g).to(dtype)
    packed, state = F.quantize_4bit(W, blocksize=64, compress_statistics=nested)
    w = weight_float32(packed, state)
    ref = A.double() @ w.double().T
    got = F.gemv_4bit(A, packed, state).double()
    err, bound = (got - ref).abs(), documented_bound(A, w, K, dtype)
    assert (err <= bound).all(), f"worst error / bound = {(err / bound).max().item():.3f}"
    assert (err > 0).any()  # the bound is tested on real rounding, not on exact results


def test_the_bound_check_fails_for_a_result_outside_it():
    A, w = torch.ones(1, 64), torch.full((1, 64), 0.5)
    bound = documented_bound(A, w, 64, torch.float32)
    assert not ((torch.tensor([[32.0]]).double() + 2 * bound - 32.0).abs() <= bound).all()


@pytest.mark.parametrize("shape", [(96,), (1, 96), (6, 96), (2, 3, 96), (0, 96), (2, 0, 96)])
def test_batch_and_leading_dimensions(shape):
    W = torch.randn(11, 96)
    packed, state = F.quantize_4bit(W, blocksize=32)
    A = torch.randn(shape)
    out = F.gemv_4bit(A, packed, state)
    assert out.shape == (*shape[:-1], 11)
    if A.numel():
        rows = F.gemv_4bit(A.reshape(-1, 96), packed, state).reshape(out.shape)
        assert torch.equal(out, rows)
        single = torch.stack([F.gemv_4bit(a, packed, state) for a in A.reshape(-1, 96)]).reshape(out.shape)
        assert torch.equal(out, single)  # each output row is computed alone: batching changes no bit


def test_empty_reduction_gives_the_bias():
    packed, state = F.quantize_4bit(torch.empty(5, 0), blocksize=64)
    bias = torch.randn(5)
    assert torch.equal(F.gemv_4bit(torch.empty(3, 0), packed, state, bias), bias.expand(3, 5))
    assert torch.equal(F.gemv_4bit(torch.empty(3, 0), packed, state), torch.zeros(3, 5))


def test_results_do_not_depend_on_the_thread_count():
    W = torch.randn(257, 515)
    A = torch.randn(9, 515)
    packed, state = F.quantize_4bit(W, blocksize=128, quant_type="fp4")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = F.gemv_4bit(A, packed, state)
        torch.set_num_threads(2)
        two = F.gemv_4bit(A, packed, state)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_gradients_flow_to_the_input_and_bias():
    W = torch.randn(20, 64)
    packed, state = F.quantize_4bit(W, blocksize=32)
    A = torch.randn(3, 64, requires_grad=True)
    bias = torch.randn(20, requires_grad=True)
    grad = torch.randn(3, 20)
    F.gemv_4bit(A, packed, state, bias).backward(grad)
    w = F.dequantize_4bit(packed, state)
    assert torch.allclose(A.grad, grad @ w, atol=1e-5) and torch.allclose(bias.grad, grad.sum(0))


def test_bad_inputs_are_named():
    packed, state = F.quantize_4bit(torch.randn(8, 64), blocksize=64)
    with pytest.raises(kbit.KbitValueError, match="last dimension must be 64"):
        F.gemv_4bit(torch.randn(2, 63), packed, state)
    with pytest.raises(kbit.KbitValueError, match="torch.int64"):
        F.gemv_4bit(torch.ones(2, 64, dtype=torch.int64), packed, state)
    with pytest.raises(kbit.KbitValueError, match=r"bias must be .* shape \(8,\)"):
        F.gemv_4bit(torch.randn(2, 64), packed, state, bias=torch.randn(7))
    p3, s3 = F.quantize_4bit(torch.randn(2, 4, 64), blocksize=64)
    with pytest.raises(kbit.KbitValueError, match="2-D"):
        F.gemv_4bit(torch.randn(2, 64), p3, s3)
    with pytest.raises(kbit.KbitValueError, match="holds 100 bytes"):
        F.gemv_4bit(torch.randn(2, 64), packed[:100], state)


def test_native_checks_back_up_the_python_ones():
    lib = kbit._native.cpu()
    with pytest.raises(kbit.NativeArgumentError, match="NULL"):
        lib.call("kbit_gemv_4bit", 0, 0, None, None, None, None, None, 2, 3, 4, 64, None, 1)
    with pytest.raises(kbit.NativeArgumentError, match="negative size"):
        lib.call("kbit_gemv_4bit", 0, 0, None, None, None, None, None, -1, 3, 4, 64, None, 1)


def _path_results() -> list[torch.Tensor]:
    """gemv results covering every CPU code path: K a multiple of 32 (the fused AVX-512 and AVX2 tiles, every batch tile
    shape from 1 to 11 rows, row counts that leave remainders) and not (the row-by-row copies), odd K (rows that
    start at an odd nibble), blocks spanning rows, a non-finite block, fp4, every dtype."""
    g = torch.Generator().manual_seed(11)
    results = []
    for (N, K, bs, qt) in ((37, 256, 64, "nf4"), (9, 96, 128, "fp4"), (13, 100, 32, "nf4"), (7, 33, 64, "fp4"),
                           (6, 32, 4096, "nf4")):
        W = torch.randn(N, K, generator=g)
        W[N // 2, 0] = float("inf")
        packed, state = F.quantize_4bit(W, blocksize=bs, quant_type=qt)
        for dtype in DTYPES:
            for M in (1, 2, 3, 4, 5, 6, 7, 8, 11):
                A = torch.randn(M, K, generator=g).to(dtype)
                results.append(F.gemv_4bit(A, packed, state, torch.randn(N, generator=g).to(dtype)))
    return results


_PATH_SCRIPT = """
import importlib, sys, torch
sys.path.insert(0, sys.argv[1])
torch.save(importlib.import_module(sys.argv[2])._path_results(), sys.argv[3])
"""


def results_under(forced: str, module: str, tmp_path) -> list[torch.Tensor]:
    """`module`._path_results() (a test module of this folder) computed in a subprocess with `forced`=1
    (KBIT_CPU_BASELINE or KBIT_CPU_NO_AVX512); skips where that changes nothing here."""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    wide = " avx512f" if forced == "KBIT_CPU_NO_AVX512" else " avx2"
    if wide not in flags or os.environ.get("KBIT_CPU_BASELINE") == "1" or os.environ.get(forced) == "1":
        pytest.skip(f"this CPU has no{wide}, or the environment already forces {forced}=1")
    path = tmp_path / "forced.pt"
    args = [sys.executable, "-c", _PATH_SCRIPT, os.path.dirname(__file__), module, str(path)]
    subprocess.run(args, check=True, env=dict(os.environ, **{forced: "1"}))
    return torch.load(path)


@pytest.mark.parametrize("forced", ["KBIT_CPU_BASELINE", "KBIT_CPU_NO_AVX512"])
def test_every_instruction_set_writes_the_same_bits(tmp_path, forced):
    there = results_under(forced, "test_gemv4", tmp_path)
    here = _path_results()
    assert len(here) == len(there) == 5 * 3 * 9
    for i, (x, y) in enumerate(zip(here, there)):
        assert torch.equal(bits(x), bits(y)), f"result {i} differs under {forced}=1"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_the_cpu_bits(dtype):
    W = torch.randn(70, 333)
    A = torch.randn(3, 333).to(dtype)
    bias = torch.randn(70).to(dtype)
    for nested in (False, True):
        packed, state = F.quantize_4bit(W, blocksize=32, compress_statistics=nested)
        cpu = F.gemv_4bit(A, packed, state, bias)
        gpu = F.gemv_4bit(A.cuda(), packed.cuda(), state.to("cuda"), bias.cuda()).cpu()
        assert torch.equal(bits(gpu), bits(cpu))
