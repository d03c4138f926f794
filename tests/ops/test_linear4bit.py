"""kbit.nn.Linear4bit: quantize once, forward through gemv_4bit, save and load without re-quantizing
(bitsandbytes' state_dict keys), and clear refusals."""
from __future__ import annotations

import json

import pytest
import torch

import kbit
from kbit import functional as F
from kbit.nn import Linear4bit

BNB_KEYS = ["weight", "bias", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map",
            "weight.quant_state.bitsandbytes__nf4"]


def test_from_linear_forward_is_the_product_with_the_quantized_weight():
    linear = torch.nn.Linear(96, 40)
    layer = Linear4bit.from_linear(linear, blocksize=64, quant_type="nf4", compress_statistics=True)
    x = torch.randn(3, 7, 96)
    y = layer(x)
    assert y.shape == (3, 7, 40) and y.dtype == torch.float32
    w = F.dequantize_4bit(layer.weight, layer.quant_state)
    assert torch.allclose(y, torch.nn.functional.linear(x, w, linear.bias), atol=1e-5)
    assert (y - linear(x)).abs().mean().item() < 0.05  # quantization error of a kaiming-uniform weight
    assert layer.weight.dtype == torch.uint8 and layer.weight.shape == (96 * 40 // 2, 1)
    assert not layer.weight.requires_grad


def test_a_new_layer_is_initialised_like_nn_linear_and_quantized():
    layer = Linear4bit(128, 32, quant_type="fp4", blocksize=32, compress_statistics=False)
    w = F.dequantize_4bit(layer.weight, layer.quant_state)
    bound = 1 / 128 ** 0.5
    assert w.shape == (32, 128) and w.abs().max().item() <= bound and w.abs().max().item() > 0.5 * bound
    assert layer.bias.abs().max().item() <= bound and layer.quant_state.quant_type == "fp4"


def test_state_dict_uses_bitsandbytes_keys():
    layer = Linear4bit(64, 16)
    sd = layer.state_dict()
    assert list(sd) == BNB_KEYS
    meta = json.loads(bytes(sd["weight.quant_state.bitsandbytes__nf4"].tolist()).decode())
    assert meta["shape"] == [16, 64] and meta["blocksize"] == 64 and meta["dtype"] == "float32"
    assert list(Linear4bit(64, 16, bias=False, compress_statistics=False).state_dict()) == [
        "weight", "weight.absmax", "weight.quant_map", "weight.quant_state.bitsandbytes__nf4"]


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_save_and_load_through_safetensors_without_requantizing(tmp_path, monkeypatch, device):
    """The seed's out-of-memory report: quantizing at load time. Quantize once, save, load the dict form."""
    safetensors = pytest.importorskip("safetensors.torch")
    model = torch.nn.Sequential(Linear4bit(96, 48, quant_type="fp4", blocksize=32), torch.nn.ReLU(),
                                Linear4bit(48, 8, bias=False, blocksize=32))
    x = torch.randn(5, 96)
    expected = model(x)
    safetensors.save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    fresh = torch.nn.Sequential(Linear4bit(96, 48, quant_type="fp4", blocksize=32, device=device), torch.nn.ReLU(),
                                Linear4bit(48, 8, bias=False, blocksize=32, device=device))

    def no_quantization(*args, **kwargs):
        raise AssertionError("loading a saved 4-bit layer must not quantize")

    monkeypatch.setattr(kbit.nn.linear4bit, "quantize_4bit", no_quantization)
    fresh.load_state_dict(safetensors.load_file(str(tmp_path / "model.safetensors")))
    assert torch.equal(fresh(x), expected)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_a_meta_layer_refuses_forward_until_loaded():
    layer = Linear4bit(32, 4, device="meta")
    with pytest.raises(kbit.KbitValueError, match="load a state_dict"):
        layer(torch.randn(2, 32))


def test_compute_dtype_and_half_inputs():
    linear = torch.nn.Linear(64, 10)
    layer = Linear4bit.from_linear(linear, compute_dtype=torch.bfloat16)
    x = torch.randn(4, 64)
    y = layer(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, F.gemv_4bit(x.bfloat16(), layer.weight, layer.quant_state,
                                      linear.bias.bfloat16()).float())
    y16 = Linear4bit.from_linear(linear)(x.half())
    assert y16.dtype == torch.float16


def test_gradients_reach_the_input_and_bias():
    layer = Linear4bit(32, 6)
    x = torch.randn(3, 32, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.bias.grad is not None and layer.weight.grad is None


def test_to_moves_the_quant_state_and_keeps_its_dtypes():
    layer = Linear4bit(64, 8).half()
    assert layer.bias.dtype == torch.float16 and layer.weight.dtype == torch.uint8
    assert layer.quant_state.state2.absmax.dtype == torch.float32 and layer.quant_state.offset.dtype == torch.float32


def test_wrong_inputs_are_refused():
    layer = Linear4bit(64, 8)
    with pytest.raises(kbit.KbitValueError, match="in_features=64"):
        layer(torch.randn(2, 63))
    with pytest.raises(kbit.KbitValueError, match="floating-point"):
        layer(torch.ones(2, 64, dtype=torch.int32))
    with pytest.raises(kbit.KbitValueError, match="quant_type='int4'"):
        Linear4bit(64, 8, quant_type="int4")
    with pytest.raises(kbit.KbitValueError, match="blocksize=48"):
        Linear4bit(64, 8, blocksize=48)
    with pytest.raises(kbit.KbitValueError, match="compute_dtype"):
        Linear4bit(64, 8, compute_dtype=torch.int8)


def test_state_dicts_for_another_shape_or_format_are_refused():
    layer = Linear4bit(64, 8)
    with pytest.raises(kbit.KbitValueError, match=r"shape \(8, 32\).*\(8, 64\)"):
        layer.load_state_dict(Linear4bit(32, 8).state_dict())
    with pytest.raises(kbit.KbitValueError, match="quant_type='fp4'.*build the layer with the saved settings"):
        layer.load_state_dict(Linear4bit(64, 8, quant_type="fp4").state_dict())
    with pytest.raises(kbit.KbitValueError, match="blocksize=128"):
        layer.load_state_dict(Linear4bit(64, 8, blocksize=128).state_dict())
    with pytest.raises(kbit.KbitValueError, match="not a 4-bit weight.*from_linear"):
        layer.load_state_dict(torch.nn.Linear(64, 8).state_dict())
    with pytest.raises(RuntimeError, match="Missing key.*bias"):
        layer.load_state_dict({k: v for k, v in Linear4bit(64, 8).state_dict().items() if k != "bias"})
    with pytest.raises(RuntimeError, match="Unexpected key.*extra"):
        layer.load_state_dict({**Linear4bit(64, 8).state_dict(), "extra": torch.zeros(1)})


def test_a_bitsandbytes_style_checkpoint_with_other_storage_loads():
    """bitsandbytes may store the packed bytes as another dtype (quant_storage); the bytes are what count."""
    linear = torch.nn.Linear(64, 8)
    layer = Linear4bit.from_linear(linear)
    sd = layer.state_dict()
    sd["weight"] = sd["weight"].reshape(-1).view(torch.bfloat16).unsqueeze(1)
    fresh = Linear4bit(64, 8, device="meta")
    fresh.load_state_dict(sd)
    x = torch.randn(2, 64)
    assert torch.equal(fresh(x), layer(x)) and fresh.weight.dtype == torch.uint8
