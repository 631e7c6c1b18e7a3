"""A disk that fills during a run (issue 21): one located error with the fix, exit code 2, nothing
half-written, and after space is freed `--resume auto` finishes the run as if nothing had happened.

ENOSPC is raised where a full disk raises it: inside peft's model-card write (huggingface_hub's
RepoCard.save) of a checkpoint and of the final adapter, and in the middle of a metrics.jsonl
append (half the line on disk, as a real short write leaves it). The run is the `straight`
reference's (6 steps, a checkpoint every 2), so the resumed run must equal it.
"""

from __future__ import annotations

import errno
import os
import pathlib
from pathlib import Path

import pytest
import torch

import chattune.io as fileio
from chattune import rundir
from chattune.cli import main
from chattune.training.checkpoints import STAGING_ROOT
from resume_helpers import TINY, logged_losses, saved_adapter


def _argv(tiny_model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", f"model.name={tiny_model_dir}", f"run_dir={run_dir}", *TINY, "train.max_steps=6",
            "train.save_every=2", *extra]


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _fill_at_card(monkeypatch, where) -> list[Path]:
    """peft's README.md write raises ENOSPC once, the first time where(path) holds; returns the paths hit."""
    from huggingface_hub.repocard import RepoCard

    original, hit = RepoCard.save, []

    def save(self, filepath):
        if not hit and where(Path(filepath)):
            hit.append(Path(filepath))
            raise _enospc(filepath)
        return original(self, filepath)

    monkeypatch.setattr(RepoCard, "save", save)
    return hit


def _one_located_error(capsys, path: Path) -> str:
    """The failed command's stderr: one error naming `path` and the fix, no traceback."""
    err = capsys.readouterr().err
    flat = "".join(err.split())  # rich wraps long lines at the console width
    assert err.count("error:") == 1 and "Traceback" not in err, err[-2000:]
    assert f"error:{path}:nospaceleftondevice" in flat, err[-2000:]
    assert "freesomespaceonthatdisk,thenrunthesamecommandwith--resumeauto" in flat
    return err


def _assert_equals_straight(straight: Path, run_dir: Path) -> None:
    want, got = saved_adapter(straight), saved_adapter(run_dir)
    assert want.keys() == got.keys() and want
    for name in want:  # the same fp32 ops on the same data: equal up to a few ulps of the tensor's scale
        tolerance = 4 * torch.finfo(torch.float32).eps * want[name].abs().max().item()
        assert (want[name] - got[name]).abs().max().item() <= tolerance, name
    assert list(logged_losses(run_dir)) == [1, 2, 3, 4, 5, 6]
    assert logged_losses(run_dir) == pytest.approx(logged_losses(straight), rel=4 * torch.finfo(torch.float32).eps)
    assert fileio.checksum_problems(run_dir / rundir.ADAPTER) == []


def _hidden(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob(".*"))


def test_disk_full_in_a_checkpoint_write(straight, tiny_model_dir, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    hit = _fill_at_card(monkeypatch, lambda path: path.parent.name == "checkpoint-4")
    assert main(_argv(tiny_model_dir, run_dir)) == 2
    assert hit and hit[0].parent.parent.name == STAGING_ROOT  # written while staged, not under the final name
    _one_located_error(capsys, run_dir / "checkpoints" / "checkpoint-4")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-2"], "staging removed"
    assert fileio.checksum_problems(run_dir / "checkpoints" / "checkpoint-2") == []
    assert not (run_dir / rundir.ADAPTER).exists() and not (run_dir / rundir.SUMMARY).exists()
    assert not _hidden(run_dir)
    monkeypatch.undo()  # space freed
    assert main(_argv(tiny_model_dir, run_dir, "--resume", "auto")) == 0
    _assert_equals_straight(straight, run_dir)


def test_disk_full_in_the_final_adapter_write(straight, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The issue's case: ENOSPC from peft's model-card write while saving the run dir's adapter."""
    run_dir = tmp_path / "run"
    hit = _fill_at_card(monkeypatch, lambda path: path.parent.parent == run_dir)  # run_dir/.adapter.XXXX/README.md
    assert main(_argv(tiny_model_dir, run_dir)) == 2
    assert hit and hit[0].parent.name.startswith(f".{rundir.ADAPTER}.")
    _one_located_error(capsys, run_dir / rundir.ADAPTER)
    assert not (run_dir / rundir.ADAPTER).exists() and not (run_dir / rundir.SUMMARY).exists()
    assert not _hidden(run_dir), "the adapter's temporary folder is removed"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]
    monkeypatch.undo()
    assert main(_argv(tiny_model_dir, run_dir, "--resume", "auto")) == 0
    assert "resumingfrom" in "".join(capsys.readouterr().err.split())
    _assert_equals_straight(straight, run_dir)


def test_disk_full_in_the_middle_of_a_metrics_line(straight, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A short write: half of step 3's line reaches metrics.jsonl, then ENOSPC. The cut line is removed."""
    run_dir = tmp_path / "run"
    original_open, appends = pathlib.Path.open, []

    class HalfWritten:
        def __init__(self, handle, path):
            self.handle, self.path = handle, path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            self.handle.write(text[: len(text) // 2])
            self.handle.flush()
            raise _enospc(self.path)

    def open_(self, mode="r", *args, **kwargs):
        handle = original_open(self, mode, *args, **kwargs)
        if self.name == rundir.METRICS and mode == "a":
            appends.append(self)
            if len(appends) == 3:
                return HalfWritten(handle, self)
        return handle

    monkeypatch.setattr(pathlib.Path, "open", open_)
    assert main(_argv(tiny_model_dir, run_dir)) == 2
    monkeypatch.undo()
    _one_located_error(capsys, run_dir)
    text = (run_dir / rundir.METRICS).read_text()
    assert text.endswith("\n") and [r["step"] for r in rundir.RunDir(run_dir).metrics()] == [1, 2], "cut line gone"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-2"]
    assert not _hidden(run_dir)
    assert main(_argv(tiny_model_dir, run_dir, "--resume", "auto")) == 0
    _assert_equals_straight(straight, run_dir)


class _Usage:
    def __init__(self, free):
        self.total, self.used, self.free = 1 << 30, (1 << 30) - free, free


def test_what_counts_as_a_full_disk(tmp_path, monkeypatch):
    """The errno, the text libraries re-raise it as (messages measured on a full tmpfs), and torch's
    errno-less zip-writer failure only when the disk is nearly full indeed."""
    from safetensors import SafetensorError

    assert fileio.is_disk_full(_enospc(tmp_path / "x"))
    assert fileio.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert fileio.is_disk_full(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    try:
        try:
            raise _enospc(tmp_path / "x")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert fileio.is_disk_full(outer), "found down the exception chain"
    torch_failed = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert not fileio.is_disk_full(torch_failed, tmp_path), "plenty of space here: torch failed for another reason"
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda path: _Usage(free=4096))
    assert fileio.is_disk_full(torch_failed, tmp_path / "missing" / "optimizer.pt")
    assert not fileio.is_disk_full(PermissionError(errno.EACCES, "Permission denied"), tmp_path)


def test_a_full_disk_in_a_plain_atomic_write_names_the_file(tmp_path, monkeypatch):
    """Outside training (export, eval, predict write through the same helpers): the file, the plain fix,
    and no temporary left."""
    def full(fd, *args, **kwargs):
        os.close(fd)
        raise _enospc(tmp_path)

    monkeypatch.setattr(fileio.os, "fdopen", full)
    with pytest.raises(fileio.DiskFull) as err:
        fileio.write_json_atomic(tmp_path / "summary.json", {"a": 1})
    assert str(err.value).startswith(f"{tmp_path / 'summary.json'}: no space left on device")
    assert "free some space on that disk or choose another output folder" in str(err.value)
    assert list(tmp_path.iterdir()) == []
