"""The public Python API (chattune/api.py): in-memory data, override forms, re-runs, load/chat/predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import chattune
from chattune.config import ConfigError
from chattune.data.sources import DataError

ROWS = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer number {i}."} for i in range(8)]


def test_overrides_in_every_form_agree(tmp_path):
    forms = [
        chattune.resolve_config(None, {"lora.r": 4, "train.epochs": 2}),
        chattune.resolve_config(None, ["lora.r=4", "train.epochs=2"]),
        chattune.resolve_config(None, **{"lora.r": 4}, train__epochs=2),
        chattune.resolve_config({"lora": {"r": 4}}, train={"epochs": 2}),
    ]
    assert {(c.lora.r, c.train.epochs) for c in forms} == {(4, 2)}
    with pytest.raises(ConfigError, match="lora.rank"):
        chattune.resolve_config(None, {"lora.rank": 4})


def test_rows_in_memory_become_one_content_addressed_file(tmp_path, monkeypatch):
    pandas = pytest.importorskip("pandas")
    monkeypatch.setenv("CHATTUNE_HOME", str(tmp_path))
    from_list = chattune.resolve_config(None, data=ROWS).data.path
    from_frame = chattune.resolve_config(None, data=pandas.DataFrame(ROWS)).data.path
    assert from_list == from_frame and from_list.startswith(str(tmp_path))
    lines = Path(from_list).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == ROWS


def test_a_bad_row_in_memory_names_its_index(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATTUNE_HOME", str(tmp_path))
    with pytest.raises(DataError, match=r"data\[1\]"):
        chattune.resolve_config(None, data=[ROWS[0], "not a row"])
    with pytest.raises(DataError, match=r"data\[0\].*'when'"):
        chattune.resolve_config(None, data=[{**ROWS[0], "when": object()}])


def test_train_twice_then_load_chat_and_predict(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("CHATTUNE_HOME", str(tmp_path / "home"))
    settings = {"model.name": str(tiny_model_dir), "output_dir": str(tmp_path / "runs"), "name": "nb",
                "run_dir": str(tmp_path / "runs" / "nb"), "train.max_steps": 1, "train.batch_size": 2,
                "train.precision": "fp32"}
    first = chattune.train(data=ROWS, overrides=settings)
    second = chattune.train(data=ROWS, overrides=settings)  # a re-run cell: a new run dir, no FileExistsError
    assert first.path.name == "nb" and second.path.name == "nb-2"
    assert second.summary() and second.metrics() and second.loss_plot.is_file()
    assert second.config().data.path == first.config().data.path

    bot = chattune.load(second, device="cpu")
    history: list[dict] = []
    reply = bot.chat("Question 1?", history=history, max_new_tokens=4)
    streamed = "".join(bot.chat("Question 1?", max_new_tokens=4, stream=True))
    assert reply == streamed.strip()
    assert [m["role"] for m in history] == ["user", "assistant"] and history[1]["content"] == reply
    answers = bot.predict(["Question 1?", ROWS[2], [{"role": "user", "content": "Question 3?"}]], max_new_tokens=4)
    assert len(answers) == 3 and answers[0] == reply
