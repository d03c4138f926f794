"""kbit.integrations.transformers end to end on a small Llama: KbitConfig, quantize on load, the logits bound,
generate, pre-quantized save/load, and checkpoints written by bitsandbytes 0.50.2 (CPU)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

# The logits bound (README "Use with transformers and PEFT"). Two facts, tested below:
# 1. kbit's model computes the bf16 model with each weight replaced by its 4-bit dequantized value: its logits are
#    those of that reference model within REFERENCE_ATOL (bf16 rounding of activations between the layers; the
#    layers add in a different order than torch's matmul).
# 2. against the original bf16 model, the 4-bit rounding of the weights (NF4 mean abs error ~0.073 of the block
#    absmax, shared/reference/numerics.md) moves the logits by at most BF16_REL of their RMS (relative Frobenius
#    norm of the difference), and the top-1 token agrees at >= BF16_TOP1 of the positions.
REFERENCE_ATOL = 0.03
BF16_REL = 0.25
BF16_TOP1 = 0.75
# load_in_8bit (row-wise int8, half a code step is 1/254 of the row's absmax): measured 0.017 on the same model
INT8_REL = 0.05


def _linear_names(model):
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def test_import_kbit_imports_no_hugging_face_package():
    code = ("import sys, kbit, kbit.nn, kbit.optim, kbit.functional, kbit.integrations; "
            "print([m for m in ('transformers', 'peft', 'accelerate') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_kbit_config_takes_bitsandbytes_fields_and_refuses_what_kbit_cannot_do(hf):
    from transformers import BitsAndBytesConfig

    from kbit import KbitValueError
    from kbit.integrations.transformers import KbitConfig

    config = KbitConfig(load_in_4bit=True)
    bnb = BitsAndBytesConfig(load_in_4bit=True)
    for field in ("bnb_4bit_quant_type", "bnb_4bit_compute_dtype", "bnb_4bit_use_double_quant",
                  "bnb_4bit_quant_storage", "llm_int8_skip_modules", "llm_int8_threshold"):
        assert getattr(config, field) == getattr(bnb, field), field  # the same defaults, as bitsandbytes
    saved = KbitConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype="bfloat16",
                       llm_int8_skip_modules=["mlp"]).to_dict()
    assert "load_in_4bit" not in saved and saved["bits"] == 4 and saved["quant_method"] == "kbit"
    again = KbitConfig.from_dict(saved)
    assert again.to_dict() == saved and again.bnb_4bit_compute_dtype is torch.bfloat16
    converted = KbitConfig.from_bitsandbytes(BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                                bnb_4bit_use_double_quant=True).to_dict())
    assert (converted.bnb_4bit_quant_type, converted.bnb_4bit_use_double_quant) == ("nf4", True)
    eight = KbitConfig.from_bitsandbytes(BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=4.0))
    assert (eight.load_in_8bit, eight.load_in_4bit, eight.llm_int8_threshold) == (True, False, 4.0)
    assert eight.to_dict()["bits"] == 8 and KbitConfig.from_dict(eight.to_dict()).load_in_8bit
    with pytest.raises(KbitValueError, match="exactly one of load_in_4bit=True or load_in_8bit=True"):
        KbitConfig()
    with pytest.raises(KbitValueError, match="exactly one"):
        KbitConfig(load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(KbitValueError, match="llm_int8_threshold"):
        KbitConfig(load_in_8bit=True, llm_int8_threshold=-1)
    with pytest.raises(KbitValueError, match="bnb_4bit_quant_storage"):
        KbitConfig(load_in_4bit=True, bnb_4bit_quant_storage=torch.bfloat16)
    with pytest.raises(KbitValueError, match="no field bnb_4bit_blocksize"):
        KbitConfig(load_in_4bit=True, bnb_4bit_blocksize=64)
    with pytest.raises(KbitValueError, match="'int4'"):
        KbitConfig(load_in_4bit=True, bnb_4bit_quant_type="int4")


def test_quantize_on_load_quantizes_each_weight_and_meets_the_logits_bound(bf16_dir, bf16_model, token_ids):
    from transformers import AutoModelForCausalLM

    from kbit.functional import dequantize_4bit, quantize_4bit
    from kbit.integrations.transformers import KbitConfig
    from kbit.nn import Linear4bit

    model = AutoModelForCausalLM.from_pretrained(bf16_dir, quantization_config=KbitConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)).eval()
    assert _linear_names(model) == ["lm_head"]  # the output embedding stays in bf16, as bitsandbytes leaves it
    reference = AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.bfloat16).eval()
    layers = 0
    for name, module in model.named_modules():
        if isinstance(module, Linear4bit):
            original = bf16_model.get_submodule(name).weight
            expected = dequantize_4bit(*quantize_4bit(original, 64, "nf4"))
            got = dequantize_4bit(module.weight, module.quant_state)
            assert torch.equal(got, expected), name  # quantized once, from the checkpoint's bf16 values
            reference.get_submodule(name).weight.data.copy_(got)
            layers += 1
    assert layers == 7 * 2
    with torch.no_grad():
        ours, ref, bf16 = (m(token_ids).logits.float() for m in (model, reference, bf16_model))
    assert (ours - ref).abs().max() <= REFERENCE_ATOL
    rel = ((ours - bf16).norm() / bf16.norm()).item()
    top1 = (ours.argmax(-1) == bf16.argmax(-1)).float().mean().item()
    assert 0 < rel <= BF16_REL and top1 >= BF16_TOP1, (rel, top1)


def test_a_4bit_model_generates_16_tokens(q4_dir, load_4bit, token_ids):
    model = load_4bit(q4_dir)
    out = model.generate(token_ids[:1, :8], max_new_tokens=16, min_new_tokens=16, do_sample=False)
    assert out.shape == (1, 8 + 16)
    assert torch.equal(out, model.generate(token_ids[:1, :8], max_new_tokens=16, min_new_tokens=16, do_sample=False))


def test_a_pre_quantized_checkpoint_reloads_bit_identical_without_conversion(q4_dir, load_4bit, token_ids,
                                                                             tmp_path):
    from safetensors.torch import load_file

    from kbit.nn import Linear4bit

    first = load_4bit(q4_dir).eval()
    first.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "kbit" and "load_in_4bit" not in saved
    second = load_4bit(tmp_path).eval()
    assert second.hf_quantizer.pre_quantized
    on_disk = load_file(tmp_path / "model.safetensors")
    for name, module in second.named_modules():
        if isinstance(module, Linear4bit):  # the layer holds exactly the saved items: nothing was re-quantized
            for key, value in module.state_dict().items():
                assert torch.equal(value, on_disk[f"{name}.{key}"]), f"{name}.{key}"
    with torch.no_grad():
        assert torch.equal(first(token_ids).logits, second(token_ids).logits)
    assert torch.equal(first.generate(token_ids[:1], max_new_tokens=16, do_sample=False),
                       second.generate(token_ids[:1], max_new_tokens=16, do_sample=False))


def test_a_bitsandbytes_checkpoint_loads_into_kbit_layers_with_identical_dequantized_weights(
        bnb_dir, load_4bit, bf16_model, token_ids):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from kbit.functional import dequantize_4bit
    from kbit.nn import Linear4bit

    bnb = pytest.importorskip("bitsandbytes")
    theirs = AutoModelForCausalLM.from_pretrained(bnb_dir, device_map="cpu").eval()  # bitsandbytes' own layers
    ours = load_4bit(bnb_dir).eval()
    on_disk = load_file(bnb_dir / "model.safetensors")
    compared = 0
    for name, module in theirs.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            mine = ours.get_submodule(name)
            assert isinstance(mine, Linear4bit)
            assert torch.equal(mine.weight, on_disk[f"{name}.weight"])
            want = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            assert torch.equal(dequantize_4bit(mine.weight, mine.quant_state), want), name
            compared += 1
    assert compared == 7 * 2
    with torch.no_grad():
        got, bf16 = ours(token_ids).logits.float(), bf16_model(token_ids).logits.float()
    assert ((got - bf16).norm() / bf16.norm()).item() <= BF16_REL


def test_load_in_8bit_gives_linear8bitlt_layers_that_reload_bit_identical(bf16_dir, bf16_model, token_ids,
                                                                         tmp_path):
    from transformers import AutoModelForCausalLM

    from kbit.functional import int8_vectorwise_quant
    from kbit.integrations.transformers import KbitConfig
    from kbit.nn import Linear8bitLt

    model = AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.bfloat16,
                                                 quantization_config=KbitConfig(load_in_8bit=True)).eval()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, Linear8bitLt)]
    assert len(layers) == 7 * 2 and model.is_loaded_in_8bit
    for name, module in layers:
        codes, row_stats, _ = int8_vectorwise_quant(bf16_model.get_submodule(name).weight)
        assert torch.equal(module.weight, codes) and torch.equal(module.SCB, row_stats), name
    with torch.no_grad():
        ours, bf16 = model(token_ids).logits.float(), bf16_model(token_ids).logits.float()
    assert 0 < ((ours - bf16).norm() / bf16.norm()).item() <= INT8_REL
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert again.hf_quantizer.pre_quantized
    with torch.no_grad():
        assert torch.equal(again(token_ids).logits.float(), ours)


def test_a_bitsandbytes_8bit_checkpoint_loads_into_linear8bitlt_with_its_codes(bf16_dir, load_4bit, tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from kbit.nn import Linear8bitLt

    bnb = pytest.importorskip("bitsandbytes")
    theirs = AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.bfloat16, device_map="cpu",
                                                  quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    theirs.save_pretrained(tmp_path)
    ours = load_4bit(tmp_path)  # pretrained_config maps bitsandbytes' 8-bit config too
    compared = 0
    for name, module in theirs.named_modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            mine = ours.get_submodule(name)
            assert isinstance(mine, Linear8bitLt) and torch.equal(mine.weight, module.weight.data), name
            assert torch.equal(mine.SCB, module.weight.SCB), name
            compared += 1
    assert compared == 7 * 2


def test_loading_a_4bit_checkpoint_that_lacks_quant_state_items_names_the_layer(kbit_dir, load_4bit, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    for item in kbit_dir.iterdir():
        shutil.copy(item, tmp_path / item.name)
    tensors = load_file(kbit_dir / "model.safetensors")
    broken = "model.layers.1.mlp.up_proj.weight"
    tensors = {k: v for k, v in tensors.items() if not k.startswith(broken + ".")}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="conversion"):
        load_4bit(tmp_path)


def test_dequantize_gives_back_nn_linear_layers_with_the_dequantized_weights(kbit_dir, load_4bit, token_ids):
    from kbit.functional import dequantize_4bit
    from kbit.nn import Linear4bit

    model = load_4bit(kbit_dir).eval()
    weights = {n: dequantize_4bit(m.weight, m.quant_state) for n, m in model.named_modules()
               if isinstance(m, Linear4bit)}
    with torch.no_grad():
        before = model(token_ids).logits.float()
    model = model.dequantize()
    assert not any(isinstance(m, Linear4bit) for m in model.modules())
    for name, weight in weights.items():
        layer = model.get_submodule(name)
        assert type(layer) is torch.nn.Linear and torch.equal(layer.weight, weight), name
    assert getattr(model.config, "quantization_config", None) is None
    with torch.no_grad():
        assert (model(token_ids).logits.float() - before).abs().max() <= REFERENCE_ATOL
