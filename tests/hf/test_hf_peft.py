"""kbit.integrations.peft on a small 4-bit Llama: LoRA on Linear4bit through PEFT's custom-module registration,
QLoRA training with PagedAdamW8bit, gradient checkpointing, adapter save/load, and merging within the stated bound."""
from __future__ import annotations

import pytest
import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def peft_model(kbit_dir, load_4bit):
    from peft import get_peft_model

    from kbit.integrations import peft as kpeft

    torch.manual_seed(0)
    model = kpeft.prepare_for_kbit_training(load_4bit(kbit_dir))
    return get_peft_model(model, kpeft.lora_config(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))


def _train(model, ids, steps, lr=3e-3):
    from kbit.optim import PagedAdamW8bit

    with pytest.warns(UserWarning, match="paging has no effect on CPU"):
        opt = PagedAdamW8bit([p for p in model.parameters() if p.requires_grad], lr=lr)
        losses = []
        model.train()
        for _ in range(steps):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    return losses


def test_a_plain_lora_config_meets_linear4bit_with_peft_own_error_and_kbit_registration_fixes_it(kbit_dir, load_4bit):
    from peft import LoraConfig, get_peft_model

    from kbit.integrations import peft as kpeft

    with pytest.raises(ValueError, match="Target module Linear4bit"):
        get_peft_model(load_4bit(kbit_dir), LoraConfig(target_modules=["q_proj"]))
    model = get_peft_model(load_4bit(kbit_dir), kpeft.register(LoraConfig(target_modules=["q_proj", "v_proj"])))
    wrapped = [m for m in model.modules() if isinstance(m, kpeft.LoraLinear4bit)]
    assert len(wrapped) == 2 * 2
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_lora_variants_kbit_does_not_implement_are_refused_by_name(kbit_dir, load_4bit):
    from peft import get_peft_model

    from kbit import KbitValueError
    from kbit.integrations import peft as kpeft

    with pytest.raises(KbitValueError, match="use_dora"):
        get_peft_model(load_4bit(kbit_dir), kpeft.lora_config(target_modules=["q_proj"], use_dora=True))


@pytest.mark.parametrize("source", ["kbit", "bitsandbytes"])
def test_qlora_30_steps_with_paged_adamw8bit_lowers_the_loss(source, request, load_4bit, token_ids):
    from peft import get_peft_model

    from kbit.integrations import peft as kpeft

    path = request.getfixturevalue("kbit_dir" if source == "kbit" else "bnb_dir")
    torch.manual_seed(0)
    model = kpeft.prepare_for_kbit_training(load_4bit(path))
    model = get_peft_model(model, kpeft.lora_config(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    losses = _train(model, token_ids[:, :16], 30)
    print(source, "loss curve:", " ".join(f"{x:.4f}" for x in losses))
    assert losses[-1] < 0.8 * losses[0] and min(losses[-5:]) < min(losses[:5])
    for n, p in model.named_parameters():  # the base model, 4-bit codes included, did not move
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_gradient_checkpointing_gives_the_gradients_of_a_plain_backward(kbit_dir, load_4bit, token_ids):
    from peft import get_peft_model

    from kbit.integrations import peft as kpeft

    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = kpeft.prepare_for_kbit_training(load_4bit(kbit_dir), use_gradient_checkpointing=checkpointing)
        model = get_peft_model(model, kpeft.lora_config(r=4, target_modules=TARGETS, init_lora_weights="gaussian"))
        assert model.base_model.model.is_activation_checkpointing is checkpointing
        model.train()
        model(input_ids=token_ids, labels=token_ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_prepare_for_kbit_training_freezes_without_upcasting_and_peft_own_function_works_too(kbit_dir, load_4bit,
                                                                                             token_ids):
    from peft import get_peft_model, prepare_model_for_kbit_training

    from kbit.integrations import peft as kpeft

    model = kpeft.prepare_for_kbit_training(load_4bit(kbit_dir))
    assert not any(p.requires_grad for p in model.parameters())
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16  # PEFT's function makes this float32
    theirs = prepare_model_for_kbit_training(load_4bit(kbit_dir))
    assert theirs.get_input_embeddings().weight.dtype == torch.float32
    theirs = get_peft_model(theirs, kpeft.lora_config(r=4, target_modules=TARGETS))
    theirs(input_ids=token_ids, labels=token_ids).loss.backward()
    assert all(p.grad is not None for p in theirs.parameters() if p.requires_grad)


def test_adapters_save_and_load(peft_model, kbit_dir, load_4bit, token_ids, tmp_path):
    from peft import LoraConfig, PeftModel

    from kbit.integrations import peft as kpeft

    _train(peft_model, token_ids[:, :16], 3)
    peft_model.eval()
    peft_model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    config = kpeft.register(LoraConfig.from_pretrained(tmp_path))
    loaded = PeftModel.from_pretrained(load_4bit(kbit_dir), tmp_path, config=config).eval()
    with torch.no_grad():
        assert torch.equal(peft_model(token_ids).logits, loaded(token_ids).logits)


def _stored_absmax(state):
    """The absmax a dequantization uses: stored as is, or (double quantization) its 8-bit code plus the offset."""
    from kbit.functional import dequantize_blockwise

    return dequantize_blockwise(state.absmax, state.state2) + state.offset if state.nested else state.absmax


def test_merge_and_unload_requantizes_within_the_stated_bound(peft_model, token_ids):
    from kbit.functional import dequantize_4bit
    from kbit.integrations import peft as kpeft
    from kbit.nn import Linear4bit

    _train(peft_model, token_ids[:, :16], 5, lr=1e-2)
    peft_model.eval()
    exact = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, kpeft.LoraLinear4bit):
            base = module.get_base_layer()
            exact[name.removeprefix("base_model.model.")] = (
                dequantize_4bit(base.weight, base.quant_state).float() + module.get_delta_weight("default"))
    with torch.no_grad():
        before = peft_model(token_ids).logits.float()
    merged = peft_model.merge_and_unload()
    assert not any(isinstance(m, kpeft.LoraLinear4bit) for m in merged.modules())
    h = kpeft.merge_error_bound_h("nf4")
    assert abs(h - (1.0 - 0.6961928009986877) / 2) < 1e-7  # the widest NF4 gap: -1 to -0.696
    for name, want in exact.items():
        layer = merged.get_submodule(name)
        assert isinstance(layer, Linear4bit)
        got = dequantize_4bit(layer.weight, layer.quant_state).float()
        blocks = want.reshape(-1, layer.blocksize)
        a = blocks.abs().amax(1, keepdim=True)
        a_stored = _stored_absmax(layer.quant_state).reshape(-1, 1)
        bound = h * a_stored + (a - a_stored).clamp(min=0) + 2.0 ** -8 * (a + a_stored)
        err = (got.reshape(-1, layer.blocksize) - blocks).abs()
        assert (err <= bound).all(), (name, (err - bound).max().item())
        assert err.max() > 0  # the merge really requantized
    with torch.no_grad():
        after = merged(token_ids).logits.float()
    assert ((after - before).norm() / before.norm()).item() < 0.25


def test_lora_on_linear8bitlt_trains_and_merges_within_half_an_int8_step(bf16_dir, token_ids):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from kbit.functional import int8_vectorwise_dequant
    from kbit.integrations import peft as kpeft
    from kbit.integrations.transformers import KbitConfig
    from kbit.nn import Linear8bitLt

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.bfloat16,
                                                 quantization_config=KbitConfig(load_in_8bit=True))
    model = get_peft_model(kpeft.prepare_for_kbit_training(model),
                           kpeft.lora_config(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
    assert sum(isinstance(m, kpeft.LoraLinear8bitLt) for m in model.modules()) == 7 * 2
    losses = _train(model, token_ids[:, :16], 10, lr=1e-2)
    assert losses[-1] < 0.9 * losses[0], losses
    model.eval()
    exact = {name.removeprefix("base_model.model."): m._dequantized() + m.get_delta_weight("default")
             for name, m in model.named_modules() if isinstance(m, kpeft.LoraLinear8bitLt)}
    merged = model.merge_and_unload()
    for name, want in exact.items():
        layer = merged.get_submodule(name)
        assert isinstance(layer, Linear8bitLt) and layer.weight.dtype == torch.int8
        err = (int8_vectorwise_dequant(layer.weight, layer.SCB).float() - want).abs()
        bound = want.abs().amax(1, keepdim=True) / 254 * (1 + 1e-5)
        assert (err <= bound).all() and err.max() > 0, name
