"""kbit.optim: Adam, AdamW, AdEMAMix, Lion, SGD (momentum), RMSprop, Adagrad, LARS and LAMB with 8-bit blockwise or
32-bit state, bitsandbytes-compatible (state names, layout and formulas), each step one fused native update
per parameter (csrc/numerics/optim.h, on CPU and CUDA).

Generic classes take optim_bits=8|32 (default 32); the *8bit / *32bit classes fix it; Paged* classes keep
large states in CUDA managed memory (no effect on CPU, with one warning). GlobalOptimManager overrides settings
per parameter; percentile_clipping=N (every optimizer) and max_unorm (LARS, LAMB) clip as bitsandbytes does.
"""
from kbit.optim._base import KbitOptimizer
from kbit.optim._clipping import percentile_clipping
from kbit.optim._manager import GlobalOptimManager
from kbit.optim.optimizers import (
                                   LAMB,
                                   LARS,
                                   SGD,
                                   Adagrad,
                                   Adagrad8bit,
                                   Adagrad32bit,
                                   Adam,
                                   Adam8bit,
                                   Adam32bit,
                                   AdamW,
                                   AdamW8bit,
                                   AdamW32bit,
                                   AdEMAMix,
                                   AdEMAMix8bit,
                                   AdEMAMix32bit,
                                   LAMB8bit,
                                   LAMB32bit,
                                   LARS8bit,
                                   LARS32bit,
                                   Lion,
                                   Lion8bit,
                                   Lion32bit,
                                   PagedAdam,
                                   PagedAdam8bit,
                                   PagedAdam32bit,
                                   PagedAdamW,
                                   PagedAdamW8bit,
                                   PagedAdamW32bit,
                                   PagedAdEMAMix,
                                   PagedAdEMAMix8bit,
                                   PagedAdEMAMix32bit,
                                   PagedLion,
                                   PagedLion8bit,
                                   PagedLion32bit,
                                   RMSprop,
                                   RMSprop8bit,
                                   RMSprop32bit,
                                   SGD8bit,
                                   SGD32bit,
)

__all__ = ["KbitOptimizer", "Adam", "Adam8bit", "Adam32bit", "AdamW", "AdamW8bit", "AdamW32bit", "AdEMAMix",
           "AdEMAMix8bit", "AdEMAMix32bit", "Lion", "Lion8bit", "Lion32bit", "SGD", "SGD8bit", "SGD32bit", "RMSprop",
           "RMSprop8bit", "RMSprop32bit", "Adagrad", "Adagrad8bit", "Adagrad32bit", "PagedAdam", "PagedAdam8bit",
           "PagedAdam32bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "PagedLion", "PagedLion8bit",
           "PagedLion32bit", "PagedAdEMAMix", "PagedAdEMAMix8bit", "PagedAdEMAMix32bit", "LARS", "LARS8bit",
           "LARS32bit", "LAMB", "LAMB8bit", "LAMB32bit", "GlobalOptimManager", "percentile_clipping"]
