"""Attention for packed rows at the cost of each example's own length.

Packing puts a micro-batch's examples into one row. SDPA over that row under a block-diagonal
mask computes the whole row x row score matrix: the kernels skip no masked block, so 8 examples
of ~250 tokens cost about 8x the attention of scoring each example alone, and on a CPU that
attention was half of a training step. Models loaded by `model.load_model` use the attention
registered here (`ATTENTION`): given the examples' lengths (`packed_lengths`, passed by
`batches.summed_loss` for packed batches) it runs causal SDPA on each example's slice of the row
and builds no row x row mask. Without them (padded batches, generation) it is transformers' SDPA
with its usual mask. The sums are the same; only the skipped zeros are gone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "tuneloop_packed_sdpa"


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     packed_lengths: tuple[int, ...] | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """query (batch, heads, seq, dim), key/value (batch, kv heads, seq, dim) -> (batch, seq, heads, dim)."""
    if packed_lengths is None or attention_mask is not None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    lengths = list(packed_lengths)
    parts = [F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True)
             for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def packed_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """No mask for a row without padding (packed or single): the attention above is causal per example."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(ATTENTION, packed_attention)
AttentionMaskInterface.register(ATTENTION, packed_mask)
