"""The OpenAI chat-completions request body, and the error shape every failure is sent in."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(BaseModel):
    """Fields chattune honours; other OpenAI fields are accepted and ignored unless listed
    in `unsupported`, which rejects them with a 400 rather than silently doing less."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

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


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)
