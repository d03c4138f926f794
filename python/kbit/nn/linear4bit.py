"""Linear4bit: a linear layer whose weight is stored 4-bit (NF4 or FP4).

This module owns the layer: quantizing a weight once (at construction, or from an existing nn.Linear), the
forward pass (kbit.functional.linear_4bit chooses gemv_4bit for small batches and dequantized tiles + torch's
matmul for larger ones; under torch.compile, or when a gradient is needed, it is the custom op
kbit::linear_4bit), and the
state_dict form. The state_dict uses bitsandbytes' keys ("weight" holds the packed bytes,
"weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map",
"weight.quant_state.bitsandbytes__<type>", "bias"), so a layer quantized once is saved and loaded into a fresh
Linear4bit without converting again, and checkpoints move between kbit and bitsandbytes. Build a layer on
device="meta" to load a checkpoint without quantizing a random initial weight first.
"""
from __future__ import annotations

import math

import torch

from kbit import _checks, _errors
from kbit.functional import QuantState, linear_4bit, quantize_4bit

_COMPUTE_DTYPES = (None, torch.float32, torch.float16, torch.bfloat16)


class Linear4bit(torch.nn.Module):
    """y = x @ W.T + b with W quantized blockwise to 4 bits (bitsandbytes' Linear4bit format).

    compute_dtype: the dtype the product runs in (None: the input's); the output has the input's dtype.
    quant_type "nf4" or "fp4", blocksize 32..4096, compress_statistics: double-quantize the absmax.
    The weight is initialised like nn.Linear's and quantized at construction; on device="meta" nothing is
    allocated or quantized and the layer must load a state_dict before its first forward.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, compute_dtype: torch.dtype | None = None,
                 quant_type: str = "nf4", blocksize: int = 64, compress_statistics: bool = True, device=None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _errors.KbitValueError(f"{name}={value!r} must be a non-negative int")
        if compute_dtype not in _COMPUTE_DTYPES:
            raise _errors.KbitValueError(f"compute_dtype={compute_dtype!r}; use None (the input's dtype), "
                                         f"torch.float32, torch.float16 or torch.bfloat16")
        _checks.check_quant_type(quant_type)
        _checks.check_blocksize_4bit(blocksize)
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype, self.quant_type, self.blocksize = compute_dtype, quant_type, blocksize
        self.compress_statistics = bool(compress_statistics)
        self.quant_state: QuantState | None = None
        device = torch.device(device) if device is not None else torch.device("cpu")
        n = in_features * out_features
        self.weight = torch.nn.Parameter(torch.empty(((n + 1) // 2, 1), dtype=torch.uint8, device=device),
                                         requires_grad=False)
        self.bias = torch.nn.Parameter(torch.empty(out_features, device=device)) if bias else None
        if device.type != "meta":
            self._init_like_linear(device)

    def _init_like_linear(self, device: torch.device) -> None:
        weight = torch.empty(self.out_features, self.in_features, device=device)
        torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Linear.reset_parameters
        self._set_quantized(*quantize_4bit(weight, self.blocksize, self.quant_type, self.compress_statistics))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            with torch.no_grad():
                self.bias.uniform_(-bound, bound)

    def _set_quantized(self, packed: torch.Tensor, state: QuantState) -> None:
        self.weight = torch.nn.Parameter(packed.reshape(-1, 1), requires_grad=False)
        self.quant_state = state
        self.weight.quant_state = state  # where bitsandbytes-style code looks for it

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, compute_dtype: torch.dtype | None = None, quant_type: str = "nf4",
                    blocksize: int = 64, compress_statistics: bool = True) -> Linear4bit:
        """A Linear4bit holding `linear`'s weight quantized (once) and a copy of its bias, on its device."""
        if not isinstance(linear, torch.nn.Linear):
            raise _errors.KbitValueError(f"from_linear needs a torch.nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, compute_dtype, quant_type,
                    blocksize, compress_statistics, device="meta")
        layer._set_quantized(*quantize_4bit(linear.weight.detach(), blocksize, quant_type, compress_statistics))
        if linear.bias is not None:
            layer.bias = torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        return layer

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"quant_type={self.quant_type}, blocksize={self.blocksize}, "
                f"compress_statistics={self.compress_statistics}, compute_dtype={self.compute_dtype}")

    # ------------------------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_state is None:
            raise _errors.KbitValueError("this Linear4bit has no weight yet (it was built on device='meta'); load a "
                                         "state_dict saved from a Linear4bit first (layer.load_state_dict(sd))")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise _errors.KbitValueError(f"Linear4bit input must be a floating-point tensor, got "
                                         f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise _errors.KbitValueError(f"input has shape {tuple(x.shape)} but this layer has in_features="
                                         f"{self.in_features}; the input's last dimension must be {self.in_features}")
        compute = self.compute_dtype or x.dtype
        bias = None if self.bias is None else self.bias.to(compute)
        y = linear_4bit(x.to(compute), self.weight, self.quant_state, bias)
        return y.to(x.dtype)

    # ------------------------------------------------------------------------------------ device moves

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.quant_state is not None and self.weight.device != self.quant_state.absmax.device:
            self.quant_state.to(self.weight.device)  # the state follows the packed weight, never a dtype change
        return self

    # ------------------------------------------------------------------------------------ state_dict

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)  # weight (packed bytes) and bias
        if self.quant_state is not None:
            for key, value in self.quant_state.as_dict(packed=True).items():
                destination[prefix + "weight." + key] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        weight_key, bias_key = prefix + "weight", prefix + "bias"
        state_items = {k[len(weight_key) + 1:]: v for k, v in state_dict.items() if k.startswith(weight_key + ".")}
        # everything is checked before anything is replaced: a refused checkpoint leaves the layer as it was
        weight = None
        if weight_key in state_dict:
            weight = self._checked_weight(state_dict[weight_key], state_items, weight_key)
        else:
            missing_keys.append(weight_key)
        bias = self._checked_bias(state_dict, bias_key, missing_keys, unexpected_keys)
        if weight is not None:
            self._set_quantized(*weight)
        if bias is not None:
            self.bias = torch.nn.Parameter(bias, requires_grad=self.bias.requires_grad)
        if strict:
            for key in state_dict:
                rest = key[len(prefix):] if key.startswith(prefix) else None
                if rest is not None and "." not in rest and rest not in ("weight", "bias"):
                    unexpected_keys.append(key)

    def _target_device(self, loaded: torch.Tensor) -> torch.device:
        return loaded.device if self.weight.device.type == "meta" else self.weight.device

    def _checked_weight(self, weight: torch.Tensor, items: dict, key: str) -> tuple[torch.Tensor, QuantState]:
        if not items:
            raise _errors.KbitValueError(
                f"{key} has shape {tuple(weight.shape)} and dtype {weight.dtype} with no quant state items "
                f"({key}.absmax, {key}.quant_state.bitsandbytes__nf4, ...): it is not a 4-bit weight.", fix="quantize "
                "an nn.Linear once with Linear4bit.from_linear(linear) and save that layer's state_dict")
        device = self._target_device(weight)
        state = QuantState.from_dict(dict(items), device=device)
        expected = torch.Size((self.out_features, self.in_features))
        if state.shape != expected:
            raise _errors.KbitValueError(f"{key} was saved for a weight of shape {tuple(state.shape)}, but this layer "
                                         f"is ({self.out_features}, {self.in_features}) (out_features, in_features)")
        saved = (state.quant_type, state.blocksize, state.nested)
        if saved != (self.quant_type, self.blocksize, self.compress_statistics):
            raise _errors.KbitValueError(
                f"{key} was saved as quant_type={state.quant_type!r}, blocksize={state.blocksize}, "
                f"compress_statistics={state.nested}, but this layer is quant_type={self.quant_type!r}, blocksize="
                f"{self.blocksize}, compress_statistics={self.compress_statistics}.", fix=f"build the layer with the "
                f"saved settings: Linear4bit(..., quant_type={state.quant_type!r}, blocksize={state.blocksize}, "
                f"compress_statistics={state.nested})")
        packed = _checks.packed_bytes(key, weight, expected.numel()).to(device)
        return packed.clone(), state

    def _checked_bias(self, state_dict, key: str, missing_keys: list, unexpected_keys: list) -> torch.Tensor | None:
        """The bias to load (a new tensor on the target device), or None when there is none to load."""
        if self.bias is None:
            if key in state_dict:
                unexpected_keys.append(key)
            return None
        if key not in state_dict:
            missing_keys.append(key)
            return None
        bias = state_dict[key]
        if not isinstance(bias, torch.Tensor) or bias.shape != (self.out_features,) or not bias.is_floating_point():
            raise _errors.KbitValueError(f"{key} must be a floating-point tensor of shape ({self.out_features},); got "
                                         f"{getattr(bias, 'dtype', type(bias).__name__)} "
                                         f"{tuple(getattr(bias, 'shape', ()))}")
        return bias.detach().to(self._target_device(bias)).clone()
