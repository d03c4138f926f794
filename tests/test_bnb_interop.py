"""Interchange with bitsandbytes itself (0.50.2, its CPU code paths): kbit's tensors and states must mean the
same numbers in both libraries. Skipped on a developer machine without bitsandbytes; CI installs it (the
`test` extra), where a missing bitsandbytes fails instead of skipping."""
from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from conftest import require_tool

try:
    import bitsandbytes.functional as BF
except Exception as exc:  # not installed, or broken in this environment
    BF, _IMPORT_ERROR = None, exc
else:
    _IMPORT_ERROR = None


@pytest.fixture(scope="module")
def bnb():
    require_tool(f"bitsandbytes ({_IMPORT_ERROR})", BF)
    return BF


@pytest.mark.parametrize("blocksize", [64, 256, 4096])
def test_8bit_blockwise_dequantizes_identically_and_codes_differ_only_where_kbit_is_nearer(bnb, blocksize):
    x = torch.randn(1 << 18, generator=torch.Generator().manual_seed(blocksize))
    theirs, their_state = bnb.quantize_blockwise(x, blocksize=blocksize)
    ours, our_state = F.quantize_blockwise(x, blocksize=blocksize)
    assert torch.equal(their_state.code, our_state.code) and torch.equal(their_state.absmax, our_state.absmax)
    # both ways of reading each other's codes give the same bits
    assert torch.equal(bnb.dequantize_blockwise(ours, absmax=our_state.absmax, code=their_state.code, blocksize=blocksize),
                       F.dequantize_blockwise(ours, our_state))
    their_as_ours = F.BlockwiseQuantState(their_state.absmax, our_state.code, blocksize, x.dtype, x.shape)
    assert torch.equal(F.dequantize_blockwise(theirs, their_as_ours), bnb.dequantize_blockwise(theirs, their_state))
    # bitsandbytes' CPU lookup table is not exact nearest (numerics.md); kbit's codes are never farther
    differ = theirs != ours
    assert differ.float().mean().item() < 0.005
    scale = our_state.absmax.repeat_interleave(blocksize)[: x.numel()]
    target = (x * (1.0 / scale)).double()  # the normalised float32 value both libraries look up
    table = our_state.code.double()
    ours_err = (table[ours.long()] - target).abs()
    theirs_err = (table[theirs.long()] - target).abs()
    assert bool((ours_err[differ] <= theirs_err[differ]).all())
