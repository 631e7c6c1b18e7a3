"""Causal-LM loss that projects only the positions that have a label onto the vocabulary.

Prompt and template positions carry no label, yet the standard forward still computes
their full-vocabulary logits (the LM head is ~20% of a small model's FLOPs and the
logits are its largest activation). Here the model's own `logits_to_keep` slices the
hidden states to the positions whose *next* token is trained, so model-specific logit
processing (scaling, soft-capping) is kept. The result equals the standard shifted
cross-entropy (sum over trained tokens / their count).
"""

from __future__ import annotations

from chattune.data.templates import IGNORE_INDEX


def trained_positions(labels):
    """(keep, targets): keep[b, t] is True where labels[b, t + 1] is trained; targets in keep order."""
    import torch

    next_labels = labels[:, 1:]
    trained = next_labels != IGNORE_INDEX
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = trained
    return keep, next_labels[trained]


def masked_lm_loss(model, inputs: dict, num_items_in_batch=None):
    """Summed CE over trained tokens divided by `num_items_in_batch` (default: their count)."""
    import torch
    import torch.nn.functional as F

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep, targets = trained_positions(labels)
    if targets.numel() == 0:  # a micro-batch with nothing to learn still needs a graph
        logits = model(**inputs, use_cache=False, logits_to_keep=1).logits
        return logits.sum() * 0.0
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    logits = logits.reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(logits.float(), targets.to(logits.device), reduction="sum")
    denominator = targets.numel() if num_items_in_batch is None else num_items_in_batch
    if torch.is_tensor(denominator):
        denominator = denominator.to(loss.device)
    return loss / denominator


def shifted_lm_loss(logits, labels):
    """Mean next-token cross-entropy over trained positions (labels != -100), in fp32."""
    import torch.nn.functional as F

    shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(shifted, labels[:, 1:].reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX)
