"""Linear8bitLt: the LLM.int8 linear layer (bitsandbytes' Linear8bitLt), built on kbit._int8.

This module owns the layer: when its weight is quantized (row-wise int8 with float32 row stats "SCB"), the
forward pass (int8 product of the row-quantized input and weight, outlier input columns in the input's precision
when threshold > 0) with its backward, and the state_dict form with bitsandbytes' keys: "weight" (int8 once
quantized), "SCB" (float32, one per output row) and "weight_format" (uint8 0, "row"), so checkpoints move
between kbit and bitsandbytes in both directions.

When the weight is quantized (has_fp16_weights=False): on the first forward, on a move or dtype change of the
module (as bitsandbytes quantizes on .to(device)), or by quantize_(). The input is quantized from its own dtype
(bitsandbytes first casts it to float16, which overflows above 65504 for bfloat16/float32 activations); for
float16 inputs both give the same codes.
"""
from __future__ import annotations

import torch

from kbit import _errors
from kbit import functional as _int8  # the public LLM.int8 functions (kbit._int8 re-exported)

__all__ = ["Linear8bitLt"]

_ROW_FORMAT = 0  # bitsandbytes' LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING["row"]


class _Int8Matmul(torch.autograd.Function):
    """y = x @ W.T + b through int8 (kbit._int8); gradients for x (through the dequantized weight), for a float
    weight (has_fp16_weights=True: x.T @ grad) and for the bias."""

    @staticmethod
    def forward(ctx, x, weight, CB, SCB, bias, threshold):
        x2 = x.reshape(-1, x.shape[-1])
        CA, SCA, cols = _int8.int8_vectorwise_quant(x2, threshold)
        acc = _int8.int8_linear_matmul(CA, CB)
        out = _int8.int8_mm_dequant(acc, SCA, SCB, bias=bias, dtype=x.dtype)
        if cols is not None and cols.numel():
            # index_select: ~10x faster than CB[:, cols] on an int8 matrix (torch 2.13, CPU, 4096 x 4096, 40 columns)
            w_cols = _int8.int8_vectorwise_dequant(CB.index_select(1, cols), SCB).to(x.dtype)
            out = out.addmm(x2[:, cols], w_cols.t())
        ctx.save_for_backward(x2 if weight.requires_grad else None, CB, SCB)
        ctx.x_shape, ctx.has_bias = x.shape, bias is not None
        return out.reshape(*x.shape[:-1], CB.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, CB, SCB = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g2 @ _int8.int8_vectorwise_dequant(CB, SCB).to(g2.dtype)).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1] and x2 is not None:
            grad_w = (g2.t() @ x2.to(g2.dtype))
        if ctx.has_bias and ctx.needs_input_grad[4]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, None, None, grad_b, None


class Linear8bitLt(torch.nn.Linear):
    """y = x @ W.T + b with W stored row-wise int8 (LLM.int8; bitsandbytes' Linear8bitLt and its arguments).

    threshold: input columns holding any |x| >= threshold are multiplied in the input's precision (6.0 is
    LLM.int8's value; 0 disables it). has_fp16_weights=False stores the weight int8 (the inference and
    load_in_8bit form; quantized once, see the module docstring); True keeps a trainable float weight and
    quantizes it at every forward. index is accepted for bitsandbytes' signature and unused there too.
    """

    def __init__(self, input_features: int, output_features: int, bias: bool = True, has_fp16_weights: bool = True,
                 threshold: float = 0.0, index=None, device=None):
        super().__init__(input_features, output_features, bias, device)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
            raise _errors.KbitValueError(f"threshold={threshold!r} must be a number >= 0 (6.0 for LLM.int8, 0 for none)")
        self.threshold = float(threshold)
        self.has_fp16_weights = bool(has_fp16_weights)
        self.index = index
        self.weight.requires_grad_(self.has_fp16_weights)
        self.register_buffer("SCB", None)

    @property
    def is_quantized(self) -> bool:
        return self.weight.dtype == torch.int8

    def quantize_(self) -> Linear8bitLt:
        """Quantize the float weight to int8 + SCB now (has_fp16_weights=False only); returns self."""
        if self.has_fp16_weights:
            raise _errors.KbitValueError("this Linear8bitLt has has_fp16_weights=True: its weight stays float and is "
                                         "quantized at every forward", fix="build it with has_fp16_weights=False")
        if not self.is_quantized and self.weight.device.type != "meta":
            CB, SCB, _ = _int8.int8_vectorwise_quant(self.weight.detach())
            self.weight = torch.nn.Parameter(CB, requires_grad=False)
            self.SCB = SCB
        return self

    def _apply(self, fn, recurse=True):
        scb = self.SCB
        self.SCB = None  # SCB is float32 whatever a .half() or .to(dtype) does to the module
        super()._apply(fn, recurse)
        if scb is not None:
            self.SCB = fn(scb).to(torch.float32)
        if not self.has_fp16_weights and self.weight.is_floating_point() and self.weight.device.type != "meta":
            self.quantize_()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise _errors.KbitValueError(f"input has {x.shape[-1]} features; this layer takes {self.in_features}")
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if x.numel() == 0:
            return torch.empty(*x.shape[:-1], self.out_features, dtype=x.dtype, device=x.device)
        if self.has_fp16_weights:
            CB, SCB, _ = _int8.int8_vectorwise_quant(self.weight.detach())
            return _Int8Matmul.apply(x, self.weight, CB, SCB, bias, self.threshold)
        self.quantize_()
        return _Int8Matmul.apply(x, self.weight, self.weight.detach(), self.SCB, bias, self.threshold)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)  # weight, bias and SCB (once set)
        if self.is_quantized:
            destination[prefix + "weight_format"] = torch.tensor(_ROW_FORMAT, dtype=torch.uint8)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        fmt = state_dict.get(prefix + "weight_format", _ROW_FORMAT)
        fmt = fmt.item() if isinstance(fmt, torch.Tensor) else fmt
        if fmt not in (_ROW_FORMAT, "row"):
            raise _errors.KbitValueError(f"{prefix}weight_format is {fmt!r}; only the row-major format (0, 'row') "
                                         f"exists in bitsandbytes >= 0.45 and kbit", fix="re-save the checkpoint "
                                         "with a current bitsandbytes or kbit")
        weight = state_dict.get(prefix + "weight")
        scb = state_dict.get(prefix + "SCB")
        if isinstance(weight, torch.Tensor):
            self._prepare_weight(prefix, weight, scb)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if scb is not None and isinstance(weight, torch.Tensor) and weight.dtype == torch.int8:
            self.SCB = scb.detach().to(self.weight.device, torch.float32, copy=True)
        for extra in (prefix + "SCB", prefix + "weight_format"):
            if extra in unexpected_keys:
                unexpected_keys.remove(extra)

    def _prepare_weight(self, prefix: str, weight: torch.Tensor, scb: torch.Tensor | None) -> None:
        """Give self.weight the incoming weight's kind (int8 codes or a float weight) before torch copies it in,
        so that neither is converted into the other."""
        shape = (self.out_features, self.in_features)
        if tuple(weight.shape) != shape:
            return  # torch reports the shape mismatch itself
        device = self.weight.device
        if weight.dtype == torch.int8:
            if scb is None or scb.numel() != self.out_features:
                raise _errors.KbitValueError(
                    f"{prefix}weight is int8 but {prefix}SCB is {'missing' if scb is None else f'{scb.numel()} values'}; "
                    f"an int8 weight needs its {self.out_features} row stats", fix="load the checkpoint's SCB too")
            if self.has_fp16_weights:
                raise _errors.KbitValueError(f"{prefix}weight is an int8 checkpoint but this Linear8bitLt has "
                                             f"has_fp16_weights=True", fix="build it with has_fp16_weights=False")
            if not self.is_quantized:
                self.weight = torch.nn.Parameter(torch.empty(shape, dtype=torch.int8, device=device),
                                                 requires_grad=False)
        elif weight.is_floating_point() and self.is_quantized:
            self.weight = torch.nn.Parameter(torch.empty(shape, dtype=torch.float32, device=device),
                                             requires_grad=self.has_fp16_weights)
            self.SCB = None
