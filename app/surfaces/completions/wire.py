"""Legacy Completions (`POST /v1/completions`): the request, decoded into a one-turn `Job`.

Only what a text-only upstream can honour: one prompt string (or a list of one), no `suffix`, no
log-probabilities, one choice. Unknown fields are accepted and ignored, as on the chat surface.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from app.core.errors import invalid_request
from app.core.job import Job, Turn
from app.surfaces.openai_chat.wire import StreamOptions, Strict, at_most_four_stops, parse_request


class CompletionRequest(Strict):
    model: str = Field(min_length=1)
    prompt: str | list[Any]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    best_of: int | None = Field(default=None, ge=1, le=1)
    echo: bool | None = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, le=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    user: str | None = None

    _stop = field_validator("stop")(at_most_four_stops)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def parse_completion_request(body: bytes) -> CompletionRequest:
    return parse_request(body, CompletionRequest)


def prompt_text(request: CompletionRequest) -> str:
    prompt = request.prompt
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if len(prompt) != 1:
        raise invalid_request(
            "Send one prompt: a string or a list of one string (batches are not supported).", param="prompt"
        )
    raise invalid_request("The prompt must be text; token arrays are not supported.", param="prompt")


def decode(request: CompletionRequest) -> Job:
    if request.suffix:
        raise invalid_request("'suffix' (insertion) is not supported by this gateway.", param="suffix")
    stops = [request.stop] if isinstance(request.stop, str) else request.stop
    return Job(
        model=request.model,
        turns=[Turn("user", prompt_text(request))],
        stops=[s for s in stops or [] if s],
        max_tokens=request.max_tokens,
        stream=bool(request.stream),
    )
