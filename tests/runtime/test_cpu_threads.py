"""kbit_cpu_threads (ABI 5): which threads run the CPU library's loops, as `python -m kbit` reports it, and the
diagnosis when kbit's loops and torch's run on different teams (csrc/cpu/parallel.cpp)."""
from __future__ import annotations

import ctypes
import os
import sys

import pytest
import torch

from kbit import _abi, _diagnose, _errors, _native, _render, _report

linux_openmp = pytest.mark.skipif(not sys.platform.startswith("linux") or not torch.backends.openmp.is_available(),
                                  reason="torch's OpenMP team is looked up on Linux, with an OpenMP build of torch")


@linux_openmp
def test_with_torch_loaded_the_loops_run_on_torchs_openmp_runtime():
    kind, where = _native.cpu_threads(_native.cpu())
    assert kind == _abi.THREADS_HOST_OPENMP
    assert os.path.isfile(where) and "omp" in os.path.basename(where), where


@linux_openmp
def test_the_runtime_file_is_truncated_to_the_buffer_and_a_null_buffer_of_size_0_is_fine():
    lib = _native.cpu()
    _, full = _native.cpu_threads(lib)
    kind, small = ctypes.c_int32(-1), ctypes.create_string_buffer(8)
    lib.call("kbit_cpu_threads", ctypes.byref(kind), small, 8)
    assert kind.value == _abi.THREADS_HOST_OPENMP and small.value.decode() == full[:7]
    lib.call("kbit_cpu_threads", ctypes.byref(kind), None, 0)
    assert kind.value == _abi.THREADS_HOST_OPENMP


@pytest.mark.parametrize("args, words", [
    ((None, ctypes.create_string_buffer(16), 16), "kind is NULL"),
    ((ctypes.byref(ctypes.c_int32()), None, 16), "where is NULL or capacity (16)"),
    ((ctypes.byref(ctypes.c_int32()), ctypes.create_string_buffer(16), -1), "capacity (-1) is negative"),
])
def test_bad_arguments_are_refused_with_the_reason(args, words):
    with pytest.raises(_errors.NativeArgumentError, match=r"kbit_cpu_threads") as exc:
        _native.cpu().call("kbit_cpu_threads", *args)
    assert words in str(exc.value)


def _child(results) -> None:
    results.put(_native.cpu_threads(_native.cpu())[0])


@linux_openmp
def test_a_forked_child_uses_kbits_own_team():
    """The child of fork() has none of its parent's OpenMP threads (libgomp would wait for them): kbit's own team."""
    import multiprocessing

    _native.cpu_threads(_native.cpu())  # the parent has the library loaded and its answer
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_child, args=(results,))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    assert results.get(timeout=10) == _abi.THREADS_OWN_TEAM


@linux_openmp
def test_the_report_says_which_threads_run_the_loops():
    report = _report.build(self_test=False)
    t = report.load("cpu").threads
    assert t.kind == _abi.THREADS_HOST_OPENMP and t.count == torch.get_num_threads() and t.torch_openmp
    text = _render.text(report)
    assert f"cpu: loops run on torch's OpenMP team ({t.where}), {t.count} thread" in text
    assert "cpu_threads_apart" not in [f.key for f in report.findings]


class _Report:
    def __init__(self, threads):
        self._cpu = _report.LoadResult("cpu", "/x/libkbit_cpu.so", threads=threads)

    def load(self, variant):
        return self._cpu if variant == "cpu" else None


@pytest.mark.parametrize("kind, torch_openmp, count, warned", [
    (_abi.THREADS_HOST_OPENMP, True, 8, False),
    (_abi.THREADS_OWN_TEAM, True, 8, True),     # torch has a team, kbit did not find it: they compete
    (_abi.THREADS_OWN_TEAM, True, 1, False),    # one thread: nothing to compete for
    (_abi.THREADS_OWN_TEAM, False, 8, False),   # a torch without OpenMP: kbit's team is the only one
    (_abi.THREADS_PER_CALL, True, 8, False),    # Windows
])
def test_the_diagnosis_warns_only_when_the_two_teams_compete(kind, torch_openmp, count, warned):
    findings = _diagnose.check_cpu_threads(_Report(_report.CpuThreads(kind, "", count, torch_openmp)))
    assert [f.key for f in findings] == (["cpu_threads_apart"] if warned else [])
    if warned:
        assert findings[0].severity == "warning" and "OMP_WAIT_POLICY=PASSIVE" in findings[0].fix
