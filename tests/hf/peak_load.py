"""Run by test_hf_memory.py in a fresh process: load one checkpoint one way, run one forward, print memory as JSON.

Usage: python peak_load.py MODE PATH, MODE one of bf16 | quantize (kbit quantizes the bf16 checkpoint on load) |
prequantized (a kbit or bitsandbytes 4-bit checkpoint into kbit layers). Figures (KiB, from /proc/self/status):
private_peak: the highest RssAnon seen (sampled every millisecond) minus RssAnon before from_pretrained: the
memory the load allocated itself; resident: VmRSS after the load and the forward minus VmRSS before: that plus the
checkpoint pages the process still maps (the bf16 model runs from its mmap-ed file); hwm: VmHWM minus VmRSS before.
"""
from __future__ import annotations

import json
import sys
import threading
import time


def status() -> dict[str, int]:
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f)
                if k in ("RssAnon", "VmRSS", "VmHWM")}


def main(mode: str, path: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from kbit.integrations.transformers import KbitConfig, pretrained_config

    kwargs = {"bf16": lambda: {"dtype": torch.bfloat16},
              "quantize": lambda: {"dtype": torch.bfloat16, "quantization_config": KbitConfig(
                  load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)},
              "prequantized": lambda: {"config": pretrained_config(path)}}[mode]()
    before = status()
    peak, done = [before["RssAnon"]], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], status()["RssAnon"])
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    load_s = time.perf_counter() - start
    with torch.no_grad():
        model(torch.arange(16).unsqueeze(0))
    done.set()
    sampler.join()
    after = status()
    print(json.dumps({"mode": mode, "private_peak": max(peak[0], after["RssAnon"]) - before["RssAnon"],
                      "resident": after["VmRSS"] - before["VmRSS"], "hwm": after["VmHWM"] - before["VmRSS"],
                      "load_s": round(load_s, 2)}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
