"""LLM.int8 on the CPU library: row-wise int8 quantization against a reference written here from the format's
definition (csrc/numerics/int8.h), the exact int32 product on both of its paths, the product's dequantization,
and Linear8bitLt (accuracy against an fp32 reference on outlier-heavy activations, state_dict, gradients, errors).

bitsandbytes itself is compared in tests/ops/test_bnb_interop.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kbit
from kbit import _int8
from kbit import functional as F

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INV_127_SQ = float(np.float32(1) / np.float32(16129))  # the correctly rounded float32 of 1 / 127^2


def reference_quant(A: torch.Tensor, threshold: float = 0.0):
    x = A.float().reshape(-1, A.shape[-1])
    inlier = x.abs() < threshold if threshold > 0 else torch.ones_like(x, dtype=torch.bool)
    inlier |= x.isnan()
    stats = torch.where(inlier, x.abs(), torch.zeros_like(x)).amax(dim=1)
    stats = torch.where(x.isnan().any(dim=1) & inlier.any(dim=1), torch.full_like(stats, float("nan")), stats)
    finite = (stats > 0) & torch.isfinite(stats)
    scale = torch.where(finite, torch.reciprocal(stats) * 127.0, torch.zeros_like(stats))
    q = torch.round(x * scale[:, None]).clamp(-127, 127).nan_to_num(0.0).to(torch.int8)
    cols = None
    if threshold > 0:
        hit = (x.abs() >= threshold).any(dim=0)
        cols = hit.nonzero().reshape(-1)
        q[:, hit] = 0
    return q.reshape(A.shape), stats, cols


def outlier_activations(rows: int, cols: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Gaussian activations with a few feature columns 25x larger: the outlier pattern LLM.int8 is built for."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    x[:, torch.randperm(cols, generator=g)[:max(1, cols // 128)]] *= 25
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_vectorwise_quant_matches_the_definition(dtype, threshold):
    A = outlier_activations(67, 300, dtype)
    codes, stats, cols = F.int8_vectorwise_quant(A, threshold)
    ref_codes, ref_stats, ref_cols = reference_quant(A, threshold)
    assert codes.dtype == torch.int8 and codes.shape == A.shape and stats.dtype == torch.float32
    assert torch.equal(stats, ref_stats) and torch.equal(codes, ref_codes)
    assert (cols is None) == (threshold == 0) and (cols is None or torch.equal(cols, ref_cols))
    if threshold:
        assert cols.numel() >= 2  # the planted outlier columns are found


def test_rows_of_zeros_and_non_finite_values():
    A = torch.randn(4, 64)
    A[0] = 0
    A[1, 3] = float("inf")
    A[2, 7] = float("nan")
    codes, stats, _ = F.int8_vectorwise_quant(A)
    assert stats[0] == 0 and bool((codes[0] == 0).all())
    assert stats[1] == float("inf") and stats[2].isnan() and bool((codes[1:3] == 0).all())
    acc = F.int8_linear_matmul(codes, codes[3:])
    out = F.int8_mm_dequant(acc, stats, stats[3:], dtype=torch.float32)
    assert out[0].item() == 0 and out[1:3].isnan().all()  # never a finite number out of inf/NaN input


def test_an_inf_outlier_goes_to_the_outlier_columns():
    A = torch.randn(3, 64)
    A[1, 5] = float("inf")
    codes, stats, cols = F.int8_vectorwise_quant(A, 6.0)
    assert cols.tolist() == [5] and bool(torch.isfinite(stats).all()) and bool((codes[:, 5] == 0).all())


@pytest.mark.parametrize("path", ["torch._int_mm", "float32 chunks"])
@pytest.mark.parametrize("shape", [(1, 64, 64), (5, 3000, 24), (33, 17, 9), (0, 8, 8)])
def test_int8_product_is_exact_on_both_paths(monkeypatch, path, shape):
    m, k, n = shape
    g = torch.Generator().manual_seed(k)
    A = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    B = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    monkeypatch.setattr(_int8, "int_mm_path", lambda a, b: path)
    out = F.int8_linear_matmul(A, B)
    assert out.dtype == torch.int32 and torch.equal(out.long(), A.long() @ B.long().t())


def test_int8_product_extremes_do_not_overflow_the_float32_chunks(monkeypatch):
    A = torch.full((2, 4096), 127, dtype=torch.int8)
    B = torch.full((3, 4096), -127, dtype=torch.int8)
    monkeypatch.setattr(_int8, "int_mm_path", lambda a, b: "float32 chunks")
    assert bool((F.int8_linear_matmul(A, B) == -127 * 127 * 4096).all())


def test_the_path_choice_is_documented_per_device():
    a, b = torch.zeros(2, 20, dtype=torch.int8), torch.zeros(20, 20, dtype=torch.int8)
    assert _int8.int_mm_path(a, b) == "torch._int_mm"
    assert _int8.int_mm_path(a.to("meta"), b.to("meta")) == "float32 chunks"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_bias", [False, True])
def test_mm_dequant_matches_the_definition(dtype, with_bias):
    g = torch.Generator().manual_seed(2)
    acc = torch.randint(-(2 ** 24), 2 ** 24, (9, 40), generator=g, dtype=torch.int32)
    r, c = torch.rand(9, generator=g) * 4, torch.rand(40, generator=g) * 3
    bias = torch.randn(40, generator=g).to(dtype) if with_bias else None
    out = F.int8_mm_dequant(acc, r, c, bias=bias, dtype=dtype)
    ref = acc.float() * ((r[:, None] * c[None, :]) * INV_127_SQ)
    if with_bias:
        ref = ref + bias.float()
    assert out.dtype == dtype and torch.equal(out, ref.to(dtype))
    assert F.int8_mm_dequant(acc, r, c).dtype == torch.float16  # bitsandbytes' default


def test_vectorwise_dequant_inverts_quant_within_half_a_step():
    A = torch.randn(16, 256)
    codes, stats, _ = F.int8_vectorwise_quant(A)
    back = F.int8_vectorwise_dequant(codes, stats)
    assert bool(((back - A).abs() <= stats[:, None] / 127 * 0.5 + 1e-6).all())


def test_int8_functions_refuse_bad_input():
    with pytest.raises(kbit.KbitValueError, match="threshold"):
        F.int8_vectorwise_quant(torch.randn(2, 8), -1.0)
    with pytest.raises(kbit.KbitValueError, match="dtype torch.float64"):
        F.int8_vectorwise_quant(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(kbit.KbitValueError, match="multiplies int8"):
        F.int8_linear_matmul(torch.zeros(2, 8), torch.zeros(2, 8, dtype=torch.int8))
    with pytest.raises(kbit.KbitValueError, match="do not make A @ B.T"):
        F.int8_linear_matmul(torch.zeros(2, 8, dtype=torch.int8), torch.zeros(2, 9, dtype=torch.int8))
    with pytest.raises(kbit.KbitValueError, match="row_stats must be 2 float32"):
        F.int8_mm_dequant(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(3), torch.zeros(3))
    with pytest.raises(kbit.KbitValueError, match="int32 product"):
        F.int8_mm_dequant(torch.zeros(2, 3), torch.zeros(2), torch.zeros(3))


def test_the_cpu_library_refuses_a_negative_threshold():
    A, out, stats = torch.randn(2, 8), torch.empty(2, 8, dtype=torch.int8), torch.empty(2)
    with pytest.raises(kbit.NativeArgumentError, match="threshold"):
        kbit._native.cpu().call("kbit_int8_vectorwise_quant", 0, A.data_ptr(), None, -1.0, out.data_ptr(),
                                stats.data_ptr(), 2, 8, None, 1)


# ------------------------------------------------------------------------------------ Linear8bitLt

def _layers(inf=512, outf=256, threshold=6.0, dtype=torch.float32):
    torch.manual_seed(0)
    dense = torch.nn.Linear(inf, outf).to(dtype)
    layer = kbit.nn.Linear8bitLt(inf, outf, has_fp16_weights=False, threshold=threshold)
    layer.load_state_dict(dense.state_dict())
    return dense, layer


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear8bitlt_accuracy_on_outlier_heavy_activations(dtype):
    dense, layer = _layers(dtype=dtype)
    x = outlier_activations(64, 512, dtype, seed=1)
    ref = (x.double() @ dense.weight.double().t() + dense.bias.double()).detach()
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == dtype and y.shape == (64, 256) and layer.is_quantized
    rel = ((y.double() - ref).abs().mean() / ref.abs().mean()).item()
    assert rel < 0.01, rel  # measured: 0.0057 (float16), 0.0061 (bfloat16), 0.0057 (float32)
    _, plain = _layers(threshold=0.0, dtype=dtype)
    with torch.no_grad():
        rel_plain = ((plain(x).double() - ref).abs().mean() / ref.abs().mean()).item()
    assert rel_plain > 4 * rel  # the outlier columns are what threshold=6.0 is for (measured 0.04)


def test_linear8bitlt_state_dict_keys_and_round_trip():
    dense, layer = _layers()
    x = outlier_activations(8, 512, torch.float32)
    with torch.no_grad():
        y = layer(x)
    sd = layer.state_dict()
    assert list(sd) == ["weight", "bias", "SCB", "weight_format"]
    assert sd["weight"].dtype == torch.int8 and sd["SCB"].dtype == torch.float32 and sd["weight_format"].item() == 0
    fresh = kbit.nn.Linear8bitLt(512, 256, has_fp16_weights=False, threshold=6.0)
    fresh.load_state_dict(sd)
    assert fresh.is_quantized and torch.equal(fresh.weight, layer.weight) and torch.equal(fresh.SCB, layer.SCB)
    with torch.no_grad():
        assert torch.equal(fresh(x), y)
    # a float checkpoint loaded into a quantized layer replaces the codes instead of being truncated into them
    fresh.load_state_dict(dense.state_dict())
    assert fresh.weight.is_floating_point() and fresh.SCB is None
    with torch.no_grad():
        assert torch.equal(fresh(x), y) and fresh.is_quantized


def test_linear8bitlt_quantizes_on_a_move_and_keeps_scb_float32():
    layer = kbit.nn.Linear8bitLt(64, 32, has_fp16_weights=False)
    assert layer.weight.is_floating_point()
    layer.to("cpu")
    assert layer.is_quantized and layer.SCB.dtype == torch.float32
    layer.half()
    assert layer.SCB.dtype == torch.float32 and layer.bias.dtype == torch.float16
    assert layer(torch.randn(3, 64, dtype=torch.float16)).dtype == torch.float16


def test_linear8bitlt_gradients_flow_to_the_input_and_bias():
    _, layer = _layers(128, 64)
    x = outlier_activations(10, 128, torch.float32).requires_grad_()
    layer(x).square().sum().backward()
    w = F.int8_vectorwise_dequant(layer.weight, layer.SCB)
    x2 = x.detach().clone().requires_grad_()
    with torch.no_grad():
        y = layer(x2)
    # d/dx sum(y^2) = 2 y W, with W the dequantized weight
    assert torch.allclose(x.grad, 2 * y @ w, rtol=1e-5, atol=1e-5)
    assert torch.allclose(layer.bias.grad, 2 * y.sum(0), rtol=1e-5, atol=1e-4)
    assert layer.weight.grad is None


def test_linear8bitlt_with_fp16_weights_trains_its_float_weight():
    layer = kbit.nn.Linear8bitLt(64, 16, has_fp16_weights=True, threshold=6.0)
    x = torch.randn(5, 64)
    layer(x).sum().backward()
    assert layer.weight.is_floating_point() and torch.allclose(layer.weight.grad, torch.ones(16, 5) @ x)
    assert "SCB" not in layer.state_dict() and "weight_format" not in layer.state_dict()


def test_linear8bitlt_accepts_3d_and_empty_input():
    _, layer = _layers(64, 32)
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x.reshape(6, 64)).reshape(2, 3, 32))
        assert layer(torch.randn(0, 64)).shape == (0, 32)


def test_linear8bitlt_refuses_bad_checkpoints_and_arguments():
    _, layer = _layers(64, 32)
    sd = layer.quantize_().state_dict()
    fresh = kbit.nn.Linear8bitLt(64, 32, has_fp16_weights=False)
    with pytest.raises(kbit.KbitValueError, match="SCB is missing"):
        fresh.load_state_dict({k: v for k, v in sd.items() if k != "SCB"})
    with pytest.raises(kbit.KbitValueError, match="weight_format"):
        fresh.load_state_dict({**sd, "weight_format": torch.tensor(1, dtype=torch.uint8)})
    with pytest.raises(kbit.KbitValueError, match="has_fp16_weights=True"):
        kbit.nn.Linear8bitLt(64, 32, has_fp16_weights=True).load_state_dict(sd)
    with pytest.raises(kbit.KbitValueError, match="threshold"):
        kbit.nn.Linear8bitLt(64, 32, threshold=-1)
    with pytest.raises(kbit.KbitValueError, match="takes 64"):
        layer(torch.randn(2, 65))


# ------------------------------------------------------------------------------------ CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_cuda_int8_matches_the_cpu_bit_for_bit(dtype, threshold):
    A = outlier_activations(67, 300, dtype)
    cpu = F.int8_vectorwise_quant(A, threshold)
    gpu = F.int8_vectorwise_quant(A.cuda(), threshold)
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
    acc = F.int8_linear_matmul(cpu[0], cpu[0][:40])
    assert torch.equal(F.int8_linear_matmul(gpu[0], gpu[0][:40]).cpu(), acc)
    bias = torch.randn(40).to(dtype)
    assert torch.equal(F.int8_mm_dequant(acc.cuda(), cpu[1].cuda(), cpu[1][:40].cuda(), bias=bias.cuda(), dtype=dtype).cpu(),
                       F.int8_mm_dequant(acc, cpu[1], cpu[1][:40], bias=bias, dtype=dtype))


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(1, 64, 64), (16, 4096, 4096), (17, 24, 40), (3, 30, 10)])
def test_cuda_int8_product_is_exact_for_small_and_odd_shapes(shape):
    m, k, n = shape
    A = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    B = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    assert torch.equal(F.int8_linear_matmul(A.cuda(), B.cuda()).cpu().long(), A.long() @ B.long().t())


@pytest.mark.cuda
def test_cuda_linear8bitlt_matches_the_cpu_layer():
    _, layer = _layers()
    x = outlier_activations(9, 512, torch.float16)
    with torch.no_grad():
        cpu = layer.half()(x)
        gpu = layer.cuda()(x.cuda()).cpu()
    assert torch.allclose(gpu.float(), cpu.float(), rtol=1e-3, atol=1e-3)
