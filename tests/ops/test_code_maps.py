"""8-bit blockwise quantization with any sorted code map: the map builders' exact values (SHA-256 of the
float32 bytes), exact-nearest codes for any map against an argmin reference written here, CPU blocksizes up to
16384, the refusal of maps that cannot be searched, and BlockwiseQuantState's dict form.

bitsandbytes' own builders are compared in tests/ops/test_bnb_interop.py; the sums below were taken from them.
"""
from __future__ import annotations

import hashlib

import pytest
import torch

import kbit
from kbit import functional as F

# SHA-256 of the 256 float32 little-endian values, as bitsandbytes 0.50.2's builders produce them
MAP_SUMS = {
    ("dynamic", (True, 7, 8)): "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c",
    ("dynamic", (False, 7, 8)): "305f002cc11278fb769d13b25b9fd0c7c83c8402c40a878fe086f4039fde6398",
}


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest()


def reference_codes(A: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """absmax per block, n = float32(x * float32(1 / absmax)), code = argmin |n - map| in float64, ties to the
    lower code (argmin returns the first)."""
    x = A.detach().float().flatten()
    n = x.numel()
    blocks = torch.nn.functional.pad(x, (0, (-n) % blocksize)).view(-1, blocksize)
    absmax = blocks.abs().max(dim=1).values
    inv = torch.where(absmax == 0, torch.zeros_like(absmax), (1.0 / absmax.double()).float())
    normed = (blocks * inv[:, None]).flatten()[:n]
    table = code.double()
    out = torch.empty(n, dtype=torch.uint8)
    for s in range(0, n, 1 << 14):
        d = (normed[s:s + (1 << 14)].double()[:, None] - table[None, :]).abs()
        out[s:s + (1 << 14)] = d.argmin(dim=1).to(torch.uint8)
    return out.view(A.shape), absmax


def perturbed_dynamic() -> torch.Tensor:
    """The signed dynamic map with one value moved by one ulp: the generic (non-bucketed) search path."""
    m = F.create_dynamic_map()
    m[200] = torch.nextafter(m[200], torch.tensor(1.0))
    return m


MAPS = {
    "signed": F.create_dynamic_map,
    "unsigned": lambda: F.create_dynamic_map(False),
    "linear": F.create_linear_map,
    "linear_unsigned": lambda: F.create_linear_map(False),
    "fp8_e5m2": F.create_fp8_map,
    "fp8_e4m3": lambda: F.create_fp8_map(True, 4, 3, 8),
    "dynamic_5": lambda: F.create_dynamic_map(True, 5, 8),
    "perturbed": perturbed_dynamic,
}


@pytest.mark.parametrize("key", list(MAP_SUMS), ids=str)
def test_dynamic_maps_have_the_published_checksums(key):
    assert sha(F.create_dynamic_map(*key[1])) == MAP_SUMS[key]


def test_builders_give_sorted_256_value_maps_with_the_defining_properties():
    lin = F.create_linear_map()
    assert lin.numel() == 256 and lin[0] == -1 and lin[-1] == 1 and (lin == 0).sum() >= 1  # 255 points + one zero
    assert bool((lin[1:] >= lin[:-1]).all())
    fp8 = F.create_fp8_map()
    assert fp8.numel() == 256 and fp8.max() == 1 and bool((fp8[1:] >= fp8[:-1]).all())
    e4m3 = F.create_fp8_map(True, 4, 3, 8)
    assert e4m3.unique().numel() == 255  # +0 and -0 coincide
    unsigned = F.create_linear_map(False)
    assert unsigned[0] == 0 and unsigned[-1] == 1 and unsigned.unique().numel() == 256


@pytest.mark.parametrize("args", [(True, 5, 3, 8), (True, 0, 7, 8), (True, 4, 3, 9)])
def test_fp8_builder_refuses_bit_counts_that_do_not_add_up(args):
    with pytest.raises(kbit.KbitValueError):
        F.create_fp8_map(*args)


def test_dynamic_builder_refuses_what_bitsandbytes_asserts_against():
    with pytest.raises(kbit.KbitValueError, match="2\\*\\*total_bits"):
        F.create_dynamic_map(False, 4, 8)


@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("blocksize", [64, 4096])
def test_codes_are_the_exact_nearest_for_any_sorted_map(name, blocksize):
    code = MAPS[name]()
    g = torch.Generator().manual_seed(blocksize)
    A = torch.randn(40_000, generator=g) * torch.logspace(-6, 0, 40_000)[torch.randperm(40_000, generator=g)]
    if code.min() >= 0:
        A = A.abs()
    codes, state = F.quantize_blockwise(A, code=code, blocksize=blocksize)
    ref, absmax = reference_codes(A, code, blocksize)
    assert torch.equal(state.absmax, absmax)
    # ties between equal map entries (the linear map's two zeros) may pick either: compare the values
    assert torch.equal(code[codes.long()], code[ref.long()])
    assert torch.equal(state.code, code)
    back = F.dequantize_blockwise(codes, state)
    assert torch.equal(back, code[codes.long()] * absmax.repeat_interleave(blocksize)[:A.numel()])


def test_exact_midpoints_of_a_custom_map_go_to_the_lower_code():
    code = F.create_linear_map(False)  # linspace(0, 1, 256): midpoints are exact in float32 for many pairs
    m = code.double()
    exact = (m[:-1] + m[1:]) / 2
    ok = exact == exact.float().double()
    mids = exact[ok].float()
    assert mids.numel() > 50
    codes, _ = F.quantize_blockwise(torch.cat([torch.tensor([1.0]), mids]), code=code, blocksize=4096)
    assert torch.equal(codes[1:], torch.nonzero(ok).flatten().to(torch.uint8))


@pytest.mark.parametrize("blocksize", [8192, 16384])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_takes_the_blocksizes_above_4096(blocksize, dtype):
    A = torch.randn(3 * blocksize + 17, generator=torch.Generator().manual_seed(1)).to(dtype)
    codes, state = F.quantize_blockwise(A, blocksize=blocksize)
    assert state.absmax.numel() == 4 and state.blocksize == blocksize
    assert torch.equal(codes, reference_codes(A, F.create_dynamic_map(), blocksize)[0])
    B = F.dequantize_blockwise(codes, state)
    assert B.dtype == dtype and (B.float() - A.float()).abs().mean() < 0.011


def test_unsigned_map_state_of_adam8bit_can_be_inspected():
    p = torch.nn.Parameter(torch.randn(64, 128))
    opt = kbit.optim.Adam8bit([p])
    p.grad = torch.randn_like(p)
    opt.step()
    s = opt.state[p]
    state2 = F.BlockwiseQuantState(s["absmax2"], s["qmap2"], 256, torch.float32, p.shape)
    v = F.dequantize_blockwise(s["state2"], state2)
    expected = (1 - 0.999) * p.grad.square()  # the first step's second moment
    assert (v - expected).abs().max() <= expected.max() * 0.01


BAD_MAPS = {
    "unsorted": (lambda: F.create_dynamic_map().flip(0), "not sorted"),
    "nan": (lambda: torch.cat([F.create_dynamic_map()[:-1], torch.tensor([float("nan")])]), "not finite"),
    "inf": (lambda: torch.cat([torch.tensor([-float("inf")]), F.create_dynamic_map()[1:]]), "not finite"),
    "short": (lambda: F.create_dynamic_map()[:128], "256 float32 values"),
    "float64": (lambda: F.create_dynamic_map().double(), "256 float32 values"),
    "2d": (lambda: F.create_dynamic_map().view(16, 16), "one dimension"),
    "overflow": (lambda: torch.linspace(0, 3.0e38, 256), "sum beyond"),
    "tiny": (lambda: torch.cat([torch.tensor([1e-35]), torch.linspace(0.1, 1, 255)]), "below 2\\*\\*-100"),
    "list": (lambda: F.create_dynamic_map().tolist(), "must be a torch.Tensor"),
    "int_blocksize": (lambda: 64, "pass blocksize=64"),
}


@pytest.mark.parametrize("name", list(BAD_MAPS))
def test_bad_maps_are_refused_with_the_problem_named(name):
    make, message = BAD_MAPS[name]
    with pytest.raises(kbit.KbitValueError, match=message):
        F.quantize_blockwise(torch.randn(256), make())


@pytest.mark.parametrize("name", ["unsorted", "nan", "overflow", "tiny"])
def test_the_cpu_library_refuses_bad_maps_too(name):
    code = BAD_MAPS[name][0]().contiguous()
    A = torch.randn(256)
    absmax, out = torch.empty(1), torch.empty(256, dtype=torch.uint8)
    with pytest.raises(kbit.NativeArgumentError, match="code\\["):
        kbit._native.cpu().call("kbit_quantize_blockwise_8bit_map", 0, code.data_ptr(), A.data_ptr(),
                                absmax.data_ptr(), out.data_ptr(), 256, 256, None, 1)


def test_the_cpu_library_refuses_a_blocksize_above_16384():
    code, A = F.create_dynamic_map(), torch.randn(256)
    absmax, out = torch.empty(1), torch.empty(256, dtype=torch.uint8)
    with pytest.raises(kbit.NativeArgumentError, match="64..16384"):
        kbit._native.cpu().call("kbit_quantize_blockwise_8bit_map", 0, code.data_ptr(), A.data_ptr(),
                                absmax.data_ptr(), out.data_ptr(), 256, 32768, None, 1)


def test_state_dict_form_round_trips_with_bitsandbytes_keys():
    code = F.create_fp8_map()
    A = torch.randn(3, 500, dtype=torch.float16)
    codes, state = F.quantize_blockwise(A, code=code, blocksize=256)
    d = state.as_dict()
    assert set(d) == {"quant_type", "absmax", "blocksize", "quant_map", "dtype", "shape"}
    assert d["quant_type"] is None and d["dtype"] == "float16" and d["shape"] == (3, 500)
    prefixed = {"weight." + k: v for k, v in d.items()}
    again = F.BlockwiseQuantState.from_dict(prefixed)
    assert torch.equal(F.dequantize_blockwise(codes, again), F.dequantize_blockwise(codes, state))
    no_shape = F.BlockwiseQuantState.from_dict({**d, "shape": None})
    assert F.dequantize_blockwise(codes, no_shape).shape == codes.shape


@pytest.mark.parametrize("change", [{"quant_type": "nf4"}, {"dtype": "float128"}, {"blocksize": 100},
                                    {"quant_map": torch.zeros(10)}])
def test_malformed_state_dicts_are_refused(change):
    _, state = F.quantize_blockwise(torch.randn(256), blocksize=64)
    with pytest.raises(kbit.KbitValueError):
        F.BlockwiseQuantState.from_dict({**state.as_dict(), **change})


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(MAPS))
def test_cuda_codes_match_the_cpu_for_any_map(name):
    code = MAPS[name]()
    A = torch.randn(1 << 16, generator=torch.Generator().manual_seed(3))
    if code.min() >= 0:
        A = A.abs()
    for blocksize in (64, 256, 4096):
        cpu_codes, cpu_state = F.quantize_blockwise(A, code=code, blocksize=blocksize)
        gpu_codes, gpu_state = F.quantize_blockwise(A.cuda(), code=code.cuda(), blocksize=blocksize)
        assert torch.equal(gpu_codes.cpu(), cpu_codes) and torch.equal(gpu_state.absmax.cpu(), cpu_state.absmax)
        assert torch.equal(F.dequantize_blockwise(gpu_codes, gpu_state).cpu(), F.dequantize_blockwise(cpu_codes, cpu_state))


@pytest.mark.cuda
def test_cuda_refuses_the_cpu_only_blocksizes():
    with pytest.raises(kbit.KbitValueError, match="on cuda"):
        F.quantize_blockwise(torch.randn(1 << 14, device="cuda"), blocksize=16384)
