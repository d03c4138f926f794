"""StableEmbedding and Embedding: torch embeddings whose weight keeps 32-bit optimizer state under kbit's 8-bit
optimizers (bitsandbytes' layers of the same names).

This module owns the two layers. Each registers a kbit.optim.GlobalOptimManager override {"optim_bits": 32}
for its weight when built, so `Adam8bit(model.parameters())` keeps the embedding's state 32-bit (embeddings
see sparse, bursty gradients that 8-bit state represents poorly) while the rest trains with 8-bit state.
StableEmbedding also initialises the weight with xavier_uniform and applies a LayerNorm to the looked-up rows
in float32 (torch's default dtype), returning the weight's dtype, as bitsandbytes' StableEmbedding does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as TF

from kbit.optim import GlobalOptimManager

__all__ = ["StableEmbedding", "Embedding"]


class Embedding(torch.nn.Embedding):
    """torch.nn.Embedding whose weight keeps 32-bit optimizer state (xavier_uniform init, as bitsandbytes')."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, _weight=None, device=None, dtype=None):
        super().__init__(num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
                         _weight, device=device, dtype=dtype)
        GlobalOptimManager.get_instance().register_module_override(self, "weight", {"optim_bits": 32})

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def _lookup(self, input: torch.Tensor) -> torch.Tensor:
        return TF.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                            self.scale_grad_by_freq, self.sparse)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._lookup(input)


class StableEmbedding(Embedding):
    """Embedding followed by a LayerNorm computed in float32 (bitsandbytes' StableEmbedding)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, _weight=None, device=None, dtype=None):
        super().__init__(num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
                         _weight, device=device, dtype=dtype)
        self.norm = torch.nn.LayerNorm(embedding_dim, device=device)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        emb = self._lookup(input).to(torch.get_default_dtype())
        return self.norm(emb).to(self.weight.dtype)
