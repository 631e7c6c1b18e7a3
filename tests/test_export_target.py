"""Where an export may write (issue 37 item 2): never into a run dir or a base model, checked first.

Reproductions 1, 5 and 6 of issue 37: `--out RUN --force` replaced the run dir with the merged
model; `--out FILE` ended in a NotADirectoryError traceback; an unwritable `--out` failed with a
PermissionError traceback after the whole fidelity gate. Each is now one line, exit 2, before the
gate (the gate's first step is patched to fail the test if it runs). An export killed mid-write
leaves a temporary folder that the next export to the same place removes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from chattune import faults, rundir, runlock
from chattune.cli import main
from chattune.exporting import target


@pytest.fixture
def no_gate(monkeypatch):
    """The export's first real work (the shard plan, the run's load) fails the test if reached."""
    from chattune.exporting import pipeline

    def reached(*args, **kwargs):
        raise AssertionError("the export began its work before --out was checked")

    monkeypatch.setattr(pipeline, "shard_plan", reached)
    monkeypatch.setattr(pipeline, "load_run", reached)


def _refused(argv: list[str], capsys) -> str:
    """Run the CLI; it must exit 2 with one error line and no traceback. Returns that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ")
    return lines[0]


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_out_equal_to_or_inside_the_run_dir_is_refused_even_with_force(tiny_run, capsys, no_gate):
    before = _snapshot(tiny_run)
    assert before and f"{rundir.ADAPTER}/adapter_model.safetensors" in before
    for out in (tiny_run, tiny_run / "merged", tiny_run / rundir.EVAL_DIR / "x", tiny_run / ".."/ tiny_run.name):
        line = _refused(["export", str(tiny_run), "--out", str(out), "--force"], capsys)
        assert f"inside the run dir {tiny_run.resolve()}" in line
    assert _snapshot(tiny_run) == before, "the run dir is exactly as it was"


def test_out_inside_another_run_dir_even_one_still_training_is_refused(tiny_run, tmp_path, capsys, no_gate):
    training = tmp_path / "other-run"
    (training / rundir.CHECKPOINTS).mkdir(parents=True)  # no adapter/ yet: a run in progress
    line = _refused(["export", str(tiny_run), "--out", str(training / "out"), "--force"], capsys)
    assert f"inside the run dir {training.resolve()}" in line


def test_out_in_or_over_the_base_model_or_the_run_is_refused(tiny_run, varied_tiny_model_dir, capsys,
                                                              no_gate):
    base = varied_tiny_model_dir.resolve()
    for out in (base, base / "merged"):
        line = _refused(["export", str(tiny_run), "--out", str(out), "--force"], capsys)
        assert f"inside the base model's folder {base}" in line
    line = _refused(["export", str(tiny_run), "--out", str(tiny_run.parent), "--force"], capsys)
    assert f"holds the run dir {tiny_run.resolve()}, which the export would replace" in line
    assert (base / "config.json").is_file() and rundir.is_run_dir(tiny_run)


def test_force_replaces_only_an_earlier_export(tiny_run, tmp_path, capsys, no_gate):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    line = _refused(["export", str(tiny_run), "--out", str(mine), "--force"], capsys)
    assert "not a chattune export (no export_report.json); --force replaces only an earlier export" in line
    assert (mine / "notes.txt").read_text() == "keep me"


def test_reproduction_5_out_is_an_existing_file(tiny_run, tmp_path, capsys, no_gate):
    taken = tmp_path / "model.bin"
    taken.write_text("not a folder")
    line = _refused(["export", str(tiny_run), "--out", str(taken)], capsys)
    assert line == f"error: --out {taken}: is a file, not a folder; an export writes a folder"
    line = _refused(["export", str(tiny_run), "--out", str(taken / "sub")], capsys)
    assert f"--out {taken / 'sub'}: {taken} is a file, not a folder" in line
    assert taken.read_text() == "not a folder"


def test_reproduction_6_an_unwritable_place_is_refused_before_the_gate(tiny_run, capsys, no_gate):
    """/proc takes no new entries, also for root (root writes through chmod, so a read-only folder
    is tested below as user nobody)."""
    out = Path("/proc/chattune-export-test/out")
    if not Path("/proc").is_dir():
        pytest.skip("no /proc on this system")
    line = _refused(["export", str(tiny_run), "--out", str(out)], capsys)
    assert line.startswith(f"error: --out {out}: cannot write in /proc (")


def test_reproduction_6_a_read_only_parent_folder(tmp_path):
    from test_bad_env import _as_unprivileged

    parent = Path(tempfile.mkdtemp())  # under /tmp, so user nobody can reach it
    try:
        os.chmod(parent, 0o555)
        out = parent / "out"
        result = _as_unprivileged(lambda: target._check_writable(out, parent))
        assert result == (f"ExportTargetError: --out {out}: cannot write in {parent} (Permission denied); "
                          "choose another folder")
        assert list(parent.iterdir()) == []
    finally:
        os.chmod(parent, 0o755)
        shutil.rmtree(parent)


def test_an_interrupted_exports_temporary_folder_is_removed_by_the_next_export(tiny_run, tmp_path):
    exports = tmp_path / "exports"
    out = exports / "merged"
    env = {**os.environ, faults.ENV: f"{faults.WRITTEN}:{out.name}"}  # killed with the folder complete
    killed = subprocess.run([sys.executable, "-m", "chattune", "export", str(tiny_run), "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    left = sorted(p.name for p in exports.iterdir())
    assert not out.exists() and any(name.startswith(f".{out.name}.") for name in left), left
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    assert sorted(p.name for p in exports.iterdir()) == [out.name], "temporaries and the lock are gone"
    assert (out / "export_report.json").is_file()


def test_a_second_export_to_the_same_place_is_refused(tiny_run, tmp_path, capsys, no_gate):
    out = tmp_path / "merged"
    with runlock.lock_file(tmp_path / f".{out.name}-export.lock", out):  # as a running export holds it
        line = _refused(["export", str(tiny_run), "--out", str(out)], capsys)
    assert f"{out}: another chattune process is writing here (pid {os.getpid()}: " in line
