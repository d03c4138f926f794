"""ci/ on a simulated Windows: no fcntl, sys.platform == "win32". The release pipeline's Windows jobs import
ci/build_variant.py, ci/wheel.py and ci/redistrib.py there; before the toolkit_fetch split they died on `import fcntl`.

Each case runs in a fresh interpreter (the platform substitution must not leak into this process's imports).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Blocks fcntl (None in sys.modules makes `import fcntl` raise ImportError, as on Windows), claims win32, and gives a
# fake msvcrt that records what tree.locked asks of it. The standard library modules that choose their own
# implementation by platform at import (subprocess, shutil, tempfile, ...) are imported first, as the real POSIX
# ones: the simulation is of what ci/ itself does on Windows, not of CPython's Windows internals.
PRELUDE = textwrap.dedent("""
    import sys, types
    import argparse, concurrent.futures, contextlib, hashlib, json, os, pathlib, platform, shutil, subprocess
    import tempfile, time, tomllib, zipfile, urllib.request
    sys.modules.pop("fcntl", None)
    sys.modules["fcntl"] = None
    sys.platform = "win32"
    calls = []
    msvcrt = types.ModuleType("msvcrt")
    msvcrt.LK_LOCK, msvcrt.LK_UNLCK = 1, 0
    msvcrt.locking = lambda fd, mode, n: calls.append(mode)
    sys.modules["msvcrt"] = msvcrt
    sys.path.insert(0, {root!r})
""")


def _run_windows(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    script = PRELUDE.format(root=str(ROOT)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_fcntl_really_is_blocked_in_the_simulation():
    done = _run_windows("import fcntl\n")
    assert done.returncode != 0 and "import of fcntl halted" in done.stderr


def test_ci_modules_import_without_fcntl():
    done = _run_windows("""
        import importlib
        for name in ("ci.matrix", "ci.build_variant", "ci.wheel", "ci.redistrib", "ci.runners", "ci.pe_imports",
                     "ci.toolkits.errors", "ci.toolkits.nvcc", "ci.toolkits.tree", "ci.toolkit_fetch"):
            importlib.import_module(name)
        assert "fcntl" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("ok")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def _fake_windows_toolkit(home: Path, release: str) -> None:
    """A CUDA_PATH whose bin/nvcc.exe prints what NVIDIA's nvcc prints (a script: this runs on Linux)."""
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc.exe"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.88'\n")
    nvcc.chmod(0o755)


def test_build_variant_finds_the_toolkit_on_windows(tmp_path):
    _fake_windows_toolkit(tmp_path / "cuda", "13.0")
    done = _run_windows("""
        from ci import build_variant, matrix
        nvcc = build_variant.find_toolkit(matrix.load()["cuda130"])
        print(nvcc, build_variant.current_platform(), build_variant.find_host_compiler(matrix.load()["cuda130"]))
    """, env={"CUDA_PATH": str(tmp_path / "cuda"), "CUDA_HOME": "", "KBIT_CUDA_HOME_130": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "cuda" / "bin" / "nvcc.exe"), "win-amd64", "None"]


def test_build_variant_on_windows_names_every_place_it_looked(tmp_path):
    _fake_windows_toolkit(tmp_path / "cuda", "12.4")
    done = _run_windows("""
        from ci import build_variant, matrix
        try:
            build_variant.find_toolkit(matrix.load()["cuda130"])
        except build_variant.ToolkitNotFoundError as exc:
            print(exc)
    """, env={"CUDA_PATH": str(tmp_path / "cuda"), "CUDA_HOME": "", "KBIT_CUDA_HOME_130": ""})
    assert done.returncode == 0, done.stderr
    assert f"$CUDA_PATH: {tmp_path / 'cuda' / 'bin' / 'nvcc.exe'} reports CUDA 12.4, not 13.0" in done.stdout


def test_tree_lock_and_markers_work_on_windows(tmp_path):
    done = _run_windows(f"""
        import json, pathlib
        from ci.toolkits import tree
        dest = pathlib.Path({str(tmp_path / "tk")!r})
        dest.mkdir()
        with tree.locked(dest.parent / ".tk.lock"):
            tree.write_marker(dest, digest="d", home_rel=".", files=[], verified=True)
        print(json.dumps({{"calls": calls, "home": str(tree.complete_tree(dest, "d"))}}))
    """)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out == {"calls": [1, 0], "home": str(tmp_path / "tk")}
