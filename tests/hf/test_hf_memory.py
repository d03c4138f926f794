"""Peak memory of from_pretrained, each load in a fresh subprocess (tests/hf/peak_load.py says what is measured).

The model: a 4-layer Llama of 60M parameters (115 MiB in bf16; the 4-bit checkpoint is 44 MiB, 17 MiB of it the
bf16 embeddings and lm_head that stay unquantized). What the design promises, and this test asserts:
- quantize on load never holds the float model privately: each float weight is read, quantized and dropped before
  the next is read, so its private peak exceeds the bf16 load's (whose weights stay in the mmap-ed file) by about
  the 4-bit model, well under half the bf16 size;
- loading a pre-quantized checkpoint (kbit's or bitsandbytes') converts nothing: its private peak is at most that
  of quantizing on load;
- the pre-quantized model holds less resident memory than the bf16 one.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_fixtures import bitsandbytes, build_llama

MEMORY_MODEL = dict(vocab_size=4096, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=8)
SCRIPT = Path(__file__).with_name("peak_load.py")


def _measure(mode: str, path: Path) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), mode, str(path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_bf16_vs_quantize_on_load_vs_pre_quantized(hf, tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from kbit.integrations.transformers import KbitConfig

    bf16 = tmp_path / "bf16"
    build_llama(bf16, **MEMORY_MODEL)
    bf16_bytes = (bf16 / "model.safetensors").stat().st_size
    kbit_dir, bnb_dir = tmp_path / "kbit", tmp_path / "bnb"
    AutoModelForCausalLM.from_pretrained(bf16, quantization_config=KbitConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4")).save_pretrained(kbit_dir)
    bitsandbytes()
    AutoModelForCausalLM.from_pretrained(bf16, device_map="cpu", quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4")).save_pretrained(bnb_dir)
    runs = {"bf16": _measure("bf16", bf16), "quantize": _measure("quantize", bf16),
            "kbit prequantized": _measure("prequantized", kbit_dir),
            "bitsandbytes prequantized": _measure("prequantized", bnb_dir)}
    for name, run in runs.items():
        print(f"{name:26s} private peak {run['private_peak'] / 1024:6.1f} MiB  resident {run['resident'] / 1024:6.1f} "
              f"MiB  hwm {run['hwm'] / 1024:6.1f} MiB  load {run['load_s']} s")
    bf16_kib = bf16_bytes / 1024
    assert runs["bf16"]["resident"] >= 0.9 * bf16_kib  # the measurement sees the bf16 model
    assert runs["quantize"]["private_peak"] - runs["bf16"]["private_peak"] < 0.5 * bf16_kib
    for name in ("kbit prequantized", "bitsandbytes prequantized"):
        assert runs[name]["private_peak"] <= runs["quantize"]["private_peak"] + 2048, name
        assert runs[name]["resident"] < 0.85 * runs["bf16"]["resident"], name
