"""Issue 37 items 3 and 5: a checkpoint missing its checksums is damaged (unless it predates them), and
resume is keyed on the training data's content, not its token total (tiny random Llama)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from chattune import rundir
from chattune.io import CHECKSUMS
from chattune.training import checkpoints as ck
from resume_helpers import TINY, logged_losses, resume_cfg

ROWS = [{"instruction": f"question {i}", "output": f"answer number {i}"} for i in range(8)]
DATA_ARGS = ["train.max_steps=1", "train.save_every=1"]


def _unfinished_copy(straight: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    for name in (rundir.SUMMARY, rundir.LOSS_PLOT):
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / rundir.ADAPTER)
    return run_dir


def _garble_header(checkpoint: Path) -> None:
    """Reproduction 3: the adapter's safetensors header garbled, and the checksum file deleted."""
    weights = checkpoint / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:24] = b"\x00garbled header!"
    weights.write_bytes(bytes(data))
    (checkpoint / CHECKSUMS).unlink()


def test_missing_checksums_mean_damaged_unless_the_checkpoint_predates_them(tmp_path):
    old, new = tmp_path / "checkpoint-1", tmp_path / "checkpoint-2"
    for path, state in ((old, {"step": 1}), (new, {"format": ck.FORMAT, "step": 2})):
        path.mkdir()
        (path / "trainer_state.json").write_text("{}")
        (path / ck.STATE).write_text(json.dumps(state))
    assert ck.damage(old) == []  # written before chattune kept checksums: trusted
    assert ck.damage(new) == [f"{new / CHECKSUMS}: missing (the checkpoint was written with checksums)"]
    assert ck.latest_intact_checkpoint(tmp_path) == (old, {new: ck.damage(new)})


def test_garbled_header_and_deleted_checksums_falls_back_with_one_line(straight, tiny_model_dir, tmp_path, capsys):
    """Reproduction 3: resumed from checkpoint-4, said once in one console line; none intact: refused."""
    from chattune.training.resume import ResumeError
    from chattune.training.trainer import train

    run_dir = _unfinished_copy(straight, tmp_path)
    root = run_dir / "checkpoints"
    state = json.loads((root / "checkpoint-6" / ck.STATE).read_text())
    assert state["format"] == ck.FORMAT and (root / "checkpoint-6" / CHECKSUMS).is_file()
    _garble_header(root / "checkpoint-6")
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        outcome = train(resume_cfg(tiny_model_dir, run_dir, "train.max_steps=6", "train.save_every=2"),
                        resume="auto")
    out = capsys.readouterr()
    notices = [line for line in (out.out + out.err).splitlines() if "damaged" in line]
    assert len(notices) == 1, notices
    assert not [w for w in seen if "damaged" in str(w.message)], "a console line, not a Python warning"
    assert "checkpoint-6" in notices[0] and "resuming from checkpoint-4" in notices[0]
    assert outcome.summary["steps"] == 6 and sorted(logged_losses(run_dir)) == [1, 2, 3, 4, 5, 6]
    (run_dir / rundir.SUMMARY).unlink()
    for checkpoint in root.iterdir():
        _garble_header(checkpoint)
    with pytest.raises(ResumeError, match=r"every checkpoint is damaged \(checkpoint-6: .*missing.*checkpoint-4: "):
        train(resume_cfg(tiny_model_dir, run_dir, "train.max_steps=6", "train.save_every=2"), resume="auto")


def _first_run(tiny_model_dir, tmp_path, write_jsonl) -> tuple[Path, list[str]]:
    from chattune.training.trainer import train

    data = write_jsonl(ROWS)
    run_dir = tmp_path / "run"
    args = [f"data.path={data}", *DATA_ARGS]
    train(resume_cfg(tiny_model_dir, run_dir, *args))
    return run_dir, args


def _train_tokens(tiny_model_dir, run_dir, args) -> dict:
    from chattune.data.prepare import prepare
    from chattune.model.load import load_tokenizer

    cfg = resume_cfg(tiny_model_dir, run_dir, *args)
    stats = prepare(cfg.data, load_tokenizer(cfg.model), cfg.seed).stats["train"]
    return {k: stats[k] for k in ("examples", "tokens", "trained_tokens")}


def test_edited_rows_with_the_same_token_total_are_refused(tiny_model_dir, tmp_path, write_jsonl):
    from chattune.training.resume import ResumeError
    from chattune.training.trainer import train

    run_dir, args = _first_run(tiny_model_dir, tmp_path, write_jsonl)
    before = _train_tokens(tiny_model_dir, run_dir, args)
    write_jsonl([*ROWS[:-1], {"instruction": "question 7", "output": "answer number 3"}])
    assert _train_tokens(tiny_model_dir, run_dir, args) == before, "the loophole: counts alone see no change"
    with pytest.raises(ResumeError, match=r"training data changed .*1 row edited.*data\.jsonl:8"):
        train(resume_cfg(tiny_model_dir, run_dir, *args, "train.max_steps=2"), resume="auto")


def test_reordered_rows_are_refused_naming_the_order(tiny_model_dir, tmp_path, write_jsonl):
    from chattune.training.resume import ResumeError
    from chattune.training.trainer import train

    run_dir, args = _first_run(tiny_model_dir, tmp_path, write_jsonl)
    write_jsonl(list(reversed(ROWS)))
    with pytest.raises(ResumeError, match=r"the same 8 examples in another order"):
        train(resume_cfg(tiny_model_dir, run_dir, *args, "train.max_steps=2"), resume="auto")


def test_allow_data_change_resumes_and_records_it(tiny_model_dir, tmp_path, write_jsonl, capsys):
    from chattune.cli import main

    run_dir, args = _first_run(tiny_model_dir, tmp_path, write_jsonl)
    write_jsonl([*ROWS, {"instruction": "question 8", "output": "answer number 8"}])
    argv = ["train", f"model.name={tiny_model_dir}", f"run_dir={run_dir}", *TINY, *args, "train.max_steps=2"]
    assert main([*argv, "--allow-data-change"]) == 2  # without --resume: refused
    assert "give it with --resume" in capsys.readouterr().err.replace("\n", " ")
    assert main([*argv, "--resume", "auto", "--allow-data-change"]) == 0
    said = capsys.readouterr()
    assert "--allow-data-change: continuing checkpoint-1 on changed data (1 row added" in said.out + said.err
    summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    assert summary["steps"] == 2
    assert summary["data_changes"] == [{"step": 1, "change": summary["data_changes"][0]["change"]}]
    assert "1 row added" in summary["data_changes"][0]["change"]
    state = json.loads((run_dir / "checkpoints" / "checkpoint-2" / ck.STATE).read_text())
    assert state["data_changes"] == summary["data_changes"] and state["data_fingerprint"]["examples"] == 9
