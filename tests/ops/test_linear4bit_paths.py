"""Linear4bit's matmul paths (kbit._matmul4): gemv_4bit up to GEMV_MAX_ROWS rows, dequantized tiles + torch's
matmul above, for the forward pass and the input gradient; and the custom ops (kbit._ops) under torch.compile
(one graph, no break, the eager bits) and torch.export."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kbit import _matmul4
from kbit import functional as F
from kbit.nn import Linear4bit

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def dense_weight(layer: Linear4bit, dtype: torch.dtype) -> torch.Tensor:
    return F.dequantize_4bit(layer.weight, layer.quant_state).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nested", [False, True])
def test_small_batches_are_gemv_bit_for_bit(dtype, nested):
    layer = Linear4bit(256, 48, compress_statistics=nested)
    for rows in range(1, _matmul4.GEMV_MAX_ROWS + 1):
        x = torch.randn(rows, 256).to(dtype)
        bias = layer.bias.to(dtype)
        assert torch.equal(layer(x), F.gemv_4bit(x, layer.weight, layer.quant_state, bias))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(5, 256), (3, 40, 256), (300, 256)])
@pytest.mark.parametrize("native", [True, False], ids=["half-matmul", "float32-matmul"])
def test_large_batches_match_dequantize_then_linear(monkeypatch, dtype, shape, native):
    monkeypatch.setattr(_matmul4, "TILE_BYTES", 64 * 256 * 2)  # several tiles, the last one partial
    monkeypatch.setattr(_matmul4, "_NATIVE_HALF", {torch.float16: native, torch.bfloat16: native})
    layer = Linear4bit(256, 200, blocksize=128, quant_type="fp4")
    x = torch.randn(shape).to(dtype)
    expected = torch.nn.functional.linear(x, dense_weight(layer, dtype), layer.bias.to(dtype))
    got = layer(x)
    assert got.shape == (*shape[:-1], 200) and got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert torch.allclose(got, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize(("dtype", "device", "native", "expected"), [
    (torch.float32, "cpu", False, torch.float32),
    (torch.float32, "cpu", True, torch.float32),
    (torch.bfloat16, "cpu", False, torch.float32),  # emulated bf16 matmul: widen, multiply, round once
    (torch.bfloat16, "cpu", True, torch.bfloat16),  # AVX512-BF16 / AMX: torch's own bf16 matmul
    (torch.float16, "cpu", False, torch.float32),
    (torch.float16, "cpu", True, torch.float16),
    (torch.bfloat16, "cuda", False, torch.bfloat16),  # a GPU multiplies halves natively
    (torch.float16, "cuda", False, torch.float16),
], ids=str)
def test_matmul_dtype_table(dtype, device, native, expected):
    assert _matmul4.matmul_dtype(dtype, device, native) == expected


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("native", [True, False], ids=["half-matmul", "float32-matmul"])
def test_half_input_gradient_rounds_once(monkeypatch, dtype, native):
    monkeypatch.setattr(_matmul4, "TILE_BYTES", 32 * 128 * 4)  # several tiles
    monkeypatch.setattr(_matmul4, "_NATIVE_HALF", {torch.float16: native, torch.bfloat16: native})
    layer = Linear4bit(128, 96, compute_dtype=dtype)
    x = torch.randn(64, 128).to(dtype).requires_grad_(True)
    grad = torch.randn(64, 96).to(dtype)
    layer(x).backward(grad)
    exact = grad.double() @ dense_weight(layer, dtype).double()
    assert x.grad.dtype == dtype
    if not native:  # float32 sums of the rounded weights (tile by tile), rounded to the dtype once: within 1 ulp
        once = (grad.float() @ dense_weight(layer, dtype).float()).to(dtype)
        ulp = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}[dtype]
        assert torch.allclose(x.grad.float(), once.float(), atol=1e-6, rtol=ulp)
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert torch.allclose(x.grad.double(), exact, atol=tol * 8, rtol=tol)


def test_tiles_start_on_block_boundaries():
    assert _matmul4.tile_rows(1000, 96, 64, 4) % 2 == 0  # 96 * rows must be a multiple of 64
    for n, k, bs in ((1000, 96, 64), (77, 4096, 64), (5, 33, 32), (3, 7, 4096)):
        rows = _matmul4.tile_rows(n, k, bs, 2)
        assert 1 <= rows <= n and (rows == n or rows * k % bs == 0)


def test_odd_in_features_and_blocks_spanning_rows(monkeypatch):
    monkeypatch.setattr(_matmul4, "TILE_BYTES", 1)  # the smallest tile: one block-aligned group of rows
    layer = Linear4bit(33, 70, blocksize=32, compress_statistics=False)
    x = torch.randn(9, 33)
    expected = torch.nn.functional.linear(x, dense_weight(layer, torch.float32), layer.bias)
    assert torch.allclose(layer(x), expected, atol=1e-5)


@pytest.mark.parametrize("rows", [2, 64])
def test_input_gradient_on_both_paths(monkeypatch, rows):
    monkeypatch.setattr(_matmul4, "TILE_BYTES", 32 * 128 * 4)
    layer = Linear4bit(128, 96, compute_dtype=torch.float32)
    x = torch.randn(rows, 128, requires_grad=True)
    grad = torch.randn(rows, 96)
    layer(x).backward(grad)
    w = dense_weight(layer, torch.float32)
    assert torch.allclose(x.grad, grad @ w, atol=1e-5)
    assert torch.allclose(layer.bias.grad, grad.sum(0), atol=1e-5)
    assert layer.weight.grad is None


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(Linear4bit(64, 96), torch.nn.ReLU(),
                               Linear4bit(96, 32, bias=False, quant_type="fp4", compress_statistics=False))


@pytest.mark.slow
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_compiled_model_has_no_graph_break_and_the_eager_bits(rows):
    model = _model()
    x = torch.randn(rows, 64)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    compiled = torch.compile(model, fullgraph=True)
    assert torch.equal(compiled(x), model(x))


@pytest.mark.slow
def test_compiled_backward_matches_eager():
    model = _model()
    x = torch.randn(6, 64, requires_grad=True)
    model(x).sum().backward()
    eager = x.grad.clone()
    x.grad = None
    torch.compile(model, fullgraph=True)(x).sum().backward()
    assert torch.allclose(x.grad, eager, atol=1e-6)


@pytest.mark.slow
def test_export_holds_the_custom_ops_and_runs():
    model = _model()
    program = torch.export.export(model, (torch.randn(3, 64),))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "kbit.linear_4bit.default" in targets
    x = torch.randn(3, 64)
    assert torch.equal(program.module()(x), model(x))


def test_functional_ops_compile_without_a_graph_break():
    packed, state = F.quantize_4bit(torch.randn(32, 64), blocksize=64)

    def f(a):
        return F.gemv_4bit(a, packed, state) * 2, F.dequantize_4bit(packed, state) + 1

    a = torch.randn(2, 64)
    explained = torch._dynamo.explain(f)(a)
    assert explained.graph_break_count == 0, explained.break_reasons
    for got, want in zip(torch.compile(f, fullgraph=True)(a), f(a)):
        assert torch.equal(got, want)


def test_fake_implementations_give_shapes_without_running_a_kernel():
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer = Linear4bit(64, 16)
    with FakeTensorMode(allow_non_fake_inputs=True):
        y = torch.ops.kbit.linear_4bit(torch.empty(7, 5, 64), layer.weight.reshape(-1),
                                       *__import__("kbit")._quant4.absmax_parts(layer.quant_state), None, 16, 64, "nf4")
        assert y.shape == (7, 5, 16)


def test_import_registers_the_ops_and_loads_no_library():
    code = ("import sys, torch, kbit; assert hasattr(torch.ops.kbit, 'linear_4bit'); "
            "from kbit import _native; assert not _native.loaded(), 'a library was loaded at import'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
