"""Micro-batches and the loss on answer tokens.

Packing concatenates the examples of a micro-batch into one row with position ids that restart
at 0 for each example, and keeps the examples' lengths. A model loaded by `model.load_model`
attends within each example at its own length (`attention.py`); any other model turns the
restarting position ids into a block-diagonal causal mask. Either way no token attends across an
example boundary and no compute is spent on padding.
Targets are shifted inside each example, so no example predicts the next one's first token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuneloop_trainer.data import IGNORE_INDEX, TokenizedExample


@dataclass
class Batch:
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    attention_mask: torch.Tensor | None = None
    lengths: tuple[int, ...] | None = None  # packed: the examples' lengths, in order

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel() if self.attention_mask is None else self.attention_mask.sum())

    @property
    def target_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str) -> "Batch":
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return Batch(self.input_ids.to(device), self.position_ids.to(device), self.targets.to(device), mask,
                     self.lengths)


def shifted_targets(example: TokenizedExample) -> list[int]:
    return example.labels[1:] + [IGNORE_INDEX]


def packed_batch(examples: list[TokenizedExample]) -> Batch:
    ids, positions, targets = [], [], []
    for example in examples:
        ids.extend(example.input_ids)
        positions.extend(range(len(example.input_ids)))
        targets.extend(shifted_targets(example))
    return Batch(torch.tensor([ids]), torch.tensor([positions]), torch.tensor([targets]),
                 lengths=tuple(len(example.input_ids) for example in examples))


def padded_batch(examples: list[TokenizedExample], pad_token_id: int) -> Batch:
    width = max(len(example.input_ids) for example in examples)
    ids = torch.full((len(examples), width), pad_token_id)
    targets = torch.full((len(examples), width), IGNORE_INDEX)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        ids[row, :length] = torch.tensor(example.input_ids)
        targets[row, :length] = torch.tensor(shifted_targets(example))
        mask[row, :length] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, positions, targets, mask)


def make_batch(examples: list[TokenizedExample], packing: bool, pad_token_id: int) -> Batch:
    return packed_batch(examples) if packing else padded_batch(examples, pad_token_id)


def summed_loss(causal_lm: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Sum of cross-entropy over answer tokens.

    The output head runs only on positions that have a target: with a 49k vocabulary the
    head is a large share of the compute, and prompt tokens need none of it.
    """
    decoder = getattr(causal_lm, causal_lm.base_model_prefix)
    packed = {} if batch.lengths is None else {"packed_lengths": batch.lengths}
    hidden = decoder(
        input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask,
        use_cache=False, **packed,
    ).last_hidden_state
    selected = batch.targets != IGNORE_INDEX
    logits = causal_lm.get_output_embeddings()(hidden[selected])
    return F.cross_entropy(logits.float(), batch.targets[selected], reduction="sum")
