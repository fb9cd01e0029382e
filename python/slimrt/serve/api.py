"""The OpenAI request bodies the server accepts, validated into plain values with errors that name the field.

pydantic parses the JSON (strict: "5" is not an integer, true is not a number; unknown fields are
refused as OpenAI refuses them), and the fields whose JSON type varies (``stop``, ``prompt``,
``input``, message ``content``) are checked here by hand, so that every message reads as one
sentence about one field rather than a list of union branches.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_STOP = 4  # as OpenAI
MAX_EMBED_INPUTS = 2048  # as OpenAI


class ApiError(Exception):
    """An error for the client: HTTP ``status``, OpenAI ``type``, the offending ``param``."""

    def __init__(self, status: int, message: str, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's default: sampled unless the client asks for 0
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 64)  # what torch.Generator.manual_seed takes
    stop: Any = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class ChatBody(_Generation):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None


class CompletionBody(_Generation):
    prompt: Any
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class EmbeddingBody(_Body):
    model: str
    input: Any
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def parse(cls: type[_Body], raw: bytes) -> Any:
    """The body as ``cls``, or ApiError(400) naming the field at fault."""
    try:
        return cls.model_validate_json(raw)
    except ValidationError as e:
        raise _api_error(e) from None


def _api_error(e: ValidationError) -> ApiError:
    err = e.errors(include_url=False)[0]
    kind, loc = err["type"], ".".join(str(p) for p in err["loc"])
    if kind == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({err.get('ctx', {}).get('error', err['msg'])})")
    if kind == "model_type" or not loc:
        return ApiError(400, "the request body must be a JSON object")
    if kind == "missing":
        return ApiError(400, f"{loc} is required", loc)
    if kind == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {loc}", loc)
    got = err.get("input")
    shown = repr(got) if isinstance(got, (int, float, str, bool)) or got is None else type(got).__name__
    return ApiError(400, f"{loc}: {err['msg'][0].lower()}{err['msg'][1:]} (got {shown})", loc)


def _unsupported(body: _Generation) -> None:
    """Refuses the OpenAI options this server does not implement, rather than silently ignoring them."""
    if body.n != 1:
        raise ApiError(400, f"n={body.n}: this server returns one choice per prompt (n=1)", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) != 0:
            raise ApiError(400, f"{name} is not supported (only 0)", name)
    if body.logit_bias:
        raise ApiError(400, "logit_bias is not supported", "logit_bias")
    if isinstance(body, ChatBody):
        if body.logprobs or body.top_logprobs:
            raise ApiError(400, "logprobs are not supported", "logprobs")
        if body.tools or body.tool_choice not in (None, "none"):
            raise ApiError(400, "tools are not supported", "tools")
        fmt = (body.response_format or {}).get("type", "text")
        if fmt != "text":
            raise ApiError(400, f"response_format {fmt!r} is not supported (only 'text')", "response_format")
    else:
        if body.echo:
            raise ApiError(400, "echo is not supported", "echo")
        if body.logprobs:
            raise ApiError(400, "logprobs are not supported", "logprobs")
        if body.best_of not in (None, 1):
            raise ApiError(400, f"best_of={body.best_of} is not supported (only 1)", "best_of")
        if body.suffix:
            raise ApiError(400, "suffix is not supported", "suffix")


def stop_strings(stop: Any) -> list[str]:
    """``stop``: None, a string or a list of up to 4 non-empty strings."""
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ApiError(400, "stop must be a string or a list of strings", "stop")
    if len(items) > MAX_STOP:
        raise ApiError(400, f"stop has {len(items)} strings; at most {MAX_STOP}", "stop")
    if any(s == "" for s in items):
        raise ApiError(400, "stop strings must not be empty", "stop")
    return items


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages as {"role", "content": str} for the chat template; text parts are joined, "developer"
    (OpenAI's newer name for the system role) is "system"."""
    if not messages:
        raise ApiError(400, "messages is empty; pass at least one message", "messages")
    out = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise ApiError(400, f"messages.{i}.role is {role!r}; expected system, developer, user, assistant or "
                                "tool", f"messages.{i}.role")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise ApiError(400, f"messages.{i}.content.{j} must be a text part {{'type': 'text', 'text': "
                                        "...}} (this model reads text only)", f"messages.{i}.content")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise ApiError(400, f"messages.{i}.content must be a string or a list of text parts",
                           f"messages.{i}.content")
        out.append({"role": role, "content": content})
    return out


def completion_prompts(prompt: Any, vocab: int) -> list[str | list[int]]:
    """``prompt``: a string, a list of strings, a list of token ids, or a list of such lists."""
    def ids_ok(x: Any) -> bool:
        return isinstance(x, list) and len(x) > 0 and all(type(t) is int and 0 <= t < vocab for t in x)

    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if ids_ok(prompt):
            return [list(prompt)]
        if all(ids_ok(p) for p in prompt):
            return [list(p) for p in prompt]
    raise ApiError(400, f"prompt must be a string, a list of strings, or a non-empty list of token ids in [0, {vocab})"
                        " (or a list of such lists)", "prompt")


def embedding_inputs(inp: Any) -> list[str]:
    """``input``: a string or a list of up to 2048 strings."""
    items = [inp] if isinstance(inp, str) else inp
    if not isinstance(items, list) or not items or not all(isinstance(s, str) for s in items):
        raise ApiError(400, "input must be a string or a non-empty list of strings", "input")
    if len(items) > MAX_EMBED_INPUTS:
        raise ApiError(400, f"input has {len(items)} strings; at most {MAX_EMBED_INPUTS}", "input")
    return items


def check_generation(body: _Generation) -> None:
    _unsupported(body)
