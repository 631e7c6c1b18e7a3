"""The OpenAI chat-completions request and response bodies, and the error shape every failure is sent in.

Request fields are validated strictly (a 422 names the field): ints are JSON integers (5 or
5.0, as JSON Schema has it), not booleans or strings; text is valid Unicode (an unpaired surrogate would crash the tokenizer);
roles are OpenAI's. The response models only document the API (OpenAPI) and are what the
schema tests check replies against; app.py builds the replies as plain dicts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
)
from starlette.responses import JSONResponse

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.manual_seed accepts


def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"invalid Unicode: unpaired surrogate at character {err.start}") from None
    return value


def _json_int(value):
    if isinstance(value, bool | str):
        raise ValueError("Input should be a valid integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)  # JSON Schema's "integer" includes 5.0 (and 1e20)
    return value


def _seed_range(value: int) -> int:
    """Checked here, not with Field(ge, le): pydantic prints bounds above 2**53 as floats (18446744073709552000)."""
    if not SEED_MIN <= value <= SEED_MAX:
        raise ValueError(f"Input should be between {SEED_MIN} and {SEED_MAX}")
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]
Int = Annotated[int, BeforeValidator(_json_int)]
Seed = Annotated[int, BeforeValidator(_json_int), AfterValidator(_seed_range)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # OpenAI's roles; "tool" and "function" are known but not supported (a 400 from prompt.py).
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None

    @field_validator("content")
    @classmethod
    def _content_unicode(cls, value):
        return _valid_unicode(value) if isinstance(value, str) else value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    """Fields chattune honours; other OpenAI fields are accepted and ignored unless listed
    in `unsupported`, which rejects them with a 400 rather than silently doing less."""

    model_config = ConfigDict(extra="allow")
    model: Text = Field(description="a name from GET /v1/models (never a path)")
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: Int | None = Field(None, ge=1, description="capped at the server's --max-tokens")
    max_completion_tokens: Int | None = Field(None, ge=1, description="same as max_tokens")
    stop: str | list[str] | None = None
    seed: Seed | None = None
    n: Int = Field(1, ge=1)

    @field_validator("stop")
    @classmethod
    def _stop_unicode(cls, value):
        for text in [value] if isinstance(value, str) else value or []:
            _valid_unicode(text)
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) of the first requested feature this server cannot honour."""
        extra = self.model_extra or {}
        if self.n != 1:
            return "n", "only n=1 is supported"
        if len(self.stop_list()) > 4:
            return "stop", "at most 4 stop sequences"
        for key in ("tools", "functions", "logprobs", "tool_choice", "function_call"):
            if extra.get(key) not in (None, False, [], "none"):
                return key, f"{key} is not supported by this server"
        fmt = extra.get("response_format")
        if fmt not in (None, {"type": "text"}):
            return "response_format", "only response_format {'type': 'text'} is supported"
        return None


# ---- responses (documentation and schema tests only) ----

class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class ReplyMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: Literal[0]
    message: ReplyMessage
    logprobs: None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice] = Field(min_length=1, max_length=1)
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: Literal[0]
    delta: Delta
    logprobs: None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a stream; the last one with `choices: []` carries `usage`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice] = Field(max_length=1)
    usage: Usage | None = None


def sse_schema() -> dict:
    """OpenAPI schema of one server-sent event: a chunk, an error, or the final `[DONE]`."""
    refs = "#/components/schemas/"
    payload = {"anyOf": [{"$ref": refs + "ChatCompletionChunk"}, {"$ref": refs + "ErrorResponse"}]}
    return {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [
        {"const": "[DONE]"},
        {"type": "string", "pattern": "^\\{", "contentMediaType": "application/json", "contentSchema": payload},
    ]}}}


def openapi_components() -> dict:
    """Component schemas the SSE schema refers to, as OpenAPI `components.schemas` entries."""
    from pydantic.json_schema import models_json_schema

    _, top = models_json_schema([(ChatCompletionChunk, "serialization"), (ErrorResponse, "serialization")],
                                ref_template="#/components/schemas/{model}")
    return top["$defs"]


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    # backslashreplace: a message quoting client text must never fail to encode (a 500)
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)
