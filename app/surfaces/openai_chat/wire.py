"""Chat Completions wire shapes: the request model and `parse_chat_request`.

Requests are validated strictly (a string is not a number, "yes" is not a boolean) and every
validation problem becomes one `GatewayError` naming the field, as OpenAI does. Unknown top-level
fields are accepted and ignored, because real clients send many.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.core.errors import invalid_request


def at_most_four_stops(value: str | list[str] | None) -> str | list[str] | None:
    if isinstance(value, list) and len(value) > 4:
        raise ValueError("at most 4 stop sequences")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class Message(Strict):
    role: Role
    content: Any = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _content_shape(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list):
            for part in value:
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise ValueError("each content part must be an object with a string 'type'")
            return value
        raise ValueError("must be a string, an array of content parts, or null")

    @model_validator(mode="after")
    def _content_required(self) -> Message:
        if self.content is None and self.role in ("system", "developer", "user", "tool"):
            raise ValueError(f"a '{self.role}' message needs content")
        if self.content is None and self.role == "assistant" and not self.tool_calls:
            raise ValueError("an 'assistant' message needs content or tool_calls")
        return self


class StreamOptions(Strict):
    include_usage: bool | None = None


class ChatCompletionRequest(Strict):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    _stop = field_validator("stop")(at_most_four_stops)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _param_of(loc: tuple[int | str, ...]) -> str:
    """`("messages", 0, "content")` -> `messages[0].content`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or "[" in part:
            continue  # pydantic names the union member it tried (`str`, `list[str]`); not a field
        else:
            out += f".{part}" if out else part
    return out


M = TypeVar("M", bound=BaseModel)


def load_object(body: bytes) -> dict[str, Any]:
    """The JSON object an OpenAI-style request body holds, or OpenAI's 400 `invalid_json`."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid_request(
            "We could not parse the JSON body of your request. Send a JSON object.", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    return data


def parse_request(body: bytes, model: type[M]) -> M:
    """An OpenAI-style request from raw JSON bytes, or a GatewayError(400) saying what is wrong and where."""
    data = load_object(body)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        param = _param_of(tuple(error["loc"]))
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
        elif param:
            message = f"Invalid value for '{param}': {message}"
        raise invalid_request(message, param=param or None) from None


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    return parse_request(body, ChatCompletionRequest)
