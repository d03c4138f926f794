"""Step time of kbit's AdamW8bit / AdamW32bit against torch.optim.AdamW (foreach) on one 4096 x 4096 float32
parameter, on the CPU (not a test; run it directly):

    python tests/bench_optim.py [--steps 9] [--warmup 2]

The optimizers step round-robin; prints the thread count and each one's median (and min) step time.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import kbit


def make_runner(make):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4096, 4096))
    p.grad = torch.randn_like(p) * 1e-2
    return make([p])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, kbit {kbit.__version__}")
    runners = {"kbit.optim.AdamW8bit": make_runner(kbit.optim.AdamW8bit),
               "kbit.optim.AdamW32bit": make_runner(kbit.optim.AdamW32bit),
               "torch.optim.AdamW": make_runner(torch.optim.AdamW)}
    times = {name: [] for name in runners}
    # round-robin, one step of each in turn: on a shared machine a load change then hits all three alike
    for i in range(args.warmup + args.steps):
        for name, opt in runners.items():
            start = time.perf_counter()
            opt.step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        print(f"{name:24s} median {statistics.median(ts) * 1e3:8.1f} ms  (min {min(ts) * 1e3:.1f})")


if __name__ == "__main__":
    main()
