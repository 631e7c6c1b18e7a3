"""`chattune env` (chattune/env.py) and the tested versions (chattune/versions.py): every library
marked, a version outside the tested range marked and warned about once at import, the shipped
tested set equal to requirements.lock, the CLI (text and --json) and the web UI's /api/env."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import chattune
from chattune import env, versions

ROOT = Path(__file__).resolve().parent.parent
SRC = Path(chattune.__file__).resolve().parent.parent
MARK = re.compile(r"^(tested|not installed|differs \(tested: [^)]+\))$")
REAL_VERSION = importlib.metadata.version


def _fake_transformers(version: str):
    return lambda name: version if name == "transformers" else REAL_VERSION(name)


def _run_cli(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """`python -m chattune ARGS` (or `python -c CODE`) on this checkout's sources."""
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    environ = {**os.environ, "PYTHONPATH": path}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "chattune", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environ, timeout=300)


def test_the_report_names_every_library_with_a_mark():
    report = env.collect()
    rows = {row["name"]: row for row in report["libraries"]}
    assert tuple(rows) == env.LIBRARIES
    assert set(rows) == {"torch", "transformers", "peft", "trl", "datasets", "accelerate",
                         "bitsandbytes", "gguf", "swanlab", "llama-cpp-python"}
    for row in rows.values():
        assert MARK.match(row["mark"]), row
    assert rows["transformers"]["installed"] == REAL_VERSION("transformers")
    text = env.to_markdown(report)
    for name, row in rows.items():
        assert f"| {name} | {row['installed'] or '-'} | {row['mark']}" in text
    for part in ("- chattune: ", "- Python: ", "- platform: ", "- CPU: ", "- GPU: ",
                 "CHATTUNE_HOME", "HF hub cache", "pip cache", "builtin:smollm2-135m-instruct"):
        assert part in text


def test_marks_and_the_range_rule():
    assert versions.mark(None, "1.0.0") == "not installed"
    assert versions.mark("2.13.0+cu121", "2.13.0") == "tested"
    assert versions.mark("2.13.1", "2.13.0") == "differs (tested: 2.13.0)"
    assert versions.in_range("2.13.1+cpu", "2.13.0") and versions.in_range("5.23.0rc1", "5.23.0")
    assert not versions.in_range("2.14.0", "2.13.0") and not versions.in_range("1.13.0", "2.13.0")


def test_a_version_outside_the_range_is_marked_and_warned_about_once(monkeypatch):
    tested = versions.tested_versions()["transformers"]
    monkeypatch.setattr(importlib.metadata, "version", _fake_transformers("4.0.0"))
    row = next(row for row in env.libraries() if row["name"] == "transformers")
    assert row["mark"] == f"differs (tested: {tested})" and row["in_range"] is False
    assert "outside the tested range" in env.to_markdown(env.collect())

    monkeypatch.setattr(versions, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        versions.warn_untested()
        versions.warn_untested()
    assert len(caught) == 1 and caught[0].category is versions.UntestedVersionWarning
    message = str(caught[0].message)
    assert f"transformers 4.0.0 (tested: {tested})" in message and "\n" not in message


def test_inside_the_range_no_warning_and_a_broken_lookup_never_raises(monkeypatch):
    tested = versions.tested_versions()["transformers"]
    major, minor = tested.split(".")[:2]
    monkeypatch.setattr(importlib.metadata, "version", _fake_transformers(f"{major}.{minor}.99"))
    assert versions.out_of_range() == []

    def broken(name):
        raise RuntimeError("broken metadata")

    monkeypatch.setattr(importlib.metadata, "version", broken)
    monkeypatch.setattr(versions, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        versions.warn_untested()
    assert caught == []
    assert all(row["mark"] == "not installed" for row in env.libraries())


def test_import_chattune_warns_once_in_one_line():
    tested = versions.tested_versions()["transformers"]
    code = ("import importlib, importlib.metadata as m\n"
            "real = m.version\n"
            "m.version = lambda n: '4.0.0' if n == 'transformers' else real(n)\n"
            "import chattune\n"
            "importlib.reload(chattune)\n")
    done = _run_cli(code=code)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "UntestedVersionWarning" in lines[0], done.stderr
    assert f"transformers 4.0.0 (tested: {tested})" in lines[0] and "chattune env" in lines[0]


def test_the_shipped_tested_versions_equal_requirements_lock():
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    shipped = versions.tested_versions()
    assert shipped == versions.tested_from_lock(lock, makefile), (
        f"src/chattune/tested_versions.json is stale: run `{versions.REGENERATE}`")
    for name in env.LIBRARIES:  # read here without the module's parser, too
        pin = re.search(rf"^{re.escape(name)}==(\S+)", lock, re.M)
        pin = pin or re.search(rf"^\w+\s*[?:]?=\s*{re.escape(name)}==(\S+)", makefile, re.M)
        assert pin and shipped[name] == pin.group(1), name
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"tested_versions.json"' in pyproject, "the tested set must ship as package data"


def test_the_cli_prints_the_report_and_its_json():
    text = _run_cli("env")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("### chattune env") and "| transformers |" in text.stdout
    as_json = _run_cli("env", "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert set(report) == {"chattune", "python", "platform", "libraries", "cpu", "gpu", "caches",
                           "builtin_models"}
    assert report["chattune"]["version"] == chattune.__version__
    assert [row["name"] for row in report["libraries"]] == list(env.LIBRARIES)
    assert {folder["name"] for folder in report["caches"]} == {"CHATTUNE_HOME", "HF hub cache",
                                                               "pip cache"}


def test_caches_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip"))
    folders = {folder["name"]: folder for folder in env.caches()}
    assert folders["CHATTUNE_HOME"]["path"] == str(tmp_path / "home")
    assert folders["CHATTUNE_HOME"]["exists"] is False and folders["pip cache"]["free_gib"] > 0
    models = {row["name"]: row for row in env.builtin_models()}
    assert models["builtin:smollm2-135m-instruct"]["converted"] is False


@pytest.fixture
def ui_client(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from chattune.ui.app import create_ui_app

    monkeypatch.setenv("CHATTUNE_HOME", str(tmp_path / "home"))
    app = create_ui_app(tmp_path / "runs", api_key="env-key", device="cpu")
    with TestClient(app, headers={"Authorization": "Bearer env-key"}) as client:
        yield client


def test_the_ui_shows_the_same_report(ui_client):
    from fastapi.testclient import TestClient

    assert TestClient(ui_client.app).get("/api/env").status_code == 401  # paths and hosts: keyed
    body = ui_client.get("/api/env").json()
    assert [row["name"] for row in body["libraries"]] == list(env.LIBRARIES)
    assert body["markdown"].startswith("### chattune env") and "| torch |" in body["markdown"]
    page = ui_client.get("/").text
    assert 'data-tab="env"' in page and 'id="env-report"' in page
    assert "/api/env" in ui_client.get("/ui.js").text
