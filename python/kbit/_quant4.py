"""4-bit blockwise quantization (NF4, FP4), its state, and the 4-bit matrix-vector product.

This module owns: argument checking and the mapping of tensors onto the C ABI functions kbit_quantize_4bit,
kbit_dequantize_4bit and kbit_gemv_4bit; the optional double quantization of absmax ("compress statistics",
through kbit.functional's 8-bit blockwise functions); and QuantState with its flat-dict form, whose keys and
packing are bitsandbytes' (`QuantState.as_dict(packed=True)` / `from_dict`), so 4-bit checkpoints move both
ways between kbit and bitsandbytes. The numerics are native (csrc/numerics/blockwise4.h). kbit.functional
re-exports the public names.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import torch

from kbit import _dispatch, _errors
from kbit.functional import (_BLOCKSIZES_8BIT, _DTYPES, BlockwiseQuantState, _check_float_dtype,
                             _check_no_overlap, _check_tensor, _map, dequantize_blockwise, quantize_blockwise)

QUANT_TYPES = {"nf4": 0, "fp4": 1}
BLOCKSIZES_4BIT = tuple(2 ** k for k in range(5, 13))  # 32 .. 4096
NESTED_BLOCKSIZE = 256  # bitsandbytes' blocksize for the 8-bit double quantization of absmax
_STORAGE_DTYPES = (torch.uint8, torch.int8, torch.float16, torch.bfloat16, torch.float32, torch.int16,
                   torch.int32, torch.float64, torch.int64)

# The quant_map tensors bitsandbytes stores (get_4bit_type): NF4 as published; FP4 is
# [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, ...] / 12 where bitsandbytes' "-0" is the integer 0, so index 8 of
# the stored map is +0.0 (the kernels decode code 0b1000 as -0.0, as bitsandbytes' CUDA kernel does).
_NF4_MAP = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0)
_FP4_NUMERATORS = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0)


def get_4bit_type(quant_type: str, device: torch.device | str | None = None) -> torch.Tensor:
    """The 16-value float32 map of `quant_type` ("nf4" or "fp4"), as bitsandbytes stores it in quant_map."""
    _check_quant_type(quant_type)
    if quant_type == "nf4":
        return torch.tensor(_NF4_MAP, dtype=torch.float32, device=device)
    return torch.tensor(_FP4_NUMERATORS, dtype=torch.float32, device=device) / 12.0


# ---------------------------------------------------------------------------------------- QuantState

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
    def from_dict(cls, qs_dict: dict[str, Any], device: torch.device | str = "cpu") -> "QuantState":
        """Rebuild a state from as_dict's output, packed or not, with or without a key prefix (e.g. the
        "weight." of a state_dict). Tensors go to `device`. Anything but a well-formed 4-bit state whose maps
        are kbit's (NF4/FP4, the signed dynamic map for nested absmax) is refused with a KbitValueError."""
        device = _check_load_device(device)
        items = _unpacked_items(qs_dict)
        quant_type = items.get("quant_type")
        _check_quant_type(quant_type)
        missing = [k for k in ("absmax", "quant_map", "blocksize", "dtype", "shape") if k not in items]
        if missing:
            raise _errors.KbitValueError(f"the 4-bit quant state lacks {', '.join(missing)}; found keys "
                                         f"{sorted(items)}. fix: pass every item QuantState.as_dict() wrote")
        code = _tensor_item(items, "quant_map").to(device)
        if code.numel() != 16 or not torch.equal(code.float().cpu(), get_4bit_type(quant_type)):
            raise _errors.KbitValueError(f"quant_map is not the {quant_type} map; kbit's kernels use the standard "
                                         f"NF4/FP4 tables only (custom 4-bit maps are not supported)")
        offset, state2 = _nested_from_items(items, device)
        state = cls(absmax=_tensor_item(items, "absmax").to(device), shape=_shape_item(items), code=code,
                    blocksize=_int_item(items, "blocksize", BLOCKSIZES_4BIT), quant_type=quant_type,
                    dtype=_dtype_item(items, "dtype"), offset=offset, state2=state2)
        _check_quant_state(state, "the loaded quant state")
        return state

    def to(self, device: torch.device | str) -> "QuantState":
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
    if nested_map.numel() != 256 or not torch.equal(nested_map.detach().float().cpu(), _map(True)):
        raise _errors.KbitValueError("nested_quant_map is not the signed dynamic map; kbit double-quantizes absmax "
                                     "with that map only")
    offset = torch.tensor(_offset_item(items), dtype=torch.float32, device=device)
    blocksize = _int_item(items, "nested_blocksize", _BLOCKSIZES_8BIT)
    nested_absmax = _tensor_item(items, "nested_absmax")
    blocks = math.ceil(codes.numel() / blocksize)
    if nested_absmax.dtype != torch.float32 or nested_absmax.shape != (blocks,):
        raise _bad_item("nested_absmax", nested_absmax,
                        f"{blocks} float32 values ({codes.numel()} absmax codes at nested_blocksize {blocksize})",
                        shown=f"{nested_absmax.dtype} of shape {tuple(nested_absmax.shape)}")
    state2 = BlockwiseQuantState(absmax=nested_absmax.to(device), code=nested_map.to(device), blocksize=blocksize,
                                 dtype=torch.float32, shape=torch.Size([codes.numel()]))
    return offset, state2


# ---------------------------------------------------------------------------------------- checks

def _check_quant_type(quant_type: object) -> int:
    if not isinstance(quant_type, str) or quant_type not in QUANT_TYPES:
        raise _errors.KbitValueError(f"quant_type={quant_type!r} is not supported; use 'nf4' or 'fp4'")
    return QUANT_TYPES[quant_type]


def _check_blocksize_4bit(blocksize: object) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize not in BLOCKSIZES_4BIT:
        raise _errors.KbitValueError(f"blocksize={blocksize!r} is not supported for 4-bit quantization; use one of "
                                     f"{', '.join(map(str, BLOCKSIZES_4BIT))} (default 64)")
    return blocksize


def _check_quant_state(state: object, name: str = "quant_state") -> QuantState:
    if not isinstance(state, QuantState):
        raise _errors.KbitValueError(f"{name} must be the QuantState returned by quantize_4bit (or "
                                     f"QuantState.from_dict), got {type(state).__name__}")
    _check_quant_type(state.quant_type)
    _check_blocksize_4bit(state.blocksize)
    _check_float_dtype(f"{name} (its dtype)", state.dtype)
    if not isinstance(state.shape, torch.Size) or any(d < 0 for d in state.shape):
        raise _errors.KbitValueError(f"{name}.shape is {state.shape!r}; set it to the torch.Size of the quantized "
                                     f"tensor")
    _check_tensor(f"{name}.absmax", state.absmax)
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


def _resolved_absmax(state: QuantState) -> torch.Tensor:
    """float32 absmax: the stored one, or the nested codes dequantized plus the offset (bitsandbytes' order)."""
    if not state.nested:
        return state.absmax.contiguous()
    absmax = dequantize_blockwise(state.absmax, state.state2)
    absmax += state.offset.to(absmax.device)
    return absmax


def _packed_bytes(name: str, packed: object, n: int, device: torch.device | None = None) -> torch.Tensor:
    """The packed codes as a flat uint8 tensor (any quant_storage dtype is viewed as bytes)."""
    packed = _check_tensor(name, packed)
    flat = packed.detach().contiguous().reshape(-1)
    if flat.dtype != torch.uint8:
        if flat.dtype not in _STORAGE_DTYPES:
            raise _errors.KbitValueError(f"{name} has dtype {packed.dtype}; pass the tensor quantize_4bit returned")
        flat = flat.view(torch.uint8)
    want = (n + 1) // 2
    if flat.numel() != want:
        raise _errors.KbitValueError(f"{name} holds {flat.numel()} bytes but the quant state describes {n} "
                                     f"elements ({want} bytes); fix: pass the packed tensor and the state of the "
                                     f"same quantize_4bit call")
    if device is not None and flat.device != device:
        raise _errors.KbitValueError(f"{name} is on {flat.device} but the quant state is on {device}; move both "
                                     f"with QuantState.to(device) and {name}.to(device)")
    return flat


# ---------------------------------------------------------------------------------------- functions

def quantize_4bit(A: torch.Tensor, blocksize: int = 64, quant_type: str = "nf4", compress_statistics: bool = False,
                  quant_storage: torch.dtype = torch.uint8) -> tuple[torch.Tensor, QuantState]:
    """4-bit blockwise quantization, NF4 or FP4 (bitsandbytes' format).

    A (float32, float16 or bfloat16, any shape) is split into blocks of `blocksize` (32..4096, a power of two)
    consecutive elements in row-major order; blocks may span rows. absmax[b] = max |x| of block b (float32);
    each x gets the code of the table value nearest to x * (1 / absmax[b]), exactly: NF4 ties go to the lower
    code, FP4 ties to the smaller magnitude, and FP4's sign bit is set for x < 0 (so tiny negative values get
    "negative zero", 0b1000, as in bitsandbytes). Codes are packed two per byte, element 2j in the high nibble;
    an odd count pads the last low nibble with the code of 0.0. An all-zero block has absmax 0 and dequantizes
    to exact zeros. A block holding inf or NaN gets absmax inf or NaN and dequantizes to NaN everywhere (with
    compress_statistics, the mean of the absmax is then non-finite too, so the whole tensor dequantizes to
    NaN): non-finite input never becomes finite numbers.

    compress_statistics=True quantizes absmax - mean(absmax) with 8-bit blockwise quantization (blocksize 256,
    signed dynamic map) as bitsandbytes does. Returns (packed, state): packed is uint8 of shape
    ((n + 1) // 2, 1), or those bytes viewed as `quant_storage` ((bytes / itemsize, 1)).
    """
    A = _check_tensor("A", A)
    dtype_id = _check_float_dtype("A", A.dtype)
    qt = _check_quant_type(quant_type)
    bs = _check_blocksize_4bit(blocksize)
    if quant_storage not in _STORAGE_DTYPES:
        raise _errors.KbitValueError(f"quant_storage={quant_storage!r} is not a storage dtype; use torch.uint8 "
                                     f"(default) or one of {', '.join(map(str, _STORAGE_DTYPES))}")
    lib = _dispatch.library_for(A, "A")
    src = A.detach().contiguous()
    n = src.numel()
    packed = torch.empty(((n + 1) // 2, 1), dtype=torch.uint8, device=A.device)
    absmax = torch.empty(math.ceil(n / bs), dtype=torch.float32, device=A.device)
    _dispatch.call(A, lib, "kbit_quantize_4bit", dtype_id, qt, _dispatch.ptr(src), _dispatch.ptr(absmax),
                   _dispatch.ptr(packed), n, bs, _dispatch.stream_for(A), _dispatch.threads())
    code = get_4bit_type(quant_type, device=A.device)
    if compress_statistics:
        offset = absmax.mean() if absmax.numel() else torch.zeros((), device=A.device)
        qabsmax, state2 = quantize_blockwise(absmax - offset, blocksize=NESTED_BLOCKSIZE)
        state = QuantState(qabsmax, A.shape, code, bs, quant_type, A.dtype, offset, state2)
    else:
        state = QuantState(absmax, A.shape, code, bs, quant_type, A.dtype)
    return _as_storage(packed, quant_storage), state


def _as_storage(packed: torch.Tensor, quant_storage: torch.dtype) -> torch.Tensor:
    if quant_storage == torch.uint8:
        return packed
    itemsize = torch.empty((), dtype=quant_storage).element_size()
    if packed.numel() % itemsize:
        raise _errors.KbitValueError(f"{packed.numel()} packed bytes cannot be viewed as {quant_storage} "
                                     f"({itemsize} bytes each); use quant_storage=torch.uint8 for this size")
    return packed.reshape(-1).view(quant_storage).unsqueeze(1)


def dequantize_4bit(packed: torch.Tensor, quant_state: QuantState, *, out: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Inverse of quantize_4bit: table[code] * absmax[block] in float32, rounded to quant_state.dtype
    (nearest-even), in quant_state.shape. A block with a non-finite absmax gives NaN. `out`, when given, must be
    a contiguous tensor of that dtype and shape on packed's device; it is written and returned."""
    state = _check_quant_state(quant_state)
    n = state.shape.numel()
    src = _packed_bytes("packed", packed, n, state.absmax.device)
    lib = _dispatch.library_for(src, "packed")
    if out is None:
        out = torch.empty(state.shape, dtype=state.dtype, device=src.device)
    elif (_check_tensor("out", out).dtype != state.dtype or out.shape != state.shape or out.device != src.device
          or not out.is_contiguous()):
        raise _errors.KbitValueError(
            f"out must be a contiguous {state.dtype} tensor of shape {tuple(state.shape)} on {src.device}; got "
            f"{out.dtype} {tuple(out.shape)} on {out.device} (contiguous={out.is_contiguous()})")
    else:
        _check_no_overlap(out, **{"packed": packed, "quant_state.absmax": state.absmax})
    absmax = _resolved_absmax(state)
    _dispatch.call(src, lib, "kbit_dequantize_4bit", _DTYPES[state.dtype], QUANT_TYPES[state.quant_type],
                   _dispatch.ptr(src), _dispatch.ptr(absmax), _dispatch.ptr(out), n, state.blocksize,
                   _dispatch.stream_for(src), _dispatch.threads())
    return out


def _gemv_native(A: torch.Tensor, packed: torch.Tensor, state: QuantState, bias: torch.Tensor | None) -> torch.Tensor:
    out_features, in_features = state.shape
    a = A.detach().contiguous()
    rows = math.prod(a.shape[:-1])
    out = torch.empty((*A.shape[:-1], out_features), dtype=A.dtype, device=A.device)
    b = None if bias is None else bias.detach().to(A.dtype).contiguous()
    absmax = _resolved_absmax(state)
    lib = _dispatch.library_for(A, "A")
    _dispatch.call(A, lib, "kbit_gemv_4bit", _DTYPES[A.dtype], QUANT_TYPES[state.quant_type], _dispatch.ptr(a),
                   _dispatch.ptr(packed), _dispatch.ptr(absmax), None if b is None else _dispatch.ptr(b),
                   _dispatch.ptr(out), rows, out_features, in_features, state.blocksize, _dispatch.stream_for(A),
                   _dispatch.threads())
    return out


class _Gemv4bit(torch.autograd.Function):
    """gemv_4bit with gradients for A and bias (the quantized weight is frozen): dA = dY @ W, dbias = sum dY."""

    @staticmethod
    def forward(ctx, A, packed, state, bias):
        ctx.state, ctx.has_bias = state, bias is not None
        ctx.save_for_backward(packed)
        return _gemv_native(A, packed, state, bias)

    @staticmethod
    def backward(ctx, grad):
        (packed,) = ctx.saved_tensors
        grad_a = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight = dequantize_4bit(packed, ctx.state).to(grad.dtype)
            grad_a = grad @ weight
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_a, None, None, grad_bias


def gemv_4bit(A: torch.Tensor, B_packed: torch.Tensor, quant_state: QuantState, bias: torch.Tensor | None = None
              ) -> torch.Tensor:
    """A @ W.T (+ bias) for a 4-bit weight W (out_features, in_features) quantized by quantize_4bit.

    A: (..., in_features), float32/float16/bfloat16, any number of leading dimensions (batch 1..n). Each output
    is one float32 dot product of A's row with the dequantized weight row (table[code] * absmax in float32,
    not rounded to A's dtype), summed in the fixed order of csrc/numerics/blockwise4.h (32 lanes over k, then
    a pairwise lane tree), plus bias (converted to A's dtype) added once, then rounded to A's dtype: the bits do
    not depend on the thread count. Gradients flow to A and bias (the weight is frozen).
    """
    A = _check_tensor("A", A)
    _check_float_dtype("A", A.dtype)
    state = _check_quant_state(quant_state)
    if len(state.shape) != 2:
        raise _errors.KbitValueError(f"the quantized weight has shape {tuple(state.shape)}; gemv_4bit needs a 2-D "
                                     f"(out_features, in_features) weight")
    out_features, in_features = state.shape
    if A.dim() < 1 or A.shape[-1] != in_features:
        raise _errors.KbitValueError(f"A has shape {tuple(A.shape)} but the weight has in_features={in_features}; "
                                     f"A's last dimension must be {in_features}")
    if A.device != state.absmax.device:
        raise _errors.KbitValueError(f"A is on {A.device} but the quantized weight is on {state.absmax.device}")
    packed = _packed_bytes("B_packed", B_packed, state.shape.numel(), A.device)
    if bias is not None:
        bias = _check_tensor("bias", bias)
        if bias.shape != (out_features,) or not bias.is_floating_point() or bias.device != A.device:
            raise _errors.KbitValueError(f"bias must be a floating-point tensor of shape ({out_features},) on "
                                         f"{A.device}; got {bias.dtype} {tuple(bias.shape)} on {bias.device}")
    needs_grad = torch.is_grad_enabled() and (A.requires_grad or (bias is not None and bias.requires_grad))
    if needs_grad:
        return _Gemv4bit.apply(A, packed, state, bias)
    return _gemv_native(A, packed, state, bias)


__all__ = ["QuantState", "get_4bit_type", "quantize_4bit", "dequantize_4bit", "gemv_4bit"]
