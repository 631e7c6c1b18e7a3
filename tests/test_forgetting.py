"""The forgetting guard and data.replay: the built-in general set, summary.json's scores, the replay rows."""

import io
import json
import math
import re

import pytest
import torch
from rich.console import Console

from chattune import rundir
from chattune.config import load_config
from chattune.data.builtin import GENERAL, HELD_OUT_QUESTIONS, TOPICS
from chattune.data.builtin_general import GUARD, REPLAY, REPLAY_SOURCE, general_rows, split_rows
from chattune.data.prepare import prepare_data, report_data
from chattune.data.templates import IGNORE_INDEX
from chattune.training.forgetting import (
    KL_WARN,
    forgetting_report,
    guard_examples,
    guard_run,
    score_forgetting,
)

FIELDS = {"rows", "tokens", "base_loss", "tuned_loss", "loss_change", "kl_to_base", "threshold_kl", "warning", "seconds"}


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=1000)


def test_general_set_splits_are_fixed_disjoint_and_well_formed():
    rows = general_rows()
    guard, replay = split_rows(GUARD), split_rows(REPLAY)
    assert (len(guard), len(replay)) == (32, 64) and len(rows) == 96
    assert all(set(r) == {"split", "kind", "instruction", "output"} for r in rows)
    assert all(r["instruction"].strip() and r["output"].strip() for r in rows)
    questions = [r["instruction"].strip().lower() for r in rows]
    assert len(set(questions)) == len(questions), "a question appears twice"
    assert not {r["instruction"] for r in guard} & {r["instruction"] for r in replay}
    assert not {r["output"] for r in guard} & {r["output"] for r in replay}
    trained_elsewhere = {q for q, _ in GENERAL} | {q for qs, _ in TOPICS.values() for q in qs} | set(HELD_OUT_QUESTIONS)
    assert not {r["instruction"] for r in rows} & trained_elsewhere, "self-cognition trains on it"
    kinds = {"fact", "arithmetic", "writing", "advice", "code", "definition", "translation"}
    assert {r["kind"] for r in guard} == kinds == {r["kind"] for r in replay}
    for r in rows:  # answers of 1-3 sentences
        assert 1 <= len(re.findall(r"[.!?](?:\s|$|\")", r["output"] + " ")) <= 3 or "\n" in r["output"], r


def test_replay_rows_are_seeded_and_a_changed_replay_is_refused_on_resume(tmp_path):
    from chattune.data.builtin_general import replay_conversations
    from chattune.training.resume import ResumeError, check_same_config

    first = [c.messages for c in replay_conversations(10, seed=1)]
    assert first == [c.messages for c in replay_conversations(10, seed=1)] and len(first) == 10
    assert first != [c.messages for c in replay_conversations(10, seed=2)]
    saved = load_config(None, ["data.replay=4"]).model_dump(mode="json")
    with pytest.raises(ResumeError, match="data.replay"):
        check_same_config(tmp_path, saved, load_config(None, ["data.replay=8"]))


def _cfg(*overrides):
    return load_config(None, ["data.size=16", "data.eval_ratio=0.25", *overrides])


def test_replay_adds_exactly_n_trained_rows_to_train_only_and_reports_them(tokenizer):
    plain = prepare_data(_cfg("data.system=You are Tuna."), tokenizer, quiet_console())
    console = quiet_console()
    mixed = prepare_data(_cfg("data.system=You are Tuna.", "data.replay=5"), tokenizer, console)
    before, after = plain.stats["train"], mixed.stats["train"]
    assert after["examples"] == before["examples"] + 5 and after["replay"] == 5 and before["replay"] == 0
    assert after["trained_tokens"] > before["trained_tokens"]
    assert mixed.stats["eval"] == plain.stats["eval"] and mixed.eval == plain.eval, "replay rows entered eval"
    added = [e for e in mixed.train if e not in plain.train]
    assert len(added) == 5 and all(any(x != IGNORE_INDEX for x in e["labels"]) for e in added)
    texts = [tokenizer.decode(e["input_ids"]) for e in added]
    assert not any("You are Tuna." in t for t in texts), "the run's system prompt reached a replay row"
    report_data(mixed.stats, console)
    assert "5 of them general rows from data.replay" in console.file.getvalue()


def test_replay_cycles_past_the_split_and_mixes_with_file_data(tokenizer, write_jsonl):
    path = write_jsonl([{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
                        for i in range(6)])
    evals = write_jsonl([{"instruction": "x", "output": "y"}], name="eval.jsonl")
    data = prepare_data(load_config(None, [f"data.path={path}", f"data.eval_path={evals}", "data.replay=70"]),
                        tokenizer, quiet_console())
    assert data.stats["train"]["examples"] == 76 and data.stats["train"]["replay"] == 70
    assert data.stats["eval"]["examples"] == 1 and data.stats["eval"]["replay"] == 0
    assert all(c.meta.get("origin") != REPLAY_SOURCE for c in data.eval_conversations)


@pytest.fixture(scope="module")
def guarded(tiny_model_dir, tmp_path_factory):
    from chattune.training.trainer import train

    run_dir = tmp_path_factory.mktemp("forgetting") / "run"
    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={run_dir}", "data.size=8", "data.replay=4", "train.max_steps=2",
        "train.batch_size=2", "train.grad_accum=1", "train.lr=5e-2", "train.precision=fp32", "lora.dropout=0.0",
    ])
    return train(cfg, quiet_console())


def test_summary_has_the_forgetting_fields_with_finite_values(guarded):
    summary = json.loads((guarded.run_dir / rundir.SUMMARY).read_text())
    entry = summary["forgetting"]
    assert set(entry) == FIELDS and entry["rows"] == 32 and entry["tokens"] > 32
    assert all(math.isfinite(entry[k]) for k in ("base_loss", "tuned_loss", "loss_change", "kl_to_base"))
    assert entry["kl_to_base"] > 0, "a trained adapter changes the general answers"
    assert entry["threshold_kl"] == KL_WARN and entry["warning"] == (entry["kl_to_base"] > KL_WARN)
    assert entry["loss_change"] == pytest.approx(entry["tuned_loss"] - entry["base_loss"], abs=2e-4)
    stats = json.loads((guarded.run_dir / rundir.DATA_STATS).read_text())
    assert stats["train"]["replay"] == 4 and stats["train"]["examples"] == 8 + 4


def _direct_loss(model, examples) -> float:
    """Full-logit shifted cross-entropy over the answer tokens, summed over examples, per token."""
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1].float()
            labels = torch.tensor(e.labels[1:])
            total += float(torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((labels != IGNORE_INDEX).sum())
    return total / count


def test_base_and_tuned_loss_equal_a_direct_computation(guarded, tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    entry = json.loads((guarded.run_dir / rundir.SUMMARY).read_text())["forgetting"]
    examples = guard_examples(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert entry["base_loss"] == pytest.approx(_direct_loss(base, examples), abs=1e-4)
    guarded.model.eval()
    assert entry["tuned_loss"] == pytest.approx(_direct_loss(guarded.model, examples), abs=1e-4)


def test_kl_is_zero_for_an_untrained_adapter_and_mode_and_dtype_are_kept(tiny_model_dir, tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear"))  # lora_B starts at zero
    model.train()
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    scores = score_forgetting(model, guard_examples(tokenizer))
    assert abs(scores["kl_to_base"]) < 1e-6 and scores["base_loss"] == pytest.approx(scores["tuned_loss"], abs=1e-6)
    assert model.training and {n: p.dtype for n, p in model.named_parameters()} == dtypes
    model.eval()
    score_forgetting(model, guard_examples(tokenizer)[:2])
    assert not model.training


def test_warning_line_above_the_threshold(guarded, tokenizer, monkeypatch):
    assert forgetting_report(guarded.model, tokenizer, threshold=0.0)["warning"] is True
    import chattune.training.forgetting as forgetting

    monkeypatch.setattr(forgetting, "KL_WARN", 0.0)
    console = quiet_console()
    entry = guard_run(rundir.open_run_dir(guarded.run_dir).config(), guarded.model, tokenizer, console)
    text = console.file.getvalue()
    assert entry["warning"] and "forgetting guard" in text and "warning" in text and "data.replay" in text


def test_report_shows_the_forgetting_guard(guarded):
    from chattune.report.html import write_report

    entry = json.loads((guarded.run_dir / rundir.SUMMARY).read_text())["forgetting"]
    html = write_report(guarded.run_dir).read_text()
    assert "forgetting guard" in html and f"{entry['kl_to_base']:.4g}" in html


def test_turning_the_guard_off_removes_the_field(tiny_model_dir, tmp_path):
    from chattune.training.trainer import train

    cfg = load_config(None, [f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'off'}", "data.size=4",
                             "train.max_steps=1", "train.precision=fp32", "train.forgetting=false"])
    outcome = train(cfg, quiet_console())
    assert "forgetting" not in json.loads((outcome.run_dir / rundir.SUMMARY).read_text())
