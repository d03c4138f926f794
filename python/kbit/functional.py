"""kbit.functional: quantization functions on torch tensors (bitsandbytes' formats; see the docstrings).

This module only re-exports: the 8-bit blockwise functions are kbit._blockwise8's, the code maps kbit._maps' and
kbit._map_builders', QuantState kbit._quant_state's, the 4-bit functions kbit._quant4's, linear_4bit (a 4-bit linear
layer's matmul, choosing its path by batch size) kbit._matmul4's and LLM.int8's kbit._int8's.
"""
from __future__ import annotations

from kbit._blockwise8 import BlockwiseQuantState, create_dynamic_map, dequantize_blockwise, quantize_blockwise
from kbit._int8 import int8_linear_matmul, int8_mm_dequant, int8_vectorwise_dequant, int8_vectorwise_quant
from kbit._map_builders import create_fp8_map, create_linear_map
from kbit._maps import get_4bit_type
from kbit._matmul4 import linear_4bit
from kbit._quant4 import dequantize_4bit, gemv_4bit, quantize_4bit
from kbit._quant_state import QuantState

__all__ = ["BlockwiseQuantState", "create_dynamic_map", "create_linear_map", "create_fp8_map", "quantize_blockwise",
           "dequantize_blockwise", "QuantState",
           "get_4bit_type", "quantize_4bit", "dequantize_4bit", "gemv_4bit", "int8_vectorwise_quant",
           "int8_vectorwise_dequant", "int8_linear_matmul", "int8_mm_dequant", "linear_4bit"]
