"""The CPU library's own thread team (csrc/cpu/parallel.h) beside torch's OpenMP runtime.

The library links no OpenMP (the portability tests check its DT_NEEDED); these tests show the pthread team it
uses instead gives the same bits for any thread count, from several Python threads at once interleaved with
torch's own parallel ops, and leaves no thread behind (each call joins its team)."""
from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

import kbit.functional as F


def _native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _work(A: torch.Tensor) -> tuple[torch.Tensor, ...]:
    codes, state = F.quantize_blockwise(A, blocksize=256)
    packed, state4 = F.quantize_4bit(A, blocksize=64, quant_type="nf4")
    return codes, F.dequantize_blockwise(codes, state), packed, F.dequantize_4bit(packed, state4)


def test_same_bits_for_any_thread_count():
    A = torch.randn(513 * 1024 + 7, generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        reference = _work(A)
        for threads in (2, 3, 7, 64):
            torch.set_num_threads(threads)
            for got, want in zip(_work(A), reference):
                assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads through /proc")
def test_concurrent_callers_beside_torch_ops_give_the_same_bits_and_kbit_leaves_no_thread():
    inputs = [torch.randn(256 * 1024 + i, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    reference = [_work(A) for A in inputs]
    torch.set_num_threads(4)
    M = torch.randn(384, 384)
    expected_mm = M @ M
    errors: list[str] = []

    def worker(k: int) -> None:
        for round_ in range(4):
            for i, A in enumerate(inputs):
                if not torch.equal(M @ M, expected_mm):  # torch's own OpenMP team, interleaved with kbit's
                    errors.append(f"worker {k}: torch matmul changed")
                got = _work(A)
                if not all(torch.equal(g.view(torch.uint8), w.view(torch.uint8)) for g, w in zip(got, reference[i])):
                    errors.append(f"worker {k} round {round_} input {i}: other bits than single-threaded")

    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        # each kbit call joins its team: kbit alone leaves the process with the threads it had
        torch.set_num_threads(8)
        _work(inputs[0])
        start = _native_threads()
        for A in inputs:
            _work(A)
        assert _native_threads() == start
    finally:
        torch.set_num_threads(before)
