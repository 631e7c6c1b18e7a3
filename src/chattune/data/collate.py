"""Batch examples: right-pad ids with the pad id and labels with -100 (pad is never a label)."""

from __future__ import annotations

from chattune.data.templates import IGNORE_INDEX


class PadCollator:
    """Dynamic padding to the longest example in the batch."""

    def __init__(self, pad_id: int, multiple_of: int = 1):
        self.pad_id = pad_id
        self.multiple_of = multiple_of

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        longest = max(len(e["input_ids"]) for e in examples)
        longest = -(-longest // self.multiple_of) * self.multiple_of
        ids, labels, mask = [], [], []
        for e in examples:
            gap = longest - len(e["input_ids"])
            ids.append(list(e["input_ids"]) + [self.pad_id] * gap)
            labels.append(list(e["labels"]) + [IGNORE_INDEX] * gap)
            mask.append([1] * len(e["input_ids"]) + [0] * gap)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }
