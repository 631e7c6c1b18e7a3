"""SwanLab without an account or network: files in the run dir, the expected keys logged."""

import json
import socket

import pytest

from chattune.config import ConfigError, load_config
from chattune.training import tracking
from chattune.training.tracking import SwanLabTracker, swanlab_mode


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)


def _run_folder(log_dir):
    runs = [p for p in log_dir.iterdir() if p.is_dir() and p.name.startswith("run-")]
    assert len(runs) == 1, list(log_dir.iterdir())
    return runs[0]


@pytest.mark.parametrize("mode", ["offline", "local"])
def test_swanlab_tracker_writes_its_files_without_network(tmp_path, no_network, mode):
    tracker = SwanLabTracker(tmp_path, "chattune-test", mode, "t1")
    tracker.start({"train": {"lr": 0.001}, "name": "t1"})
    tracker.log({"step": 1, "epoch": 0.5, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.7, "tokens_per_s": 100.0,
                 "trained_tokens": 40, "tokens_seen": 90})
    tracker.log({"step": 2, "epoch": 1.0, "eval_loss": 2.0, "eval_accuracy": 0.5})
    tracker.log_predictions(2, [{"prompt": "Q", "reference": "sports", "prediction": "finance"}])
    tracker.finish()
    run = _run_folder(tmp_path / tracking.SWANLOG)
    assert tracker.logged_keys == {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
                                   "train/trained_tokens", "train/tokens", "eval/loss", "eval/accuracy",
                                   "eval/predictions"}
    config_text = (run / "files" / "config.yaml").read_text()
    assert "lr" in config_text and "0.001" in config_text
    texts = list((run / "media" / "text").glob("*.txt"))
    assert len(texts) == 1 and "prediction: finance" in texts[0].read_text()
    record_file = next(run.glob("*.swanlab")).read_bytes()
    for key in (b"train/loss", b"train/trained_tokens", b"eval/accuracy"):
        assert key in record_file
    if mode == "local":  # the dashboard's store (swanlab watch RUN_DIR/swanlog)
        assert (tmp_path / tracking.SWANLOG / "runs.swanlab").is_file()
        summaries = [json.loads(p.read_text()) for p in (run / "logs").glob("*/_summary.json")]
        assert any(s.get("max") == 2.5 for s in summaries)


def test_swanlab_mode_resolution(monkeypatch):
    monkeypatch.setenv("SWANLAB_API_KEY", "k")
    assert swanlab_mode("auto") == "cloud"
    assert swanlab_mode("offline") == "offline"
    monkeypatch.delenv("SWANLAB_API_KEY")
    assert swanlab_mode("auto") in ("local", "offline")
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    assert swanlab_mode("auto") == "offline"


def test_tracker_names_and_missing_package(monkeypatch):
    assert tracking.tracker_names("none") == []
    assert tracking.tracker_names(["swanlab", "none", "swanlab", "tensorboard"]) == ["swanlab", "tensorboard"]
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(tracking.TrackingError, match="tensorboard package is not installed"):
        tracking.check_available(["tensorboard"])


def test_config_accepts_tracker_list_and_rejects_unknown():
    cfg = load_config(None, ["train.tracking=[swanlab, tensorboard]"])
    assert cfg.train.tracking == ["swanlab", "tensorboard"]
    with pytest.raises(ConfigError, match="train.tracking"):
        load_config(None, ["train.tracking=wandb"])


def test_training_with_swanlab_logs_expected_keys(tiny_model_dir, tmp_path, no_network, monkeypatch):
    from chattune.training.trainer import train

    logged = []
    original_log = SwanLabTracker.log
    monkeypatch.setattr(SwanLabTracker, "log", lambda self, record: (logged.append(record), original_log(self, record)))
    seen = {}
    original_finish = SwanLabTracker.finish
    monkeypatch.setattr(SwanLabTracker, "finish",
                        lambda self, failed=False: (seen.setdefault("keys", set(self.logged_keys)),
                                                    original_finish(self, failed)))
    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'run'}", "data.size=12", "data.eval_ratio=0.25",
        "train.max_steps=2", "train.batch_size=2", "train.grad_accum=1", "train.precision=fp32",
        "train.tracking=swanlab", "train.swanlab_mode=offline", "train.eval_every=2", "train.metric=rouge",
        "train.eval_samples=2", "train.eval_max_new_tokens=4",
    ])
    outcome = train(cfg)
    keys = seen["keys"]
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/trained_tokens",
                "eval/loss", "eval/rouge", "eval/predictions"):
        assert key in keys, key
    run = _run_folder(outcome.run_dir / tracking.SWANLOG)
    assert "eval_every" in (run / "files" / "config.yaml").read_text()  # the resolved config
    # without or with a tracker, the run dir still has its own metrics and plot
    assert (outcome.run_dir / "metrics.jsonl").is_file() and (outcome.run_dir / "loss.png").is_file()
    assert [r["step"] for r in logged if "loss" in r] == [1, 2]


def test_training_with_tensorboard_writes_events(tiny_model_dir, tmp_path, no_network):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from chattune.training.trainer import train

    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'run'}", "data.size=8",
        "train.max_steps=2", "train.batch_size=2", "train.grad_accum=1", "train.precision=fp32",
        "train.tracking=tensorboard",
    ])
    outcome = train(cfg)
    log_dir = outcome.run_dir / "tensorboard"
    assert list(log_dir.glob("events.out.tfevents.*")), "an event file inside the run dir"
    events = EventAccumulator(str(log_dir))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2]
    assert all(e.value > 0 for e in losses)


def test_eval_of_a_swanlab_run_adds_its_predictions_table(tiny_model_dir, tmp_path, no_network):
    """Seed 002 logs its test-set predictions as a SwanLab table: `chattune eval` does it for the run."""
    from chattune.eval.runner import run_eval
    from chattune.training.trainer import train

    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'run'}", "data.size=8", "train.max_steps=1",
        "train.batch_size=2", "train.grad_accum=1", "train.precision=fp32", "train.tracking=swanlab",
        "train.swanlab_mode=offline",
    ])
    run_dir = train(cfg).run_dir
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n"
                                 for q, a in (("Who are you?", "Tuna"), ("Your name?", "Tuna"))))
    result = run_eval(str(run_dir), test_file, ["exact", "stop_rate"], max_new_tokens=4)
    runs = sorted(p for p in (run_dir / tracking.SWANLOG).iterdir() if p.is_dir() and p.name.startswith("run-"))
    assert len(runs) == 2, "the training run and the evaluation"
    texts = [t.read_text() for run in runs for t in (run / "media" / "text").glob("*.txt")]
    assert len(texts) == 2 and all("reference: Tuna" in t for t in texts)
    evaluated = [run for run in runs if any(b"eval/exact" in f.read_bytes() for f in run.glob("*.swanlab"))]
    assert len(evaluated) == 1, "the evaluation's metrics are logged once"
    assert str(test_file) in (evaluated[0] / "files" / "config.yaml").read_text()
    assert result.summary["metrics"]["exact"] == 0.0
