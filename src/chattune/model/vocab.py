"""Grow a base model's embedding for the markers a named template added, and train only their rows.

`data.template: chatml` on a vocabulary without `<|im_start|>` / `<|im_end|>` adds both as special
tokens (data/named_templates.py), as TRL's setup_chat_format (now clone_chat_template) does. The
model then needs a row for each: `grow_embeddings` resizes the input embedding (and an untied LM
head) to the tokenizer's length, new rows starting at the mean of the old ones (transformers'
mean_resizing, as TRL relies on). Only those rows are trained, with peft's trainable_token_indices
(TrainableTokens): `token_targets` names the input embedding, and the output head when it is not
tied (a tied head follows the embedding's token adapter, peft's weight tying).

Why trainable_token_indices and not TRL's `modules_to_save=["lm_head"]`: modules_to_save trains and
saves the whole matrix, vocab x hidden (136M parameters, ~545 MB fp32 per adapter and again per
checkpoint with AdamW's moments at Qwen2.5-0.5B's 151,936 x 896) to learn two rows of it.
TrainableTokens trains and saves just the new rows of each matrix; they
replace (not add to) the base rows at those ids, so the base's random start values never matter
once an adapter is on, merge_and_unload writes them into the weights, and the adapter needs no
copy of the embedding (`save_embedding_layers=False`). `fit_for_adapter` gives a freshly loaded
base the same number of rows before such an adapter goes on (chat, eval, serve, export).
"""

from __future__ import annotations

import json
from pathlib import Path

TOKEN_INDICES = "trainable_token_indices"  # peft's adapter_config.json key


def grow_embeddings(model, rows: int) -> bool:
    """Resize the token embeddings (and an untied head) to `rows` if there are fewer; True if so."""
    if model.get_input_embeddings().num_embeddings >= rows:
        return False
    model.resize_token_embeddings(rows, mean_resizing=True)
    return True


def token_targets(model, ids: list[int]) -> dict[str, list[int]] | None:
    """peft's trainable_token_indices for `ids`: the input embedding's full module name, and the
    output head's when it does not share the embedding's weight; None when there are no ids."""
    if not ids:
        return None
    names = {module: name for name, module in model.named_modules()}
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    targets = {names[embedding]: list(ids)}
    if head is not None and head.weight is not embedding.weight and head in names:
        targets[names[head]] = list(ids)
    return targets


def trained_token_ids(adapter_dir: str | Path) -> list[int]:
    """The token ids an adapter's TrainableTokens hold (from adapter_config.json; [] for none)."""
    try:
        config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    indices = config.get(TOKEN_INDICES) or []
    if isinstance(indices, dict):
        return sorted({i for ids in indices.values() for i in ids})
    return sorted(set(indices))


def fit_for_adapter(base, adapter_dir: str | Path) -> bool:
    """Grow `base` to hold every row the adapter's TrainableTokens replace (the markers were the
    last ids added, so this is the training run's size); True if it grew."""
    ids = trained_token_ids(adapter_dir)
    return bool(ids) and grow_embeddings(base, max(ids) + 1)


def saves_token_rows(model) -> bool:
    """Whether the PeftModel trains token rows (its adapter is then saved without embeddings)."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", "default"))
    return getattr(config, TOKEN_INDICES, None) is not None


def grow_for_tokenizer(model, tokenizer, console=None) -> list[int]:
    """The ids of the markers data.template added to `tokenizer` (named_templates.apply_template),
    with `model` grown to hold them (said on `console`); [] (and no change) when it added none."""
    from chattune.data.named_templates import added_token_ids

    ids = added_token_ids(tokenizer) if tokenizer is not None else []
    if ids:
        grow_embeddings(model, len(tokenizer))
        if console is not None:
            console.print(f"[bold]new tokens[/] {', '.join(tokenizer.convert_ids_to_tokens(ids))}: "
                          f"{model.get_input_embeddings().num_embeddings:,} embedding rows, theirs "
                          "trained", highlight=False, markup=True)
    return ids


def save_without_embeddings(model):
    """Make `model.save_pretrained` (the Trainer's checkpoints too) skip peft's full embedding
    copies when the model trains token rows: peft's default ("auto") saves the whole embedding and
    head of a resized model, vocab x hidden each, though the TrainableTokens rows restore them."""
    import functools

    if saves_token_rows(model):
        save = model.save_pretrained
        model.save_pretrained = functools.partial(save, save_embedding_layers=False)
    return model
