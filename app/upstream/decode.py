"""Incremental decoding of the upstream's answer body into answer text.

The upstream's format was never captured live, so the decoder is chosen by what arrives: SSE
(`text/event-stream`), JSON (`application/json`), or raw text (anything else). All three decode
UTF-8 incrementally, so a character split across reads survives. Pure: bytes in, text out.
"""

from __future__ import annotations

import codecs
import json
from typing import Any, Protocol

from app.upstream.failures import FailureKind, UpstreamFailure

# Where a text piece may sit in a JSON payload, in the order they are tried.
_TEXT_KEYS = ("content", "text", "delta", "answer", "response", "message", "data", "output")


class AnswerDecoder(Protocol):
    done: bool

    def feed(self, data: bytes) -> str: ...

    def finish(self) -> str: ...


def well_formed(text: str) -> str:
    """`text` with any lone UTF-16 surrogate (JSON can escape one: "\\ud800") as U+FFFD, so that it
    can be encoded as UTF-8 for the client; text decoded from bytes never has one."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def extract_text(payload: Any) -> str | None:
    """The answer text in a JSON payload, or None if it holds none (e.g. a role-only delta)."""
    if isinstance(payload, str):
        return payload
    if not isinstance(payload, dict):
        return None
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        for key in ("delta", "message"):
            part = choice.get(key)
            if isinstance(part, dict) and isinstance(part.get("content"), str):
                return str(part["content"])
        if isinstance(choice.get("text"), str):
            return str(choice["text"])
        return None
    for key in _TEXT_KEYS:
        value = payload.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            nested = extract_text(value)
            if nested is not None:
                return nested
    return None


def error_in(payload: Any) -> str | None:
    """A short, secret-free description if the payload is an error object.

    Any truthy `error` counts, even beside text: `{"error": "Unauthorized", "message": "Session
    expired"}` is an error whose message is not answer text."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if error is None or error is False:
        return None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code")
        return f"upstream sent an error object ({kind})" if kind else "upstream sent an error object"
    return "upstream sent an error object"


class RawTextDecoder:
    """Every byte is answer text."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.done = False

    def feed(self, data: bytes) -> str:
        return self._utf8.decode(data)

    def finish(self) -> str:
        self.done = True
        return self._utf8.decode(b"", final=True)


class JsonDecoder:
    """A whole answer (or error) as one JSON document; text only when the body is complete."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.done = False

    def feed(self, data: bytes) -> str:
        self._parts.append(data)
        return ""

    def finish(self) -> str:
        self.done = True
        body = b"".join(self._parts)
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise UpstreamFailure(
                FailureKind.BAD_RESPONSE, "upstream sent JSON that does not parse"
            ) from None
        error = error_in(payload)
        if error:
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, error)
        text = extract_text(payload)
        if text is None:
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream JSON holds no answer text")
        return well_formed(text)


class SseDecoder:
    """Server-sent events by the WHATWG rules (CR, LF or CRLF line ends; reads split anywhere)."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self._pending_cr = False
        self.done = False

    def feed(self, data: bytes) -> str:
        return self._consume(self._utf8.decode(data))

    def finish(self) -> str:
        out = self._consume(self._utf8.decode(b"", final=True))
        if self._buffer:
            out += self._line(self._buffer)
            self._buffer = ""
        out += self._line("")  # a last event with no blank line after it still counts
        self.done = True
        return out

    def _consume(self, text: str) -> str:
        if self.done or not text:
            return ""
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across two reads
        self._pending_cr = False
        out: list[str] = []
        buffer = self._buffer + text
        start = 0
        length = len(buffer)
        while start < length:
            cr = buffer.find("\r", start)
            lf = buffer.find("\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, next_start = lf, lf + 1
            elif cr + 1 < length:
                end, next_start = cr, cr + 2 if buffer[cr + 1] == "\n" else cr + 1
            else:
                end, next_start = cr, cr + 1
                self._pending_cr = True
            piece = self._line(buffer[start:end])
            if piece:
                out.append(piece)
            start = next_start
            if self.done:
                start = length
                break
        self._buffer = buffer[start:]
        return "".join(out)

    def _line(self, line: str) -> str:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return ""
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        return ""

    def _dispatch(self) -> str:
        if not self._data:
            return ""
        data = "\n".join(self._data)
        self._data = []
        if data.strip() == "[DONE]":
            self.done = True
            return ""
        try:
            payload = json.loads(data)
        except ValueError:
            return data  # a raw string payload is text as it stands
        error = error_in(payload)
        if error:
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, error)
        text = extract_text(payload)
        if text is not None:
            return well_formed(text)
        # A dict without text is a metadata event (a role-only delta); any other JSON value
        # (`data: 42`) is a raw payload that merely happens to parse.
        return "" if isinstance(payload, dict) else data


def decoder_for(content_type: str) -> AnswerDecoder:
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "text/event-stream":
        return SseDecoder()
    if media == "application/json" or media.endswith("+json"):
        return JsonDecoder()
    return RawTextDecoder()
