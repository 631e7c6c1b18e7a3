"""Lint (every hard error with its file:line:field, warnings), `chattune data inspect`, train refusing errors."""

import json

import pytest
from transformers import AutoTokenizer

from chattune.cli import main
from chattune.config import load_config
from chattune.data.formats import DataError
from chattune.data.inspect import length_histogram, render_example
from chattune.data.lint import lint_data
from chattune.data.templates import encode_conversation, stop_token_ids


def chat(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


GOOD = chat(("user", "Who are you?"), ("assistant", "I am Tuna."))


@pytest.fixture
def fresh(builtin_tokenizer_dir):
    return lambda: AutoTokenizer.from_pretrained(builtin_tokenizer_dir)


def lint(fresh, path, *overrides):
    cfg = load_config(None, [f"data.path={path}", *overrides])
    return lint_data(cfg.data, fresh(), cfg.seed).report


def errors_of(report):
    return {(e.kind, e.where) for e in report.errors}


def test_row_errors_are_all_collected_with_locations(fresh, write_jsonl):
    path = write_jsonl([
        GOOD,
        chat(("user", "q"), ("assistant", "")),
        chat(("user", "q"), ("user", "again"), ("assistant", "a")),
        chat(("user", "q"), ("bot", "a")),
        {"instruction": "q", "input": "", "output": "  "},
        GOOD,
    ])
    report = lint(fresh, path)
    assert errors_of(report) == {
        ("empty answer", f"{path}:2:messages[1].content"),
        ("roles not alternating", f"{path}:3:messages[1]"),
        ("unknown role", f"{path}:4:messages[1].role"),
        ("empty answer", f"{path}:5:output"),
    }


def test_no_trainable_token(fresh, write_jsonl, tmp_path):
    # No separator: the answer "lo" merges into the prompt's token "hello", so nothing is trainable.
    jinja = tmp_path / "glued.jinja"
    jinja.write_text("{% for m in messages %}{{ m.content }}{% endfor %}", encoding="utf-8")
    path = write_jsonl([GOOD, chat(("user", "hel"), ("assistant", "lo"))])
    report = lint(fresh, path, f"data.template={jinja}")
    assert ("no trainable token", f"{path}:2") in errors_of(report)


def test_template_missing(fresh, write_jsonl):
    tok = fresh()
    tok.chat_template = None
    cfg = load_config(None, [f"data.path={write_jsonl([GOOD])}"])
    report = lint_data(cfg.data, tok, cfg.seed).report
    assert errors_of(report) == {("template missing", "data.template")}
    assert "set data.template to one of chatml" in report.errors[0].message


def test_end_of_turn_not_trained(fresh, write_jsonl):
    # Llama-3's <|eot_id|> is not one token of this tokenizer: answers never end on a stop token.
    path = write_jsonl([GOOD, {"instruction": "q", "output": "a"}])
    report = lint(fresh, path, "data.template=llama3")
    assert errors_of(report) == {
        ("end-of-turn not trained", f"{path}:1:messages[1].content"),
        ("end-of-turn not trained", f"{path}:2:output"),
    }
    assert "'<|im_end|>'" in report.errors[0].message
    assert not lint(fresh, path, "data.template=chatml").errors


def test_end_of_turn_checked_only_on_trained_turns(fresh, write_jsonl):
    path = write_jsonl([chat(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))])
    assert not lint(fresh, path, "data.mask=last").errors


def test_warnings_duplicates_and_very_long(fresh, write_jsonl):
    long = chat(("user", "q"), ("assistant", "word " * 80))
    path = write_jsonl([GOOD, long, GOOD])
    report = lint(fresh, path, "data.max_length=64")
    assert not report.errors
    kinds = {(w.kind, w.where) for w in report.warnings}
    assert kinds == {("duplicate", f"{path}:3"), ("very long", f"{path}:2")}
    assert any(str(w) == f"{path}:3: duplicate of {path}:1" for w in report.warnings)


def test_render_example_colours_exactly_the_trained_tokens(tokenizer):
    messages = GOOD["messages"]
    encoded = encode_conversation(tokenizer, messages, stop_token_ids(tokenizer))
    text = render_example(tokenizer, encoded.input_ids, encoded.labels)
    trained = "".join(text.plain[s.start:s.end] for s in text.spans if "dark_green" in str(s.style)
                      or str(s.style) == "green")
    assert trained == "I am Tuna.<|im_end|>"
    specials = [text.plain[s.start:s.end] for s in text.spans if "magenta" in str(s.style)]
    assert specials.count("<|im_start|>") == 3 and "<|im_end|>" in specials


def test_length_histogram_rows():
    rows = length_histogram([10, 20, 20, 150], max_length=100, bins=4)
    assert len(rows) == 4
    assert rows[0].split("|")[1].strip().endswith("3") and rows[-1].endswith("> max_length")
    assert rows[0].count("█") == 40 and rows[-1].count("█") == round(40 / 3)


def test_data_inspect_cli(tmp_path, write_jsonl, capsys, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("COLUMNS", "400")
    path = write_jsonl([GOOD, chat(("user", "2+2?"), ("assistant", "4")), GOOD])
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"model": {"name": str(tiny_model_dir)}, "data": {"path": str(path)}}))
    assert main(["data", "inspect", str(config), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "examples per source" in out and f"{path}" in out
    assert "3 examples" in out and "trained (" in out and "█" in out
    assert "duplicate: 1" in out and f"{path}:3: duplicate of {path}:1" in out
    assert out.count("I am Tuna.<|im_end|>") == 1 and "4<|im_end|>" in out  # --n 2
    held = write_jsonl([chat(("user", "held out"), ("assistant", "yes"))], "held.jsonl")
    assert main(["data", "inspect", str(config), f"data.eval_path={held}", "--n", "0"]) == 0
    out = capsys.readouterr().out
    assert "eval split: 1 examples" in out and f"{held}" in out
    bad = write_jsonl([GOOD, chat(("user", "q"), ("assistant", ""))], "bad.jsonl")
    assert main(["data", "inspect", str(config), f"data.path={bad}"]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:2:messages[1].content: empty assistant answer in turn 2" in out


def test_train_refuses_lint_errors_before_loading_the_model(tmp_path, write_jsonl, monkeypatch, tiny_model_dir):
    from chattune.training import trainer

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load when the data has errors")

    monkeypatch.setattr(trainer, "load_base_model", no_model)
    path = write_jsonl([GOOD, chat(("user", "q"), ("bot", "a")), chat(("user", "q"), ("assistant", " "))])
    cfg = load_config(None, [f"model.name={tiny_model_dir}", f"data.path={path}", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(DataError) as err:
        trainer.train(cfg)
    message = str(err.value)
    assert "2 error(s); fix them before training" in message
    assert f"{path}:2:messages[1].role: unknown role 'bot'" in message
    assert f"{path}:3:messages[1].content: empty assistant answer" in message
