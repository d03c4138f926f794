"""4-bit blockwise quantization (NF4, FP4) on the CPU library: accuracy, exact nearest codes, packing, edges,
the QuantState dict form, thread counts, the AVX2 and baseline code paths, errors.

The references here are written from the format's definition (numerics.md and bitsandbytes' behaviour),
independently of the kernels: absmax per block, inv = float32(1 / absmax), n = float32(x * inv), and the code is
the argmin of |n - table| in float64 (NF4: first = lower code on ties; FP4: sign from n < 0, the magnitude's
argmin over ascending magnitudes, first = smaller magnitude on ties).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import kbit
from ci import gen_numerics
from kbit import functional as F

BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NF4_ERR = dict(zip(BLOCKSIZES, [0.067746, 0.072798, 0.076831, 0.080337, 0.083547, 0.086610, 0.089592, 0.092547]))
# the published tables, from their one definition (ci/gen_numerics.py generates the kernels' copy from it)
NF4 = torch.tensor(gen_numerics.nf4_values())
FP4_MAG = torch.tensor(gen_numerics.fp4_values()[:8])  # by the 3 magnitude bits
FP4 = torch.cat([FP4_MAG, -FP4_MAG])  # by code; code 8 is -0.0
FP4_ORDER = torch.argsort(FP4_MAG)  # magnitude bits in ascending magnitude: 0 1 6 7 4 5 2 3


def normalized(A: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = A.detach().float().flatten()
    n = x.numel()
    blocks = torch.nn.functional.pad(x, (0, (-n) % blocksize)).view(-1, blocksize)
    absmax = blocks.abs().max(dim=1).values
    a64 = absmax.double()
    inv = torch.where(a64 == 0, torch.zeros_like(a64), 1.0 / a64).float()
    normed = (blocks.double() * inv.double()[:, None]).float()
    divided = (blocks.double() / a64[:, None]).float()
    normed = torch.where(torch.isinf(inv)[:, None], divided, normed)
    return normed.flatten()[:n], absmax


def nearest(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    out = torch.empty(values.numel(), dtype=torch.long)
    for s in range(0, values.numel(), 1 << 16):
        out[s:s + (1 << 16)] = (values[s:s + (1 << 16)].double()[:, None] - table.double()[None, :]).abs().argmin(1)
    return out


def reference_codes(A: torch.Tensor, blocksize: int, quant_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    n, absmax = normalized(A, blocksize)
    if quant_type == "nf4":
        return nearest(n, NF4), absmax
    rank = nearest(n.abs(), FP4_MAG[FP4_ORDER])
    return FP4_ORDER[rank] | torch.where(n < 0, 8, 0), absmax


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    b = packed.reshape(-1).view(torch.uint8).long()
    return torch.stack([b >> 4, b & 15], dim=1).flatten()[:n]


def reference_dequantize(codes: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, dtype, shape):
    table = NF4 if quant_type == "nf4" else FP4
    scale = torch.repeat_interleave(absmax, blocksize)[:codes.numel()]
    return (table[codes] * scale).to(dtype).view(shape)


def errors(A: torch.Tensor, B: torch.Tensor) -> tuple[float, float]:
    diff = (A.float() - B.float()).abs()
    return diff.mean().item(), (diff / (A.float().abs() + 1e-8)).mean().item()


# ------------------------------------------------------------------------------------ accuracy

@pytest.mark.parametrize("blocksize", BLOCKSIZES)
def test_nf4_accuracy_matches_the_published_figures(blocksize):
    A = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(blocksize))
    packed, state = F.quantize_4bit(A, blocksize=blocksize, quant_type="nf4")
    err, _ = errors(A, F.dequantize_4bit(packed, state))
    assert err == pytest.approx(NF4_ERR[blocksize], rel=0.01)


@pytest.mark.parametrize("blocksize", BLOCKSIZES)
def test_fp4_accuracy_spans_the_published_range(blocksize):
    A = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(blocksize))
    packed, state = F.quantize_4bit(A, blocksize=blocksize, quant_type="fp4")
    err, _ = errors(A, F.dequantize_4bit(packed, state))
    if blocksize == 32:
        assert err == pytest.approx(0.088925, rel=0.01)
    elif blocksize == 4096:
        assert err == pytest.approx(0.129536, rel=0.01)
    else:
        assert 0.088925 < err < 0.129536


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_half_inputs_keep_the_accuracy(dtype, quant_type):
    A = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(5)).to(dtype)
    packed, state = F.quantize_4bit(A, blocksize=64, quant_type=quant_type)
    B = F.dequantize_4bit(packed, state)
    assert B.dtype == dtype and B.shape == A.shape
    expected = NF4_ERR[64] if quant_type == "nf4" else 0.0965
    assert errors(A, B)[0] == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [64, 128])
def test_double_quantization_accuracy(quant_type, blocksize):
    A = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(11))
    packed, state = F.quantize_4bit(A, blocksize=blocksize, quant_type=quant_type, compress_statistics=True)
    assert state.nested and state.absmax.dtype == torch.uint8 and state.state2.blocksize == 256
    abs_err, rel_err = errors(A, F.dequantize_4bit(packed, state))
    assert abs_err < 0.11 and rel_err < 0.28
    plain_packed, plain = F.quantize_4bit(A, blocksize=blocksize, quant_type=quant_type)
    assert torch.equal(packed, plain_packed)  # the codes do not depend on how absmax is stored
    assert abs_err == pytest.approx(errors(A, F.dequantize_4bit(plain_packed, plain))[0], rel=0.01)


def test_double_quantization_follows_bitsandbytes_recipe():
    A = torch.randn(70, 300, generator=torch.Generator().manual_seed(2))
    _, plain = F.quantize_4bit(A, blocksize=32)
    _, nested = F.quantize_4bit(A, blocksize=32, compress_statistics=True)
    offset = plain.absmax.mean()
    codes, state2 = F.quantize_blockwise(plain.absmax - offset, blocksize=256)
    assert torch.equal(nested.offset, offset) and torch.equal(nested.absmax, codes)
    assert torch.equal(nested.state2.absmax, state2.absmax)
    resolved = F.dequantize_blockwise(codes, state2) + offset
    packed = F.quantize_4bit(A, blocksize=32)[0]
    expected = reference_dequantize(unpack(packed, A.numel()), resolved, 32, "nf4", torch.float32, A.shape)
    assert torch.equal(F.dequantize_4bit(packed, nested), expected)


# ------------------------------------------------------------------------------------ exact codes

@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [32, 64, 4096])
def test_codes_are_exact_nearest_on_random_input(quant_type, blocksize):
    g = torch.Generator().manual_seed(blocksize)
    n = 3 * 4096 + 77
    A = torch.randn(n, generator=g) * torch.pow(10.0, torch.randint(-30, 30, (n,), generator=g).float() / 10)
    packed, state = F.quantize_4bit(A, blocksize=blocksize, quant_type=quant_type)
    codes, absmax = reference_codes(A, blocksize, quant_type)
    assert torch.equal(state.absmax, absmax)
    assert torch.equal(unpack(packed, n), codes)


def adversarial(table: torch.Tensor) -> torch.Tensor:
    """The table, every midpoint rounded to float32 and its neighbours, zeros and tiny values, both signs."""
    t = torch.sort(table.double().unique()).values
    mids = ((t[:-1] + t[1:]) / 2).float()
    up, down = torch.nextafter(mids, torch.tensor(2.0)), torch.nextafter(mids, torch.tensor(-2.0))
    tiny = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-30, -1e-30, 1e-3, -1e-3])
    values = torch.cat([table.float(), mids, up, down, tiny])
    return torch.cat([values, -values])


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_midpoints_and_their_neighbours_get_the_nearest_code(quant_type):
    values = adversarial(NF4 if quant_type == "nf4" else FP4)
    A = torch.cat([torch.tensor([1.0]), values])  # absmax 1: x * inv == x exactly
    packed, state = F.quantize_4bit(A, blocksize=4096, quant_type=quant_type)
    assert state.absmax.tolist() == [1.0]
    assert torch.equal(unpack(packed, A.numel()), reference_codes(A, 4096, quant_type)[0])


def test_nf4_exact_midpoints_go_to_the_lower_code():
    t = NF4.double()
    exact = (t[:-1] + t[1:]) / 2
    representable = exact == exact.float().double()
    assert representable.sum() >= 5
    mids = exact[representable].float()
    packed, _ = F.quantize_4bit(torch.cat([torch.tensor([1.0]), mids]), blocksize=64)
    lower = torch.nonzero(representable).flatten()
    assert torch.equal(unpack(packed, mids.numel() + 1)[1:], lower)


def test_fp4_ties_go_to_the_smaller_magnitude_and_keep_the_sign():
    mid = float((FP4_MAG[0].double() + FP4_MAG[1].double()) / 2)  # 1/384, representable in float32
    assert mid == float(torch.tensor(mid).float())
    A = torch.tensor([1.0, mid, -mid, float(torch.nextafter(torch.tensor(mid), torch.tensor(1.0)))])
    packed, _ = F.quantize_4bit(A, blocksize=32, quant_type="fp4")
    assert unpack(packed, 4).tolist() == [0b0011, 0b0000, 0b1000, 0b0001]


def test_fp4_sign_of_zero_follows_bitsandbytes():
    A = torch.tensor([1.0, -1e-4, -0.0, 0.0, 1e-4])
    packed, state = F.quantize_4bit(A, blocksize=32, quant_type="fp4")
    assert unpack(packed, 5).tolist() == [0b0011, 0b1000, 0b0000, 0b0000, 0b0000]  # x < 0 sets the sign bit
    B = F.dequantize_4bit(packed, state)
    assert torch.equal(torch.signbit(B), torch.tensor([False, True, False, False, False]))
    assert B[1:].abs().max().item() == 0.0


def test_quant_maps_are_bitsandbytes_tables():
    assert torch.equal(F.get_4bit_type("nf4"), NF4)
    fp4 = F.get_4bit_type("fp4")
    assert torch.equal(fp4, FP4) and not torch.signbit(fp4[8])  # bitsandbytes stores index 8 as +0.0
    for quant_type, table in (("nf4", NF4), ("fp4", FP4)):
        codes = torch.arange(16, dtype=torch.uint8)
        state = F.QuantState(torch.tensor([2.0]), (16,), F.get_4bit_type(quant_type), 32, quant_type, torch.float32)
        packed = (codes[0::2] << 4) | codes[1::2]
        decoded = F.dequantize_4bit(packed, state)
        assert torch.equal(decoded, table * 2.0)
        assert torch.equal(torch.signbit(decoded), torch.signbit(table))  # FP4 code 0b1000 decodes to -0.0


# ------------------------------------------------------------------------------------ packing and edges

@pytest.mark.parametrize("quant_type,expected", [("nf4", [0xF0, 0xC7]), ("fp4", [0x3B, 0x50])])
def test_packing_order_and_padding_nibble(quant_type, expected):
    packed, state = F.quantize_4bit(torch.tensor([1.0, -1.0, 0.5]), blocksize=32, quant_type=quant_type)
    assert packed.shape == (2, 1) and packed.dtype == torch.uint8
    assert packed.flatten().tolist() == expected  # element 0 high nibble; the odd tail pads with the code of 0.0


@pytest.mark.parametrize("shape,blocksize", [((3, 96), 64), ((5, 48), 32), ((7, 80), 64), ((3, 33), 32),
                                             ((1,), 32), ((4097,), 4096), ((1000,), 128), ((2, 3, 50), 256)])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_blocks_that_cross_rows_and_ragged_ends(shape, blocksize, quant_type):
    """The peer's SIMD dequantize assumed blocks never cross rows: (3, 96) at 64 and (5, 48) at 32 broke it."""
    A = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    packed, state = F.quantize_4bit(A, blocksize=blocksize, quant_type=quant_type)
    n = A.numel()
    assert packed.shape == ((n + 1) // 2, 1) and state.absmax.numel() == math.ceil(n / blocksize)
    codes, absmax = reference_codes(A, blocksize, quant_type)
    assert torch.equal(unpack(packed, n), codes) and torch.equal(state.absmax, absmax)
    B = F.dequantize_4bit(packed, state)
    assert B.shape == A.shape
    assert torch.equal(B, reference_dequantize(codes, absmax, blocksize, quant_type, torch.float32, A.shape))


@pytest.mark.parametrize("shape", [(0,), (0, 4), (3, 0)])
def test_empty_tensors(shape):
    packed, state = F.quantize_4bit(torch.empty(shape), blocksize=64)
    assert packed.shape == (0, 1) and state.absmax.numel() == 0
    assert F.dequantize_4bit(packed, state).shape == shape
    packed, state = F.quantize_4bit(torch.empty(shape), blocksize=64, compress_statistics=True)
    assert F.dequantize_4bit(packed, state).shape == shape


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_all_zero_blocks_dequantize_to_exact_zeros(quant_type):
    A = torch.zeros(3 * 64)
    A[64:128] = -0.0
    A[150] = 0.5
    packed, state = F.quantize_4bit(A, blocksize=64, quant_type=quant_type)
    assert state.absmax.tolist() == [0.0, 0.0, 0.5]
    B = F.dequantize_4bit(packed, state)
    assert torch.equal(B[:128], torch.zeros(128)) and not torch.signbit(B[:128]).any()
    zero = 0x77 if quant_type == "nf4" else 0x00
    assert (packed.flatten()[:64] == zero).all()


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("bad,absmax", [(math.inf, math.inf), (-math.inf, math.inf), (math.nan, None)])
def test_non_finite_values_poison_only_their_block(quant_type, bad, absmax):
    A = torch.randn(4 * 64, generator=torch.Generator().manual_seed(3))
    A[70] = bad
    packed, state = F.quantize_4bit(A, blocksize=64, quant_type=quant_type)
    if absmax is None:
        assert state.absmax[1:2].view(torch.int32).item() == 0x7FC00000  # stored as the canonical NaN
    else:
        assert state.absmax[1].item() == absmax
    B = F.dequantize_4bit(packed, state)
    assert (B[64:128].view(torch.int32) == 0x7FC00000).all()
    for dtype, bits in ((torch.float16, 0x7E00), (torch.bfloat16, 0x7FC0)):
        p, s = F.quantize_4bit(A.to(dtype), blocksize=64, quant_type=quant_type)
        assert (F.dequantize_4bit(p, s)[64:128].view(torch.int16) == bits).all()
    others = torch.cat([B[:64], B[128:]])
    assert torch.isfinite(others).all() and errors(torch.cat([A[:64], A[128:]]), others)[0] < 0.15


def test_non_finite_input_with_double_quantization_is_never_finite():
    A = torch.randn(4 * 64)
    A[5] = math.inf
    packed, state = F.quantize_4bit(A, blocksize=64, compress_statistics=True)
    assert torch.isnan(F.dequantize_4bit(packed, state)).all()  # mean(absmax) is inf: documented


@pytest.mark.parametrize("absmax", [3.0e38, 1.0e-40, 1.0e-45, 1.1754944e-38])
def test_huge_and_subnormal_block_scales(absmax):
    A = torch.tensor(absmax) * torch.cat([torch.tensor([1.0]), adversarial(NF4)[:60]]).float()
    packed, state = F.quantize_4bit(A, blocksize=64)
    codes, ref_absmax = reference_codes(A, 64, "nf4")
    assert torch.equal(state.absmax, ref_absmax) and torch.equal(unpack(packed, A.numel()), codes)
    B = F.dequantize_4bit(packed, state)
    assert torch.isfinite(B).all() and (B - A).abs().max().item() <= 0.2 * absmax


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_every_dtype_rounds_the_float32_values_to_nearest_even(dtype, quant_type):
    g = torch.Generator().manual_seed(4)
    A = (torch.randn(64 * 64, generator=g) * torch.repeat_interleave(torch.logspace(-7, 4, 64), 64)).to(dtype)
    packed, state = F.quantize_4bit(A, blocksize=64, quant_type=quant_type)
    codes, absmax = reference_codes(A, 64, quant_type)
    assert torch.equal(unpack(packed, A.numel()), codes)
    expected = reference_dequantize(codes, absmax, 64, quant_type, dtype, A.shape)
    assert torch.equal(F.dequantize_4bit(packed, state).view(torch.uint8), expected.view(torch.uint8))


def test_non_contiguous_input_equals_its_contiguous_copy():
    A = torch.randn(96, 80).t()
    p1, s1 = F.quantize_4bit(A, blocksize=32)
    p2, s2 = F.quantize_4bit(A.contiguous(), blocksize=32)
    assert torch.equal(p1, p2) and torch.equal(s1.absmax, s2.absmax)


def test_out_argument_and_quant_storage():
    A = torch.randn(40, 64)
    packed, state = F.quantize_4bit(A, blocksize=64, quant_storage=torch.bfloat16)
    assert packed.dtype == torch.bfloat16 and packed.shape == (640, 1)
    out = torch.full_like(A, 7.0)
    assert F.dequantize_4bit(packed, state, out=out) is out
    assert torch.equal(out, F.dequantize_4bit(packed.view(torch.uint8), state))
    with pytest.raises(kbit.KbitValueError, match="cannot be viewed as torch.float32"):
        F.quantize_4bit(torch.randn(6), blocksize=32, quant_storage=torch.float32)


def _all_results(A: torch.Tensor) -> list[torch.Tensor]:
    results = []
    for quant_type in ("nf4", "fp4"):
        for blocksize in (32, 256):
            packed, state = F.quantize_4bit(A, blocksize=blocksize, quant_type=quant_type)
            results += [packed, state.absmax, F.dequantize_4bit(packed, state)]
    return results


def test_results_do_not_depend_on_the_thread_count():
    A = torch.randn(257, 1031, generator=torch.Generator().manual_seed(8))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _all_results(A)
        torch.set_num_threads(2)
        two = _all_results(A)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(x, y) for x, y in zip(one, two))


def _path_results(sizes: list[int]) -> list[torch.Tensor]:
    """Quantize/dequantize results covering every CPU code path (the caller picks the instruction set)."""
    g = torch.Generator().manual_seed(21)
    results = []
    for n in sizes:
        A = torch.randn(n, generator=g) * 3
        for qt in ("nf4", "fp4"):
            p, s = F.quantize_4bit(A, blocksize=64, quant_type=qt)
            results += [p, s.absmax] + [F.dequantize_4bit(p, F.QuantState(s.absmax, s.shape, s.code, 64, qt, dt))
                                        for dt in DTYPES]
            h, hs = F.quantize_4bit(A[:4097].to(torch.bfloat16), blocksize=32, quant_type=qt)
            results += [h, hs.absmax]
    return results


_BASELINE_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from test_blockwise4 import _path_results
torch.save(_path_results([int(n) for n in sys.argv[3:]]), sys.argv[2])
"""


def _assert_paths_agree(tmp_path, sizes: list[int]) -> None:
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " avx2" not in flags or os.environ.get("KBIT_CPU_BASELINE") == "1":
        pytest.skip("only the baseline path runs here (no AVX2, or KBIT_CPU_BASELINE=1)")
    path = tmp_path / "baseline.pt"
    env = dict(os.environ, KBIT_CPU_BASELINE="1")
    args = [sys.executable, "-c", _BASELINE_SCRIPT, os.path.dirname(__file__), str(path), *map(str, sizes)]
    subprocess.run(args, check=True, env=env)
    avx2, baseline = _path_results(sizes), torch.load(path)
    assert len(avx2) == len(baseline) == 14 * len(sizes)
    for i, (x, y) in enumerate(zip(avx2, baseline)):
        assert torch.equal(x.view(torch.uint8), y.view(torch.uint8)), f"result {i} differs"


def test_avx2_and_baseline_code_paths_write_identical_bits(tmp_path):
    _assert_paths_agree(tmp_path, [1000, 4096 * 3 + 77])


@pytest.mark.slow
def test_avx2_and_baseline_streaming_paths_write_identical_bits(tmp_path):
    _assert_paths_agree(tmp_path, [(1 << 23) + 33])  # outputs above 16 MiB: the non-temporal store paths


# ------------------------------------------------------------------------------------ QuantState dict form

@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_dict_round_trip_through_safetensors(tmp_path, nested, quant_type):
    safetensors = pytest.importorskip("safetensors.torch")
    A = torch.randn(33, 70, dtype=torch.float16)
    packed, state = F.quantize_4bit(A, blocksize=32, quant_type=quant_type, compress_statistics=nested)
    tensors = {"w": packed, **{f"w.{k}": v for k, v in state.as_dict(packed=True).items()}}
    safetensors.save_file(tensors, str(tmp_path / "w.safetensors"))
    loaded = safetensors.load_file(str(tmp_path / "w.safetensors"))
    state2 = F.QuantState.from_dict({k[2:]: v for k, v in loaded.items() if k.startswith("w.")}, device="cpu")
    assert (state2.quant_type, state2.blocksize, state2.dtype, state2.shape, state2.nested) == \
        (quant_type, 32, torch.float16, torch.Size([33, 70]), nested)
    assert torch.equal(F.dequantize_4bit(loaded["w"], state2), F.dequantize_4bit(packed, state))


def test_packed_dict_has_bitsandbytes_keys_and_json():
    A = torch.randn(8, 64, dtype=torch.bfloat16)
    _, state = F.quantize_4bit(A, blocksize=64, quant_type="fp4", compress_statistics=True)
    d = state.as_dict(packed=True)
    assert list(d) == ["absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state.bitsandbytes__fp4"]
    meta = json.loads(bytes(d["quant_state.bitsandbytes__fp4"].tolist()).decode())
    assert meta == {"quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16", "shape": [8, 64],
                    "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": state.offset.item()}
    assert list(meta) == ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype",
                          "nested_offset"]
    assert d["quant_state.bitsandbytes__fp4"].dtype == torch.uint8
    unpacked = state.as_dict()
    assert unpacked["shape"] == (8, 64) and unpacked["quant_type"] == "fp4"
    assert F.QuantState.from_dict(dict(unpacked)).offset.item() == state.offset.item()


def test_a_bitsandbytes_style_dict_loads():
    """What bitsandbytes writes for an fp16 NF4 weight with double quantization, built by hand."""
    A = torch.randn(16, 32)
    packed, ours = F.quantize_4bit(A, blocksize=64, compress_statistics=True)
    meta = json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [16, 32],
                       "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": ours.offset.item()})
    bnb = {"weight.absmax": ours.absmax, "weight.quant_map": F.get_4bit_type("nf4"),
           "weight.nested_absmax": ours.state2.absmax, "weight.nested_quant_map": F.create_dynamic_map(True),
           "weight.quant_state.bitsandbytes__nf4": torch.tensor(list(meta.encode()), dtype=torch.uint8)}
    state = F.QuantState.from_dict(bnb, device="cpu")
    assert torch.equal(F.dequantize_4bit(packed, state), F.dequantize_4bit(packed, ours))


def test_a_nested_state_with_another_map_is_refused():
    _, state = F.quantize_4bit(torch.randn(300), blocksize=32, compress_statistics=True)
    d = state.as_dict(packed=True)
    d["nested_quant_map"] = F.create_dynamic_map(False)
    with pytest.raises(kbit.KbitValueError, match="nested_quant_map is not the signed dynamic map"):
        F.QuantState.from_dict(d)
    d.pop("nested_quant_map")
    with pytest.raises(kbit.KbitValueError, match="double-quantization items are incomplete"):
        F.QuantState.from_dict(d)


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.pop("quant_state.bitsandbytes__nf4"), "no 4-bit quant state"),
    (lambda d: d.update({"quant_state.bitsandbytes__int4": d.pop("quant_state.bitsandbytes__nf4")}),
     "ending in one of"),
    (lambda d: d.update({"quant_map": F.get_4bit_type("fp4")}), "not the nf4 map"),
    (lambda d: d.update({"bogus": torch.zeros(1)}), "unknown quant state items"),
    (lambda d: d.pop("absmax"), "lacks absmax"),
    (lambda d: d.update({"absmax": torch.zeros(3)}), "must be 4 torch.float32 values"),
    (lambda d: d.update({"quant_state.bitsandbytes__nf4": torch.tensor([255, 0], dtype=torch.uint8)}), "UTF-8 JSON"),
])
def test_bad_dicts_are_refused(mutate, match):
    _, state = F.quantize_4bit(torch.randn(200), blocksize=64)
    d = state.as_dict(packed=True)
    mutate(d)
    with pytest.raises(kbit.KbitValueError, match=match):
        F.QuantState.from_dict(d)


# ------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("blocksize", [16, 100, 8192, 0, True, "64", 64.0, None])
def test_bad_blocksize_lists_the_valid_ones(blocksize):
    with pytest.raises(kbit.KbitValueError, match="32, 64, 128, 256, 512, 1024, 2048, 4096"):
        F.quantize_4bit(torch.zeros(64), blocksize=blocksize)


def test_bad_arguments_are_named():
    with pytest.raises(kbit.KbitValueError, match="quant_type='int4'"):
        F.quantize_4bit(torch.zeros(64), quant_type="int4")
    with pytest.raises(kbit.KbitValueError, match=r"torch\.float64"):
        F.quantize_4bit(torch.zeros(64, dtype=torch.float64))
    with pytest.raises(kbit.KbitValueError, match="quant_storage"):
        F.quantize_4bit(torch.zeros(64), quant_storage=torch.bool)
    packed, state = F.quantize_4bit(torch.randn(200), blocksize=64)
    with pytest.raises(kbit.KbitValueError, match="holds 50 bytes"):
        F.dequantize_4bit(packed[:50], state)
    with pytest.raises(kbit.KbitValueError, match="QuantState"):
        F.dequantize_4bit(packed, {"absmax": state.absmax})
    with pytest.raises(kbit.KbitValueError, match="out must be"):
        F.dequantize_4bit(packed, state, out=torch.empty(200, dtype=torch.float16))


def test_native_checks_back_up_the_python_ones():
    lib = kbit._native.cpu()
    with pytest.raises(kbit.NativeArgumentError, match="blocksize 16 is not a power of two in 32..4096"):
        lib.call("kbit_quantize_4bit", 0, 0, None, None, None, 64, 16, None, 1)
    with pytest.raises(kbit.NativeArgumentError, match="quant_type 2"):
        lib.call("kbit_dequantize_4bit", 0, 2, None, None, None, 64, 64, None, 1)
    with pytest.raises(kbit.NativeArgumentError, match="NULL pointer"):
        lib.call("kbit_quantize_4bit", 0, 0, None, None, None, 64, 64, None, 1)
    with pytest.raises(kbit.NativeArgumentError, match="stream was passed to the CPU library"):
        lib.call("kbit_dequantize_4bit", 0, 0, None, None, None, 0, 64, 1234, 1)


# ------------------------------------------------------------------------------------ CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_the_cpu_bits(quant_type, dtype):
    A = torch.randn(1000, 257).to(dtype)
    A[3, 7] = math.nan
    for blocksize in (32, 64, 4096):
        p_cpu, s_cpu = F.quantize_4bit(A, blocksize=blocksize, quant_type=quant_type)
        p_gpu, s_gpu = F.quantize_4bit(A.cuda(), blocksize=blocksize, quant_type=quant_type)
        assert torch.equal(p_gpu.cpu(), p_cpu) and torch.equal(s_gpu.absmax.cpu().view(torch.int32),
                                                               s_cpu.absmax.view(torch.int32))
        d_cpu, d_gpu = F.dequantize_4bit(p_cpu, s_cpu), F.dequantize_4bit(p_gpu, s_gpu).cpu()
        assert torch.equal(d_gpu.view(torch.uint8), d_cpu.view(torch.uint8))


@pytest.mark.cuda
def test_cuda_crossing_blocks_and_double_quantization():
    for shape, blocksize in (((3, 96), 64), ((5, 48), 32), ((1,), 32)):
        A = torch.randn(shape)
        p, s = F.quantize_4bit(A.cuda(), blocksize=blocksize, compress_statistics=True)
        pc, sc = F.quantize_4bit(A, blocksize=blocksize, compress_statistics=True)
        assert torch.equal(p.cpu(), pc)
        # the offset is torch's mean on each device (its own summation order); the same state dequantizes to
        # the same bits on both
        torch.testing.assert_close(s.offset.cpu(), sc.offset, rtol=2e-7, atol=0)
        same = F.QuantState.from_dict(s.as_dict(), device="cpu")
        assert torch.equal(F.dequantize_4bit(p, s).cpu().view(torch.int32), F.dequantize_4bit(pc, same).view(torch.int32))
