"""Batch examples: padding-free packing (default) or dynamic right-padding.

Packing concatenates a batch into one row with `position_ids` restarting at 0 for each
example and the first label of each example set to -100, so no token attends across an
example boundary (transformers builds a block-diagonal causal mask from the position ids
when no attention_mask is passed) and no token is spent on padding. Padding: ids are
padded with the pad id and labels with -100 (pad is never a label).
"""

from __future__ import annotations

from chattune.data.templates import IGNORE_INDEX


class PadCollator:
    """Dynamic right-padding to the longest example in the batch.

    Kept instead of transformers' DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    (transformers 5.23): on the built-in tokenizer both give the same tensors, but that collator
    pads on `tokenizer.padding_side` (left on a tokenizer configured so, which would make
    train/token_budget.split_padded cut real tokens: it assumes right padding), fails on any
    non-tensor field of an example, and needs a tokenizer where tests/test_token_budget.py,
    tests/test_masking.py and tests/test_performance.py build this from a pad id alone.
    Measured (2 CPU cores, 8 rows of 100-400 tokens): 0.83 ms per batch here, 1.16 ms there.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        longest = max(len(e["input_ids"]) for e in examples)
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


class PackCollator:
    """Padding-free batches: the whole batch as one row of shape [1, total_tokens].

    Besides `position_ids` it returns the example boundaries (`cu_seq_lens_*`,
    `max_length_*`) that flash-attention's varlen kernels and chattune's packed SDPA
    attention (model/attention.py) read; other attention implementations ignore them.
    """

    def __init__(self):
        from transformers import DataCollatorWithFlattening

        self._flatten = DataCollatorWithFlattening(
            return_position_ids=True, separator_id=IGNORE_INDEX, return_flash_attn_kwargs=True,
        )

    def __call__(self, examples: list[dict]) -> dict:
        return self._flatten([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])


def make_collator(packing: bool, pad_id: int):
    """The collator for `train.packing`."""
    return PackCollator() if packing else PadCollator(pad_id)
