"""Rendering a kbit._report.Report: plain greppable text (one fact per line) and JSON for machines.

This module owns the output formats of `python -m kbit` and `kbit.show_config()`; it computes nothing.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import sys
from pathlib import Path

from kbit import _abi, _diagnose, _policy
from kbit._facts import cuda_version_text


def _variant_line(v) -> str:
    state = "present" if v.present else "MISSING library file"
    glibc = f"  glibc >= {v.glibc}" if v.glibc else ""
    if v.backend != "cuda":
        return f"  {v.name:9} {v.backend}  {v.library.name if v.library else '?'}{glibc} ({state})"
    floor = f"  min driver {v.min_driver}" if v.min_driver else ""
    return f"  {v.name:9} CUDA {v.toolkit_text}  {_policy.archs_text(v)}{floor}{glibc}  ({state})"


def _facts_lines(report) -> list[str]:
    f = report.facts
    drv = f.driver
    lines = [f"kbit: {report.kbit_version} ({report.kbit_path})",
             f"platform: {f.host.os} {f.host.arch} ({f.host.platform} loader)",
             f"glibc: {f.host.libc or 'n/a'}", f"python: {f.host.python}",
             f"torch: {f.torch.version}, CUDA {f.torch.cuda or _no_torch_cuda(f.torch)}"]
    if drv.status == "not_found":
        lines.append(f"driver: not found ({'; '.join(drv.errors)})")
    else:
        lines.append(f"driver: CUDA {cuda_version_text(drv.cuda_version)} ({drv.library})"
                     + (f"; errors: {'; '.join(drv.errors)}" if drv.errors else ""))
    lines.append("gpus: " + ("none" if not drv.gpus else ""))
    lines += [f"  {g.index}: {g.name}, compute capability {g.cc[0]}.{g.cc[1]} (sm_{g.sm})" for g in drv.gpus]
    lines.append("bundled variants:")
    lines += [_variant_line(v) for v in f.variants] or ["  none"]
    if f.env:
        lines.append("environment: " + ", ".join(f"{k}={v!r}" for k, v in f.env.items()))
    return lines


def _no_torch_cuda(torch_facts) -> str:
    return f"none (ROCm build, HIP {torch_facts.hip})" if torch_facts.hip else "none (CPU-only build)"


def _decision_lines(report) -> list[str]:
    if report.decision_error is not None:
        e = report.decision_error
        return [f"decision: refused ({e.type}): {e.message}"]
    d = report.decision
    lines = [f"decision: CUDA tensors -> {d.variant or 'none'} ({d.source}); CPU tensors -> cpu"]
    lines += [f"  reason: {r}" for r in d.reasons]
    lines += [f"  gpu {c.gpu}: {c}" for c in d.coverage]
    lines += [f"  warning: {w}" for w in d.warnings]
    return lines


def threads_text(t) -> str:
    """kbit_cpu_threads' answer in words (a kbit._report.CpuThreads)."""
    size = f"{t.count} thread{'s' if t.count != 1 else ''} (torch.get_num_threads())"
    if t.kind == _abi.THREADS_HOST_OPENMP:
        return f"torch's OpenMP team ({t.where or 'runtime file unknown'}), {size}"
    if t.kind == _abi.THREADS_OWN_TEAM:
        return f"kbit's own thread team (no OpenMP runtime found in this process), {size}"
    if t.kind == _abi.THREADS_PER_CALL:
        return f"threads started per call, {size}"
    return f"no CPU threads (kind {t.kind})"


def _load_lines(report) -> list[str]:
    lines = ["load:"]
    for r in report.loads:
        if not r.ok:
            lines.append(f"  {r.variant}: FAILED ({r.error.type}): {r.error.message}")
            continue
        info = r.build_info or {}
        lines.append(f"  {r.variant}: ok {r.path} (abi {info.get('abi')}, {info.get('compiler')}, commit {info.get('commit')})")
        if r.threads is not None:
            lines.append(f"  {r.variant}: loops run on {threads_text(r.threads)}")
        if r.device_status is not None:
            said = f"{r.device_count} device(s)" if r.device_status == 0 else f"status {r.device_status}: {r.device_detail}"
            lines.append(f"  {r.variant}: kbit_device_count: {said}")
    lines.append("self-test:")
    for t in report.self_tests:
        lines.append(f"  {t.backend}: {'ok' if t.ok else 'FAILED' if t.ok is False else 'skipped'}: {t.detail}")
    return lines


def _finding_lines(report) -> list[str]:
    lines = ["diagnosis:"]
    if not report.findings:
        lines.append("  no problem found")
    for n, f in enumerate(report.findings, 1):
        code = f" (exit {f.exit_code})" if f.severity == "error" else ""
        lines += [f"  {n}. [{f.severity}] {f.title}{code}", f"     evidence: {f.evidence}", f"     fix: {f.fix}"]
    return lines


def text(report) -> str:
    code = _diagnose.exit_code(report.findings)
    first = next((f for f in report.findings if f.severity == "error"), None)
    verdict = "usable" if first is None else f"NOT usable: {first.title}"
    lines = (_facts_lines(report) + _decision_lines(report) + _load_lines(report) + _finding_lines(report)
             + [f"result: {verdict} (exit code {code})"])
    return "\n".join(lines)


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.metadata.get("json", True)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def as_dict(report) -> dict:
    data = _plain(report)
    data["exit_code"] = _diagnose.exit_code(report.findings)
    data["usable"] = data["exit_code"] == 0
    return data


def as_json(report) -> str:
    return json.dumps(as_dict(report), indent=2, sort_keys=True)


def emit(text: str, stream=None) -> None:
    """Print a report on a stream that may not encode every character (a Windows console or a file in cp1252,
    PYTHONIOENCODING=ascii): what cannot be encoded is written as an escape, so the diagnosis still appears."""
    stream = stream or sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    stream.write(text.encode(encoding, "backslashreplace").decode(encoding) + "\n")
