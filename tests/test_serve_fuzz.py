"""Fuzz the server's OpenAPI schema with schemathesis, in-process (ASGI, no network).

schemathesis' Python API (operation strategies + hypothesis): its lazy pytest loader
(`schemathesis.pytest.from_fixture`) fails on pytest 9 (`Function` has no `_nodeid`).

The app serves the tiny model with --max-tokens 4, so every generation is cheap. Both valid
and invalid bodies are generated (bounded examples per operation); every reply must be a
non-5xx and match the documented schema for its status and content type (JSON or SSE).
The schema given to schemathesis is the published one narrowed (`_narrowed`) so that valid
bodies mostly reach generation instead of stopping at a 404 (unknown model) or a 400
(unsupported role, extra field, n > 1); strings are valid UTF-8 (no lone surrogates, which the
server rejects with a 422). Negative cases are drawn from the same schema; the app itself
validates against the real one.
"""

from __future__ import annotations

import copy

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

KEY = "fuzz-key"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    import torch

    from chattune.serve.app import create_app
    from chattune.serve.registry import load_registry

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model generates several times faster on one thread of a busy box
    yield create_app(load_registry([str(tiny_model_dir)]), api_key=KEY, max_tokens=4, max_body_bytes=1 << 16)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def api_schemas(app, tiny_model_dir) -> dict:
    """{"any": the narrowed schema, "stream": the same with `stream: true` only (SSE replies)}."""
    from starlette.testclient import TestClient

    with TestClient(app) as client:  # the schema exactly as the server publishes it
        published = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    config = schemathesis.Config()
    config.projects.default.generation.update(codec="utf-8")
    out = {}
    for name in ("any", "stream"):
        raw = _narrowed(published, tiny_model_dir.name)
        if name == "stream":
            raw["components"]["schemas"]["ChatRequest"]["properties"]["stream"]["enum"] = [True]
            raw["components"]["schemas"]["ChatRequest"]["required"].append("stream")
        out[name] = schemathesis.openapi.from_dict(raw, config=config)
        out[name].app = app
    return out


def _narrowed(published: dict, model: str) -> dict:
    raw = copy.deepcopy(published)
    schemas = raw["components"]["schemas"]
    request = schemas["ChatRequest"]
    request["additionalProperties"] = False
    fields = request["properties"]
    fields["model"]["enum"] = [model]
    fields["n"]["maximum"] = 1
    fields["messages"]["maxItems"] = 4
    fields["stop"]["anyOf"][1]["maxItems"] = 4
    schemas["Message"]["properties"]["role"]["enum"] = ["system", "developer", "user", "assistant"]
    return raw


@pytest.mark.parametrize("path,method,mode,examples,variant", [
    ("/v1/chat/completions", "POST", GenerationMode.POSITIVE, 30, "any"),
    ("/v1/chat/completions", "POST", GenerationMode.POSITIVE, 15, "stream"),
    ("/v1/chat/completions", "POST", GenerationMode.NEGATIVE, 30, "any"),
    ("/v1/models", "GET", GenerationMode.POSITIVE, 3, "any"),
])
def test_no_5xx_and_replies_match_the_schema(api_schemas, path, method, mode, examples, variant):
    operation = api_schemas[variant][path][method]
    seen = []

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        response = case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS, timeout=60)
        seen.append(response.status_code)

    check()
    assert seen and all(status < 500 for status in seen)
    if mode is GenerationMode.POSITIVE and method == "POST":
        assert 200 in seen  # valid bodies really reached generation


def test_openapi_is_complete_and_behind_the_key(app):
    from starlette.testclient import TestClient

    with TestClient(app) as client:
        assert client.get("/openapi.json").status_code == 401
        doc = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert set(chat) == {"200", "400", "401", "404", "413", "422", "503"}
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"ChatCompletionChunk", "ErrorResponse", "ChatCompletion"} <= set(doc["components"]["schemas"])
