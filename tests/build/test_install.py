"""`pip install -e .` works: the package comes from the checkout and its library from importlib.resources."""
from __future__ import annotations

import json
import subprocess
import sysconfig
import venv

import pytest

from conftest import ROOT

PROBE = """
import json, kbit, torch
from kbit import _native, functional as F
c, s = F.quantize_blockwise(torch.randn(300), blocksize=64)
print(json.dumps({"module": kbit.__file__, "library": str(_native.cpu().path), "version": kbit.__version__}))
"""


@pytest.mark.slow
def test_editable_install_loads_the_library_it_built(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # torch (and the rest) from the test environment, without a second multi-GB install
    with open(f"{site}/outer.pth", "w") as pth:
        pth.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(ROOT)], check=True,
                   capture_output=True, text=True)
    done = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["module"].startswith(str(ROOT / "python" / "kbit"))
    assert report["library"].startswith(str(env_dir)) and report["library"].endswith("libkbit_cpu.so")
