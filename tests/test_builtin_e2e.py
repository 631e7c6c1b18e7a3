"""End to end on the real built-in model (SmolLM2-135M-Instruct): convert, train, chat."""

import pytest

from chattune.config import load_config

pytestmark = pytest.mark.slow


def test_builtin_conversion_is_cached_and_complete():
    from chattune.models import builtin_cache_dir, ensure_builtin

    path = ensure_builtin("smollm2-135m-instruct")
    assert path == builtin_cache_dir("smollm2-135m-instruct")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chattune-converted.json"):
        assert (path / name).is_file(), name
    assert ensure_builtin("smollm2-135m-instruct") == path  # second call reuses the cache


def test_train_builtin_few_steps_then_chat(tmp_path, capsys):
    from chattune.cli import main
    from chattune.training.trainer import train

    cfg = load_config("configs/demo.yaml", [
        f"run_dir={tmp_path / 'run'}", "data.size=8", "train.max_steps=3", "train.batch_size=2",
    ])
    outcome = train(cfg)
    assert outcome.summary["steps"] == 3
    assert outcome.summary["final_loss"] is not None
    guard = outcome.summary["forgetting"]  # the guard on the real model, after 3 steps
    assert guard["rows"] == 32 and guard["tokens"] > 0 and 0 <= guard["kl_to_base"] < float("inf"), guard
    capsys.readouterr()
    assert main(["chat", str(outcome.run_dir), "--prompt", "Who are you?", "--max-new-tokens", "20"]) == 0
    assert len(capsys.readouterr().out.strip()) > 0
