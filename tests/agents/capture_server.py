"""Record what a real agent CLI sends to its model API, and answer just enough that it finishes.

Stdlib only. Listens on loopback; every request is appended as one JSON line to --out:
{"method", "path", "query", "headers" (secrets masked), "body" (parsed JSON, else text), "body_bytes"}.

Answers, in the dialect the path asks for (the answer text is --reply):
  POST .../messages                 Anthropic Messages: one text block; SSE when "stream": true
  POST .../messages/count_tokens    {"input_tokens": <body chars / 4>}
  POST .../responses                OpenAI Responses: one message item; SSE when "stream": true
  GET  .../models                   a one-model list (Anthropic and OpenAI fields both)
  anything else                     404 {"error": ...} (HEAD: 200, empty)
With --tool-call '{"name": ..., "input": {...}}', a messages/responses request that carries no tool
result yet is answered with that one tool call instead (Anthropic tool_use; Responses function_call),
so the request that carries the tool's result can be recorded too.

CLI: python tests/agents/capture_server.py --out requests.jsonl [--port 0] [--reply TEXT] [--tool-call JSON]
     Prints "CAPTURE_LISTENING 127.0.0.1:<port>" once listening; runs until SIGTERM/SIGINT.
Used by hand to refresh tests/agents/data/*_request.json (the e2e tests use the real gateway instead):
run it with --tool-call (Claude Code: {"name": "Bash", "input": {"command": "echo hi-from-tool",
"description": "..."}}; Codex: {"name": "exec_command", "input": {"cmd": "echo hi-from-tool"}}), point the
CLI at it exactly as tests/e2e/test_agents.py does (temporary HOME, offline settings, `--allowedTools
Bash` for Claude Code), then keep the body of the second request and scrub ids, device ids and paths.
"""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

SECRET_HEADERS = frozenset({"authorization", "x-api-key", "cookie", "proxy-authorization", "api-key"})


def mask(value: str) -> str:
    """Keep the scheme word and the length, never the secret."""
    scheme, sep, _ = value.partition(" ")
    return f"{scheme} <masked {len(value)} chars>" if sep else f"<masked {len(value)} chars>"


def decode_body(raw: bytes, encoding: str) -> tuple[Any, str]:
    data = raw
    if encoding == "gzip":
        data = gzip.decompress(raw)
    elif encoding == "deflate":
        data = zlib.decompress(raw)
    elif encoding:
        return None, f"undecoded content-encoding {encoding!r}"
    try:
        return json.loads(data.decode("utf-8")), ""
    except (UnicodeDecodeError, ValueError):
        return data.decode("utf-8", "replace"), ""


def sse(event: str | None, payload: dict[str, Any]) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload)}\n\n".encode()


def anthropic_message(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "msg_capture0000000000000000",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 3},
    }


def anthropic_tool_message(model: str, call: dict[str, Any]) -> dict[str, Any]:
    block = {"type": "tool_use", "id": "toolu_capture0", "name": call["name"], "input": call["input"]}
    return anthropic_message(model, "") | {"content": [block], "stop_reason": "tool_use"}


def anthropic_stream(model: str, text: str, call: dict[str, Any] | None = None) -> Iterator[bytes]:
    start = anthropic_message(model, "") | {"content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": 10, "output_tokens": 1}
    yield sse("message_start", {"type": "message_start", "message": start})
    if call is None:
        block: dict[str, Any] = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": text}
    else:
        block = {"type": "tool_use", "id": "toolu_capture0", "name": call["name"], "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(call["input"])}
    yield sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
    yield sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
    yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    end = {"stop_reason": "end_turn" if call is None else "tool_use", "stop_sequence": None}
    yield sse("message_delta", {"type": "message_delta", "delta": end, "usage": {"output_tokens": 3}})
    yield sse("message_stop", {"type": "message_stop"})


def function_call_item(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "fc_capture0",
        "type": "function_call",
        "status": "completed",
        "call_id": "call_capture0",
        "name": call["name"],
        "arguments": json.dumps(call["input"]),
    }


def responses_object(
    model: str, text: str, status: str, call: dict[str, Any] | None = None
) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if status == "completed" and call is not None:
        output = [function_call_item(call)]
    elif status == "completed":
        part = {"type": "output_text", "text": text, "annotations": []}
        output = [
            {
                "id": "msg_capture0",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [part],
            }
        ]
    return {
        "id": "resp_capture0",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": output,
        "usage": {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 3,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 13,
        },
    }


def responses_stream(model: str, text: str, call: dict[str, Any] | None = None) -> Iterator[bytes]:
    seq = iter(range(1_000))
    created = responses_object(model, text, "in_progress")
    yield sse(
        "response.created", {"type": "response.created", "sequence_number": next(seq), "response": created}
    )
    if call is not None:
        done = responses_object(model, text, "completed", call)
        item_done = {
            "type": "response.output_item.done",
            "sequence_number": next(seq),
            "output_index": 0,
            "item": done["output"][0],
        }
        yield sse("response.output_item.done", item_done)
        completed = {"type": "response.completed", "sequence_number": next(seq), "response": done}
        yield sse("response.completed", completed)
        return
    item = {
        "id": "msg_capture0",
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    yield sse(
        "response.output_item.added",
        {"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 0, "item": item},
    )
    yield sse(
        "response.output_text.delta",
        {
            "type": "response.output_text.delta",
            "sequence_number": next(seq),
            "item_id": "msg_capture0",
            "output_index": 0,
            "content_index": 0,
            "delta": text,
        },
    )
    done = responses_object(model, text, "completed")
    yield sse(
        "response.output_item.done",
        {
            "type": "response.output_item.done",
            "sequence_number": next(seq),
            "output_index": 0,
            "item": done["output"][0],
        },
    )
    yield sse(
        "response.completed", {"type": "response.completed", "sequence_number": next(seq), "response": done}
    )


def has_tool_result(body: dict[str, Any]) -> bool:
    """Whether the conversation already carries a tool result (either dialect)."""
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        ):
            return True
    items = body.get("input")
    return isinstance(items, list) and any(
        isinstance(i, dict) and str(i.get("type", "")).endswith("_call_output") for i in items
    )


class Recorder:
    def __init__(self, path: str, reply: str, tool_call: dict[str, Any] | None = None) -> None:
        self.path = path
        self.reply = reply
        self.tool_call = tool_call
        self.lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        with self.lock, open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    recorder: Recorder  # set on the subclass made by serve()

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write("capture: " + (format % args) + "\n")

    def _record(self) -> tuple[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not length and self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = self._read_chunked()
        body, note = decode_body(raw, self.headers.get("Content-Encoding", "").lower())
        url = urlsplit(self.path)
        headers = {
            k.lower(): (mask(v) if k.lower() in SECRET_HEADERS else v) for k, v in self.headers.items()
        }
        record = {
            "time": time.time(),
            "method": self.command,
            "path": url.path,
            "query": dict(parse_qsl(url.query, keep_blank_values=True)),
            "headers": headers,
            "body_bytes": len(raw),
            "body": body,
        }
        if note:
            record["note"] = note
        self.recorder.write(record)
        return url.path, body

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return bytes(data)
            data += self.rfile.read(size)
            self.rfile.readline()

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send_sse(self, events: Iterator[bytes]) -> None:
        self._send(200, b"".join(events), "text/event-stream")

    def do_HEAD(self) -> None:
        self._record()
        self._send(200, b"", "text/plain")

    def do_GET(self) -> None:
        path, _ = self._record()
        if path.endswith("/models"):
            model = {"id": "capture-model", "type": "model", "object": "model", "display_name": "Capture"}
            self._send_json(200, {"data": [model], "object": "list", "has_more": False})
        else:
            self._send_json(404, {"error": {"type": "not_found_error", "message": f"no {path}"}})

    def do_POST(self) -> None:
        path, body = self._record()
        obj = body if isinstance(body, dict) else {}
        model = str(obj.get("model") or "capture-model")
        reply = self.recorder.reply
        call = None if has_tool_result(obj) else self.recorder.tool_call
        if path.endswith("/messages/count_tokens"):
            self._send_json(200, {"input_tokens": max(1, len(json.dumps(obj)) // 4)})
        elif path.endswith("/messages"):
            if obj.get("stream"):
                self._send_sse(anthropic_stream(model, reply, call))
            elif call is not None:
                self._send_json(200, anthropic_tool_message(model, call))
            else:
                self._send_json(200, anthropic_message(model, reply))
        elif path.endswith("/responses"):
            if obj.get("stream", False):
                self._send_sse(responses_stream(model, reply, call))
            else:
                self._send_json(200, responses_object(model, reply, "completed", call))
        else:
            self._send_json(404, {"error": {"type": "not_found_error", "message": f"no {path}"}})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", required=True, help="JSON-lines file the requests are appended to")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reply", default="captured")
    parser.add_argument("--tool-call", type=json.loads, default=None, help='{"name": ..., "input": {...}}')
    args = parser.parse_args(argv)
    recorder = Recorder(args.out, args.reply, args.tool_call)
    handler = type("BoundHandler", (Handler,), {"recorder": recorder})
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"CAPTURE_LISTENING 127.0.0.1:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
