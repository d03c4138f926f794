"""gemv_4bit_t (G @ W, Linear4bit's input gradient for small batches) on the CPU library: the documented transposed
order bit for bit, accuracy against float64, shapes, thread counts, instruction sets, errors.

The order reference below is written from csrc/numerics/blockwise4.h's description: the N weight rows are cut into
32 chunks of S = ceil(N / 32) consecutive rows; a chunk's sum starts at +0.0 and takes its rows in increasing n, each
step a fused multiply-add (fma32: one rounding); the 32 chunk sums are added in chunk order; the total is rounded to
G's dtype once.
"""
from __future__ import annotations

import math

import pytest
import torch
from test_gemv4 import DTYPES, bits, fma32, results_under, weight_float32

import kbit
from kbit import _matmul4, _quant4
from kbit import functional as F
from kbit.nn import Linear4bit


def transposed_order_reference(G: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """G (M, N) and the dequantized W (N, K) in float32; returns (M, K) float32 in the documented order."""
    M, N = G.shape
    K = W.shape[1]
    S = -(-N // 32)
    total = torch.zeros(M, K)
    for c in range(32):
        n0 = min(N, c * S)
        n1 = min(N, n0 + S)
        acc = torch.zeros(M, K)
        for n in range(n0, n1):
            acc = fma32(G[:, n:n + 1].expand(M, K), W[n:n + 1, :].expand(M, K), acc)
        total = acc if c == 0 else total + acc
    return total


def gemv_t(G: torch.Tensor, packed: torch.Tensor, state: F.QuantState) -> torch.Tensor:
    """The native G @ W through the function Linear4bit's input gradient calls (any row count here; Linear4bit
    uses it up to GRAD_GEMV_MAX_ROWS rows)."""
    N, K = state.shape
    absmax = _quant4.resolve_absmax(*_quant4.absmax_parts(state))
    return _quant4.gemv_t_rows(G, packed.contiguous(), absmax, K, state.blocksize, state.quant_type)


def test_the_reference_is_the_plain_product_on_exact_data():
    """On small integers every step is exact, so the order reference must give the exact product."""
    G = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]])
    W = torch.tensor([[1.0, 2.0], [3.0, -4.0], [0.0, 8.0]])
    assert torch.equal(transposed_order_reference(G, W), G @ W)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("M,N,K,blocksize", [
    # K a multiple of 32 (the chunked AVX2 / AVX-512 paths): one and several 128-column groups, N a multiple of 32
    # and not (empty chunks at the end), a block of 4096 spanning weight rows, more rows of G than one pass
    (1, 64, 256, 64), (2, 37, 96, 32), (8, 70, 1024, 128), (7, 33, 160, 4096), (11, 20, 64, 32),
    (3, 100, 512, 256), (6, 1, 64, 64),
    # any K (the row path): N < 32, odd K (rows starting at an odd nibble), more than one 256-column slice
    (3, 5, 48, 128), (4, 9, 33, 64), (5, 40, 300, 64), (9, 3, 1, 32)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_results_follow_the_documented_transposed_order_bit_for_bit(quant_type, M, N, K, blocksize, dtype):
    g = torch.Generator().manual_seed(M * N + K)
    W = torch.randn(N, K, generator=g)
    G = torch.randn(M, N, generator=g).to(dtype)
    packed, state = F.quantize_4bit(W, blocksize=blocksize, quant_type=quant_type)
    expected = transposed_order_reference(G.float(), weight_float32(packed, state)).to(dtype)
    got = gemv_t(G, packed, state)
    assert got.dtype == dtype and got.shape == (M, K)
    assert torch.equal(bits(got), bits(expected))


def test_the_order_is_the_documented_one_and_not_a_plain_sum():
    """On data where the chunked order and a single running sum differ, the kernel gives the chunked order's bits."""
    g = torch.Generator().manual_seed(7)
    W, G = torch.randn(1000, 64, generator=g), torch.randn(4, 1000, generator=g)
    packed, state = F.quantize_4bit(W, blocksize=64)
    w = weight_float32(packed, state)
    running = torch.zeros(4, 64)
    for n in range(1000):
        running = fma32(G[:, n:n + 1].expand(4, 64), w[n:n + 1].expand(4, 64), running)
    chunked = transposed_order_reference(G, w)
    assert (chunked != running).float().mean() > 0.5
    assert torch.equal(bits(gemv_t(G, packed, state)), bits(chunked))


def documented_bound_t(G: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """blockwise4.h's bound for the transposed gemv against the float64 product: gamma_n * sum_n |g_n w_nk| with
    n = ceil(N / 32) + 31, gamma_n = n u / (1 - n u), u = 2^-24; then the rounding to G's dtype."""
    n = math.ceil(G.shape[1] / 32) + 31
    u = 2.0 ** -24
    float32_bound = n * u / (1 - n * u) * (G.double().abs() @ w.double().abs())
    out_u = {torch.float32: 0.0, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype]
    tiny = {torch.float32: 0.0, torch.float16: 2.0 ** -25, torch.bfloat16: 0.0}[dtype]  # half a subnormal step
    return float32_bound + out_u * ((G.double() @ w.double()).abs() + float32_bound) + tiny


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("N", [1030, 4096])
def test_error_within_the_documented_bound_against_float64(dtype, nested, N):
    g = torch.Generator().manual_seed(4)
    W = torch.randn(N, 96, generator=g)
    G = torch.randn(4, N, generator=g).to(dtype)
    packed, state = F.quantize_4bit(W, blocksize=64, compress_statistics=nested)
    w = weight_float32(packed, state)
    ref = G.double() @ w.double()
    err = (gemv_t(G, packed, state).double() - ref).abs()
    bound = documented_bound_t(G, w, dtype)
    assert (err <= bound).all(), f"worst error / bound = {(err / bound).max().item():.3f}"
    assert (err > 0).any()  # the bound is tested on real rounding, not on exact results


def test_the_bound_check_fails_for_a_result_outside_it():
    G, w = torch.ones(1, 64), torch.full((64, 1), 0.5)
    bound = documented_bound_t(G, w, torch.float32)
    assert not ((torch.tensor([[32.0]]).double() + 2 * bound - 32.0).abs() <= bound).all()


def test_empty_sizes():
    packed, state = F.quantize_4bit(torch.empty(0, 40), blocksize=64)
    assert torch.equal(gemv_t(torch.empty(3, 0), packed, state), torch.zeros(3, 40))  # no weight rows: zeros
    packed, state = F.quantize_4bit(torch.randn(6, 40), blocksize=64)
    assert gemv_t(torch.empty(0, 6), packed, state).shape == (0, 40)
    packed, state = F.quantize_4bit(torch.empty(6, 0), blocksize=64)
    assert gemv_t(torch.randn(2, 6), packed, state).shape == (2, 0)


@pytest.mark.parametrize("K", [512, 515])
def test_results_do_not_depend_on_the_thread_count(K):
    W = torch.randn(257, K)
    G = torch.randn(9, 257)
    packed, state = F.quantize_4bit(W, blocksize=128, quant_type="fp4")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gemv_t(G, packed, state)
        torch.set_num_threads(2)
        two = gemv_t(G, packed, state)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(bits(one), bits(two))


def test_native_checks_back_up_the_python_ones():
    lib = kbit._native.cpu()
    with pytest.raises(kbit.NativeArgumentError, match="NULL"):
        lib.call("kbit_gemv_4bit_t", 0, 0, None, None, None, None, 2, 3, 4, 64, None, 1)
    with pytest.raises(kbit.NativeArgumentError, match="negative size"):
        lib.call("kbit_gemv_4bit_t", 0, 0, None, None, None, None, -1, 3, 4, 64, None, 1)
    G, out = torch.randn(2, 3), torch.empty(2, 4)
    packed, state = F.quantize_4bit(torch.randn(3, 4), blocksize=64)
    args = (G.data_ptr(), packed.data_ptr(), state.absmax.data_ptr(), out.data_ptr(), 2, 3, 4)
    with pytest.raises(kbit.NativeArgumentError, match="blocksize"):
        lib.call("kbit_gemv_4bit_t", 0, 0, *args, 48, None, 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nested", [False, True])
def test_linear4bit_input_gradient_is_gemv_t_for_small_batches(dtype, nested):
    layer = Linear4bit(256, 80, compute_dtype=dtype, compress_statistics=nested)
    for rows in range(1, _matmul4.GRAD_GEMV_MAX_ROWS + 1):
        x = torch.randn(rows, 256).to(dtype).requires_grad_(True)
        grad = torch.randn(rows, 80).to(dtype)
        layer(x).backward(grad)
        assert torch.equal(bits(x.grad), bits(gemv_t(grad, layer.weight, layer.quant_state)))


def test_linear4bit_input_gradient_above_the_threshold_takes_the_tiles():
    layer = Linear4bit(128, 96, compute_dtype=torch.float32)
    rows = _matmul4.GRAD_GEMV_MAX_ROWS + 1
    x = torch.randn(rows, 128, requires_grad=True)
    grad = torch.randn(rows, 96)
    layer(x).backward(grad)
    w = F.dequantize_4bit(layer.weight, layer.quant_state)
    assert torch.allclose(x.grad, grad @ w, atol=1e-5)
    assert torch.allclose(gemv_t(grad, layer.weight, layer.quant_state), x.grad, atol=1e-5)


def _path_results() -> list[torch.Tensor]:
    """gemv_t results covering every CPU code path (chunked K, one and several 128-column groups, every AVX-512
    row count 1-8 and a second pass; any K through the row path, odd K), a non-finite block, fp4, every dtype."""
    g = torch.Generator().manual_seed(12)
    results = []
    for (N, K, bs, qt) in ((45, 256, 64, "nf4"), (9, 96, 128, "fp4"), (13, 100, 32, "nf4"), (70, 33, 64, "fp4"),
                           (6, 32, 4096, "nf4")):
        W = torch.randn(N, K, generator=g)
        W[N // 2, 0] = float("inf")
        packed, state = F.quantize_4bit(W, blocksize=bs, quant_type=qt)
        for dtype in DTYPES:
            for M in (1, 2, 3, 5, 8, 11):
                results.append(gemv_t(torch.randn(M, N, generator=g).to(dtype), packed, state))
    return results


@pytest.mark.parametrize("forced", ["KBIT_CPU_BASELINE", "KBIT_CPU_NO_AVX512"])
def test_every_instruction_set_writes_the_same_bits(tmp_path, forced):
    there = results_under(forced, "test_gemv4t", tmp_path)
    here = _path_results()
    assert len(here) == len(there) == 5 * 3 * 6
    assert any(not torch.isfinite(x).all() for x in here)  # the inf block reaches the outputs
    for i, (x, y) in enumerate(zip(here, there)):
        assert torch.equal(bits(x), bits(y)), f"result {i} differs under {forced}=1"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_the_cpu_bits(dtype):
    W = torch.randn(333, 70 * 32 + 5)  # K not a multiple of 32, several blocks of 32 columns, N not either
    G = torch.randn(5, 333).to(dtype)
    for nested in (False, True):
        packed, state = F.quantize_4bit(W, blocksize=64, compress_statistics=nested)
        cpu = gemv_t(G, packed, state)
        gpu = gemv_t(G.cuda(), packed.cuda(), state.to("cuda")).cpu()
        assert torch.equal(bits(gpu), bits(cpu))
