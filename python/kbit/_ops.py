"""kbit's operations as torch.library custom ops, so torch.compile and torch.export see them as single graph nodes.

This module owns the registrations: the schemas of kbit::dequantize_4bit, kbit::gemv_4bit, kbit::linear_4bit and
kbit::linear_4bit_grad_input, their fake (Meta-key) implementations, which compute output shapes without running a
kernel, and the autograd formulas of gemv_4bit and linear_4bit (gradients for the input and the bias; the 4-bit
weight is frozen). The real implementations are the eager functions of kbit._quant4 and kbit._matmul4, which reach
the native library through kbit._dispatch (the CPU library for CPU tensors, the selected CUDA variant for CUDA
ones), so registering loads nothing: a library is loaded at the first call, as in eager code. The ops take plain
tensors (a QuantState is passed as absmax, the nested absmax and offset, and the nested blocksize) and have
already been checked by their callers (kbit.functional, kbit.nn.Linear4bit).
"""
from __future__ import annotations

import torch

from kbit import _matmul4, _quant4

# Explicit schemas (torch.library.define) rather than torch.library.custom_op's inference from annotations: the
# same ops for a fraction of the import time (custom_op costs 1-2 ms per op to infer a schema).
_WEIGHT = "Tensor packed, Tensor absmax, Tensor? absmax2, Tensor? offset, int nested_blocksize"
SCHEMAS = {
    "dequantize_4bit": f"({_WEIGHT}, int[] shape, int blocksize, str quant_type, ScalarType dtype) -> Tensor",
    "gemv_4bit": f"(Tensor A, {_WEIGHT}, Tensor? bias, int out_features, int blocksize, str quant_type) -> Tensor",
    "linear_4bit": f"(Tensor x, {_WEIGHT}, Tensor? bias, int out_features, int blocksize, str quant_type) -> Tensor",
    "linear_4bit_grad_input": f"(Tensor grad, {_WEIGHT}, int in_features, int blocksize, str quant_type) -> Tensor",
}
_lib = torch.library.Library("kbit", "DEF")  # noqa: TOR901 (kept alive for the process: the ops' owner)


def dequantize_4bit(packed, absmax, absmax2, offset, nested_blocksize, shape, blocksize, quant_type, dtype):
    out = torch.empty(shape, dtype=dtype, device=packed.device)
    if out.numel():
        _quant4.dequantize_into(packed, _quant4.resolve_absmax(absmax, absmax2, offset, nested_blocksize), out,
                                blocksize, quant_type)
    return out


def gemv_4bit(A, packed, absmax, absmax2, offset, nested_blocksize, bias, out_features, blocksize, quant_type):
    absmax = _quant4.resolve_absmax(absmax, absmax2, offset, nested_blocksize)
    return _quant4.gemv_rows(A, packed, absmax, bias, out_features, blocksize, quant_type)


def linear_4bit(x, packed, absmax, absmax2, offset, nested_blocksize, bias, out_features, blocksize, quant_type):
    absmax = _quant4.resolve_absmax(absmax, absmax2, offset, nested_blocksize)
    return _matmul4.linear(x, packed, absmax, bias, out_features, blocksize, quant_type)


def linear_4bit_grad_input(grad, packed, absmax, absmax2, offset, nested_blocksize, in_features, blocksize,
                           quant_type):
    absmax = _quant4.resolve_absmax(absmax, absmax2, offset, nested_blocksize)
    return _matmul4.grad_input(grad.contiguous(), packed, absmax, in_features, blocksize, quant_type)


def _fake_dequantize(packed, absmax, absmax2, offset, nested_blocksize, shape, blocksize, quant_type, dtype):
    return packed.new_empty(shape, dtype=dtype)


def _fake_product(x, packed, absmax, absmax2, offset, nested_blocksize, bias, out_features, blocksize, quant_type):
    return x.new_empty((*x.shape[:-1], out_features))


def _fake_grad_input(grad, packed, absmax, absmax2, offset, nested_blocksize, in_features, blocksize, quant_type):
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
        grad_x = torch.ops.kbit.linear_4bit_grad_input(grad, packed, absmax, absmax2, offset, nested_blocksize,
                                                       in_features, blocksize, quant_type)
    if ctx.has_bias and ctx.needs_input_grad[6]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(ctx.bias_dtype)
    return grad_x, None, None, None, None, None, grad_bias, None, None, None


def _register() -> None:
    impls = {"dequantize_4bit": (dequantize_4bit, _fake_dequantize), "gemv_4bit": (gemv_4bit, _fake_product),
             "linear_4bit": (linear_4bit, _fake_product), "linear_4bit_grad_input": (linear_4bit_grad_input,
                                                                                    _fake_grad_input)}
    for name, schema in SCHEMAS.items():
        impl, fake = impls[name]
        _lib.define(name + schema)
        _lib.impl(name, impl, "CompositeExplicitAutograd")  # every device: kbit._dispatch picks the library
        # the shape function as the op's Meta kernel, which FakeTensorMode (torch.compile, torch.export) runs for
        # an op without a registered fake: the same result, and torch.library.register_fake would cost ~30 ms of
        # import time where this costs well under one
        _lib.impl(name, fake, "Meta")
    for name in ("gemv_4bit", "linear_4bit"):
        torch.library.register_autograd(f"kbit::{name}", _backward, setup_context=_setup_context, lib=_lib)


_register()
