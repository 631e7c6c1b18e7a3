"""Preference tuning (train.stage dpo/orpo/kto): the data forms and their lint, the encoding rules,
each stage training 2 steps on a tiny model through TRL, DPO after SFT, resume, and eval --metric preference."""

from __future__ import annotations

import json

import pytest

from chattune import rundir
from chattune.config import load_config
from chattune.data.preference import preference_row, read_preference_rows
from chattune.data.preference_encode import fit_sides
from chattune.data.sources import DataError
from chattune.data.templates import stop_token_ids

PAIR = {"prompt": "Who are you?", "chosen": "I am Chattune Assistant.", "rejected": "I am SmolLM."}


def row(value):
    return preference_row(value, "f.jsonl:3", None, {})


def test_every_pair_form_gives_the_same_pair():
    """Strings, message lists, sharegpt (LLaMA-Factory), alpaca and implicit-prompt rows read alike."""
    user = [{"role": "user", "content": "Who are you?"}]
    forms = [
        PAIR,
        {"prompt": user, "chosen": [{"role": "assistant", "content": PAIR["chosen"]}],
         "rejected": [{"role": "assistant", "content": PAIR["rejected"]}]},
        {"conversations": [{"from": "human", "value": "Who are you?"}],
         "chosen": {"from": "gpt", "value": PAIR["chosen"]}, "rejected": {"from": "gpt", "value": PAIR["rejected"]}},
        {"instruction": "Who are you?", "chosen": PAIR["chosen"], "rejected": PAIR["rejected"]},
        {"chosen": [*user, {"role": "assistant", "content": PAIR["chosen"]}],
         "rejected": [*user, {"role": "assistant", "content": PAIR["rejected"]}]},
    ]
    for form in forms:
        got = row(form)
        assert (got.prompt, got.chosen, got.rejected) == (user, PAIR["chosen"], PAIR["rejected"]), form


def test_kto_rows_and_pairs_split_into_desirable_and_undesirable():
    from chattune.data.preference import as_unpaired

    kto = row({"prompt": "Who are you?", "completion": "I am SmolLM.", "label": False})
    assert (kto.completion, kto.label, kto.paired) == ("I am SmolLM.", False, False)
    split = as_unpaired([row(PAIR)])
    assert [(r.completion, r.label) for r in split] == [(PAIR["chosen"], True), (PAIR["rejected"], False)]


@pytest.mark.parametrize(("value", "where", "message"), [
    ({"prompt": "q", "chosen": "a"}, "f.jsonl:3:rejected", "missing required field"),
    ({"prompt": "q", "chosen": "same", "rejected": " same "}, "f.jsonl:3:rejected", "equal to chosen"),
    ({"prompt": "q", "chosen": "a", "rejected": "  "}, "f.jsonl:3:rejected", "empty answer"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "f.jsonl:3:prompt", "empty prompt"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
     "f.jsonl:3:rejected", "not a prefix"),
    ({"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"},
     "f.jsonl:3:prompt[0].role", "unknown role"),
    ({"prompt": "q", "completion": "a", "label": "maybe"}, "f.jsonl:3:label", "true or false"),
    ({"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
      "rejected": "c"}, "f.jsonl:3:chosen", "one assistant answer"),
])
def test_lint_names_file_line_and_field(value, where, message):
    with pytest.raises(DataError) as caught:
        row(value)
    assert caught.value.where == where and message in str(caught.value)


def test_encoding_keeps_one_prompt_and_the_end_of_turn_token(tokenizer):
    stops = stop_token_ids(tokenizer)
    pair = row({**PAIR, "chosen": "word " * 200})
    (prompt, (chosen, rejected)), _, _ = fit_sides(tokenizer, row(PAIR), 512, "truncate", stops)
    assert tokenizer.decode(prompt).endswith("assistant\n") and chosen[-1] in stops and rejected[-1] in stops
    assert tokenizer.decode(chosen[:-1]) == PAIR["chosen"]
    (prompt2, (long, short)), _, truncated = fit_sides(tokenizer, pair, 64, "truncate", stops)
    assert truncated and prompt2 == prompt and len(prompt2) + len(long) == 64 and long[-1] in stops
    assert short == rejected  # only the over-long side is cut
    assert fit_sides(tokenizer, pair, 64, "drop", stops)[0] is None


def stage_cfg(model_dir, run_dir, data, stage, *extra):
    return load_config(None, [
        f"model.name={model_dir}", f"run_dir={run_dir}", f"data.path={data}", f"train.stage={stage}",
        "train.max_steps=2", "train.batch_size=2", "train.grad_accum=1", "train.precision=fp32",
        "train.device=cpu", "train.lr=1e-2", "train.forgetting=false", "lora.dropout=0.0", *extra,
    ])


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    from chattune.data.builtin_pairs import identity_pairs, write_jsonl

    return write_jsonl(identity_pairs("Chattune Assistant", "the chattune team")[:8],
                       tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


@pytest.mark.parametrize("stage", ["dpo", "orpo", "kto"])
def test_each_stage_trains_two_steps_into_a_run_dir(stage, tiny_model_dir, tmp_path, pairs_file):
    from chattune.training.trainer import train

    outcome = train(stage_cfg(tiny_model_dir, tmp_path / "run", pairs_file, stage, "data.eval_ratio=0.25"))
    run = rundir.open_run_dir(outcome.run_dir)
    assert outcome.summary["steps"] == 2 and outcome.summary["tokens"] > 0
    assert run.config().train.stage == stage and run.loss_plot.is_file()
    adapter = json.loads((run.adapter / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and not (run.adapter / "ref").exists()  # TRL's reference copy not saved
    logged = {key for record in run.metrics() for key in record}
    assert "loss" in logged and ("rewards/chosen" in logged or stage == "kto")
    if stage != "orpo":
        assert any(key.startswith("eval_rewards") for key in logged)
    loaded = rundir.load_for_inference(outcome.run_dir)  # chat, export and serve load it as they load SFT runs
    assert list(loaded.model.peft_config) == ["default"]


def test_dpo_after_sft_starts_from_that_adapter(tiny_model_dir, tmp_path, pairs_file):
    """model.adapter: the SFT run's adapter is trained further; an unknown folder is refused before training."""
    from safetensors.torch import load_file

    from chattune.training.trainer import train

    sft = train(load_config(None, [f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'sft'}", "data.size=8",
                                   "train.max_steps=1", "train.batch_size=2", "train.grad_accum=1",
                                   "train.precision=fp32", "train.forgetting=false", "lora.r=4"]))
    dpo = train(stage_cfg(tiny_model_dir, tmp_path / "dpo", pairs_file, "dpo", f"model.adapter={sft.run_dir}"))
    before = load_file(str(sft.run_dir / rundir.ADAPTER / "adapter_model.safetensors"))
    after = load_file(str(dpo.run_dir / rundir.ADAPTER / "adapter_model.safetensors"))
    assert before.keys() == after.keys() and next(iter(after.values())).shape[0] in (4, 64)  # r=4 kept
    assert any(not (before[k] == after[k]).all() for k in before)
    with pytest.raises(rundir.RunDirError, match="neither a run dir nor an adapter folder"):
        train(stage_cfg(tiny_model_dir, tmp_path / "bad", pairs_file, "dpo", f"model.adapter={tmp_path}"))


def test_dpo_resumes_to_the_same_adapter(tiny_model_dir, tmp_path, pairs_file, monkeypatch):
    """A DPO run stopped by SIGINT after step 3 and resumed ends with the uninterrupted run's adapter."""
    from chattune.training.interrupt import TrainingInterrupted
    from chattune.training.trainer import train
    from resume_helpers import saved_adapter
    from test_resume import _interrupt_after_step

    settings = ("train.max_steps=4", "train.save_every=2")
    straight = train(stage_cfg(tiny_model_dir, tmp_path / "a", pairs_file, "dpo", *settings))
    _interrupt_after_step(monkeypatch, 2)
    with pytest.raises(TrainingInterrupted):
        train(stage_cfg(tiny_model_dir, tmp_path / "b", pairs_file, "dpo", *settings))
    monkeypatch.undo()
    resumed = train(stage_cfg(tiny_model_dir, tmp_path / "b", pairs_file, "dpo", *settings), resume="auto")
    assert resumed.summary["steps"] == 4
    want, got = saved_adapter(straight.run_dir), saved_adapter(tmp_path / "b")
    for key in want:  # fp32, one process, the same steps: equal up to summation order
        assert (want[key] - got[key]).abs().max() <= 1e-6 + 1e-5 * float(want[key].abs().max()), key


def test_bad_preference_rows_fail_before_the_model_loads(tiny_model_dir, tmp_path, write_jsonl, monkeypatch):
    from chattune.training import trainer

    data = write_jsonl([PAIR, {"prompt": "q", "chosen": "x", "rejected": "x"}, {"prompt": "q", "chosen": "y"}])
    monkeypatch.setattr(trainer, "load_base_model", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(DataError) as caught:
        trainer.train(stage_cfg(tiny_model_dir, tmp_path / "run", data, "dpo"))
    assert f"{data}:2:rejected" in str(caught.value) and f"{data}:3:rejected" in str(caught.value)


def test_eval_preference_scores_the_run_and_its_base(tiny_run, pairs_file, tmp_path):
    from chattune.api import evaluate
    from chattune.eval.preference import pair_examples, pair_rows

    result = evaluate(tiny_run, pairs_file, "preference", device="cpu", out=tmp_path / "eval")
    summary = json.loads((tmp_path / "eval" / rundir.EVAL_SUMMARY).read_text())
    assert summary["rows"] == 8 and 0.0 <= summary["metrics"]["preference_accuracy"] <= 1.0
    assert set(summary["base_metrics"]) == {"preference_accuracy", "margin_mean"}
    assert summary["metrics"]["margin_mean"] != summary["base_metrics"]["margin_mean"]  # the adapter matters
    records = [json.loads(line) for line in (tmp_path / "eval" / rundir.PREDICTIONS).read_text().splitlines()]
    mean = sum(r["model_logp_chosen"] - r["model_logp_rejected"] for r in records) / len(records)
    assert mean == pytest.approx(summary["metrics"]["margin_mean"], abs=1e-3)  # records rounded to 1e-4
    rows, data_cfg = pair_rows(str(tiny_run), pairs_file)
    examples, kept = pair_examples(rundir.run_tokenizer(rundir.open_run_dir(tiny_run)), rows, data_cfg, {2})
    assert len(examples) == 2 * len(kept) == 16 and result.summary["rows"] == 8


def test_read_preference_rows_collects_every_bad_row(write_jsonl):
    errors = []
    path = write_jsonl([PAIR, {"prompt": "q"}, "not an object", PAIR])
    rows = list(read_preference_rows(path, errors=errors))
    assert len(rows) == 2 and [e.where for e in errors] == [f"{path}:2:chosen", f"{path}:3"]


def test_data_inspect_shows_both_sides_with_trained_tokens(tiny_model_dir, pairs_file):
    from rich.console import Console

    from chattune.api import inspect_data

    console = Console(record=True, width=200)
    data = inspect_data(None, overrides=[f"model.name={tiny_model_dir}", f"data.path={pairs_file}",
                                         "train.stage=dpo"], examples=1, console=console)
    text = console.export_text()
    assert "chosen:" in text and "rejected:" in text and "train split: 8 examples" in text
    assert not data.report.errors and text.count("<|im_end|>") >= 3  # the end-of-turn token shown on each side
