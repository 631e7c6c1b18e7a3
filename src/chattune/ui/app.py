"""`chattune ui`: the training web UI's HTTP routes over the Python API; it holds no training logic.

One page (static/ui.html) and a JSON API: the config form and its validation (`POST /api/config`),
the `data inspect` view (`POST /api/inspect`), uploads, training jobs (ui/jobs.py: start, stop,
resume, progress), the runs list, a run's files (loss curve, report), compare, export, a
streaming chat with any run or model (`POST /api/chat`) and the `chattune env` report (`GET
/api/env`). It reuses the server's guard: local-only by default, the same bearer API key as
`chattune serve` (every path but the page needs it).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from chattune import api, rundir
from chattune.models import BUILTIN_MODELS, BUILTIN_PREFIX, chattune_home
from chattune.ui import views
from chattune.ui.jobs import Jobs

STATIC = Path(__file__).parent / "static"
PUBLIC = frozenset({"/", "/ui.js"})  # the page and its script hold nothing secret; their API calls send the key
MAX_UPLOAD = 64 << 20


def _user_errors() -> tuple[type[BaseException], ...]:
    from chattune.commands import _user_errors as errors

    return errors()


def create_ui_app(runs_dir: str | Path = "runs", api_key: str | None = None, device: str = "auto") -> FastAPI:
    from chattune.serve.app import Guard

    runs_dir = Path(runs_dir).resolve()
    jobs = Jobs(chattune_home() / "ui" / "jobs" / f"{os.getpid()}-{time.strftime('%Y%m%d-%H%M%S')}")
    chats = ChatCache(device)

    @asynccontextmanager
    async def lifespan(app):
        yield
        jobs.close()

    app = FastAPI(title="chattune ui", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=MAX_UPLOAD, public_paths=PUBLIC)
    app.state.jobs, app.state.runs_dir = jobs, runs_dir

    async def user_error(request: Request, err: Exception):
        return JSONResponse({"error": str(err), "fields": _fields_of(err)}, status_code=422)

    for error in _user_errors():
        app.add_exception_handler(error, user_error)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "ui.html", media_type="text/html")

    @app.get("/ui.js", include_in_schema=False)
    async def script():
        return FileResponse(STATIC / "ui.js", media_type="text/javascript")

    @app.get("/api/options")
    async def options():
        return {"models": [BUILTIN_PREFIX + key for key in BUILTIN_MODELS], "data": list(views.BUILTIN_DATA),
                "fields": views.form_fields(), "runs_dir": str(runs_dir)}

    _add_config_routes(app, runs_dir)
    _add_job_routes(app, jobs, runs_dir)
    _add_run_routes(app, jobs, runs_dir, chats)
    _add_env_route(app)
    return app


def _add_env_route(app: FastAPI) -> None:
    @app.get("/api/env")
    def environment():
        """The `chattune env` report (chattune/env.py) and its Markdown, for the page's tab."""
        from chattune.env import collect, to_markdown

        report = collect()
        return {**report, "markdown": to_markdown(report)}


def _fields_of(err: Exception) -> dict:
    from chattune.config import ConfigError

    return views.field_errors(err) if isinstance(err, ConfigError) else {}


def resolved(body: dict, runs_dir: Path):
    """The RunConfig the form describes: its fields as CLI overrides, output_dir = the UI's runs dir."""
    values = {"output_dir": str(runs_dir), **views.form_to_overrides(body.get("fields") or {})}
    return api.resolve_config(None, values)


def _add_config_routes(app: FastAPI, runs_dir: Path) -> None:
    @app.post("/api/config")
    def config(body: dict):
        cfg = resolved(body, runs_dir)
        return {"yaml": cfg.to_yaml(), "command": views.cli_command(body.get("fields") or {})}

    @app.post("/api/inspect")
    def inspect(body: dict):
        return api.inspection(resolved(body, runs_dir), examples=int(body.get("examples", 3)))

    @app.post("/api/upload")
    async def upload(request: Request, name: str):
        data = await request.body()
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).name).strip("-.") or "data.jsonl"
        folder = chattune_home() / "ui" / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{hashlib.sha256(data).hexdigest()[:12]}-{safe}"
        from chattune.io import write_text_atomic

        write_text_atomic(target, data.decode("utf-8", errors="strict"))
        return {"path": str(target), "bytes": len(data)}


def _add_job_routes(app: FastAPI, jobs: Jobs, runs_dir: Path) -> None:
    @app.post("/api/train")
    def train(body: dict):
        cfg = api.next_free_run_dir(resolved(body, runs_dir))
        return jobs.start(cfg).view()

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str):
        if job_id not in jobs.jobs:
            raise HTTPException(404, f"no job {job_id}")
        return jobs.jobs[job_id].view()

    @app.post("/api/jobs/{job_id}/stop")
    def stop(job_id: str):
        if job_id not in jobs.jobs:
            raise HTTPException(404, f"no job {job_id}")
        return jobs.stop(job_id).view()

    @app.post("/api/runs/{name}/resume")
    def resume(name: str):
        try:
            run = _run(runs_dir, name)
            return jobs.resume(run, views.run_config(run)).view()
        except ValueError as err:
            raise HTTPException(409, str(err)) from None


def _run(runs_dir: Path, name: str) -> Path:
    try:
        return views.find_run(runs_dir, name)
    except KeyError:
        raise HTTPException(404, f"no run {name!r} in {runs_dir}") from None


def _add_run_routes(app: FastAPI, jobs: Jobs, runs_dir: Path, chats: ChatCache) -> None:
    @app.get("/api/runs")
    def runs():
        return {"runs": views.run_rows(runs_dir, jobs)}

    @app.get("/api/runs/{name}/loss.png")
    def loss_png(name: str):
        path = _run(runs_dir, name) / rundir.LOSS_PLOT
        if not path.is_file():
            raise HTTPException(404, "no loss curve yet")
        return FileResponse(path, media_type="image/png")

    @app.get("/api/runs/{name}/report")
    def report(name: str):
        from chattune.report.html import write_report

        return FileResponse(write_report(_run(runs_dir, name)), media_type="text/html")

    @app.get("/api/compare.png")
    def compare(runs: str):
        from chattune.report.runs import compare_runs

        paths = [_run(runs_dir, name) for name in runs.split(",") if name]
        out = chattune_home() / "ui" / "compare" / f"{hashlib.sha256(runs.encode()).hexdigest()[:12]}.png"
        return FileResponse(compare_runs(paths, out), media_type="image/png")

    @app.post("/api/runs/{name}/export")
    def export(name: str, body: dict):
        run = _run(runs_dir, name)
        fmt = body.get("format", "hf")
        out = runs_dir.parent / "exports" / f"{name}-{fmt}"
        from chattune.exporting.merge import ExportError

        try:
            api.export(run, out, fmt, force=bool(body.get("force")))
        except ExportError as err:  # the fidelity gate refused: the message says by how much
            return JSONResponse({"error": str(err), "fields": {}}, status_code=422)
        return {"out": str(out), "format": fmt, "files": sorted(p.name for p in out.iterdir())}

    @app.post("/api/chat")
    def chat(body: dict):
        target = body.get("target") or ""
        spec = str(_run(runs_dir, target)) if not target.startswith(BUILTIN_PREFIX) else target
        messages = body.get("messages") or []
        if not messages or messages[-1].get("role") != "user":
            raise HTTPException(422, "messages must end with a user message")
        model = chats.get(spec)
        settings = {"max_new_tokens": int(body.get("max_new_tokens", 128))}
        pieces = model.chat(messages[-1]["content"], list(messages[:-1]), stream=True, **settings)
        return StreamingResponse(chats.serialized(pieces), media_type="text/plain; charset=utf-8")


class ChatCache:
    """The model the chat tab talks to: one loaded at a time (api.load), generation one at a time."""

    def __init__(self, device: str):
        self.device, self.spec, self.model = device, None, None
        self.lock = threading.Lock()

    def get(self, spec: str):
        with self.lock:
            if spec != self.spec:
                self.model, self.spec = None, None
                self.model, self.spec = api.load(spec, device=self.device), spec
            return self.model

    def serialized(self, pieces):
        with self.lock:
            yield from pieces
