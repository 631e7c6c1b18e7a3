"""The web UI's JSON API (chattune/ui/app.py) on a tiny model: validation, inspect, jobs, stop/resume, safety."""

from __future__ import annotations

import json
import time

import pytest

KEY = "ui-key"


@pytest.fixture
def client(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from chattune.ui.app import create_ui_app

    monkeypatch.setenv("CHATTUNE_HOME", str(tmp_path / "home"))
    app = create_ui_app(tmp_path / "runs", api_key=KEY, device="cpu")
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def tiny_fields(model_dir, **more) -> dict:
    return {"model.name": str(model_dir), "name": "tiny", "train.batch_size": "2", "train.precision": "fp32",
            "data.path": "builtin:self-cognition", **more}


def wait_for(client, job_id: str, states: set[str], timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (view := client.get(f"/api/jobs/{job_id}").json())["state"] not in states:
        assert time.monotonic() < deadline, view
        time.sleep(0.5)
    return view


def test_the_key_is_required_but_the_page_is_public(client):
    from fastapi.testclient import TestClient

    bare = TestClient(client.app)
    assert bare.get("/").status_code == 200 and bare.get("/ui.js").status_code == 200
    assert bare.get("/api/runs").status_code == 401
    assert client.get("/api/runs").json() == {"runs": []}


def test_config_errors_are_reported_per_field(client, tiny_model_dir):
    bad = client.post("/api/config", json={"fields": tiny_fields(tiny_model_dir, **{"lora.r": "-1", "train.lr": "x"})})
    assert bad.status_code == 422
    fields = bad.json()["fields"]
    assert set(fields) == {"lora.r", "train.lr"} and "greater than 0" in fields["lora.r"][0]
    good = client.post("/api/config", json={"fields": tiny_fields(tiny_model_dir, **{"lora.r": "4"})}).json()
    assert "r: 4" in good["yaml"] and good["command"].startswith("chattune train ") and "lora.r=4" in good["command"]


def test_upload_then_inspect_names_file_line_and_field(client, tiny_model_dir):
    rows = [{"instruction": "Hi?", "input": "", "output": "Hello."}, {"instruction": "Empty?", "input": "", "output": ""}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path = client.post("/api/upload", params={"name": "../../evil name.jsonl"}, content=text.encode()).json()["path"]
    assert "/ui/uploads/" in path and ".." not in path and path.endswith("evil-name.jsonl")
    report = client.post("/api/inspect", json={"fields": tiny_fields(tiny_model_dir, **{"data.path": path})}).json()
    assert any(f["where"].startswith(f"{path}:2") and "output" in f["where"] for f in report["errors"]), report["errors"]
    assert report["examples"] and {kind for _, kind in report["examples"][0]["segments"]} >= {"trained", "context"}
    assert sum(b["count"] for b in report["histogram"]) == report["stats"]["train"]["examples"]


def test_train_stop_resume_then_chat_and_export(client, tiny_model_dir):
    fields = tiny_fields(tiny_model_dir, **{"train.max_steps": "40"})
    job = client.post("/api/train", json={"fields": fields}).json()
    name = job["run"]
    assert job["state"] == "running" and name.startswith("tiny-")  # NAME-TIMESTAMP, as the CLI names runs
    deadline = time.monotonic() + 300
    while not client.get(f"/api/jobs/{job['id']}").json()["loss"]:
        assert time.monotonic() < deadline and client.get(f"/api/jobs/{job['id']}").json()["state"] == "running"
        time.sleep(0.3)
    client.post(f"/api/jobs/{job['id']}/stop")
    stopped = wait_for(client, job["id"], {"stopped", "finished", "failed"})
    assert stopped["state"] == "stopped" and stopped["returncode"] == 130, stopped["log"]
    [row] = client.get("/api/runs").json()["runs"]
    assert row["name"] == name and row["state"] == "stopped" and row["has_checkpoint"]

    resumed = client.post(f"/api/runs/{name}/resume").json()
    done = wait_for(client, resumed["id"], {"finished", "failed", "stopped"}, timeout=600)
    assert done["state"] == "finished", done["log"]
    steps = [step for step, _ in done["loss"]]
    assert done["step"] == done["max_steps"] == 40 and steps == sorted(set(steps))  # continued, not restarted
    assert steps[0] <= stopped["step"] < steps[-1]
    assert client.get(f"/api/runs/{name}/loss.png").headers["content-type"] == "image/png"
    assert "<html" in client.get(f"/api/runs/{name}/report").text.lower()

    reply = client.post("/api/chat", json={"target": name, "messages": [{"role": "user", "content": "Hi"}],
                                           "max_new_tokens": 4})
    assert reply.status_code == 200
    import chattune

    assert reply.text.strip() == chattune.load(done["run_dir"], device="cpu").chat("Hi", max_new_tokens=4)
    exported = client.post(f"/api/runs/{name}/export", json={"format": "hf"}).json()
    assert "config.json" in exported["files"] and exported["out"].endswith(f"exports/{name}-hf")


def test_names_never_open_other_paths(client):
    assert client.get("/api/runs/..%2F..%2Fetc/loss.png").status_code == 404
    assert client.post("/api/chat", json={"target": "/etc", "messages": [{"role": "user", "content": "x"}]}).status_code == 404
