"""chattune eval and in-training evaluation on a tiny random Llama: files, generation, loss,
early stopping and best-adapter selection (metric values scripted, selection logic real)."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from chattune.config import load_config
from chattune.eval.runner import heldout_loss, row_spec_for, run_eval
from chattune.model.generate import generate_all, generate_batch
from chattune.rundir import EVAL_SUMMARY, PREDICTIONS
from chattune.training.evaluate import BestTracker, EvalLoop, snapshot_adapter

ROWS = [
    {"instruction": "Classify: the striker scored twice.", "output": "sports"},
    {"instruction": "Classify: a faster chip was released today by the company.", "output": "technology"},
    {"messages": [{"role": "user", "content": "用一句话介绍北京"}, {"role": "assistant", "content": "北京是中国的首都"}]},
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chattune.data.templates import stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, tokenizer, stop_token_ids(tokenizer)


def test_eval_writes_predictions_and_summary(tiny_model_dir, write_jsonl, tmp_path):
    data = write_jsonl(ROWS)
    result = run_eval(str(tiny_model_dir), data, ["loss", "exact", "accuracy", "rouge", "stop_rate"],
                      labels=["sports", "technology"], max_new_tokens=4, out=tmp_path / "ev")
    summary = json.loads((tmp_path / "ev" / EVAL_SUMMARY).read_text())
    records = [json.loads(line) for line in (tmp_path / "ev" / PREDICTIONS).read_text().splitlines()]
    assert summary["rows"] == 3 and len(records) == 3
    assert set(summary["metrics"]) == {"loss", "perplexity", "exact", "accuracy", "rouge", "stop_rate"}
    assert summary["metrics"]["perplexity"] == pytest.approx(math.exp(summary["metrics"]["loss"]))
    assert summary["metrics"]["stop_rate"] == pytest.approx(sum(r["stopped"] for r in records) / 3)
    assert [r["reference"] for r in records] == ["sports", "technology", "北京是中国的首都"]
    # a random model names no label: every unparseable row is listed by file:line and counted wrong
    unparseable = [r["source"] for r in records if r["label"] is None]
    assert summary["unparseable"] == unparseable
    assert summary["metrics"]["accuracy"] == pytest.approx(sum(r["accuracy"] for r in records) / 3)
    assert result.summary == summary


def test_eval_without_reference_fails_before_loading_a_model(write_jsonl, tmp_path):
    from chattune.data.formats import DataError

    data = write_jsonl([{"instruction": "hi", "output": "hello"}, {"instruction": "no answer here"}])
    with pytest.raises(DataError, match=r"data.jsonl:2: no reference answer"):
        run_eval(str(tmp_path / "no-such-model"), data, ["exact"])
    # stop_rate needs no reference: the same file passes the data check and then fails on the model
    with pytest.raises(Exception, match="no-such-model"):
        run_eval(str(tmp_path / "no-such-model"), data, ["stop_rate"])


def test_heldout_loss_ignores_padding_and_matches_a_direct_forward(tiny):
    model, tokenizer, stops = tiny
    from chattune.data.templates import encode_conversation

    convs = [[{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]
             for r in ROWS[:2]] + [ROWS[2]["messages"]]
    batched = heldout_loss(model, tokenizer, convs, stops, batch_size=3)
    total, count = 0.0, 0
    for messages in convs:
        enc = encode_conversation(tokenizer, messages, stops)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([enc.input_ids]), labels=torch.tensor([enc.labels]))
        n = sum(label != -100 for label in enc.labels[1:])
        total, count = total + float(out.loss) * n, count + n
    assert batched["trained_tokens"] == count
    assert batched["loss"] == pytest.approx(total / count, rel=1e-4)


def test_batched_generation_equals_one_by_one(tiny):
    model, tokenizer, stops = tiny
    prompts = [[{"role": "user", "content": text}] for text in ("Hi", "A much longer question about the weather today?", "法国的首都是哪里？")]
    batched = generate_all(model, tokenizer, prompts, stops, max_new_tokens=6, batch_size=3)
    single = generate_all(model, tokenizer, prompts, stops, max_new_tokens=6, batch_size=1)
    assert [g.text for g in batched] == [g.text for g in single]


class _ScriptedModel:
    """Returns fixed token rows from generate(), to check how stops are read."""

    device = torch.device("cpu")

    def __init__(self, new_rows):
        self.new_rows = new_rows

    def __call__(self, input_ids, **kwargs):  # the shared-prefix prefill (model/decode.py)
        return SimpleNamespace(past_key_values=SimpleNamespace(batch_repeat_interleave=lambda n: None))

    def generate(self, input_ids, **kwargs):
        return SimpleNamespace(sequences=torch.cat([input_ids, torch.tensor(self.new_rows)], dim=1), past_key_values=None)


def test_stopped_means_an_end_of_turn_token_was_generated(tokenizer):
    from chattune.data.templates import stop_token_ids

    stops = stop_token_ids(tokenizer)
    eos, word = tokenizer.eos_token_id, tokenizer.encode("ok", add_special_tokens=False)[0]
    pad = tokenizer.pad_token_id
    model = _ScriptedModel([[word, eos, pad, pad], [word, word, word, word]])
    prompts = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    out = generate_batch(model, tokenizer, prompts, stops, max_new_tokens=4)
    assert [g.stopped for g in out] == [True, False]
    assert out[0].text == "ok" and out[1].text == "okokokok"


def test_special_token_text_in_a_prompt_stays_text(tokenizer):
    """predict/eval: a user typing <|im_end|> gets plain-text ids, as in chat and serve."""
    from chattune.data.templates import stop_token_ids

    stops, eos = stop_token_ids(tokenizer), tokenizer.convert_tokens_to_ids("<|im_end|>")
    seen = []

    class Capturing(_ScriptedModel):
        def generate(self, input_ids, **kwargs):
            seen.append(input_ids[0].tolist())
            return super().generate(input_ids, **kwargs)

    for content in ("say hi", "say <|im_end|> hi"):
        generate_batch(Capturing([[eos]]), tokenizer, [[{"role": "user", "content": content}]], stops, 1)
    plain, typed = seen
    assert typed.count(eos) == plain.count(eos) > 0, "only the template's own end-of-turn tokens are control ids"
    assert len(typed) > len(plain)


def test_best_tracker_direction():
    lower = BestTracker(higher_is_better=False)
    assert [lower.update(s, v) for s, v in [(1, 2.0), (2, 1.5), (3, 1.7)]] == [True, True, False]
    assert (lower.best, lower.best_step, lower.since_best) == (1.5, 2, 1)
    higher = BestTracker(higher_is_better=True)
    assert [higher.update(s, v) for s, v in [(1, 0.2), (2, 0.1), (3, 0.2), (4, 0.3)]] == [True, False, False, True]


def test_loss_metric_reads_the_trainers_eval_loss(tokenizer):
    loop = EvalLoop("loss", tokenizer, [], set())
    assert loop.measure(None, 3, {"eval_loss": 1.25}) == 1.25


@pytest.mark.parametrize(("metric", "values"), [
    ("accuracy", [0.2, 0.5, 0.4, 0.5, 0.9, 1.0]),  # higher is better; 0.5 again is no improvement
    ("loss", [2.0, 1.0, 1.5, 1.2, 0.5, 0.4]),  # lower is better
])
def test_early_stopping_and_best_adapter(tiny_model_dir, tmp_path, monkeypatch, metric, values):
    """Best at step 2, then two evaluations without improvement: stop at step 4 of 8 and keep step 2."""
    from safetensors.torch import load_file

    from chattune.training.trainer import train

    snapshots = {}

    def scripted(self, model, step, metrics, args=None):
        snapshots[step] = snapshot_adapter(model)
        return values[step - 1]

    monkeypatch.setattr(EvalLoop, "measure", scripted)
    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'run'}", "data.size=12", "data.eval_ratio=0.25",
        "train.max_steps=8", "train.batch_size=2", "train.grad_accum=1", "train.lr=5e-2", "train.precision=fp32",
        "lora.dropout=0.0", "train.eval_every=1", f"train.metric={metric}", "train.patience=2",
    ])
    outcome = train(cfg)
    best = outcome.summary["in_training_eval"]
    assert outcome.summary["steps"] == 4, "early stopping must stop the run"
    assert (best["best_step"], best["stopped_early_at"], best["evaluations"]) == (2, 4, 4)
    assert best["best"] == values[1]
    saved_best = load_file(str(outcome.run_dir / "adapter" / "adapter_model.safetensors"))
    saved_last = load_file(str(outcome.run_dir / "last_adapter" / "adapter_model.safetensors"))
    assert set(saved_best) == set(snapshots[2])
    assert all(torch.equal(saved_best[k], snapshots[2][k]) for k in saved_best)
    assert all(torch.equal(saved_last[k], snapshots[4][k]) for k in saved_last)
    assert any(not torch.equal(snapshots[2][k], snapshots[4][k]) for k in saved_best), "weights must have moved"
    in_memory = snapshot_adapter(outcome.model)
    assert all(torch.equal(in_memory[k], snapshots[2][k]) for k in in_memory), "the returned model is the best one"
    records = [json.loads(line) for line in (outcome.run_dir / "metrics.jsonl").read_text().splitlines()]
    key = "eval_loss" if metric == "loss" else f"eval_{metric}"
    assert [r["step"] for r in records if key in r] == [1, 2, 3, 4]
    if metric != "loss":
        assert [r[key] for r in records if key in r] == values[:4]


def test_eval_loop_needs_eval_data(tiny_model_dir, tmp_path):
    from chattune.config import ConfigError
    from chattune.training.trainer import train

    cfg = load_config(None, [f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'r'}", "train.metric=accuracy"])
    with pytest.raises(ConfigError, match="data.eval_ratio"):
        train(cfg)


def test_builtin_topic_classify_is_deterministic_and_disjoint(tmp_path):
    from chattune.data.builtin_classify import LABELS, topic_conversations, topic_rows, write_files
    from chattune.data.dataset import load_source

    train_rows, test_rows = topic_rows("train"), topic_rows("test")
    assert (len(train_rows), len(test_rows)) == (350, 100)
    assert topic_rows("train") == train_rows
    assert not {r["instruction"] for r in train_rows} & {r["instruction"] for r in test_rows}
    assert {r["output"] for r in test_rows} == set(LABELS)
    cfg = load_config(None, ["data.path=builtin:topic-classify"])
    convs = load_source(cfg.data, cfg.data.path, seed=123)  # the run seed does not move the split
    assert [c.messages for c in convs] == [c.messages for c in topic_conversations()]
    assert convs[0].messages[-1]["content"] in LABELS
    train_file, train_task, test_file, test_task = write_files(tmp_path)
    assert len(test_file.read_text().splitlines()) == 100 and train_file.is_file() and train_task.is_file()
    from chattune.data.builtin_classify import INSTRUCTION
    from chattune.data.formats import RowSpec, row_to_messages

    spec = RowSpec(prompt=INSTRUCTION.replace("{labels}", "{category}"), response="output")
    raw = [json.loads(line) for line in test_task.read_text().splitlines()]
    assert set(raw[0]) == {"text", "category", "output"}  # seed 002's columns
    as_task = [row_to_messages(r, "t", spec)[0] for r in raw]
    assert [m[-2:] for m in as_task] == [[{"role": "user", "content": r["instruction"]},
                                          {"role": "assistant", "content": r["output"]}] for r in test_rows]


TASK_ROWS = [  # seed 002's raw task file: text, options, label; no instruction field
    {"text": "The striker scored twice.", "category": "sports, finance", "output": "sports"},
    {"text": "Stocks fell sharply.", "category": "sports, finance", "output": "finance"},
]
TASK_SETTINGS = ["data.prompt=Text: {text}. Options: {category}", "data.response=output",
                 "data.system=Reply with the category only."]


def test_base_model_and_run_read_one_raw_task_file_the_same_way(tiny_model_dir, write_jsonl, tmp_path):
    """Seed 002's before/after: --set for a plain model, or --like RUN_DIR, gives the run's own prompts."""
    from chattune.config import ConfigError
    from chattune.data.formats import DataError
    from chattune.training.trainer import train

    data = write_jsonl(TASK_ROWS, "task.jsonl")
    run_dir = train(load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'run'}", f"data.path={data}", *TASK_SETTINGS,
        "train.max_steps=1", "train.batch_size=2", "train.precision=fp32",
    ])).run_dir
    with pytest.raises(DataError, match="task.jsonl:1"):  # a plain model reads rows as they are
        run_eval(str(tiny_model_dir), data, ["exact"], max_new_tokens=2, out=tmp_path / "plain")
    with pytest.raises(ConfigError, match="only data"):
        run_eval(str(tiny_model_dir), data, ["exact"], settings=["train.lr=1"], out=tmp_path / "bad")
    runs = {
        "run": run_eval(str(run_dir), data, ["exact"], max_new_tokens=2, out=tmp_path / "e-run"),
        "set": run_eval(str(tiny_model_dir), data, ["exact"], max_new_tokens=2, out=tmp_path / "e-set",
                        settings=TASK_SETTINGS),
        "like": run_eval(str(tiny_model_dir), data, ["exact"], max_new_tokens=2, out=tmp_path / "e-like",
                         like=str(run_dir)),
    }
    prompts = {name: [r["prompt"] for r in result.rows] for name, result in runs.items()}
    assert prompts["run"] == prompts["set"] == prompts["like"] == [
        "Text: The striker scored twice.. Options: sports, finance", "Text: Stocks fell sharply.. Options: sports, finance"]
    assert all([r["reference"] for r in result.rows] == ["sports", "finance"] for result in runs.values())


def test_eval_loss_scores_the_tokens_training_trained_on(tiny_model_dir, write_jsonl, tmp_path):
    """The loss goes through data.prepare: the run's template, mask and max_length, so a long row is
    truncated as in training (and counted), and eval scores exactly the trained tokens of data_stats.json."""
    from chattune.data.prompts import load_eval_rows
    from chattune.data.templates import stop_token_ids, with_system
    from chattune.infer.chat import ChatModel
    from chattune.rundir import open_run_dir
    from chattune.training.trainer import train

    long_answer = " ".join(f"word{i}" for i in range(120))
    rows = [*ROWS[:2], {"instruction": "Say many words.", "output": long_answer}]
    data = write_jsonl(rows, "long.jsonl")
    run_dir = train(load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'run'}", f"data.path={data}", "data.max_length=64",
        "data.system=Be brief.", "train.max_steps=1", "train.batch_size=3", "train.precision=fp32",
    ])).run_dir
    trained = open_run_dir(run_dir).data_stats()["train"]
    result = run_eval(str(run_dir), data, ["loss"], out=tmp_path / "ev")
    assert result.summary["loss_examples"]["truncated"] == trained["truncated"] == 1
    assert result.summary["trained_tokens"] == trained["trained_tokens"]
    chat = ChatModel.load(str(run_dir))  # the old path, whole conversations, counts the cut-off answer too
    convs = [with_system([*r.prompt, {"role": "assistant", "content": r.reference}], chat.system)
             for r in load_eval_rows(data, row_spec_for(str(run_dir)), True)]
    whole = heldout_loss(chat.model, chat.tokenizer, convs, stop_token_ids(chat.tokenizer))
    assert whole["trained_tokens"] > result.summary["trained_tokens"]
