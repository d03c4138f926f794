"""kbit's operations as torch.library custom ops, so torch.compile and torch.export see them as single graph nodes.

This module owns the registrations: the schemas of kbit::dequantize_4bit, kbit::gemv_4bit, kbit::linear_4bit and
kbit::linear_4bit_grad_input, their fake (meta) implementations, which compute output shapes without running a
kernel, and the autograd formulas of gemv_4bit and linear_4bit (gradients for the input and the bias; the 4-bit
weight is frozen). The real implementations are the eager functions of kbit._quant4 and kbit._matmul4, which reach
the native library through kbit._dispatch (the CPU library for CPU tensors, the selected CUDA variant for CUDA
ones), so registering loads nothing: a library is loaded at the first call, as in eager code. The ops take plain
tensors (a QuantState is passed as absmax, the nested absmax and offset, and the nested blocksize) and have
already been checked by their callers (kbit.functional, kbit.nn.Linear4bit).
"""
from typing import Optional

import torch

from kbit import _matmul4, _quant4

Tensor = torch.Tensor


@torch.library.custom_op("kbit::dequantize_4bit", mutates_args=())
def dequantize_4bit(packed: Tensor, absmax: Tensor, absmax2: Optional[Tensor], offset: Optional[Tensor],
                    nested_blocksize: int, shape: list[int], blocksize: int, quant_type: str, dtype: torch.dtype
                    ) -> Tensor:
    out = torch.empty(shape, dtype=dtype, device=packed.device)
    if out.numel():
        _quant4.dequantize_into(packed, _quant4.resolve_absmax(absmax, absmax2, offset, nested_blocksize), out,
                                blocksize, quant_type)
    return out


@dequantize_4bit.register_fake
def _(packed, absmax, absmax2, offset, nested_blocksize, shape, blocksize, quant_type, dtype):
    return packed.new_empty(shape, dtype=dtype)


@torch.library.custom_op("kbit::gemv_4bit", mutates_args=())
def gemv_4bit(A: Tensor, packed: Tensor, absmax: Tensor, absmax2: Optional[Tensor], offset: Optional[Tensor],
              nested_blocksize: int, bias: Optional[Tensor], out_features: int, blocksize: int, quant_type: str
              ) -> Tensor:
    absmax = _quant4.resolve_absmax(absmax, absmax2, offset, nested_blocksize)
    return _quant4.gemv_rows(A, packed, absmax, bias, out_features, blocksize, quant_type)


@torch.library.custom_op("kbit::linear_4bit", mutates_args=())
def linear_4bit(x: Tensor, packed: Tensor, absmax: Tensor, absmax2: Optional[Tensor], offset: Optional[Tensor],
                nested_blocksize: int, bias: Optional[Tensor], out_features: int, blocksize: int, quant_type: str
                ) -> Tensor:
    absmax = _quant4.resolve_absmax(absmax, absmax2, offset, nested_blocksize)
    return _matmul4.linear(x, packed, absmax, bias, out_features, blocksize, quant_type)


@torch.library.custom_op("kbit::linear_4bit_grad_input", mutates_args=())
def linear_4bit_grad_input(grad: Tensor, packed: Tensor, absmax: Tensor, absmax2: Optional[Tensor],
                           offset: Optional[Tensor], nested_blocksize: int, in_features: int, blocksize: int,
                           quant_type: str) -> Tensor:
    absmax = _quant4.resolve_absmax(absmax, absmax2, offset, nested_blocksize)
    return _matmul4.grad_input(grad.contiguous(), packed, absmax, in_features, blocksize, quant_type)


def _fake_product(x, packed, absmax, absmax2, offset, nested_blocksize, bias, out_features, blocksize, quant_type):
    return x.new_empty((*x.shape[:-1], out_features))


gemv_4bit.register_fake(_fake_product)
linear_4bit.register_fake(_fake_product)


@linear_4bit_grad_input.register_fake
def _(grad, packed, absmax, absmax2, offset, nested_blocksize, in_features, blocksize, quant_type):
    return grad.new_empty((*grad.shape[:-1], in_features))


def _setup_context(ctx, inputs, output):
    x, packed, absmax, absmax2, offset, nested_blocksize, bias, out_features, blocksize, quant_type = inputs
    ctx.save_for_backward(packed, absmax, absmax2, offset)
    ctx.weight = (nested_blocksize, x.shape[-1], blocksize, quant_type)
    ctx.has_bias = bias is not None
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad):
    packed, absmax, absmax2, offset = ctx.saved_tensors
    nested_blocksize, in_features, blocksize, quant_type = ctx.weight
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = linear_4bit_grad_input(grad, packed, absmax, absmax2, offset, nested_blocksize, in_features,
                                        blocksize, quant_type)
    if ctx.has_bias and ctx.needs_input_grad[6]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(ctx.bias_dtype)
    return grad_x, None, None, None, None, None, grad_bias, None, None, None


gemv_4bit.register_autograd(_backward, setup_context=_setup_context)
linear_4bit.register_autograd(_backward, setup_context=_setup_context)
