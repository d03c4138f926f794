"""Step time of kbit's AdamW8bit / AdamW32bit against torch.optim.AdamW (foreach) on one 4096 x 4096 float32
parameter, on the CPU (not a test; run it directly):

    python tests/bench_optim.py [--steps 7] [--warmup 2]

Prints the thread count and the median of the timed steps in milliseconds per optimizer.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import kbit


def median_step_ms(make, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4096, 4096))
    p.grad = torch.randn_like(p) * 1e-2
    opt = make([p])
    for _ in range(warmup):
        opt.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, kbit {kbit.__version__}")
    for name, make in (("kbit.optim.AdamW8bit", kbit.optim.AdamW8bit), ("kbit.optim.AdamW32bit", kbit.optim.AdamW32bit),
                       ("torch.optim.AdamW", torch.optim.AdamW)):
        print(f"{name:24s} {median_step_ms(make, args.steps, args.warmup):8.1f} ms")


if __name__ == "__main__":
    main()
