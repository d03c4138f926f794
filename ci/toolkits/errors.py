"""Errors and command running for toolkit provisioning: ToolkitFetchError names the step, what was run or
looked at, its output and the fix. Platform-neutral (standard library only); owns nothing else."""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence

Log = Callable[[str], object]


class ToolkitFetchError(Exception):
    """A provisioning step failed. The message names the step, what was looked at or run, and the fix."""

    def __init__(self, step: str, detail: str, fix: str, output: str = "") -> None:
        self.step, self.detail, self.fix, self.output = step, detail, fix, output
        text = f"{step} failed: {detail}"
        if output.strip():
            tail = "\n".join(output.strip().splitlines()[-40:])
            text += "\n--- output (last lines) ---\n" + tail + "\n---"
        text += f"\nfix: {fix}"
        super().__init__(text)


class ToolkitUnavailable(ToolkitFetchError):
    """The variant's toolkit cannot be obtained on this kind of machine (no toolkit_source)."""


# --------------------------------------------------------------------------------------------- helpers


def fmt_cmd(cmd: Sequence[object]) -> str:
    """Render a command for error messages."""
    return " ".join(str(c) for c in cmd)


def run(cmd: Sequence[object], *, step: str, fix: str, cwd: pathlib.Path | None = None,
        env: dict[str, str] | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a command with check=True and captured output; turn any failure into ToolkitFetchError."""
    argv = [str(c) for c in cmd]
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, errors="replace",
                              cwd=cwd, env=env, timeout=timeout)
    except FileNotFoundError as exc:
        raise ToolkitFetchError(step, f"cannot run `{fmt_cmd(argv)}`: {exc}", fix) from exc
    except subprocess.CalledProcessError as exc:
        raise ToolkitFetchError(step, f"`{fmt_cmd(argv)}` exited with status {exc.returncode}", fix,
                                (exc.stdout or "") + (exc.stderr or "")) from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolkitFetchError(step, f"`{fmt_cmd(argv)}` timed out after {timeout} s", fix) from exc



@contextlib.contextmanager
def timed(log: Log, what: str) -> Iterator[None]:
    """Log `what` before and its duration after."""
    log(f"[toolkit_fetch] {what} ...")
    start = time.monotonic()
    yield
    log(f"[toolkit_fetch] {what}: done in {time.monotonic() - start:.1f} s")


