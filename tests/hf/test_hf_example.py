"""examples/qlora_cpu.py runs as README shows (a few steps here; the full run is timed in the closing note)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_the_qlora_cpu_example_trains_and_saves_an_adapter(hf, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "qlora_cpu.py"), "--out", str(tmp_path),
                           "--steps", "4"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step   0  loss" in done.stdout and "step   3  loss" in done.stdout
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
