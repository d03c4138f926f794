"""8-bit blockwise quantization on the CPU library: accuracy, exact-nearest codes, edges, errors.

The reference below is written from the format's definition (numerics.md), independently of the kernels:
absmax per block, inv = float32(1 / absmax), n = float32(x * inv), and the code is the argmin of |n - map|
computed in float64 with ties to the lower code.
"""
from __future__ import annotations

import math

import pytest
import torch

import kbit
from kbit import functional as F

BLOCKSIZES = [64, 128, 256, 512, 1024, 2048, 4096]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SIGNED = F.create_dynamic_map(True)


def reference_codes(A: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = A.detach().float().flatten()
    n = x.numel()
    pad = (-n) % blocksize
    blocks = torch.nn.functional.pad(x, (0, pad)).view(-1, blocksize)
    absmax = blocks.abs().max(dim=1).values
    a64 = absmax.double()
    inv = torch.where(a64 == 0, torch.zeros_like(a64), 1.0 / a64).float()
    subnormal_path = torch.isinf(inv)
    normed = (blocks.double() * inv.double()[:, None]).float()
    divided = (blocks.double() / a64[:, None]).float()
    normed = torch.where(subnormal_path[:, None], divided, normed).flatten()[:n]
    codes = torch.empty(n, dtype=torch.uint8)
    table = SIGNED.double()
    for s in range(0, n, 1 << 14):  # chunks keep the n x 256 distance matrix small
        d = (normed[s:s + (1 << 14)].double()[:, None] - table[None, :]).abs()
        codes[s:s + (1 << 14)] = d.argmin(dim=1).to(torch.uint8)  # argmin: first (lower) code on ties
    return codes.view(A.shape), absmax


def errors(A: torch.Tensor, B: torch.Tensor) -> tuple[float, float]:
    diff = (A.float() - B.float()).abs()
    return diff.mean().item(), (diff / (A.float().abs() + 1e-8)).mean().item()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
def test_accuracy_at_the_published_figures(blocksize, dtype):
    g = torch.Generator().manual_seed(blocksize)
    A = torch.randn(1024, 1024, generator=g).to(dtype)
    codes, state = F.quantize_blockwise(A, blocksize=blocksize)
    B = F.dequantize_blockwise(codes, state)
    assert B.dtype == dtype and B.shape == A.shape and codes.dtype == torch.uint8
    abs_err, rel_err = errors(A, B)
    assert abs_err < 0.011 and rel_err < 0.018, (abs_err, rel_err)
    U = torch.rand(1024, 1024, generator=g).to(dtype)
    abs_err, rel_err = errors(U, F.dequantize_blockwise(*F.quantize_blockwise(U, blocksize=blocksize)))
    assert abs_err < 0.0036 and rel_err < 0.015, (abs_err, rel_err)


@pytest.mark.parametrize("blocksize", [64, 4096])
def test_codes_are_exact_nearest_on_inputs_spanning_many_decades(blocksize):
    g = torch.Generator().manual_seed(7)
    n = 3 * 4096 + 77
    scale = torch.pow(10.0, torch.randint(-38, 38, (n // blocksize + 1,), generator=g).float())
    A = torch.randn(n, generator=g) * torch.repeat_interleave(scale, blocksize)[:n]
    A = A * torch.pow(10.0, -6 * torch.rand(n, generator=g))  # six decades inside each block too
    codes, state = F.quantize_blockwise(A, blocksize=blocksize)
    ref_codes, ref_absmax = reference_codes(A, blocksize)
    assert torch.equal(state.absmax, ref_absmax)
    mismatches = (codes != ref_codes).sum().item()
    assert mismatches == 0, f"{mismatches} codes are not the nearest"


def _adversarial_values() -> torch.Tensor:
    """Every map value, every midpoint and its float neighbours, zeros and the smallest subnormals."""
    m = SIGNED.double()
    mids = ((m[:-1] + m[1:]) / 2).float()  # nearest float32 to each exact midpoint
    up = torch.nextafter(mids, torch.tensor(math.inf))
    down = torch.nextafter(mids, torch.tensor(-math.inf))
    tiny = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1.17549435e-38, -1.17549435e-38, 2.7e-7, -2.7e-7])
    return torch.cat([SIGNED, mids, up, down, tiny])


def test_midpoints_zeros_and_tiny_values_get_the_nearest_code():
    values = _adversarial_values()
    A = torch.cat([torch.tensor([1.0]), values])  # absmax 1: x * inv == x exactly
    codes, state = F.quantize_blockwise(A, blocksize=4096)
    assert state.absmax.tolist() == [1.0]
    ref, _ = reference_codes(A, 4096)
    assert torch.equal(codes, ref)
    assert torch.equal(codes[1:257], torch.arange(256, dtype=torch.uint8))  # map values map to themselves


def test_both_edges_of_every_top_16_bit_bucket_get_the_nearest_code():
    # the CPU finds codes through a table indexed by a float's top 16 bits plus one comparison: check the
    # first and last float of every bucket in [-1, 1] (absmax 1, so x * inv == x) against the reference
    top = torch.arange(1 << 16, dtype=torch.int64)
    edges = torch.cat([top << 16, (top << 16) | 0xFFFF]).to(torch.int64)
    x = (edges - (1 << 32) * (edges >= (1 << 31))).to(torch.int32).view(torch.float32)
    x = x[x.abs() <= 1.0]  # also drops NaNs
    assert x.numel() > 32000
    A = torch.cat([torch.tensor([1.0]), x])
    for start in range(0, A.numel(), 4095):
        block = torch.cat([torch.tensor([1.0]), A[start:start + 4095]])
        codes, _ = F.quantize_blockwise(block, blocksize=4096)
        assert torch.equal(codes, reference_codes(block, 4096)[0])


def test_exact_midpoints_go_to_the_lower_code():
    m = SIGNED.double()
    exact = (m[:-1] + m[1:]) / 2
    representable = exact == exact.float().double()
    mids = exact[representable].float()
    assert mids.numel() > 100
    codes, _ = F.quantize_blockwise(torch.cat([torch.tensor([1.0]), mids]), blocksize=4096)
    lower = torch.nonzero(representable).flatten().to(torch.uint8)
    assert torch.equal(codes[1:], lower)
    above, _ = F.quantize_blockwise(torch.cat([torch.tensor([1.0]), torch.nextafter(mids, torch.tensor(2.0))]), blocksize=4096)
    assert torch.equal(above[1:], lower + 1)


@pytest.mark.parametrize("absmax", [3.0e38, 1.0e-40, 1.0e-45, 1.1754944e-38, 6.1e-5])
def test_huge_and_subnormal_block_scales(absmax):
    A = torch.cat([torch.tensor([absmax]), torch.tensor(absmax) * _adversarial_values()[:256]]).float()
    codes, state = F.quantize_blockwise(A, blocksize=512)
    ref, ref_absmax = reference_codes(A, 512)
    assert torch.equal(state.absmax, ref_absmax)
    assert torch.equal(codes, ref)
    B = F.dequantize_blockwise(codes, state)
    assert torch.isfinite(B).all()
    assert (B - A).abs().max().item() <= 0.01 * absmax


def test_all_zero_blocks_dequantize_to_exact_zeros():
    A = torch.zeros(3 * 64)
    A[64:128] = -0.0
    A[150] = 0.5
    codes, state = F.quantize_blockwise(A, blocksize=64)
    assert state.absmax.tolist() == [0.0, 0.0, 0.5]
    B = F.dequantize_blockwise(codes, state)
    assert torch.equal(B[:128], torch.zeros(128)) and not torch.isnan(B).any()
    assert torch.all(codes[:128] == 127)


@pytest.mark.parametrize("bad,absmax", [(math.inf, math.inf), (-math.inf, math.inf), (math.nan, None)])
def test_non_finite_values_poison_only_their_block(bad, absmax):
    A = torch.randn(4 * 64)
    A[70] = bad
    codes, state = F.quantize_blockwise(A, blocksize=64)
    if absmax is None:
        assert math.isnan(state.absmax[1].item())
    else:
        assert state.absmax[1].item() == absmax
    B = F.dequantize_blockwise(codes, state)
    assert torch.isnan(B[64:128]).all()
    assert (B[64:128].view(torch.int32) == 0x7FC00000).all()  # one canonical NaN, the same bits on every path
    for dtype, bits in ((torch.float16, 0x7E00), (torch.bfloat16, 0x7FC0)):
        c, s = F.quantize_blockwise(A.to(dtype), blocksize=64)
        assert (F.dequantize_blockwise(c, s)[64:128].view(torch.int16) == bits).all()
    others = torch.cat([B[:64], B[128:]])
    assert torch.isfinite(others).all()
    assert errors(torch.cat([A[:64], A[128:]]), others)[0] < 0.02


def test_nan_wins_over_inf_in_a_block():
    A = torch.ones(64)
    A[3], A[9] = math.inf, math.nan
    _, state = F.quantize_blockwise(A, blocksize=64)
    assert math.isnan(state.absmax[0].item())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_absmax_of_every_dtype_is_exact_and_any_nan_is_the_canonical_nan(dtype):
    # the CPU reduces |x| as ordered integer bits; check it against torch per dtype, with inf, -0 and NaNs
    # of either sign and other payloads, which all become the quiet NaN 0x7fc00000
    A = torch.randn(8, 64).to(dtype)
    A[1, 5], A[2, :], A[3, 7] = -math.inf, -0.0, math.inf
    nans = torch.tensor([0x7FC00001, -0x00400000, 0x7F800001], dtype=torch.int32).view(torch.float32)  # payload, -NaN, sNaN
    A[4:7, 9] = nans.to(dtype) if dtype == torch.float32 else torch.nan
    A[7, 0] = torch.finfo(dtype).tiny / 4 if dtype != torch.bfloat16 else 1e-40
    _, state = F.quantize_blockwise(A, blocksize=64)
    expect = A.float().abs().amax(dim=1)
    finite = ~torch.isnan(expect)
    assert torch.equal(state.absmax[finite], expect[finite])
    assert finite.tolist() == [True, True, True, True, False, False, False, True]
    assert state.absmax[~finite].view(torch.int32).tolist() == [0x7FC00000] * 3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_outputs_are_the_float32_values_rounded_to_nearest_even(dtype):
    g = torch.Generator().manual_seed(3)
    # scales that push float16 results into its subnormal range and bfloat16 into many exponents
    A = (torch.randn(64 * 64, generator=g) * torch.repeat_interleave(torch.logspace(-7, 4, 64), 64)).to(dtype)
    codes, state = F.quantize_blockwise(A, blocksize=64)
    expected = (SIGNED[codes.long()] * torch.repeat_interleave(state.absmax, 64)).to(dtype)
    got = F.dequantize_blockwise(codes, state)
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))
    codes32, state32 = F.quantize_blockwise(A.float(), blocksize=64)
    assert torch.equal(codes, codes32) and torch.equal(state.absmax, state32.absmax)


@pytest.mark.parametrize("shape", [(0,), (1,), (63,), (65,), (4096 + 1,), (3, 5, 7), (0, 4), (2, 4096)])
def test_shapes(shape):
    A = torch.randn(shape)
    codes, state = F.quantize_blockwise(A, blocksize=64)
    assert codes.shape == A.shape and state.absmax.numel() == math.ceil(A.numel() / 64)
    B = F.dequantize_blockwise(codes, state)
    assert B.shape == A.shape
    if A.numel():
        assert torch.equal(codes.flatten(), reference_codes(A.flatten(), 64)[0])


def test_non_contiguous_input_equals_its_contiguous_copy():
    A = torch.randn(96, 80).t()
    assert not A.is_contiguous()
    c1, s1 = F.quantize_blockwise(A, blocksize=64)
    c2, s2 = F.quantize_blockwise(A.contiguous(), blocksize=64)
    assert torch.equal(c1, c2) and torch.equal(s1.absmax, s2.absmax)


def test_results_do_not_depend_on_the_thread_count():
    A = torch.randn(257, 1031)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        c1, s1 = F.quantize_blockwise(A, blocksize=128)
        d1 = F.dequantize_blockwise(c1, s1)
        torch.set_num_threads(max(2, before))
        c2, s2 = F.quantize_blockwise(A, blocksize=128)
        d2 = F.dequantize_blockwise(c2, s2)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(c1, c2) and torch.equal(d1, d2)


def test_out_argument_is_written():
    A = torch.randn(300)
    codes, state = F.quantize_blockwise(A, blocksize=64)
    out = torch.full_like(A, 7.0)
    assert F.dequantize_blockwise(codes, state, out=out) is out
    assert torch.equal(out, F.dequantize_blockwise(codes, state))


# ------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.uint8, torch.bool, torch.complex64], ids=str)
def test_unsupported_dtype_names_the_dtype_and_the_fix(dtype):
    with pytest.raises(kbit.KbitValueError, match=r"has dtype torch\.\w+; .*A\.float\(\)"):
        F.quantize_blockwise(torch.zeros(64, dtype=dtype))


@pytest.mark.parametrize("blocksize", [32, 100, 32768, 0, -64, True, "64", 64.0, None])
def test_bad_blocksize_lists_the_valid_ones(blocksize):
    with pytest.raises(kbit.KbitValueError, match="64, 128, 256, 512, 1024, 2048, 4096"):
        F.quantize_blockwise(torch.zeros(64), blocksize=blocksize)


def test_not_a_tensor():
    with pytest.raises(kbit.KbitValueError, match="must be a torch.Tensor, got list"):
        F.quantize_blockwise([1.0, 2.0])


def test_unsupported_device_is_named():
    with pytest.raises(kbit.KbitValueError, match="device meta"):
        F.quantize_blockwise(torch.zeros(64, device="meta"))


def test_dequantize_checks_its_inputs():
    A = torch.randn(200)
    codes, state = F.quantize_blockwise(A, blocksize=64)
    with pytest.raises(kbit.KbitValueError, match="uint8"):
        F.dequantize_blockwise(codes.float(), state)
    with pytest.raises(kbit.KbitValueError, match="describes shape"):
        F.dequantize_blockwise(codes[:100], state)
    with pytest.raises(kbit.KbitValueError, match="4 float32 values"):
        F.dequantize_blockwise(codes, type(state)(state.absmax[:3], state.code, 64, state.dtype, state.shape))
    with pytest.raises(kbit.KbitValueError, match="state.code is not sorted"):
        F.dequantize_blockwise(codes, type(state)(state.absmax, F.create_dynamic_map().flip(0), 64, state.dtype, state.shape))
    with pytest.raises(kbit.KbitValueError, match="out must be"):
        F.dequantize_blockwise(codes, state, out=torch.empty(200, dtype=torch.float16))
    with pytest.raises(kbit.KbitValueError, match="BlockwiseQuantState"):
        F.dequantize_blockwise(codes, {"absmax": state.absmax})


def test_native_checks_back_up_the_python_ones():
    lib = kbit._native.cpu()
    with pytest.raises(kbit.NativeArgumentError) as info:
        lib.call("kbit_quantize_blockwise_8bit", 0, None, None, None, 64, 100, None, 1)
    assert "blocksize 100 is not a power of two" in str(info.value) and "csrc/common/args.h" in info.value.detail
    with pytest.raises(kbit.NativeArgumentError, match="NULL pointer"):
        lib.call("kbit_quantize_blockwise_8bit", 0, None, None, None, 64, 64, None, 1)
    with pytest.raises(kbit.NativeArgumentError, match="stream was passed to the CPU library"):
        lib.call("kbit_dequantize_blockwise_8bit", 0, None, None, None, 0, 64, 1234, 1)
    with pytest.raises(kbit.NativeArgumentError, match="num_threads = 0"):
        lib.call("kbit_dequantize_blockwise_8bit", 0, None, None, None, 0, 64, None, 0)


@pytest.mark.cuda
def test_cuda_round_trip_matches_the_cpu_bits():
    A = torch.randn(1000, 257)
    c_cpu, s_cpu = F.quantize_blockwise(A, blocksize=256)
    c_gpu, s_gpu = F.quantize_blockwise(A.cuda(), blocksize=256)
    assert torch.equal(c_gpu.cpu(), c_cpu) and torch.equal(s_gpu.absmax.cpu(), s_cpu.absmax)
    assert torch.equal(F.dequantize_blockwise(c_gpu, s_gpu).cpu(), F.dequantize_blockwise(c_cpu, s_cpu))


@pytest.mark.parametrize("blocksize", [64, 256, 4096])
def test_large_float_outputs_streamed_past_the_cache_have_the_same_bits(blocksize):
    # outputs of 16 MiB or more are written with non-temporal stores (and, for blocks >= 256, a per-block
    # table of the 256 possible values): compare with the same codes dequantized in small pieces
    x = torch.randn((1 << 22) + 13, generator=torch.Generator().manual_seed(blocksize))
    x[5 * blocksize + 3], x[9 * blocksize] = math.inf, math.nan
    codes, state = F.quantize_blockwise(x, blocksize=blocksize)
    whole = F.dequantize_blockwise(codes, state)
    piece = 1 << 16  # a multiple of every blocksize
    parts = [F.dequantize_blockwise(codes[i:i + piece], F.BlockwiseQuantState(
        state.absmax[i // blocksize:(i + piece) // blocksize], state.code, blocksize, x.dtype, codes[i:i + piece].shape))
        for i in range(0, codes.numel(), piece)]
    assert torch.equal(whole.view(torch.int32), torch.cat(parts).view(torch.int32))
    assert torch.isnan(whole[5 * blocksize]).item() and torch.isnan(whole[9 * blocksize + 1]).item()


def test_an_out_sharing_memory_with_the_inputs_is_refused():
    x = torch.randn(100, 70)
    codes, state = F.quantize_blockwise(x, blocksize=64)
    buf = torch.zeros(28000, dtype=torch.uint8)
    aliased = buf[:7000].view(100, 70)
    aliased.copy_(codes)
    with pytest.raises(kbit.KbitValueError, match="out shares memory with codes"):
        F.dequantize_blockwise(aliased, state, out=buf.view(torch.float32).view(100, 70))
    absmax_home = torch.zeros(7000)
    in_absmax = F.BlockwiseQuantState(absmax_home[6000:6000 + state.absmax.numel()], state.code, 64, x.dtype, x.shape)
    in_absmax.absmax.copy_(state.absmax)
    with pytest.raises(kbit.KbitValueError, match="out shares memory with absmax"):
        F.dequantize_blockwise(codes, in_absmax, out=absmax_home.view(100, 70))
    separate = torch.empty(100, 70)
    assert F.dequantize_blockwise(codes, state, out=separate) is separate
    # parts of one buffer that do not overlap are fine
    home = torch.zeros(7000 + state.absmax.numel())
    home[7000:].copy_(state.absmax)
    beside = F.BlockwiseQuantState(home[7000:], state.code, 64, x.dtype, x.shape)
    assert torch.equal(F.dequantize_blockwise(codes, beside, out=home[:7000].view(100, 70)), separate)


def test_sparse_input_is_refused_with_the_fix():
    with pytest.raises(kbit.KbitValueError, match=r"sparse_coo.*A\.to_dense\(\)"):
        F.quantize_blockwise(torch.eye(64).to_sparse())
