"""CPU attention for padding-free rows, at the cost of each example's own length.

TRL's padding-free collator puts a micro-batch's examples into one row, with position ids that
restart at 0 for each example and the examples' boundaries (`cu_seq_lens_q`, as the varlen
flash-attention kernels take them). On CUDA those kernels (or SDPA under the block-diagonal mask
transformers builds from the position ids) keep examples apart. On a CPU, SDPA under that mask
computes the whole row x row score matrix: the kernels skip no masked block, so 8 examples of ~250
tokens cost about 8x the attention of scoring each example alone, and attention was half of a
training step. This attention implementation, registered with transformers as `ATTENTION` and
chosen by `model.attention_implementation` on CPUs only, runs causal SDPA on each example's
slice of the row and builds no row x row mask. Without boundaries (padded batches, generation)
it is transformers' SDPA with its usual mask. The sums are the same; only the skipped zeros are gone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "tuneloop_packed_sdpa"


def example_lengths(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                    cu_seq_lens_q: torch.Tensor | None, position_ids: torch.Tensor | None) -> list[int] | None:
    """The lengths of the examples packed into this one row, or None when it is not such a row."""
    if attention_mask is not None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return None
    if cu_seq_lens_q is not None:
        lengths = cu_seq_lens_q.diff().tolist()
    elif position_ids is not None:
        starts = (position_ids[0] == 0).nonzero().flatten().tolist() + [position_ids.shape[-1]]
        lengths = [end - start for start, end in zip(starts, starts[1:])]
    else:
        return None
    lengths = [length for length in lengths if length > 0]
    return lengths if sum(lengths) == query.shape[2] and len(lengths) > 1 else None


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     cu_seq_lens_q: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """query (batch, heads, seq, dim), key/value (batch, kv heads, seq, dim) -> (batch, seq, heads, dim)."""
    lengths = example_lengths(query, key, attention_mask, cu_seq_lens_q, position_ids)
    if lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
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
