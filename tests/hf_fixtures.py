"""Fixtures of the transformers/PEFT tests: a small Llama built here with random weights (the Hub is out of reach),
saved as bf16 safetensors, and its 4-bit checkpoints written by kbit and by bitsandbytes 0.50.2's CPU path.

tests/conftest.py loads this module as a plugin (pytest_plugins), so the fixtures reach tests/hf/ without a
second conftest.py, which would take the module name `conftest` from tests/conftest.py that other tests import."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import IN_CI

HF_PACKAGES = ("transformers", "peft", "accelerate")
# every in_features a multiple of 64 (the blocksize): bitsandbytes' CPU dequantize is wrong when 4-bit blocks cross
# rows whose length is a multiple of 16 but not of the blocksize (shared/reference/numerics.md), and the
# bitsandbytes comparisons below must compare with a correct bitsandbytes
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)


def _require_hf() -> None:
    missing = [name for name in HF_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        if IN_CI:
            pytest.fail(f"{', '.join(missing)} missing in CI; the test extra installs them")
        pytest.skip(f"needs {', '.join(missing)} (pip install kbit[hf])")


@pytest.fixture(scope="session")
def hf():
    _require_hf()
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def build_llama(path, seed: int = 0, **overrides) -> None:
    """A LlamaForCausalLM with random weights, saved at `path` in bf16 safetensors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides})).to(torch.bfloat16)
    model.save_pretrained(path)


@pytest.fixture(scope="session")
def bf16_dir(hf, tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_bf16")
    build_llama(path)
    return path


@pytest.fixture(scope="session")
def kbit_dir(bf16_dir, tmp_path_factory):
    """bf16_dir quantized on load by kbit (NF4, double quantization) and saved: kbit's pre-quantized checkpoint."""
    from transformers import AutoModelForCausalLM

    from kbit.integrations.transformers import KbitConfig

    path = tmp_path_factory.mktemp("llama_kbit")
    config = KbitConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                        bnb_4bit_compute_dtype=torch.bfloat16)
    AutoModelForCausalLM.from_pretrained(bf16_dir, quantization_config=config).save_pretrained(path)
    return path


def bitsandbytes():
    if importlib.util.find_spec("bitsandbytes") is None:
        if IN_CI:
            pytest.fail("bitsandbytes missing in CI; the test extra installs it on x86_64")
        pytest.skip("bitsandbytes is not installed (the test extra installs it on x86_64 Linux/Windows)")
    import bitsandbytes

    return bitsandbytes


@pytest.fixture(scope="session")
def bnb_dir(bf16_dir, tmp_path_factory):
    """bf16_dir quantized on load by bitsandbytes 0.50.2 (CPU) through transformers' own bitsandbytes quantizer,
    and saved: a checkpoint whose quantization_config says bitsandbytes."""
    bitsandbytes()
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = tmp_path_factory.mktemp("llama_bnb")
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    AutoModelForCausalLM.from_pretrained(bf16_dir, quantization_config=config, device_map="cpu").save_pretrained(path)
    return path


@pytest.fixture(params=["kbit", "bitsandbytes"])
def q4_dir(request):
    """Each 4-bit checkpoint in turn: kbit's own, then the one bitsandbytes wrote."""
    return request.getfixturevalue("kbit_dir" if request.param == "kbit" else "bnb_dir")


@pytest.fixture(scope="session")
def load_4bit(hf):
    """Load a 4-bit checkpoint (kbit's or bitsandbytes') into kbit layers, the way README shows."""
    from transformers import AutoModelForCausalLM

    from kbit.integrations.transformers import pretrained_config

    def load(path):
        return AutoModelForCausalLM.from_pretrained(path, config=pretrained_config(path))

    return load


@pytest.fixture(scope="session")
def bf16_model(bf16_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.bfloat16).eval()


@pytest.fixture(scope="session")
def token_ids():
    return torch.randint(0, TINY["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
