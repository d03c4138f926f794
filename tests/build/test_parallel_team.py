"""The threads that run the CPU library's loops (csrc/cpu/parallel.h, parallel.cpp) beside torch's OpenMP runtime.

The library links no OpenMP (the portability tests check its DT_NEEDED). With torch loaded, its loops run on
torch's own OpenMP team (found in the process, not linked); without one, on a pthread team of its own. These tests
show the same bits for any thread count, from several Python threads at once interleaved with torch's own
parallel ops; that the loops start no thread of their own when torch's team is there; that the threads persist
(a call reuses them, and more start only for a larger thread count); and that a forked child, which has none of
the parent's threads, computes the same bits without hanging."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
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
        # the team persists: once started for 8 threads, more calls (at 8 or fewer) start no thread
        torch.set_num_threads(8)
        _work(inputs[0])
        start = _native_threads()
        for threads in (8, 2, 8):
            torch.set_num_threads(threads)
            for A in inputs:
                _work(A)
        assert _native_threads() == start
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads through /proc")
def test_the_team_grows_only_to_the_largest_thread_count_asked():
    A = torch.randn(2048 * 1024, generator=torch.Generator().manual_seed(5))  # work enough for 100 threads
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(96)  # more than any other test asks: this call adds workers
        _work(A)
        start = _native_threads()
        torch.set_num_threads(100)  # 4 more ranges: 4 more kbit workers (and up to 4 more of torch's)
        _work(A)
        grown = _native_threads()
        assert start + 4 <= grown <= start + 8
        _work(A)
        assert _native_threads() == grown
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads through /proc")
@pytest.mark.skipif(not torch.backends.openmp.is_available(), reason="this torch was built without OpenMP")
def test_loops_run_on_torchs_openmp_team_and_start_no_thread_of_their_own():
    """A fresh interpreter (no kbit threads from other tests): after a torch op has started torch's team of 6, kbit
    calls at 6 threads add no thread, and give the bits of a single-threaded call."""
    code = textwrap.dedent("""
        import hashlib, os, torch
        import kbit.functional as F
        def threads(): return len(os.listdir("/proc/self/task"))
        def digest(A):
            packed, _ = F.quantize_4bit(A, blocksize=64, quant_type="nf4")
            codes, _ = F.quantize_blockwise(A, blocksize=256)
            return [hashlib.sha256(t.numpy().tobytes()).hexdigest() for t in (packed, codes)]
        A = torch.randn(1 << 21, generator=torch.Generator().manual_seed(4))
        torch.set_num_threads(1)
        reference = digest(A)
        torch.set_num_threads(6)
        torch.exp(torch.randn(1 << 22))  # torch's OpenMP team: 5 workers beside this thread
        before = threads()
        same = all(digest(A) == reference for _ in range(3))
        print(before, threads(), same)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    before, after, same = done.stdout.split()
    assert same == "True"
    assert int(after) == int(before), f"kbit started {int(after) - int(before)} thread(s) beside torch's team"


def _digests(outputs: tuple[torch.Tensor, ...]) -> list[str]:
    # compared through numpy bytes: torch's own parallel ops (torch.equal on large tensors) can hang in a forked
    # child of a process whose OpenMP team ran, which is torch's matter, not kbit's
    return [hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest() for t in outputs]


def _forked_child(A: torch.Tensor, results) -> None:
    results.put((torch.get_num_threads(), _digests(_work(A))))  # the parent's 4 threads: kbit's team is used


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork() start method")
def test_a_forked_child_starts_its_own_team_and_gets_the_same_bits():
    """A DataLoader worker is a fork of a process whose kbit team is running: the child has the team's memory but
    none of its threads, so it must start its own instead of waiting for workers that are not there."""
    import multiprocessing

    A = torch.randn(512 * 1024 + 3, generator=torch.Generator().manual_seed(9))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        reference = _digests(_work(A))
        torch.set_num_threads(4)
        assert _digests(_work(A)) == reference  # the parent's team is running
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        child = ctx.Process(target=_forked_child, args=(A, results))
        child.start()
        child.join(timeout=120)
        if child.is_alive():
            child.kill()
            pytest.fail("the forked child hung in its first kbit call (it waited for the parent's workers)")
        assert child.exitcode == 0
        assert results.get(timeout=10) == (4, reference)
    finally:
        torch.set_num_threads(before)
