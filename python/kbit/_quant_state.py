"""QuantState, the state of a 4-bit quantized tensor, with its flat-dict form (bitsandbytes' keys and packing:
`QuantState.as_dict(packed=True)` / `from_dict`), so 4-bit checkpoints move both ways between kbit and
bitsandbytes.

This module owns the state class, its dict codec (every item of a loaded dict is checked, with the item's name
in the message) and check_quant_state, which refuses a state the kernels cannot use. It calls no kernel; the
4-bit operations are kbit._quant4's.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import torch

from kbit import _checks, _errors, _maps
from kbit._blockwise8 import BlockwiseQuantState

__all__ = ["QuantState", "check_quant_state"]


class QuantState:
    """What dequantize_4bit and gemv_4bit need besides the packed codes (bitsandbytes' QuantState).

    absmax: float32 [ceil(n / blocksize)], or with double quantization (`nested`) the uint8 codes of
    absmax - offset; shape and dtype of the original tensor; blocksize; quant_type ("nf4" / "fp4"); code: the
    16-value map (get_4bit_type, stored for interchange); offset: float32 scalar tensor, the mean of the
    absmax (nested only); state2: the BlockwiseQuantState of the 8-bit absmax codes (nested only).
    """

    valid_quant_types = ("fp4", "nf4")
    valid_qs_type_keys = [f"bitsandbytes__{x}" for x in valid_quant_types]
    valid_qs_keys = ["absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state", "quant_type",
                     "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"]

    def __init__(self, absmax: torch.Tensor, shape=None, code: torch.Tensor | None = None, blocksize: int | None = None,
                 quant_type: str | None = None, dtype: torch.dtype | None = None, offset: torch.Tensor | None = None,
                 state2: BlockwiseQuantState | None = None):
        self.absmax = absmax
        self.shape = torch.Size(shape) if shape is not None else None
        self.code = code
        self.blocksize = blocksize
        self.quant_type = quant_type
        self.dtype = dtype
        self.offset = offset
        self.state2 = state2

    @property
    def nested(self) -> bool:
        return self.state2 is not None

    def __repr__(self) -> str:
        return (f"QuantState(quant_type={self.quant_type!r}, blocksize={self.blocksize}, "
                f"shape={tuple(self.shape or ())}, "
                f"dtype={self.dtype}, nested={self.nested}, device={self.absmax.device})")

    def as_dict(self, packed: bool = False) -> dict[str, Any]:
        """The state as a dict (bitsandbytes' keys). packed=True: tensors only, the non-tensor items packed as
        UTF-8 JSON bytes in one uint8 tensor under "quant_state.bitsandbytes__<quant_type>" (safetensors-ready)."""
        qs: dict[str, Any] = {
            "quant_type": self.quant_type,
            "absmax": self.absmax,
            "blocksize": self.blocksize,
            "quant_map": self.code,
            "dtype": _dtype_name(self.dtype),
            "shape": tuple(self.shape),
        }
        if self.nested:
            qs.update({
                "nested_absmax": self.state2.absmax,
                "nested_blocksize": self.state2.blocksize,
                "nested_quant_map": self.state2.code.clone(),  # not shared: safetensors drops shared tensors
                "nested_dtype": _dtype_name(self.state2.dtype),
                "nested_offset": self.offset.item(),
            })
        if not packed:
            return qs
        tensors = {k: v for k, v in qs.items() if isinstance(v, torch.Tensor)}
        others = {k: v for k, v in qs.items() if not isinstance(v, torch.Tensor)}
        tensors["quant_state.bitsandbytes__" + self.quant_type] = _pack_json(others)
        return tensors

    @classmethod
    def from_dict(cls, qs_dict: dict[str, Any], device: torch.device | str = "cpu") -> QuantState:
        """Rebuild a state from as_dict's output, packed or not, with or without a key prefix (e.g. the
        "weight." of a state_dict). Tensors go to `device`. Anything but a well-formed 4-bit state whose maps
        are kbit's (NF4/FP4, the signed dynamic map for nested absmax) is refused with a KbitValueError."""
        device = _check_load_device(device)
        items = _unpacked_items(qs_dict)
        quant_type = items.get("quant_type")
        _checks.check_quant_type(quant_type)
        missing = [k for k in ("absmax", "quant_map", "blocksize", "dtype", "shape") if k not in items]
        if missing:
            raise _errors.KbitValueError(f"the 4-bit quant state lacks {', '.join(missing)}; found keys "
                                         f"{sorted(items)}.", fix="pass every item QuantState.as_dict() wrote")
        code = _tensor_item(items, "quant_map").to(device)
        if code.numel() != 16 or not torch.equal(code.float().cpu(), _maps.get_4bit_type(quant_type)):
            raise _errors.KbitValueError(f"quant_map is not the {quant_type} map; kbit's kernels use the standard "
                                         f"NF4/FP4 tables only (custom 4-bit maps are not supported)")
        offset, state2 = _nested_from_items(items, device)
        state = cls(absmax=_tensor_item(items, "absmax").to(device), shape=_shape_item(items), code=code,
                    blocksize=_int_item(items, "blocksize", _checks.BLOCKSIZES_4BIT), quant_type=quant_type,
                    dtype=_dtype_item(items, "dtype"), offset=offset, state2=state2)
        check_quant_state(state, "the loaded quant state")
        return state

    def to(self, device: torch.device | str) -> QuantState:
        """Move every tensor to `device` in place (as bitsandbytes' QuantState.to); returns self."""
        self.absmax = self.absmax.to(device)
        if self.code is not None:
            self.code = self.code.to(device)
        if self.nested:
            self.offset = self.offset.to(device)
            self.state2 = dataclasses.replace(self.state2, absmax=self.state2.absmax.to(device),
                                              code=self.state2.code.to(device))
        return self


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_item(items: dict[str, Any], key: str) -> torch.dtype:
    name = items[key]
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise _bad_item(key, name, "a torch dtype name such as 'float16'")
    return dtype


def _pack_json(items: dict[str, Any]) -> torch.Tensor:
    return torch.tensor(list(json.dumps(items).encode("utf-8")), dtype=torch.uint8)


def _unpacked_items(qs_dict: dict[str, Any]) -> dict[str, Any]:
    """The state's items by their last dotted name, the packed JSON tensor (if any) expanded."""
    if not isinstance(qs_dict, dict):
        raise _errors.KbitValueError(f"a quant state dict must be a dict, got {type(qs_dict).__name__}")
    packed = [k for k, v in qs_dict.items() if "quant_state" in k and isinstance(v, torch.Tensor)]
    if len(packed) > 1 or (packed and packed[0].split(".")[-1] not in QuantState.valid_qs_type_keys):
        raise _errors.KbitValueError(f"expected one packed item ending in one of {QuantState.valid_qs_type_keys}, "
                                     f"found {packed}")
    if not packed and "quant_type" not in {k.split(".")[-1] for k in qs_dict}:
        raise _errors.KbitValueError(f"no 4-bit quant state in this dict (keys {sorted(qs_dict)}): it has neither a "
                                     f"'quant_state.bitsandbytes__nf4/fp4' tensor nor a 'quant_type' item")
    items = {k.split(".")[-1]: v for k, v in qs_dict.items() if k not in packed}
    if packed:
        raw = qs_dict[packed[0]]
        if raw.dtype != torch.uint8 or raw.dim() != 1:
            raise _errors.KbitValueError(f"{packed[0]} is a {raw.dtype} tensor of shape {tuple(raw.shape)}; expected "
                                         f"1-D uint8 (UTF-8 JSON bytes): {_DAMAGED}")
        try:
            meta = json.loads(bytes(raw.detach().cpu().to(torch.uint8).tolist()).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _errors.KbitValueError(f"{packed[0]} does not hold UTF-8 JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise _errors.KbitValueError(f"{packed[0]} holds JSON {type(meta).__name__}, not an object")
        items.update(meta)
        if packed[0].split("__")[-1] != items.get("quant_type"):
            raise _errors.KbitValueError(f"{packed[0]} says quant_type {items.get('quant_type')!r}")
    unknown = set(items) - set(QuantState.valid_qs_keys)
    if unknown:
        raise _errors.KbitValueError(f"unknown quant state items {sorted(unknown)}; expected only "
                                     f"{QuantState.valid_qs_keys}")
    return items


_DAMAGED = "the checkpoint is damaged or not a 4-bit QuantState"


def _bad_item(key: str, value: object, expected: str, shown: str | None = None) -> _errors.KbitValueError:
    return _errors.KbitValueError(f"quant_state item {key!r} is {shown or repr(value)}; expected {expected}: "
                                  f"{_DAMAGED}")


def _int_item(items: dict[str, Any], key: str, allowed: tuple[int, ...]) -> int:
    """An integer item from `allowed` (an integral float such as 64.0 is accepted, 64.7 is not)."""
    value = items[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise _bad_item(key, items[key], f"one of {allowed[0]}..{allowed[-1]} (a power of two)")
    return value


def _shape_item(items: dict[str, Any]) -> torch.Size:
    value = items["shape"]
    if (not isinstance(value, (list, tuple))
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)):
        raise _bad_item("shape", value, "a list of non-negative ints")
    return torch.Size(value)


def _offset_item(items: dict[str, Any]) -> float:
    value = items["nested_offset"]
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad_item("nested_offset", value, "a float (the mean of the absmax)")
    return float(value)


def _check_load_device(device: object) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise _errors.KbitValueError(f"device={device!r} is not a torch device; use e.g. 'cpu' or 'cuda'") from None
    if device.type == "meta":
        raise _errors.KbitValueError("device='meta' cannot hold a quant state's values; load to 'cpu' or 'cuda' "
                                     "(a Linear4bit built on 'meta' loads onto the checkpoint's device)")
    return device


def _tensor_item(items: dict[str, Any], key: str) -> torch.Tensor:
    value = items[key]
    if not isinstance(value, torch.Tensor):
        raise _errors.KbitValueError(f"quant state item {key!r} must be a tensor, got {type(value).__name__}")
    return value


def _nested_from_items(items: dict[str, Any], device) -> tuple[torch.Tensor | None, BlockwiseQuantState | None]:
    nested_keys = ("nested_absmax", "nested_quant_map", "nested_blocksize", "nested_dtype", "nested_offset")
    present = [k for k in nested_keys if k in items]
    if not present:
        return None, None
    if len(present) != len(nested_keys):
        raise _errors.KbitValueError(f"the double-quantization items are incomplete: found {present} of "
                                     f"{list(nested_keys)}")
    if _dtype_item(items, "nested_dtype") != torch.float32:
        raise _errors.KbitValueError(f"nested_dtype is {items['nested_dtype']!r}; the absmax is float32")
    codes = _tensor_item(items, "absmax")
    nested_map = _tensor_item(items, "nested_quant_map")
    if nested_map.numel() != 256 or not torch.equal(nested_map.detach().float().cpu(), _maps.dynamic_map(True)):
        raise _errors.KbitValueError("nested_quant_map is not the signed dynamic map; kbit double-quantizes absmax "
                                     "with that map only")
    offset = torch.tensor(_offset_item(items), dtype=torch.float32, device=device)
    blocksize = _int_item(items, "nested_blocksize", _checks.BLOCKSIZES_8BIT)
    nested_absmax = _tensor_item(items, "nested_absmax")
    blocks = math.ceil(codes.numel() / blocksize)
    if nested_absmax.dtype != torch.float32 or nested_absmax.shape != (blocks,):
        raise _bad_item("nested_absmax", nested_absmax,
                        f"{blocks} float32 values ({codes.numel()} absmax codes at nested_blocksize {blocksize})",
                        shown=f"{nested_absmax.dtype} of shape {tuple(nested_absmax.shape)}")
    state2 = BlockwiseQuantState(absmax=nested_absmax.to(device), code=nested_map.to(device), blocksize=blocksize,
                                 dtype=torch.float32, shape=torch.Size([codes.numel()]))
    return offset, state2


def check_quant_state(state: object, name: str = "quant_state") -> QuantState:
    if not isinstance(state, QuantState):
        raise _errors.KbitValueError(f"{name} must be the QuantState returned by quantize_4bit (or "
                                     f"QuantState.from_dict), got {type(state).__name__}")
    _checks.check_quant_type(state.quant_type)
    _checks.check_blocksize_4bit(state.blocksize)
    _checks.check_float_dtype(f"{name} (its dtype)", state.dtype)
    if not isinstance(state.shape, torch.Size) or any(d < 0 for d in state.shape):
        raise _errors.KbitValueError(f"{name}.shape is {state.shape!r}; set it to the torch.Size of the quantized "
                                     f"tensor")
    _checks.check_tensor(f"{name}.absmax", state.absmax)
    if state.nested and not (isinstance(state.offset, torch.Tensor) and state.offset.numel() == 1):
        raise _errors.KbitValueError(f"{name} is nested (state2 set) but its offset is {state.offset!r}; it must be "
                                     f"the one-element float32 tensor quantize_4bit(compress_statistics=True) made")
    blocks = math.ceil(state.shape.numel() / state.blocksize)
    want = torch.uint8 if state.nested else torch.float32
    if state.absmax.dtype != want or state.absmax.numel() != blocks:
        raise _errors.KbitValueError(
            f"{name}.absmax must be {blocks} {want} values for shape {tuple(state.shape)} at blocksize "
            f"{state.blocksize}{' (nested: 8-bit codes)' if state.nested else ''}; it is {state.absmax.numel()} "
            f"{state.absmax.dtype} values")
    return state
