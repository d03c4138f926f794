"""kbit._dispatch: which library serves a tensor, and that the tensor's GPU is made current for the native call
(the C ABI works on the current device). Without a GPU the CUDA side is simulated: a stand-in for a cuda:1
tensor and torch.cuda.device replaced by a recorder."""
from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from kbit import _dispatch, _errors, _native


class RecordingLibrary:
    def __init__(self, log):
        self.log = log

    def call(self, function, *args):
        self.log.append(("call", function, args))


def test_a_cuda_tensor_runs_with_its_device_current(monkeypatch):
    log = []

    @contextlib.contextmanager
    def device(d):
        log.append(("enter", str(d)))
        yield
        log.append(("exit", str(d)))

    monkeypatch.setattr(torch.cuda, "device", device)
    fake = SimpleNamespace(device=torch.device("cuda", 1))
    _dispatch.call(fake, RecordingLibrary(log), "kbit_fn", 1, 2)
    assert log == [("enter", "cuda:1"), ("call", "kbit_fn", (1, 2)), ("exit", "cuda:1")]


def test_a_cpu_tensor_switches_nothing(monkeypatch):
    log = []
    monkeypatch.setattr(torch.cuda, "device", lambda d: pytest.fail("no device switch for a CPU tensor"))
    _dispatch.call(torch.zeros(1), RecordingLibrary(log), "kbit_fn")
    assert log == [("call", "kbit_fn", ())]


def test_cpu_tensors_get_the_cpu_library_and_no_stream():
    t = torch.zeros(3)
    assert _dispatch.library_for(t, "t") is _native.cpu()
    assert _dispatch.stream_for(t) is None and _dispatch.ptr(torch.empty(0)) is None
    assert _dispatch.threads() == max(1, torch.get_num_threads())


def test_other_devices_are_refused_with_the_fix():
    with pytest.raises(_errors.KbitValueError, match=r"meta.*fix: move it with t\.cpu\(\)"):
        _dispatch.library_for(torch.zeros(2, device="meta"), "t")
