"""Split a micro-batch into pieces of whole examples that each fit a token budget.

Activation memory grows with the tokens of one forward pass (~1.3 MB per token for
SmolLM2-135M in fp32), so a micro-batch of four long examples sets the run's peak RSS.
`train.micro_batch_tokens` caps it: the trainer runs forward and backward once per
piece and the gradients add up to the same sum (each piece's loss is divided by the
optimizer step's trained-token count), so the optimizer step does not change. An
example longer than the budget forms a piece of its own; examples are never cut.
"""

from __future__ import annotations

import itertools

PACKED_KEYS = ("input_ids", "labels", "position_ids")


def consecutive_groups(lengths: list[int], budget: int, cost) -> list[tuple[int, int]]:
    """(first, end) index ranges, filled greedily while `cost(lengths[first:end])` stays within `budget`.

    A single item over the budget forms a group of its own.
    """
    groups, first = [], 0
    for index in range(1, len(lengths)):
        if cost(lengths[first:index + 1]) > budget:
            groups.append((first, index))
            first = index
    if lengths:
        groups.append((first, len(lengths)))
    return groups


def example_groups(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Packed examples: their summed length stays within `budget`."""
    return consecutive_groups(lengths, budget, sum)


def padded_groups(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Padded rows: rows x longest row stays within `budget`."""
    return consecutive_groups(lengths, budget, lambda group: len(group) * max(group))


def split_packed(inputs: dict, budget: int) -> list[dict]:
    """Pieces of a packed row ([1, T], `cu_seq_lens_q` boundaries), each with its own boundaries."""
    import torch

    bounds = inputs["cu_seq_lens_q"].tolist()
    lengths = [end - start for start, end in itertools.pairwise(bounds)]
    pieces = []
    for first, end in example_groups(lengths, budget):
        start, stop = bounds[first], bounds[end]
        piece = {key: inputs[key][:, start:stop] for key in PACKED_KEYS if key in inputs}
        cu = torch.tensor([b - start for b in bounds[first:end + 1]], dtype=inputs["cu_seq_lens_q"].dtype)
        longest = max(lengths[first:end])
        piece.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu.clone(), max_length_q=longest, max_length_k=longest)
        pieces.append(piece)
    return pieces


def split_padded(inputs: dict, budget: int) -> list[dict]:
    """Pieces of a right-padded batch: groups of rows, each cut to its own longest row."""
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    pieces = []
    for first, end in padded_groups(lengths, budget):
        width = max(lengths[first:end])
        pieces.append({key: value[first:end, :width] for key, value in inputs.items()})
    return pieces


def split_batch(inputs: dict, budget: int) -> list[dict]:
    """`inputs` as pieces within `budget` tokens (one piece when it fits or `budget` is 0)."""
    if budget <= 0:
        return [inputs]
    if "cu_seq_lens_q" in inputs and inputs["input_ids"].shape[0] == 1:
        if inputs["input_ids"].shape[1] <= budget:
            return [inputs]
        return split_packed(inputs, budget)
    if "attention_mask" in inputs and inputs["input_ids"].numel() > budget:
        return split_padded(inputs, budget)
    return [inputs]
