"""The one orchestrator: facts -> policy -> load, each step done once per process and thread-safe.

This module owns the process-wide cache of facts and of the decision, the BNB_CUDA_VERSION lookup, and
handing out the CUDA library for a device (checking that the device's GPU is covered). It gathers nothing
itself (kbit._facts), decides nothing itself (kbit._policy) and loads through kbit._native. Nothing happens
at import: the first CUDA tensor triggers the decision, and the driver is asked only when torch has CUDA or
BNB_CUDA_VERSION is set (or when the diagnosis asks for everything).
"""
from __future__ import annotations

import os
import sys
import threading
import warnings

from kbit import _errors, _facts, _native, _platform, _policy

_lock = threading.RLock()
_cache: dict[str, object] = {}
_override_checked = False  # apart from _cache: checking the variable's syntax is no decision and asks no driver


def _once(key: str, make):
    value = _cache.get(key)
    if value is None:
        with _lock:
            value = _cache.get(key)
            if value is None:
                value = make()
                _cache[key] = value
    return value


def override() -> str | None:
    """The raw BNB_CUDA_VERSION value (None when unset)."""
    return os.environ.get(_policy.OVERRIDE_VARIABLE)


def _driver(probe: bool) -> _facts.DriverFacts:
    if not probe:
        return _cache.get("driver", _facts.NOT_PROBED)
    return _once("driver", lambda: _facts.gather_driver(_platform.current()))


def facts(*, probe_driver: bool | None = None) -> _facts.Facts:
    """The facts of this process. The driver is probed when `probe_driver` is True, or (None) when the policy
    needs it: torch has CUDA or BNB_CUDA_VERSION is set."""
    platform = _platform.current()
    torch_facts = _once("torch", _facts.gather_torch)
    if probe_driver is None:
        probe_driver = torch_facts.cuda is not None or override() is not None
    return _facts.Facts(
        host=_once("host", lambda: _facts.gather_host(platform)), torch=torch_facts, driver=_driver(probe_driver),
        variants=_once("variants", lambda: _facts.gather_variants(_native.bundled_manifests(),
                                                                  _native.expected_library_path)),
        env=_facts.gather_env())


def _user_stacklevel() -> int:
    """The warnings.warn stacklevel that points at the first caller outside kbit (from the caller's frame)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "kbit":
        frame, level = frame.f_back, level + 1
    return level


def decision() -> _policy.Decision:
    """The process's decision, made once (its warnings are emitted once, as KbitWarning)."""
    def make():
        made = _policy.decide(facts(), override())
        for text in made.warnings:
            warnings.warn(text, _errors.KbitWarning, stacklevel=_user_stacklevel())
        return made
    return _once("decision", make)


def check_override_once() -> None:
    """At the first CPU call: one KbitWarning when BNB_CUDA_VERSION is malformed. CPU tensors do not use it (the
    CPU library serves them), so without this a typo would pass unnoticed until the first CUDA tensor, which
    still raises BadOverrideError (and `python -m kbit` exits 3)."""
    global _override_checked
    if _override_checked:
        return
    with _lock:
        if _override_checked:
            return
        _override_checked = True
        try:
            _policy.parse_override(override(), tuple(sorted(_native.bundled_manifests())))
        except _errors.BadOverrideError as exc:
            warnings.warn(f"{exc}. CPU tensors are served by the CPU library regardless; the first CUDA tensor "
                          f"raises BadOverrideError", _errors.KbitWarning, stacklevel=_user_stacklevel())


def cuda_library(device_index: int, name: str = "the tensor") -> _native.NativeLibrary:
    """The library serving CUDA tensors on device `device_index`; a typed error when none can."""
    chosen = decision()
    if chosen.variant is None:
        error = chosen.error()
        raise type(error)(f"{name} is on cuda:{device_index}, but no kbit CUDA library serves it: {error.evidence}",
                          fix=error.fix)
    lib = _native.library(chosen.variant)
    _check_device(chosen.variant, device_index, name)
    return lib


def _check_device(variant: str, index: int, name: str) -> None:
    current = facts()
    gpu = next((g for g in current.driver.gpus if g.index == index), None)
    info = current.variant(variant)
    if gpu is None or info is None or _policy.coverage(info, gpu).covered:
        return
    raise _errors.ArchNotCoveredError(
        f"{name} is on cuda:{index}, GPU {gpu.name} (sm_{gpu.sm}), which {variant} cannot run: it has "
        f"{_policy.archs_text(info)}.", fix=f"unset {_policy.OVERRIDE_VARIABLE} (it is {override()!r}) to let kbit "
        f"choose a covering variant, or install a kbit build with sm_{gpu.sm}")


def reset() -> None:
    """Forget every fact and the decision (tests; a changed environment). Loaded libraries stay loaded."""
    global _override_checked
    with _lock:
        _cache.clear()
        _override_checked = False
