"""`chattune eval --metric preference`: the share of held-out pairs whose `chosen` the model finds likelier.

Each pair is encoded as training encodes it (data/preference_encode.py: the run's template and
truncation); the model's summed log-probability of each answer given the prompt decides. A run dir
is scored twice in one pass over the file: with its adapter, and with the adapter disabled (its
base), so one summary.json holds base and fine-tuned. Rows are read before any model loads. It
writes predictions.jsonl (per pair: both log-probabilities) and summary.json like every eval.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from chattune import rundir


def pair_rows(target: str, data: str | Path, like: str | None = None):
    """The pairs of `data`, read with the data settings of `like` or the target run (system, columns)."""
    from chattune.data.preference import read_preference_rows
    from chattune.eval.runner import data_config_for

    data_cfg = data_config_for(target, None, like)
    rows = [row for row in read_preference_rows(Path(data), data_cfg.system, data_cfg.columns) if row.paired]
    if not rows:
        from chattune.data.sources import DataError

        raise DataError(str(data), "no preference pairs (prompt, chosen, rejected) to score")
    return rows, data_cfg


def answer_logps(model, examples: list[dict], pad_token_id: int, batch_size: int = 8) -> list[float]:
    """Summed log-probability of the labelled tokens of each {input_ids, labels} example."""
    import torch

    from chattune.data.collate import PadCollator

    collate, out = PadCollator(pad_token_id), []
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(examples[start:start + batch_size]).items()}
            labels = batch.pop("labels")[:, 1:]
            logits = model(**batch).logits[:, :-1].float()
            picked = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            out += (picked * (labels != -100)).sum(-1).tolist()
    return out


def pair_examples(tokenizer, rows, data_cfg, stops: set[int]) -> tuple[list[dict], list]:
    """Two {input_ids, labels} examples per pair (chosen, rejected), fitted as in training; the rows kept."""
    from chattune.data.preference_encode import fit_sides

    examples, kept = [], []
    for row in rows:
        fitted, _, _ = fit_sides(tokenizer, row, data_cfg.max_length, "truncate", stops)
        if fitted is None:
            continue
        prompt, answers = fitted
        examples += [{"input_ids": prompt + ids, "labels": [-100] * len(prompt) + ids} for ids in answers]
        kept.append(row)
    return examples, kept


def score_pairs(model, tokenizer, examples: list[dict], batch_size: int) -> dict:
    logps = answer_logps(model, examples, tokenizer.pad_token_id, batch_size)
    chosen, rejected = logps[0::2], logps[1::2]
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {"preference_accuracy": sum(m > 0 for m in margins) / len(margins),
            "margin_mean": sum(margins) / len(margins), "chosen": chosen, "rejected": rejected}


def run_preference_eval(target: str, data: str | Path, batch_size: int = 8, device: str = "cpu",
                        out: str | Path | None = None, like: str | None = None, dtype: str = "auto") -> dict:
    """Score `target` (and, for a run dir, its base) on the pairs of `data`; write and return the summary."""
    from chattune.eval.runner import default_out_dir
    from chattune.infer.chat import ChatModel

    rows, data_cfg = pair_rows(target, data, like)  # before the model loads
    chat = ChatModel.load(target, device=device, dtype=dtype)
    if like:
        chat.use_run_format(like)
    started = time.perf_counter()
    examples, kept = pair_examples(chat.tokenizer, rows, data_cfg, chat.stop_ids)
    scores = {"model": score_pairs(chat.model, chat.tokenizer, examples, batch_size)}
    if hasattr(chat.model, "disable_adapter"):  # a run: its base, adapter off, on the same encoded pairs
        with chat.model.disable_adapter():
            scores["base"] = score_pairs(chat.model, chat.tokenizer, examples, batch_size)
    summary = {
        "target": str(target), "data": str(data), "rows": len(kept), "dropped": len(rows) - len(kept),
        "metrics": {"preference_accuracy": scores["model"]["preference_accuracy"],
                    "margin_mean": scores["model"]["margin_mean"]},
        "created": datetime.now().isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 2),
    }
    if "base" in scores:
        summary["base_metrics"] = {k: scores["base"][k] for k in ("preference_accuracy", "margin_mean")}
    records = [{"source": row.source, **{f"{who}_logp_{side}": round(scores[who][side][i], 4)
                                         for who in scores for side in ("chosen", "rejected")}}
               for i, row in enumerate(kept)]
    out_dir = Path(out) if out else default_out_dir(target, data)
    rundir.write_eval_folder(out_dir, summary, records)
    return {**summary, "out_dir": str(out_dir)}
