"""4-bit blockwise quantization (NF4, FP4) and the 4-bit matrix-vector product.

This module owns the argument checks of quantize_4bit, dequantize_4bit and gemv_4bit and the mapping of their
tensors onto kbit_quantize_4bit, kbit_dequantize_4bit and kbit_gemv_4bit, with the optional double
quantization of absmax ("compress statistics", through kbit._blockwise8) and gemv's autograd. The numerics are
native (csrc/numerics/blockwise4.h); the state is kbit._quant_state's; kbit.functional re-exports the public
names.
"""
from __future__ import annotations

import math

import torch

from kbit import _checks, _dispatch, _errors, _hugepages, _maps
from kbit._blockwise8 import quantize_blockwise
from kbit._quant_state import QuantState, check_quant_state

NESTED_BLOCKSIZE = 256  # bitsandbytes' blocksize for the 8-bit double quantization of absmax


def absmax_parts(state: QuantState) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, int]:
    """The tensors and block size that describe a state's absmax, for the custom ops (kbit._ops): the float32
    absmax with None, None, 0; or (nested) the 8-bit codes, their float32 absmax, the offset and their blocksize."""
    if not state.nested:
        return state.absmax, None, None, 0
    return state.absmax, state.state2.absmax, state.offset, state.state2.blocksize


def resolve_absmax(absmax: torch.Tensor, absmax2: torch.Tensor | None, offset: torch.Tensor | None,
                   nested_blocksize: int) -> torch.Tensor:
    """float32 absmax: the stored one, or the nested codes dequantized plus the offset (bitsandbytes' order)."""
    if absmax2 is None:
        return absmax.contiguous()
    codes = absmax.contiguous()
    out = torch.empty(codes.shape, dtype=torch.float32, device=codes.device)
    _dispatch.run(codes, "quant_state.absmax", "kbit_dequantize_blockwise_8bit", _checks.DTYPE_IDS[torch.float32],
                  _dispatch.ptr(codes), _dispatch.ptr(absmax2.contiguous()), _dispatch.ptr(out), codes.numel(),
                  nested_blocksize)
    out += offset.to(out.device)
    return out


def _resolved_absmax(state: QuantState) -> torch.Tensor:
    return resolve_absmax(*absmax_parts(state))


def dequantize_into(packed: torch.Tensor, absmax: torch.Tensor, out: torch.Tensor, blocksize: int,
                    quant_type: str) -> torch.Tensor:
    """The native dequantization of out.numel() codes (flat uint8 `packed`, float32 `absmax`) into contiguous
    `out`, in out's dtype; the caller has checked everything."""
    _dispatch.run(packed, "packed", "kbit_dequantize_4bit", _checks.DTYPE_IDS[out.dtype], _checks.QUANT_TYPES[quant_type],
                  _dispatch.ptr(packed), _dispatch.ptr(absmax), _dispatch.ptr(out), out.numel(), blocksize)
    return out


def gemv_rows(A: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, bias: torch.Tensor | None,
              out_features: int, blocksize: int, quant_type: str) -> torch.Tensor:
    """The native gemv of A (..., in_features) with a 2-D weight (flat uint8 `packed`, float32 `absmax`); bias
    None or of out_features values (converted to A's dtype). The caller has checked everything."""
    a = A.contiguous()  # only its data pointer goes to the kernel (the custom op records any gradient)
    in_features = a.shape[-1]
    rows = a.numel() // in_features if in_features else math.prod(a.shape[:-1])
    out = a.new_empty((*a.shape[:-1], out_features))
    b = None if bias is None else bias.detach().to(a.dtype).contiguous()
    _dispatch.run(a, "A", "kbit_gemv_4bit", _checks.DTYPE_IDS[a.dtype], _checks.QUANT_TYPES[quant_type],
                  _dispatch.ptr(a), _dispatch.ptr(packed), _dispatch.ptr(absmax), None if b is None else _dispatch.ptr(b),
                  _dispatch.ptr(out), rows, out_features, in_features, blocksize)
    return out


def gemv_t_rows(G: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, in_features: int, blocksize: int,
                quant_type: str) -> torch.Tensor:
    """The native transposed gemv G @ W of G (..., out_features) with a 2-D weight W (out_features, in_features)
    (flat uint8 `packed`, float32 `absmax`), in G's dtype: Linear4bit's input gradient for small batches. The
    caller has checked everything."""
    g = G.contiguous()
    out_features = g.shape[-1]
    rows = g.numel() // out_features if out_features else math.prod(g.shape[:-1])
    out = g.new_empty((*g.shape[:-1], in_features))
    _dispatch.run(g, "grad", "kbit_gemv_4bit_t", _checks.DTYPE_IDS[g.dtype], _checks.QUANT_TYPES[quant_type],
                  _dispatch.ptr(g), _dispatch.ptr(packed), _dispatch.ptr(absmax), _dispatch.ptr(out), rows,
                  out_features, in_features, blocksize)
    return out


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
    A = _checks.check_tensor("A", A)
    dtype_id = _checks.check_float_dtype("A", A.dtype)
    qt = _checks.check_quant_type(quant_type)
    bs = _checks.check_blocksize_4bit(blocksize)
    if quant_storage not in _checks.STORAGE_DTYPES:
        raise _errors.KbitValueError(f"quant_storage={quant_storage!r} is not a storage dtype; use torch.uint8 "
                                     f"(default) or one of {', '.join(map(str, _checks.STORAGE_DTYPES))}")
    _dispatch.library_for(A, "A")  # an unsupported device is refused before anything is allocated
    src = A.detach().contiguous()
    n = src.numel()
    packed = torch.empty(((n + 1) // 2, 1), dtype=torch.uint8, device=A.device)
    absmax = torch.empty(math.ceil(n / bs), dtype=torch.float32, device=A.device)
    _dispatch.run(A, "A", "kbit_quantize_4bit", dtype_id, qt, _dispatch.ptr(src), _dispatch.ptr(absmax),
                  _dispatch.ptr(packed), n, bs)
    code = _maps.get_4bit_type(quant_type, device=A.device)
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
    a contiguous tensor of that dtype and shape on packed's device; it is written and returned. Under
    torch.compile / torch.export (without out=) this is the custom op kbit::dequantize_4bit (kbit._ops)."""
    state = check_quant_state(quant_state)
    n = state.shape.numel()
    src = _checks.packed_bytes("packed", packed, n, state.absmax.device)
    if out is None and torch.compiler.is_compiling():
        return torch.ops.kbit.dequantize_4bit(src, *absmax_parts(state), list(state.shape), state.blocksize,
                                          state.quant_type, state.dtype)
    _dispatch.library_for(src, "packed")  # an unsupported device is refused before out is looked at
    if out is None:
        out = _hugepages.empty(state.shape, state.dtype, src.device)  # the fresh output's page faults set the pace
    elif (_checks.check_tensor("out", out).dtype != state.dtype or out.shape != state.shape or out.device != src.device
          or not out.is_contiguous()):
        raise _errors.KbitValueError(
            f"out must be a contiguous {state.dtype} tensor of shape {tuple(state.shape)} on {src.device}; got "
            f"{out.dtype} {tuple(out.shape)} on {out.device} (contiguous={out.is_contiguous()})")
    else:
        _checks.check_no_overlap(out, **{"packed": packed, "quant_state.absmax": state.absmax})
    return dequantize_into(src, _resolved_absmax(state), out, state.blocksize, state.quant_type)


def check_gemv_args(A: torch.Tensor, B_packed: torch.Tensor, quant_state: QuantState, bias: torch.Tensor | None
                    ) -> tuple[torch.Tensor, QuantState, torch.Tensor | None]:
    """gemv_4bit's (and Linear4bit's) refusals; returns A, the state and the flat packed bytes' tensor."""
    A = _checks.check_tensor("A", A)
    _checks.check_float_dtype("A", A.dtype)
    state = check_quant_state(quant_state)
    if len(state.shape) != 2:
        raise _errors.KbitValueError(f"the quantized weight has shape {tuple(state.shape)}; gemv_4bit needs a 2-D "
                                     f"(out_features, in_features) weight")
    out_features, in_features = state.shape
    if A.dim() < 1 or A.shape[-1] != in_features:
        raise _errors.KbitValueError(f"A has shape {tuple(A.shape)} but the weight has in_features={in_features}; "
                                     f"A's last dimension must be {in_features}")
    if A.device != state.absmax.device:
        raise _errors.KbitValueError(f"A is on {A.device} but the quantized weight is on {state.absmax.device}")
    packed = _checks.packed_bytes("B_packed", B_packed, state.shape.numel(), A.device)
    if bias is not None:
        bias = _checks.check_tensor("bias", bias)
        if bias.shape != (out_features,) or not bias.is_floating_point() or bias.device != A.device:
            raise _errors.KbitValueError(f"bias must be a floating-point tensor of shape ({out_features},) on "
                                         f"{A.device}; got {bias.dtype} {tuple(bias.shape)} on {bias.device}")
    return packed, state, bias


def gemv_4bit(A: torch.Tensor, B_packed: torch.Tensor, quant_state: QuantState, bias: torch.Tensor | None = None
              ) -> torch.Tensor:
    """A @ W.T (+ bias) for a 4-bit weight W (out_features, in_features) quantized by quantize_4bit.

    A: (..., in_features), float32/float16/bfloat16, any number of leading dimensions (batch 1..n). Each output
    is one float32 dot product of A's row with the dequantized weight row (table[code] * absmax in float32,
    not rounded to A's dtype), summed in the fixed order of csrc/numerics/blockwise4.h (32 lanes over k, each
    term one fused multiply-add, then a pairwise lane tree), plus bias (converted to A's dtype) added once, then
    rounded to A's dtype: the bits do not depend on the thread count, the instruction set or the backend (CPU
    and CUDA agree bit for bit). Error against float64 with the dequantized weight w: at most
    gamma_n * sum_k |A[m, k] w[j, k]| with n = ceil(K / 32) + 5 (with a bias: n + 1, and |bias| in the sum),
    gamma_n = n 2^-24 / (1 - n 2^-24), plus the rounding to A's dtype (blockwise4.h).
    Gradients flow to A and bias (the weight is frozen). Under torch.compile / torch.export, or when a gradient
    is needed, this is the custom op kbit::gemv_4bit (kbit._ops).
    """
    packed, state, bias = check_gemv_args(A, B_packed, quant_state, bias)
    needs_grad = torch.is_grad_enabled() and (A.requires_grad or (bias is not None and bias.requires_grad))
    if needs_grad or torch.compiler.is_compiling():
        return torch.ops.kbit.gemv_4bit(A, packed, *absmax_parts(state), bias, state.shape[0], state.blocksize,
                                    state.quant_type)
    return gemv_rows(A, packed, _resolved_absmax(state), bias, state.shape[0], state.blocksize, state.quant_type)
