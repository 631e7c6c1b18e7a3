"""Finished runs and damaged checkpoints under --resume (issue 21): a requeued finished run is a no-op,
a checkpoint at the last step saves without another step, checksums name and skip damaged files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import chattune.io as fileio
from chattune import rundir
from resume_helpers import logged_losses, resume_cfg, saved_adapter


def test_resuming_a_finished_mid_epoch_run_is_a_no_op(straight, tiny_model_dir, tmp_path, capsys):
    """max_steps=6 ends mid-epoch: a requeued job (the same command with --resume auto) trains nothing."""
    import shutil

    from chattune.training.trainer import train

    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    outcome = train(resume_cfg(tiny_model_dir, run_dir, "train.max_steps=6", "train.save_every=2"), resume="auto")
    assert "already finished" in capsys.readouterr().err
    assert outcome.summary["steps"] == 6 and outcome.model is None
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before, "nothing in the run dir changed"


def test_killed_after_the_last_checkpoint_resume_saves_without_training(straight, tiny_model_dir, tmp_path):
    """The last checkpoint (step 6) committed, then kill -9 before the final save: resume writes the run
    dir from it, taking no seventh step."""
    import shutil

    from chattune.training.trainer import train

    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    for name in (rundir.SUMMARY, rundir.LOSS_PLOT):
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / rundir.ADAPTER)
    outcome = train(resume_cfg(tiny_model_dir, run_dir, "train.max_steps=6", "train.save_every=2"), resume="auto")
    assert outcome.summary["steps"] == 6
    assert sorted(logged_losses(run_dir)) == [1, 2, 3, 4, 5, 6]
    straight_adapter, resumed = saved_adapter(straight), saved_adapter(run_dir)
    assert all(torch.equal(straight_adapter[k], resumed[k]) for k in straight_adapter)
    assert json.loads((run_dir / rundir.SUMMARY).read_text())["final_loss"] == logged_losses(straight)[6]


def _flip_byte(path: Path, offset_from_end: int = 16) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_newest_checkpoint_resumes_from_the_newest_intact_one(straight, tiny_model_dir,
                                                                                     tmp_path, capsys):
    """Issue 21: one flipped byte in checkpoint-6's weights was resumed silently; now it is named and skipped."""
    import shutil

    from chattune.training.resume import ResumeError
    from chattune.training.trainer import train

    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    for name in (rundir.SUMMARY, rundir.LOSS_PLOT):
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / rundir.ADAPTER)
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    _flip_byte(root / "checkpoint-6" / "adapter_model.safetensors")
    outcome = train(resume_cfg(tiny_model_dir, run_dir, "train.max_steps=6", "train.save_every=2"), resume="auto")
    assert re.search(r"skipped damaged checkpoint-6: .*adapter_model.safetensors: changed.*resuming from checkpoint-4",
                     capsys.readouterr().err.replace("\n", ""))
    assert outcome.summary["steps"] == 6 and sorted(logged_losses(run_dir)) == [1, 2, 3, 4, 5, 6]
    straight_adapter, resumed = saved_adapter(straight), saved_adapter(run_dir)
    assert all(torch.equal(straight_adapter[k], resumed[k]) for k in straight_adapter), "steps 5-6 redone exactly"
    for checkpoint in root.iterdir():  # both damaged now: refused, naming them
        _flip_byte(checkpoint / "adapter_model.safetensors", 32)
    (run_dir / rundir.SUMMARY).unlink()
    with pytest.raises(ResumeError, match=r"every checkpoint is damaged \(checkpoint-6: .*checkpoint-4: "):
        train(resume_cfg(tiny_model_dir, run_dir, "train.max_steps=6", "train.save_every=2"), resume="auto")


def test_a_damaged_final_adapter_is_refused_before_loading(straight, tmp_path):
    import shutil

    from chattune.infer.chat import ChatModel

    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    assert (run_dir / rundir.ADAPTER / fileio.CHECKSUMS).is_file()
    _flip_byte(run_dir / rundir.ADAPTER / "adapter_model.safetensors")
    with pytest.raises(rundir.RunDirError, match=r"the adapter is damaged .*adapter_model.safetensors: changed"):
        ChatModel.load(str(run_dir))
