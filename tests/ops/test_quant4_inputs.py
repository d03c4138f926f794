"""4-bit API input checks: out= sharing memory with an input, malformed QuantState dicts, a failed
Linear4bit load leaving the layer untouched, and odd argument types, each refused with a KbitValueError."""
from __future__ import annotations

import json

import pytest
import torch

import kbit
from kbit import functional as F
from kbit.nn import Linear4bit

# ---------------------------------------------------------------------------------------- out= overlap

def test_dequantize_4bit_refuses_out_sharing_memory_with_packed():
    packed, state = F.quantize_4bit(torch.randn(100, 70))
    buf = torch.zeros(100 * 70 * 4, dtype=torch.uint8)
    aliased = buf[:packed.numel()].view(-1, 1)
    aliased.copy_(packed)
    out = buf.view(torch.float32).view(100, 70)
    with pytest.raises(kbit.KbitValueError, match="out shares memory with packed"):
        F.dequantize_4bit(aliased, state, out=out)


def test_dequantize_4bit_refuses_out_sharing_memory_with_absmax():
    packed, state = F.quantize_4bit(torch.randn(64, 64))
    n = state.absmax.numel()
    buf = torch.zeros(64 * 64 + n)
    buf[64 * 64 - n // 2:64 * 64 - n // 2 + n].copy_(state.absmax)
    state.absmax = buf[64 * 64 - n // 2:64 * 64 - n // 2 + n]  # overlaps the end of out
    with pytest.raises(kbit.KbitValueError, match="out shares memory with quant_state.absmax"):
        F.dequantize_4bit(packed, state, out=buf[:64 * 64].view(64, 64))
    # the same buffer split without overlap is fine
    beside = buf[64 * 64:]
    beside.copy_(state.absmax.clone())
    state.absmax = beside
    assert torch.equal(F.dequantize_4bit(packed, state, out=buf[:64 * 64].view(64, 64)),
                       F.dequantize_4bit(packed, state))


def test_dequantize_4bit_accepts_out_next_to_the_inputs():
    packed, state = F.quantize_4bit(torch.randn(64, 64))
    out = torch.empty(64, 64)
    assert F.dequantize_4bit(packed, state, out=out) is out
    assert torch.equal(out, F.dequantize_4bit(packed, state))


# ---------------------------------------------------------------------------------------- from_dict

def _dicts():
    plain = F.quantize_4bit(torch.randn(8, 64))[1].as_dict()
    nested = F.quantize_4bit(torch.randn(8, 64), compress_statistics=True)[1].as_dict()
    return plain, nested


@pytest.mark.parametrize("key, value, match", [
    ("blocksize", None, "'blocksize' is None"),
    ("blocksize", "abc", "'blocksize' is 'abc'; expected one of 32..4096"),
    ("blocksize", 64.7, "'blocksize' is 64.7"),
    ("blocksize", True, "'blocksize' is True"),
    ("shape", 5, "'shape' is 5"),
    ("shape", "ab", "'shape' is 'ab'"),
    ("shape", None, "'shape' is None"),
    ("shape", [-8, -64], r"'shape' is \[-8, -64\]"),
    ("shape", [8.5, 64], "'shape'"),
    ("dtype", "Tensor", "'dtype' is 'Tensor'; expected a torch dtype name"),
    ("dtype", torch.float16, "'dtype' is torch.float16"),
])
def test_from_dict_refuses_bad_plain_items(key, value, match):
    plain, _ = _dicts()
    with pytest.raises(kbit.KbitValueError, match=match) as info:
        F.QuantState.from_dict({**plain, key: value})
    assert "damaged or not a 4-bit QuantState" in str(info.value)


def test_from_dict_accepts_an_integral_float_blocksize():
    plain, _ = _dicts()
    assert F.QuantState.from_dict({**plain, "blocksize": 64.0}).blocksize == 64


@pytest.mark.parametrize("key, value, match", [
    ("nested_offset", "abc", "'nested_offset' is 'abc'"),
    ("nested_offset", None, "'nested_offset' is None"),
    ("nested_offset", torch.zeros(2), "'nested_offset'"),
    ("nested_absmax", torch.zeros(0), "'nested_absmax'.*expected 1 float32"),
    ("nested_absmax", torch.zeros(3), "'nested_absmax'"),
    ("nested_absmax", torch.zeros(1, dtype=torch.float16), "'nested_absmax'"),
    ("nested_blocksize", 7, "'nested_blocksize' is 7; expected one of 64..4096"),
    ("nested_blocksize", "x", "'nested_blocksize' is 'x'"),
])
def test_from_dict_refuses_bad_nested_items(key, value, match):
    _, nested = _dicts()
    with pytest.raises(kbit.KbitValueError, match=match):
        F.QuantState.from_dict({**nested, key: value})


def test_from_dict_accepts_a_tensor_offset_and_round_trips():
    _, nested = _dicts()
    state = F.QuantState.from_dict({**nested, "nested_offset": torch.tensor(nested["nested_offset"])})
    assert state.offset.item() == pytest.approx(nested["nested_offset"])


@pytest.mark.parametrize("device, match", [("bogus", "not a torch device"), ("meta", "meta"), (3.5, "not a torch")])
def test_from_dict_refuses_bad_devices(device, match):
    plain, _ = _dicts()
    with pytest.raises(kbit.KbitValueError, match=match):
        F.QuantState.from_dict(plain, device=device)


@pytest.mark.parametrize("reshape", [lambda t: t.reshape(1, -1), lambda t: t.float()])
def test_from_dict_refuses_a_packed_json_tensor_of_the_wrong_form(reshape):
    packed_dict = F.quantize_4bit(torch.randn(8, 64))[1].as_dict(packed=True)
    key = "quant_state.bitsandbytes__nf4"
    with pytest.raises(kbit.KbitValueError, match="expected 1-D uint8"):
        F.QuantState.from_dict({**packed_dict, key: reshape(packed_dict[key])})


def test_linear4bit_load_refuses_a_bad_nested_absmax_and_keeps_its_weight():
    sd = Linear4bit(64, 8).state_dict()
    layer = Linear4bit(64, 8)
    x = torch.randn(2, 64)
    before = layer(x)
    with pytest.raises(kbit.KbitValueError, match="nested_absmax"):
        layer.load_state_dict({**sd, "weight.nested_absmax": torch.zeros(0)})
    meta = json.loads(bytes(sd["weight.quant_state.bitsandbytes__nf4"].tolist()))
    bad = {**sd, "weight.quant_state.bitsandbytes__nf4":
           torch.tensor(list(json.dumps({**meta, "nested_blocksize": 7}).encode()), dtype=torch.uint8)}
    with pytest.raises(kbit.KbitValueError, match="nested_blocksize"):
        layer.load_state_dict(bad)
    assert torch.equal(layer(x), before)


# ---------------------------------------------------------------------------------------- Linear4bit atomic load

def test_linear4bit_failed_bias_load_leaves_the_layer_unchanged():
    layer = Linear4bit(64, 8)
    x = torch.randn(2, 64)
    before, weight, state = layer(x), layer.weight, layer.quant_state
    other = Linear4bit(64, 8).state_dict()
    with pytest.raises(kbit.KbitValueError, match="bias"):
        layer.load_state_dict({**other, "bias": torch.ones(9)})
    assert layer.weight is weight and layer.quant_state is state
    assert torch.equal(layer(x), before)
    layer.load_state_dict(other)  # the good checkpoint still loads
    assert not torch.equal(layer(x), before)


# ---------------------------------------------------------------------------------------- argument types

@pytest.mark.parametrize("call", [
    lambda: F.quantize_4bit(torch.randn(64), quant_type=["nf4"]),
    lambda: F.get_4bit_type(["nf4"]),
    lambda: Linear4bit(64, 8, quant_type=["nf4"]),
    lambda: F.quantize_4bit(torch.randn(64), quant_type={"nf4": 1}),
])
def test_unhashable_quant_type_is_refused(call):
    with pytest.raises(kbit.KbitValueError, match="quant_type=.*use 'nf4' or 'fp4'"):
        call()


def test_sparse_input_is_refused_with_to_dense():
    with pytest.raises(kbit.KbitValueError, match=r"A.to_dense\(\)"):
        F.quantize_4bit(torch.randn(8, 8).to_sparse())
    packed, state = F.quantize_4bit(torch.randn(8, 64))
    with pytest.raises(kbit.KbitValueError, match=r"A.to_dense\(\)"):
        F.gemv_4bit(torch.randn(2, 64).to_sparse(), packed, state)
    with pytest.raises(kbit.KbitValueError, match=r"packed.to_dense\(\)"):
        F.dequantize_4bit(packed.to_sparse(), state)


def test_hand_edited_states_are_refused():
    packed, state = F.quantize_4bit(torch.randn(8, 64), compress_statistics=True)
    state.offset = None
    with pytest.raises(kbit.KbitValueError, match="offset is None"):
        F.dequantize_4bit(packed, state)
    packed, state = F.quantize_4bit(torch.randn(8, 64))
    state.absmax = state.absmax.tolist()
    with pytest.raises(kbit.KbitValueError, match="absmax must be a torch.Tensor"):
        F.dequantize_4bit(packed, state)
    packed, state = F.quantize_4bit(torch.randn(8, 64))
    state.shape = (8, 64)
    with pytest.raises(kbit.KbitValueError, match="torch.Size"):
        F.dequantize_4bit(packed, state)
    state.shape = torch.Size([-8, -64])
    with pytest.raises(kbit.KbitValueError, match="torch.Size"):
        F.dequantize_4bit(packed, state)
