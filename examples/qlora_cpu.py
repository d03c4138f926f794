"""QLoRA on CPU with kbit: a 4-bit (NF4) Llama, LoRA adapters through PEFT, kbit's PagedAdamW8bit.

    pip install "kbit[hf]"
    python examples/qlora_cpu.py                      # builds a small random Llama (no download), under 2 minutes
    python examples/qlora_cpu.py --model PATH         # a local Llama-architecture checkpoint (safetensors)

Without --model the script builds a small Llama with random weights and saves it in bf16 (the machine needs no
network). The task is synthetic so that the loss visibly falls: each sequence counts up from a random start by a
random step (mod the vocabulary), and the model learns to continue it. The adapter is saved with PEFT's
save_pretrained into OUT/adapter; load it again with kbit.integrations.peft.register(LoraConfig.from_pretrained(dir))
passed as PeftModel.from_pretrained(model, dir, config=...).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from peft import get_peft_model
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from kbit.integrations import peft as kbit_peft
from kbit.integrations.transformers import KbitConfig
from kbit.optim import PagedAdamW8bit


def build_random_llama(path: Path, vocab: int) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    return path


def counting_batch(batch: int, length: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    start = torch.randint(0, vocab, (batch, 1), generator=generator)
    step = torch.randint(1, 4, (batch, 1), generator=generator)
    return (start + step * torch.arange(length)) % vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a local bf16/fp16 Llama checkpoint (default: build one)")
    parser.add_argument("--out", type=Path, default=Path("qlora_cpu_out"), help="where the adapter is saved")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in backward (less memory, ~30 %% slower on this small model)")
    args = parser.parse_args()
    begin = time.perf_counter()

    path = args.model or build_random_llama(args.out / "base-bf16", vocab=256)
    # quantize on load: each bf16 weight becomes NF4 as it is read
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=KbitConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16))
    vocab = model.config.vocab_size
    # freeze the base model (and, when asked, turn on gradient checkpointing)
    model = kbit_peft.prepare_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    model = get_peft_model(model, kbit_peft.lora_config(
        r=16, lora_alpha=32, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.print_trainable_parameters()
    optimizer = PagedAdamW8bit([p for p in model.parameters() if p.requires_grad], lr=args.lr)

    generator = torch.Generator().manual_seed(0)
    model.train()
    losses = []
    with tqdm(range(args.steps), desc="QLoRA", unit="step") as bar:
        for step in bar:
            ids = counting_batch(args.batch, args.length, vocab, generator)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if step % 10 == 0 or step == args.steps - 1:
                tqdm.write(f"step {step:3d}  loss {losses[-1]:.4f}")

    adapter = args.out / "adapter"
    model.save_pretrained(adapter)
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; adapter saved to {adapter.resolve()} "
          f"({', '.join(sorted(p.name for p in adapter.iterdir()))}); {time.perf_counter() - begin:.1f} s")


if __name__ == "__main__":
    main()
