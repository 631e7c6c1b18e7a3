"""The HTTP API: an OpenAI-compatible FastAPI app over a registry of served models.

`GET /v1/models`, `POST /v1/chat/completions` (JSON or SSE stream), `GET /openapi.json` and
`GET /` (the chat page). With an API key every path but `GET /` needs it (the page itself holds
nothing secret; its API calls send the key). Every error leaves in OpenAI's shape
`{"error": {message, type, param, code}}`.
Generation happens in the single worker thread (worker.py); this module only validates,
queues and relays. Loading models is the caller's job (`chattune serve` does it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse, StreamingResponse

from chattune.infer.chat import GenerationSettings
from chattune.serve.prompt import PromptError, prompt_ids
from chattune.serve.schemas import (
    ChatCompletion,
    ChatRequest,
    ErrorResponse,
    ModelList,
    error_response,
    openapi_components,
    sse_schema,
)
from chattune.serve.worker import DEFAULT_MAX_QUEUE, TOKENIZER_LOCK, Job, Worker

PAGE = Path(__file__).parent / "static" / "index.html"
DEFAULT_MAX_BODY = 1 << 20
PUBLIC_PATHS = frozenset({"/"})  # the chat page; everything else needs the key when one is set
# Below this a temperature is greedy: logits / 1e-300 overflow to inf and sampling fails.
MIN_TEMPERATURE = 1e-4
_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 503)}
_CHAT_RESPONSES = {200: {"model": ChatCompletion, "description": "a completion, or an SSE stream of chunks",
                         "content": {"text/event-stream": {"schema": sse_schema()}}}, **_ERRORS}


def create_app(registry, api_key: str | None = None, max_tokens: int = 512,
               max_body_bytes: int = DEFAULT_MAX_BODY, max_queue: int = DEFAULT_MAX_QUEUE) -> FastAPI:
    worker = Worker(registry, max_queue)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="chattune", lifespan=lifespan, docs_url=None, redoc_url=None)
    _document(app)
    app.state.registry, app.state.worker, app.state.max_tokens = registry, worker, max_tokens
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    _add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/v1/models", response_model=None, responses={200: {"model": ModelList}, 401: _ERRORS[401]})
    async def models():
        data = [{"id": name, "object": "model", "created": registry.get(name).created,
                 "owned_by": "chattune"} for name in registry.names()]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None, responses=_CHAT_RESPONSES)
    async def chat_completions(body: ChatRequest, request: Request):
        return await _complete(app, body, request)

    return app


async def _complete(app, body: ChatRequest, request: Request):
    item = app.state.registry.get(body.model)
    if item is None:
        return error_response(404, f"The model {body.model!r} does not exist; see GET /v1/models",
                              param="model", code="model_not_found")
    if bad := body.unsupported():
        return error_response(400, bad[1], param=bad[0], code="unsupported_parameter")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        with TOKENIZER_LOCK:
            ids = prompt_ids(item.chat.tokenizer, item.chat.with_examples(messages), item.chat.system)
    except PromptError as err:
        return error_response(400, str(err), param=err.param)
    budget = _token_budget(app, item, body, len(ids))
    if budget < 1:
        return error_response(400, f"the prompt has {len(ids)} tokens, more than this model's "
                              "context allows", param="messages", code="context_length_exceeded")
    temperature = body.temperature if body.temperature >= MIN_TEMPERATURE else 0.0
    settings = GenerationSettings(max_new_tokens=budget, temperature=temperature, top_p=body.top_p)
    job = Job(body.model, ids, settings, body.stop_list(), body.seed, asyncio.get_running_loop())
    if not app.state.worker.submit(job):
        return error_response(503, f"the server is busy: {app.state.worker.max_queue} requests are waiting; "
                              "retry later", kind="server_error", code="server_busy", headers={"Retry-After": "1"})
    reply = _Reply(body.model, len(ids))
    if body.stream:
        return StreamingResponse(_sse(job, reply, body.include_usage()), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _collect(job, reply, request)


def _token_budget(app, item, body: ChatRequest, prompt_len: int) -> int:
    wanted = body.max_completion_tokens or body.max_tokens or app.state.max_tokens
    budget = min(wanted, app.state.max_tokens)
    context = getattr(getattr(item.chat.model, "config", None), "max_position_embeddings", None)
    return min(budget, context - prompt_len) if context else budget


class _Reply:
    """Builds the response objects of one completion."""

    def __init__(self, model: str, prompt_tokens: int):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model, self.prompt_tokens = model, prompt_tokens

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def chunk(self, delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        choices = [] if usage else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
               "model": self.model, "choices": choices}
        if usage:
            obj["usage"] = usage
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def completion(self, text: str, finish: str, completion_tokens: int) -> dict:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": finish}],
                "usage": self.usage(completion_tokens)}


async def _sse(job: Job, reply: _Reply, include_usage: bool):
    try:
        yield reply.chunk({"role": "assistant", "content": ""})
        while True:
            kind, *rest = await job.events.get()
            if kind == "text":
                yield reply.chunk({"content": rest[0]})
            elif kind == "done":
                yield reply.chunk({}, finish=rest[0])
                if include_usage:
                    yield reply.chunk({}, usage=reply.usage(rest[1]))
                yield "data: [DONE]\n\n"
                return
            else:
                error = {"message": rest[0], "type": "server_error", "param": None, "code": None}
                yield f"data: {json.dumps({'error': error})}\n\n"
                return
    finally:  # normal end, or the client went away (the generator is closed/cancelled)
        job.cancelled.set()


async def _collect(job: Job, reply: _Reply, request: Request):
    pieces: list[str] = []
    try:
        while True:
            try:
                kind, *rest = await asyncio.wait_for(job.events.get(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    job.cancelled.set()
                    return error_response(499, "client closed the request", code="client_closed")
                continue
            if kind == "text":
                pieces.append(rest[0])
            elif kind == "done":
                return reply.completion("".join(pieces), rest[0], rest[1])
            else:
                return error_response(500, rest[0], kind="server_error")
    finally:
        job.cancelled.set()


def _document(app: FastAPI) -> None:
    """The OpenAPI schema also lists the stream chunk (only referenced from the SSE schema)."""
    plain = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = plain()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in openapi_components().items():
                components.setdefault(name, definition)
        return app.openapi_schema

    app.openapi = openapi


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        # The deepest error: of a union's failed members, the one that got furthest names the field.
        first = max(exc.errors(), key=lambda e: len(e.get("loc", ())), default={})
        if first.get("type") == "json_invalid":  # its loc is a character offset, not a field
            offset = next((p for p in first.get("loc", ()) if isinstance(p, int)), None)
            detail = first.get("ctx", {}).get("error", first.get("msg", ""))
            return error_response(422, f"the request body is not valid JSON ({detail}"
                                  + (f", at character {offset})" if offset is not None else ")"),
                                  param=None, code="json_invalid")
        loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _union_tag(p)]
        where = ".".join(loc)
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return error_response(422, message, param=where or None, code=first.get("type"))

    @app.exception_handler(Exception)
    async def crashed(request, exc: Exception):  # still a bug: the fuzz test fails on any 5xx
        return error_response(500, f"internal error: {type(exc).__name__}", kind="server_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), kind=kind)


def _union_tag(part) -> bool:
    """pydantic names the union member that failed in `loc` ('str', 'list[TextPart]'): not a field."""
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "none"})


class Guard:
    """ASGI middleware: bearer-key check (all paths but PUBLIC_PATHS) and a body size limit (413).

    The key is compared in constant time: SHA-256 of both sides, then `hmac.compare_digest`,
    so neither the content nor the length of the key leaks through timing.

    The body is read here (at most the limit) and replayed to the app, so a chunked upload
    cannot slip past the limit; later receives pass through, so disconnects are still seen.
    """

    def __init__(self, app, api_key: str | None, max_body_bytes: int, public_paths: frozenset = PUBLIC_PATHS):
        self.app, self.api_key, self.max_body, self.public = app, api_key, max_body_bytes, public_paths
        self.key_digest = hashlib.sha256(api_key.encode("utf-8")).digest() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and self.key_digest and not self._authorized(scope):
            return await send({"type": "websocket.close", "code": 1008})  # no websocket routes either way
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.key_digest and scope["path"] not in self.public and not self._authorized(scope):
            response = error_response(401, "Incorrect or missing API key: send 'Authorization: Bearer KEY'",
                                      code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await self._too_large(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:  # chunked uploads have no Content-Length to check first
                return await self._too_large(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _authorized(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        given_digest = hashlib.sha256(given.strip()).digest()
        return hmac.compare_digest(given_digest, self.key_digest) and scheme.lower() == b"bearer"

    async def _too_large(self, scope, receive, send):
        response = error_response(413, f"request body larger than {self.max_body} bytes",
                                  code="request_too_large")
        await response(scope, receive, send)
