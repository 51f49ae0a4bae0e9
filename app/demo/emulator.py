"""A loopback HTTP/1.1 server that speaks the gptomni.ai chat protocol, for e2e tests, benchmarks and
demo mode (`python main.py --demo` runs it inside the gateway as the upstream: app/demo/upstream.py).

It owns the wire: HTTP/1.1 is written by hand on asyncio streams (keep-alive, chunked bodies both
ways), so a test can pace, split, stall and cut an answer byte for byte. Stdlib only; uvloop if present.

CLI: python -m app.demo.emulator --host 127.0.0.1 --port 0 [--chunk-delay 0.02] [--chunk-size 16]
     (or by path: python app/demo/emulator.py ...)
     Prints exactly one line "EMULATOR_LISTENING <host>:<port>" once listening; exits 0 on SIGTERM/SIGINT.
     Import: `serve(host, port, chunk_delay, chunk_size)`, `main(argv)`, or `Emulator` (start/close/port).

POST /api/chatWithText  body {"prompt": "<str>"} (any Content-Type), Cookie header required.
  No/empty Cookie -> 401 {"error":"Unauthorized"}; body not {"prompt": str} -> 400 {"error":"bad request"};
  unknown or malformed option -> 400 {"error":"bad emu option","detail":...}. Every call is recorded.
  Options: the LAST `[[emu key=value ...]]` in the prompt, overridden by cookies `emu_<key>=<value>`,
  overridden by faults (below). The answer, the first that applies after the options parsed:
    signed out (session=empty, or a rotating account's token rejected) -> 401 {"error":"Unauthorized"};
    poisoned -> 500; waf -> 403 block page; cf -> challenge; status != 200 -> that status; else 200.
    Any `first_byte_delay` comes before all of them; set_cookie_b64 lines ride on every one of them.
    status=N            401 {"error":"Unauthorized"} | 403 {"message":"Forbidden"} | 429 {"error":"Too Many
                        Requests"} + Retry-After | 5xx small text/html page | other {"error": "<reason>"}
    retry_after=N       Retry-After seconds for 429 (default 1)
    cf=1                Cloudflare challenge page: 403 (or status=N), Server: cloudflare, cf-mitigated
    format=raw|sse|json raw text/plain (default) | sse `data: {"text": piece}` events + `data: [DONE]`
                        | json {"text": reply} in one piece. Always Transfer-Encoding: chunked.
    eol=lf|crlf|cr      sse line ends (default lf)
    chunk_size=N        piece size: bytes for raw (splits UTF-8 freely), characters for sse (default
                        --chunk-size). Each piece is one HTTP chunk, one write+drain.
    rechunk=N           (extra) re-split the whole encoded body into N-byte pieces, any format
                        (e.g. sse events split across reads, CR and LF of CRLF in separate chunks)
    split_utf8=1        split every multibyte UTF-8 character after its first byte, across two chunks
    repeat=N            repeat the reply text N times (default 1)
    reply_b64=B64       reply text as base64 of UTF-8 (a block in the prompt wins)
    delay=S             pause between pieces (default --chunk-delay)
    duration=S          spread the body over about S seconds; overrides delay
    first_byte_delay=S  silence before the status line
    body_delay=S        headers at once, then silence before the first body byte
    cut=N               after N body bytes (0 = right after headers) end the connection without
                        the terminating chunk: the client sees an incomplete chunked body
    cut_mode=fin|rst    (extra) how cut ends it: flush + FIN (default), or flush + TCP RST
    poison=1            500 (the status=500 page), over every cookie option and fault. `[[emu poison]]`
                        (bare word) ANYWHERE in the prompt poisons it, not only in the last directive,
                        and no cookie option can lift it: a poison prompt is one word. An account that
                        is signed out still gets its 401 first (auth comes before the handler).
    waf=1               Cloudflare WAF block page: 403 "Attention Required! | Cloudflare" / "Sorry, you
                        have been blocked", cf-error-details, a Ray ID, Server: cloudflare, cf-ray, and
                        NO challenge marker (no cf-mitigated, cf-chl, _cf_chl_opt, challenge-platform,
                        "Just a moment"): app/upstream/failures.py must not take it for a challenge.
    rotate=NAME         a rotating NextAuth session for account NAME ([A-Za-z0-9._-]{1,64}), meant as the
                        cookie `emu_rotate=NAME` next to `__Secure-next-auth.session-token=<token>`. See
                        "Rotating sessions" below.
    session=auto|alive|empty|error
                        the NextAuth session. auto (default): alive, except for a cookie whose status
                        option is 401, 403 or 3xx (an expired cookie: the endpoint says {}). alive:
                        alive whatever the status (a 401 that is not about the session). empty:
                        signed out: chat 401, session endpoint {}. error: session endpoint 500
                        (chat unaffected).
    demo=1              demo mode's canned answers (reply rule 4 below); the gateway's demo cookie
                        carries it as `emu_demo=1`.
    set_cookie_b64=B64  base64 of UTF-8 text, one Set-Cookie header value per line (LF or CRLF): each
                        line is sent verbatim as its own `Set-Cookie:` header on the answer (every
                        status) and on the session endpoint. Latin-1 only, no bare CR.
  Reply, the first rule that applies:
    1. the LAST `<<<EMU_REPLY@N\n...\nEMU_REPLY>>>` block whose N is the number of tool results in the
       prompt (turn N of a scripted tool round trip). A tool result is what the gateway renders for one
       (`<tool_result id=".." name="..">\n...\n</tool_result>`), counted by its closing `</tool_result>`
       tag, so the `<tool_result id="...">` the tool instructions mention never counts. Example, one
       `claude -p` prompt scripting a Bash call, then the answer once its result came back:
         <<<EMU_REPLY@0
         <tool_calls>
         [{"name": "Bash", "arguments": {"command": "echo hi", "description": "say hi"}}]
         </tool_calls>
         EMU_REPLY>>>
         <<<EMU_REPLY@1
         The tool said hi.
         EMU_REPLY>>>
    2. the LAST unnumbered `<<<EMU_REPLY\n...\nEMU_REPLY>>>` block in the prompt;
    3. reply_b64;
    4. with demo=1, the demo answer (`demo_reply`): once the prompt carries a tool result, a sentence
       quoting the last one; else, while the prompt offers tools, a call of the tool its
       instructions show, with the example arguments shown there (the first `<tool_calls>` block
       after "## Calling tools"); else a sentence saying the answer is canned, then the line below;
    5. "Hello from the gptomni emulator. You said: " + last non-empty prompt line (directives and
       blocks removed, max 200 chars).
  "LAST" is by position: a transcript that repeats the user's message (or an earlier answer) carrying
  the same blocks still picks the latest copy.
  A client that goes away (EOF or a write error, also while silent) stops the answer at once and
  counts as a disconnect.

Rotating sessions (the cookie option rotate=NAME). Per NAME the emulator keeps the current token and
  the previous one. The token is the value of the cookie `__Secure-next-auth.session-token`. A request
  presenting the current token is valid; the previous one is valid ONE more time (then rejected); the
  first token ever seen for a NAME is accepted and becomes current; anything else (or no session
  cookie) is rejected: 401 on chat, {} on the session endpoint. Every 200 chat answer and every
  session-endpoint answer that finds the session alive issues a new token:
    Set-Cookie: __Secure-next-auth.session-token=emu.<32 hex>; Path=/; Expires=<now + 30 days, HTTP
    date>; HttpOnly; Secure; SameSite=Lax
  and the old current token becomes the previous one. Tokens are checked when a request arrives and
  renewed when its 200 head is sent: requests in flight together on one token all pass, each of their
  answers carries a newer token, and only the last two issued are good afterwards (a client must keep
  the latest Set-Cookie it received). 5xx, 4xx, cf and waf answers renew nothing.

GET /api/auth/session (Cookie header as for chat; options from `emu_` cookies and faults only)
  -> 200 {"user": {"name", "email", "image": null}, "expires": "<ISO 8601, 30 days ahead>"} when alive
  (name = the account NAME for a rotating account, else "Emulator User"; email derived from a hash);
  200 {} when signed out: no Cookie, session=empty, or a rotating account's token rejected;
  500 (html) for session=error. Other options are parsed (a bad one is 400) but ignored: a cookie with
  status=401 or waf=1 still has a live session. Counted in session_checks / session_checks_by_cookie
  (NOT in requests/by_cookie, which count chat calls) and recorded in last_requests with its path.

GET /_emu/health -> {"ok": true}     POST /_emu/reset -> {"ok": true}     anything else -> 404 JSON
POST /_emu/faults {"match": "<part of a cookie>", "options": {"status": "401"}} -> options applied to
  every request whose Cookie contains `match`, over all others (a cookie that expires, then is
  refreshed: send {} as options to clear it). reset clears all faults.
GET /_emu/stats  -> {requests, by_cookie, in_flight, max_in_flight, completed, disconnects,
  disconnect_times, now, request_times, last_requests, plus (extra) cuts, connections, connections_total,
  by_account (chat calls per rotate NAME), by_user_agent (chat + session calls per User-Agent),
  session_checks, session_checks_by_cookie, rotations (tokens issued), rejected_sessions (rotating
  tokens refused), sessions {NAME: {current, previous, rotations, grace_uses, rejected,
  session_checks}}}.
  Each of last_requests (chat and session calls, oldest first, the last 50): {time, method, path,
  headers (all of them, names lower-case: which cookie and User-Agent reached the upstream), cookie,
  user_agent (null without one), prompt, raw_body, conn, tool_results, account (rotate NAME or null),
  status (the status answered; null until chosen, or for a request that ended before)}
  (tool_results: the N of rule 1 above, null without a prompt).
  Times are time.monotonic(). reset zeroes everything except the live gauges in_flight/connections,
  and forgets every account's tokens (the next token seen for a NAME is accepted).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import datetime
import email.utils
import hashlib
import html
import http
import itertools
import json
import re
import resource
import secrets
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal

CHAT_PATH = "/api/chatWithText"
SESSION_PATH = "/api/auth/session"
SESSION_COOKIE = "__Secure-next-auth.session-token"
SESSION_DAYS = 30
DEFAULT_CHUNK_DELAY = 0.02
DEFAULT_CHUNK_SIZE = 16

_MAX_HEAD = 64 * 1024
_MAX_LINE = 8 * 1024
_MAX_BODY = 64 * 1024 * 1024
_READ_SIZE = 64 * 1024
# Bytes a client may pipeline while an answer is running; beyond this the watcher stops reading
# so a misbehaving client cannot grow memory without bound.
_MAX_PIPELINED = 1024 * 1024
_LAST_REQUESTS = 50
_TIMES_PER_COOKIE = 1000
_MAX_DISCONNECT_TIMES = 100_000
_RAW_BODY_CHARS = 10_000
_DEFAULT_LINE_CHARS = 200
_DEFAULT_REPLY_PREFIX = "Hello from the gptomni emulator. You said: "

_DIRECTIVE_RE = re.compile(r"\[\[emu\b([^\]]*)\]\]")
# One regex for numbered and plain blocks, so a scan never starts a block inside another.
_REPLY_RE = re.compile(r"<<<EMU_REPLY(?:@(\d+))?\r?\n(.*?)(?:\r?\n)?EMU_REPLY>>>", re.DOTALL)
_TOOL_RESULT_END = "</tool_result>"
_TOOL_RESULT_RE = re.compile(
    r'<tool_result id="[^"]*"(?: name="([^"]*)")?>\n(.*?)\n</tool_result>', re.DOTALL
)
_TOOL_OFFER_RE = re.compile(
    r"^## Calling tools$.*?^<tool_calls>\n(.*?)\n</tool_calls>$", re.DOTALL | re.MULTILINE
)
DEMO_PREFIX = "[demo mode: a canned answer from the bundled emulator, not a model]"
_EOLS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

Outcome = Literal["completed", "cut", "gone"]


class _PeerGone(Exception):
    """The client closed or reset the connection."""


class _HttpError(Exception):
    """A request that cannot be parsed; answered with this status, then the connection is closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- options -----------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Options:
    chunk_size: int
    delay: float
    status: int = 200
    retry_after: int = 1
    cf: bool = False
    format: str = "raw"
    eol: str = "lf"
    rechunk: int | None = None
    split_utf8: bool = False
    repeat: int = 1
    reply_b64: str | None = None
    duration: float | None = None
    first_byte_delay: float = 0.0
    body_delay: float = 0.0
    cut: int | None = None
    cut_mode: str = "fin"
    poison: bool = False
    waf: bool = False
    rotate: str | None = None
    session: str = "auto"
    set_cookie_b64: str | None = None
    demo: bool = False


def _to_int(lo: int, hi: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(f"{value} not in [{lo}, {hi}]")
        return value

    return convert


def _to_seconds(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 3600.0:
        raise ValueError(f"{value} not in [0, 3600]")
    return value


def _to_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _to_choice(*choices: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} not one of {choices}")
        return text

    return convert


def _to_b64(text: str) -> str:
    base64.b64decode(text, validate=True).decode("utf-8")
    return text


def _to_flag(text: str) -> bool:
    """A boolean that may stand alone: `[[emu poison]]` parses as `poison=` (true)."""
    return True if text == "" else _to_bool(text)


def _to_account(text: str) -> str:
    if not _ACCOUNT_RE.fullmatch(text):
        raise ValueError(f"account name {text!r} must match {_ACCOUNT_RE.pattern}")
    return text


def _to_set_cookie_b64(text: str) -> str:
    lines = set_cookie_lines(text)
    for line in lines:
        if "\r" in line:
            raise ValueError("a Set-Cookie value may not hold CR")
        line.encode("latin-1")  # UnicodeEncodeError is a ValueError
    return text


def set_cookie_lines(b64: str | None) -> list[str]:
    """The Set-Cookie header values carried by a `set_cookie_b64` option (one per non-empty line)."""
    if not b64:
        return []
    text = base64.b64decode(b64, validate=True).decode("utf-8")
    return [line.removesuffix("\r") for line in text.split("\n") if line.strip()]


_OPTION_PARSERS: dict[str, Callable[[str], object]] = {
    "status": _to_int(200, 599),
    "retry_after": _to_int(0, 86_400),
    "cf": _to_bool,
    "format": _to_choice("raw", "sse", "json"),
    "eol": _to_choice(*_EOLS),
    "chunk_size": _to_int(1, 1 << 24),
    "rechunk": _to_int(1, 1 << 24),
    "split_utf8": _to_bool,
    "repeat": _to_int(0, 1_000_000),
    "reply_b64": _to_b64,
    "delay": _to_seconds,
    "duration": _to_seconds,
    "first_byte_delay": _to_seconds,
    "body_delay": _to_seconds,
    "cut": _to_int(0, 1 << 40),
    "cut_mode": _to_choice("fin", "rst"),
    "poison": _to_flag,
    "waf": _to_bool,
    "rotate": _to_account,
    "session": _to_choice("auto", "alive", "empty", "error"),
    "set_cookie_b64": _to_set_cookie_b64,
    "demo": _to_flag,
}


def prompt_options(prompt: str) -> dict[str, str]:
    """Raw options of the last `[[emu ...]]` directive in the prompt."""
    matches = _DIRECTIVE_RE.findall(prompt)
    if not matches:
        return {}
    options: dict[str, str] = {}
    for pair in matches[-1].split():
        key, _, value = pair.partition("=")
        options[key] = value
    return options


def cookie_options(cookie: str) -> dict[str, str]:
    """Raw options from cookies named `emu_<key>`."""
    options: dict[str, str] = {}
    for pair in cookie.split(";"):
        name, sep, value = pair.strip().partition("=")
        if sep and name.startswith("emu_") and len(name) > 4:
            options[name[4:]] = value.strip().strip('"')
    return options


def session_token(cookie: str) -> str | None:
    """The value of the NextAuth session cookie in a Cookie header, or None without one."""
    for pair in cookie.split(";"):
        name, sep, value = pair.strip().partition("=")
        if sep and name == SESSION_COOKIE:
            return value.strip()
    return None


def is_poisoned(prompt: str) -> bool:
    """True when any `[[emu ...]]` directive of the prompt (not only the last) says `poison`."""
    for directive in _DIRECTIVE_RE.findall(prompt):
        for pair in directive.split():
            key, _, value = pair.partition("=")
            if key == "poison" and value.lower() in ("", "1", "true", "yes", "on"):
                return True
    return False


def parse_options(raw: dict[str, str], chunk_size: int, delay: float) -> Options:
    """Typed options; raises ValueError naming the offending key."""
    options = Options(chunk_size=chunk_size, delay=delay)
    for key, text in raw.items():
        parser = _OPTION_PARSERS.get(key)
        if parser is None:
            raise ValueError(f"unknown option {key!r}")
        try:
            setattr(options, key, parser(text))
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"option {key}={text!r}: {exc}") from None
    return options


def tool_result_count(prompt: str) -> int:
    """How many tool results the prompt carries: the turn number of a scripted tool round trip."""
    return prompt.count(_TOOL_RESULT_END)


def scripted_reply(prompt: str) -> str | None:
    """The reply an `EMU_REPLY` block scripts for this prompt (rules 1 and 2), or None."""
    blocks: list[tuple[str, str]] = _REPLY_RE.findall(prompt)
    turn = tool_result_count(prompt)
    numbered = [text for number, text in blocks if number and int(number) == turn]
    if numbered:
        return numbered[-1]
    plain = [text for number, text in blocks if not number]
    return plain[-1] if plain else None


def _last_line(prompt: str) -> str:
    stripped = _DIRECTIVE_RE.sub("", _REPLY_RE.sub("", prompt))
    lines = [line.strip() for line in stripped.splitlines() if line.strip()]
    return lines[-1][:_DEFAULT_LINE_CHARS] if lines else ""


def demo_reply(prompt: str) -> str:
    """Demo mode's canned answer (reply rule 4): enough to show a new user text, streaming and a tool
    round trip without a real model. Knows the gateway's prompt format (app/core/tools.py)."""
    results = _TOOL_RESULT_RE.findall(prompt)
    if results:
        name, content = results[-1]
        said = " ".join(content.split())[:_DEFAULT_LINE_CHARS]
        return f"{DEMO_PREFIX} The tool {html.unescape(name) or 'you called'} returned: {said}"
    offer = _TOOL_OFFER_RE.search(prompt)
    if offer:
        call = f"<tool_calls>\n{offer.group(1)}\n</tool_calls>"
        return f"{DEMO_PREFIX} Calling a tool with example arguments.\n{call}"
    return f"{DEMO_PREFIX} Streaming works. You said: {_last_line(prompt)}"


def reply_text(prompt: str, options: Options) -> str:
    scripted = scripted_reply(prompt)
    if scripted is not None:
        text: str = scripted
    elif options.reply_b64 is not None:
        text = base64.b64decode(options.reply_b64).decode("utf-8")
    elif options.demo:
        text = demo_reply(prompt)
    else:
        text = _DEFAULT_REPLY_PREFIX + _last_line(prompt)
    return text * options.repeat


# --- body shaping ------------------------------------------------------------------------------


def _split_at(data: bytes, cuts: set[int]) -> list[bytes]:
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def body_pieces(reply: str, options: Options) -> tuple[str, list[bytes]]:
    """Content-Type and the body split into the pieces written one HTTP chunk each."""
    if options.format == "sse":
        eol = _EOLS[options.eol]
        size = options.chunk_size
        texts = [reply[i : i + size] for i in range(0, len(reply), size)]
        events = ["data: " + json.dumps({"text": t}, ensure_ascii=False) + eol + eol for t in texts]
        events.append("data: [DONE]" + eol + eol)
        content_type = "text/event-stream"
        pieces = [event.encode() for event in events]
    elif options.format == "json":
        content_type = "application/json"
        pieces = [json.dumps({"text": reply}, ensure_ascii=False).encode()]
    else:
        content_type = "text/plain; charset=utf-8"
        data = reply.encode()
        pieces = _split_at(data, set(range(options.chunk_size, len(data), options.chunk_size)))
    if options.rechunk is not None:
        data = b"".join(pieces)
        pieces = _split_at(data, set(range(options.rechunk, len(data), options.rechunk)))
    if options.split_utf8:
        # A lead byte (0b11xxxxxx) starts a multibyte character: cut right after it.
        pieces = [
            part
            for piece in pieces
            for part in _split_at(piece, {i + 1 for i, byte in enumerate(piece) if byte >= 0xC0})
        ]
    return content_type, pieces


# --- canned answers ----------------------------------------------------------------------------


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _error_page(status: int) -> bytes:
    title = f"{status} {_reason(status)}"
    return (
        f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>\n"
        f"<body><center><h1>{title}</h1></center><hr><center>nginx</center></body></html>\n"
    ).encode()


def _cf_page(ray: str) -> bytes:
    return f"""<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>\
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8"><meta http-equiv="X-UA-Compatible" \
content="IE=Edge"><meta name="robots" content="noindex,nofollow"><meta name="viewport" \
content="width=device-width,initial-scale=1"><style>*{{box-sizing:border-box;margin:0;padding:0}}\
html{{line-height:1.15;font-family:system-ui,-apple-system,sans-serif}}</style>\
<meta http-equiv="refresh" content="390"></head><body class="no-js"><div class="main-wrapper" role="main">\
<div class="main-content"><h1 class="zone-name-title h1">gptomni.ai</h1><h2 class="h2" \
id="challenge-running">Checking if the site connection is secure</h2><div id="cf-chl-widget-x7k2p" \
class="cf-chl-widget"></div><noscript><div id="challenge-error-title"><div class="h2"><span \
id="challenge-error-text">Enable JavaScript and cookies to continue</span></div></div></noscript>\
<div id="challenge-body-text" class="core-msg spacer">gptomni.ai needs to review the security of your \
connection before proceeding.</div></div></div><script>(function(){{window._cf_chl_opt={{cvId: '3',\
cZone: "gptomni.ai",cType: 'managed',cRay: '{ray}',cH: 'Zm9vYmFyLWVtdWxhdG9y',\
cUPMDTk: "\\/api\\/chatWithText?__cf_chl_tk=emu.{ray}-0-gaNycGzNDBA",cFPWv: 'g',cTTimeMs: '1000',\
cMTimeMs: '390000',cTplC: 0,cTplV: 5,cTplB: 'cf',cK: "",\
fa: "\\/api\\/chatWithText?__cf_chl_f_tk=emu.{ray}-0-gaNycGzNDBA",md: 'ZW11bGF0b3I',cRq: {{ru: \
'aHR0cHM6Ly9ncHRvbW5pLmFpL2FwaS9jaGF0V2l0aFRleHQ=',ra: 'TW96aWxsYS81LjA=',rm: 'UE9TVA==',d: 'ZW11',\
t: 'MTcwMDAwMDAwMC4wMDAwMDA=',cT: Math.floor(Date.now() / 1000),m: 'ZW11',i1: 'ZW11',i2: 'ZW11',\
zh: 'ZW11',uh: 'ZW11',hh: 'ZW11'}}}};var cpo = document.createElement('script');\
cpo.src = '/cdn-cgi/challenge-platform/h/g/orchestrate/chl_page/v1?ray={ray}';\
window._cf_chl_opt.cOgUHash = location.hash === '' && location.href.indexOf('#') !== -1 ? '#' : \
location.hash;if (window.history && window.history.replaceState) {{var ogU = location.pathname + \
window._cf_chl_opt.cOgUQuery + window._cf_chl_opt.cOgUHash;}}\
document.getElementsByTagName('head')[0].appendChild(cpo);}}());</script></body></html>""".encode()


def _waf_page(ray: str) -> bytes:
    """Cloudflare's WAF block page (error 1020 style): a 403 that is no challenge, so no `cf-chl`,
    `_cf_chl_opt`, `challenge-platform` or "Just a moment" anywhere in it."""
    return f"""<!DOCTYPE html>
<!--[if lt IE 7]> <html class="no-js ie6 oldie" lang="en-US"> <![endif]-->
<!--[if gt IE 8]><!--> <html class="no-js" lang="en-US"> <!--<![endif]-->
<head>
<title>Attention Required! | Cloudflare</title>
<meta charset="UTF-8" />
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
<meta http-equiv="X-UA-Compatible" content="IE=Edge" />
<meta name="robots" content="noindex, nofollow" />
<meta name="viewport" content="width=device-width,initial-scale=1" />
<link rel="stylesheet" id="cf_styles-css" href="/cdn-cgi/styles/cf.errors.css" />
<script>
  if (!navigator.cookieEnabled) {{
    window.addEventListener('DOMContentLoaded', function () {{
      var cookieEl = document.getElementById('cookie-alert');
      cookieEl.style.display = 'block';
    }})
  }}
</script>
</head>
<body>
  <div id="cf-wrapper">
    <div class="cf-alert cf-alert-error cf-cookie-error" id="cookie-alert" data-translate="enable_cookies">\
Please enable cookies.</div>
    <div id="cf-error-details" class="cf-error-details-wrapper">
      <div class="cf-wrapper cf-header cf-error-overview">
        <h1 data-translate="block_headline">Sorry, you have been blocked</h1>
        <h2 class="cf-subheadline"><span data-translate="unable_to_access">You are unable to access</span> \
gptomni.ai</h2>
      </div>
      <div class="cf-section cf-wrapper">
        <div class="cf-columns two">
          <div class="cf-column">
            <h2 data-translate="blocked_why_headline">Why have I been blocked?</h2>
            <p data-translate="blocked_why_detail">This website is using a security service to protect \
itself from online attacks. The action you just performed triggered the security solution. There are several \
actions that could trigger this block including submitting a certain word or phrase, a SQL command or \
malformed data.</p>
          </div>
          <div class="cf-column">
            <h2 data-translate="blocked_resolve_headline">What can I do to resolve this?</h2>
            <p data-translate="blocked_resolve_detail">You can email the site owner to let them know you \
were blocked. Please include what you were doing when this page came up and the Cloudflare Ray ID \
found at the bottom of this page.</p>
          </div>
        </div>
      </div>
      <div class="cf-error-footer cf-wrapper w-240 lg:w-full py-10 sm:py-4 sm:px-8 mx-auto text-center">
        <p class="text-13">
          <span class="cf-footer-item sm:block sm:mb-1">Cloudflare Ray ID: <strong class="font-semibold">\
{ray}</strong></span>
          <span class="cf-footer-separator sm:hidden">&bull;</span>
          <span class="cf-footer-item sm:block sm:mb-1"><span>Performance &amp; security by</span> \
<a rel="noopener noreferrer" href="https://www.cloudflare.com/5xx-error-landing" id="brand_link" \
target="_blank">Cloudflare</a></span>
        </p>
      </div>
    </div>
  </div>
</body>
</html>
""".encode()


def _http_date(when: float) -> str:
    return email.utils.formatdate(when, usegmt=True)


def _iso_date(when: float) -> str:
    stamp = datetime.datetime.fromtimestamp(when, tz=datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def rotation_set_cookie(token: str, now: float) -> str:
    """The Set-Cookie value that hands a rotating account its next session token."""
    expires = _http_date(now + SESSION_DAYS * 86_400)
    return f"{SESSION_COOKIE}={token}; Path=/; Expires={expires}; HttpOnly; Secure; SameSite=Lax"


# --- stats -------------------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.in_flight = 0
        self.connections = 0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.by_cookie: dict[str, int] = {}
        self.by_account: dict[str, int] = {}
        self.by_user_agent: dict[str, int] = {}
        self.request_times: dict[str, deque[float]] = {}
        self.last_requests: deque[dict[str, Any]] = deque(maxlen=_LAST_REQUESTS)
        self.max_in_flight = self.in_flight
        self.completed = 0
        self.cuts = 0
        self.disconnects = 0
        self.disconnect_times: deque[float] = deque(maxlen=_MAX_DISCONNECT_TIMES)
        self.connections_total = 0
        self.session_checks = 0
        self.session_checks_by_cookie: dict[str, int] = {}
        self.rotations = 0
        self.rejected_sessions = 0

    def _entry(
        self, request: Request, cookie: str, prompt: str | None, conn_id: int, now: float
    ) -> dict[str, Any]:
        user_agent = request.headers.get("user-agent")
        if user_agent is not None:
            self.by_user_agent[user_agent] = self.by_user_agent.get(user_agent, 0) + 1
        entry: dict[str, Any] = {
            "time": now,
            "method": request.method,
            "path": request.path,
            "headers": request.headers,
            "cookie": cookie,
            "user_agent": user_agent,
            "prompt": prompt,
            "raw_body": request.body[: _RAW_BODY_CHARS * 4].decode("utf-8", "replace")[:_RAW_BODY_CHARS],
            "conn": conn_id,
            "tool_results": None if prompt is None else tool_result_count(prompt),
            "account": None,
            "status": None,
        }
        self.last_requests.append(entry)
        return entry

    def record(self, request: Request, cookie: str, prompt: str | None, conn_id: int) -> dict[str, Any]:
        """Count one chat request; the entry returned is the one in last_requests (status is filled
        in once the answer is chosen)."""
        now = time.monotonic()
        self.requests += 1
        self.by_cookie[cookie] = self.by_cookie.get(cookie, 0) + 1
        times = self.request_times.get(cookie)
        if times is None:
            times = self.request_times[cookie] = deque(maxlen=_TIMES_PER_COOKIE)
        times.append(now)
        return self._entry(request, cookie, prompt, conn_id, now)

    def record_session_check(self, request: Request, cookie: str, conn_id: int) -> dict[str, Any]:
        """Count one `GET /api/auth/session`: not in requests/by_cookie, which count chat calls only."""
        self.session_checks += 1
        self.session_checks_by_cookie[cookie] = self.session_checks_by_cookie.get(cookie, 0) + 1
        return self._entry(request, cookie, None, conn_id, time.monotonic())

    def count_account(self, account: str) -> None:
        self.by_account[account] = self.by_account.get(account, 0) + 1

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_cookie": self.by_cookie,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "completed": self.completed,
            "disconnects": self.disconnects,
            "disconnect_times": list(self.disconnect_times),
            "now": time.monotonic(),
            "request_times": {cookie: list(times) for cookie, times in self.request_times.items()},
            "last_requests": list(self.last_requests),
            "cuts": self.cuts,
            "connections": self.connections,
            "connections_total": self.connections_total,
            "by_account": self.by_account,
            "by_user_agent": self.by_user_agent,
            "session_checks": self.session_checks,
            "session_checks_by_cookie": self.session_checks_by_cookie,
            "rotations": self.rotations,
            "rejected_sessions": self.rejected_sessions,
        }


@dataclasses.dataclass(slots=True)
class Account:
    """A rotating account's NextAuth session: the current token, and the one before it, which is
    good for one more use."""

    current: str
    previous: str | None = None
    rotations: int = 0
    grace_uses: int = 0
    rejected: int = 0
    session_checks: int = 0


class Sessions:
    """Session tokens of the accounts that opted in to rotation (`emu_rotate=<name>`), by name."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.accounts: dict[str, Account] = {}

    def check(self, name: str, token: str | None) -> bool:
        """Whether `token` is a live session of account `name`; spends the previous token's grace use.

        The first token ever seen for a name is accepted and becomes its current token.
        """
        account = self.accounts.get(name)
        if token:
            if account is None:
                self.accounts[name] = Account(current=token)
                return True
            if token == account.current:
                return True
            if token == account.previous:
                account.previous = None
                account.grace_uses += 1
                return True
        if account is not None:
            account.rejected += 1
        self.stats.rejected_sessions += 1
        return False

    def rotate(self, name: str) -> str:
        """Issue the account's next token; returns the Set-Cookie value that carries it."""
        token = f"emu.{secrets.token_hex(16)}"
        account = self.accounts.get(name)
        if account is None:  # a reset between the check and the answer
            account = self.accounts[name] = Account(current=token)
        else:
            account.previous, account.current = account.current, token
        account.rotations += 1
        self.stats.rotations += 1
        return rotation_set_cookie(token, time.time())

    def as_json(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(account) for name, account in self.accounts.items()}


class _Ticket:
    """The accounting of one chat answer: settled exactly once, by whatever ends the answer first."""

    __slots__ = ("_stats", "outcome")

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self.outcome: Outcome | None = None
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)

    def settle(self, outcome: Outcome) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        stats = self._stats
        stats.in_flight -= 1
        if outcome == "completed":
            stats.completed += 1
        elif outcome == "gone":
            stats.disconnects += 1
            stats.disconnect_times.append(time.monotonic())
        else:
            stats.cuts += 1


# --- HTTP/1.1 connection -----------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


def _decode_header(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _Connection:
    """Buffered reading of requests plus raw writes; the buffer is shared with the peer watcher."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_id: int) -> None:
        self.reader = reader
        self.writer = writer
        self.id = conn_id
        self.buf = bytearray()

    async def _fill(self) -> None:
        data = await self.reader.read(_READ_SIZE)
        if not data:
            raise _PeerGone
        self.buf += data

    async def _read_until(self, sep: bytes, limit: int, what: str) -> bytes:
        start = 0
        while True:
            index = self.buf.find(sep, start)
            if index >= 0:
                data = bytes(self.buf[:index])
                del self.buf[: index + len(sep)]
                return data
            if len(self.buf) > limit:
                raise _HttpError(431 if what == "head" else 400, f"{what} too long")
            start = max(0, len(self.buf) - len(sep) + 1)
            await self._fill()

    async def _read_exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            await self._fill()
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    async def read_request(self) -> Request | None:
        """The next request, or None when the client closed cleanly between requests."""
        while True:
            # Tolerate stray CRLFs between requests (RFC 9112 2.2).
            while self.buf[:2] == b"\r\n":
                del self.buf[:2]
            if self.buf:
                break
            try:
                await self._fill()
            except (_PeerGone, ConnectionError):
                return None
        head = await self._read_until(b"\r\n\r\n", _MAX_HEAD, "head")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise _HttpError(400, "bad request line")
        method = parts[0].decode("ascii", "replace")
        path = parts[1].decode("utf-8", "replace").split("?", 1)[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise _HttpError(400, "bad header line")
            key = name.decode("ascii", "replace").lower()
            text = _decode_header(value.strip())
            if key in headers:
                headers[key] += ("; " if key == "cookie" else ", ") + text
            else:
                headers[key] = text
        connection = headers.get("connection", "").lower()
        keep_alive = "keep-alive" in connection if parts[2] == b"HTTP/1.0" else "close" not in connection
        if headers.get("expect", "").lower() == "100-continue":
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "transfer-encoding" in headers:
            if headers["transfer-encoding"].lower().replace(" ", "") != "chunked":
                raise _HttpError(501, "unsupported transfer-encoding")
            body = await self._read_chunked()
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise _HttpError(400, "bad content-length") from None
            if length < 0:
                raise _HttpError(400, "bad content-length")
            if length > _MAX_BODY:
                raise _HttpError(413, "body too large")
            body = await self._read_exactly(length)
        else:
            body = b""
        return Request(method=method, path=path, headers=headers, body=body, keep_alive=keep_alive)

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = await self._read_until(b"\r\n", _MAX_LINE, "chunk size line")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _HttpError(400, "bad chunk size") from None
            if size < 0 or len(body) + size > _MAX_BODY:
                raise _HttpError(413, "body too large")
            if size == 0:
                while await self._read_until(b"\r\n", _MAX_LINE, "trailer"):
                    pass
                return bytes(body)
            body += await self._read_exactly(size)
            if await self._read_exactly(2) != b"\r\n":
                raise _HttpError(400, "bad chunk terminator")

    async def wait_gone(self) -> None:
        """Return once the client closes or resets; bytes it pipelines meanwhile stay buffered."""
        try:
            while len(self.buf) < _MAX_PIPELINED:
                data = await self.reader.read(_READ_SIZE)
                if not data:
                    return
                self.buf += data
        except (ConnectionError, OSError):
            return
        await asyncio.get_running_loop().create_future()

    async def send(self, data: bytes) -> None:
        # Writing to a closing transport only logs warnings; report it as the disconnect it is.
        if self.writer.transport.is_closing():
            raise _PeerGone
        self.writer.write(data)
        await self.writer.drain()

    async def send_last(self, data: bytes, ticket: _Ticket) -> None:
        """Write an answer's final bytes and settle it before yielding.

        A client that has just read the end and then asks for /_emu/stats must already see it counted.
        """
        if self.writer.transport.is_closing():
            raise _PeerGone
        self.writer.write(data)
        ticket.settle("completed")
        await self.writer.drain()

    async def flush_and_cut(self, mode: str, ticket: _Ticket) -> None:
        transport = self.writer.transport
        # The bytes before the cut must reach the client; a zero high-water mark makes drain() wait
        # for an empty buffer. A client that stops reading does not hold the cut up for long.
        transport.set_write_buffer_limits(high=0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self.writer.drain()
        ticket.settle("cut")
        if mode == "rst":
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()


def _head(status: int, headers: Sequence[tuple[str, str]], keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}", "Date: " + email.utils.formatdate(usegmt=True)]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _full_response(
    status: int,
    body: bytes,
    content_type: str,
    keep_alive: bool,
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra]
    return _head(status, headers, keep_alive) + body


def _json_response(
    status: int, obj: object, keep_alive: bool, extra: Sequence[tuple[str, str]] = ()
) -> bytes:
    return _full_response(status, _json_bytes(obj), "application/json", keep_alive, extra)


# --- server ------------------------------------------------------------------------------------


class Emulator:
    """The emulator server; `start()` binds, `close()` stops it and drops every connection."""

    def __init__(
        self,
        chunk_delay: float = DEFAULT_CHUNK_DELAY,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        *,
        locked: bool = False,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        # Locked (demo mode, reachable by anyone with the public demo key): only the demo answers.
        # Prompts, cookies and faults cannot steer it, nothing is scripted, and /_emu/* is not there.
        self.locked = locked
        self.chunk_delay = chunk_delay
        self.chunk_size = chunk_size
        self.stats = Stats()
        self.sessions = Sessions(self.stats)
        self.faults: dict[str, dict[str, str]] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_conn_id = 0
        self._closing = False
        self._next_ray = 0x8E1F2C3D4B5A0000

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("emulator not started")
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    @property
    def port(self) -> int:
        return self.address[1]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._handle, host, port, backlog=4096, limit=_READ_SIZE, reuse_address=True
        )
        return self.address

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            # Accepted just before close() took its snapshot of handler tasks: nobody would cancel it.
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._next_conn_id += 1
        conn = _Connection(reader, writer, self._next_conn_id)
        self.stats.connections += 1
        self.stats.connections_total += 1
        try:
            while True:
                request = await conn.read_request()
                if request is None or not await self._dispatch(conn, request):
                    break
        except _HttpError as exc:
            with contextlib.suppress(_PeerGone, ConnectionError, OSError):
                await conn.send(_json_response(exc.status, {"error": exc.message}, keep_alive=False))
        except (_PeerGone, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # Shutdown. Ending normally matters: Python 3.11's start_server callback calls
            # task.exception() on the handler task, which raises for a cancelled one.
            pass
        finally:
            self.stats.connections -= 1
            if self._closing:
                writer.transport.abort()  # do not wait at shutdown for a client that stopped reading
            else:
                writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _dispatch(self, conn: _Connection, request: Request) -> bool:
        """Answer one request; False when the connection must end."""
        if request.path == CHAT_PATH and request.method == "POST":
            return await self._chat(conn, request)
        route = (request.method, request.path)
        if route == ("GET", SESSION_PATH):
            await self._session(conn, request)
        elif self.locked:
            body = {"error": "not found", "method": request.method, "path": request.path}
            await conn.send(_json_response(404, body, request.keep_alive))
        elif route == ("GET", "/_emu/health"):
            await conn.send(_json_response(200, {"ok": True}, request.keep_alive))
        elif route == ("GET", "/_emu/stats"):
            stats = self.stats.as_json() | {"sessions": self.sessions.as_json()}
            await conn.send(_json_response(200, stats, request.keep_alive))
        elif route == ("POST", "/_emu/reset"):
            self.stats.reset()
            self.sessions.accounts.clear()
            self.faults.clear()
            await conn.send(_json_response(200, {"ok": True}, request.keep_alive))
        elif route == ("POST", "/_emu/faults"):
            try:
                spec = json.loads(request.body.decode("utf-8"))
                match, options = (
                    str(spec["match"]),
                    {str(k): str(v) for k, v in dict(spec["options"]).items()},
                )
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                await conn.send(_json_response(400, {"error": "bad faults spec"}, request.keep_alive))
                return request.keep_alive
            if options:
                self.faults[match] = options
            else:
                self.faults.pop(match, None)
            await conn.send(_json_response(200, {"ok": True, "faults": self.faults}, request.keep_alive))
        else:
            body = {"error": "not found", "method": request.method, "path": request.path}
            await conn.send(_json_response(404, body, request.keep_alive))
        return request.keep_alive

    async def _chat(self, conn: _Connection, request: Request) -> bool:
        cookie = request.headers.get("cookie", "")
        prompt: str | None = None
        try:
            payload = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("prompt"), str):
            prompt = payload["prompt"]
        entry = self.stats.record(request, cookie, prompt, conn.id)
        ticket = _Ticket(self.stats)
        try:
            answer = self._answer(conn, ticket, request, cookie.strip(), prompt, entry)
            await self._watched(conn, answer)
        finally:
            ticket.settle("gone")
        return ticket.outcome == "completed" and request.keep_alive

    async def _watched(self, conn: _Connection, answer_coro: Coroutine[Any, Any, None]) -> None:
        """Run the answer while watching the client, so a disconnect stops it even during silences.

        Returns when the answer ended or the client went away; the caller settles the rest as gone.
        """
        answer = asyncio.ensure_future(answer_coro)
        watcher = asyncio.ensure_future(conn.wait_gone())
        try:
            await asyncio.wait((answer, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (answer, watcher):
                task.cancel()
            # The watcher must be finished before the next read on this connection.
            await asyncio.wait((answer, watcher))
        if answer.cancelled():
            return
        exc = answer.exception()
        if exc is not None and not isinstance(exc, (_PeerGone, ConnectionError, OSError)):
            raise exc

    def _options(self, raw: dict[str, str], cookie: str) -> Options:
        """Typed options: `raw` (prompt and cookie options), then the faults whose match is in the cookie.
        Locked: the demo answer's options only."""
        if self.locked:
            return parse_options({"demo": "1"}, self.chunk_size, self.chunk_delay)
        for match, fault in self.faults.items():
            if match in cookie:
                raw |= fault
        return parse_options(raw, self.chunk_size, self.chunk_delay)

    async def _answer(
        self,
        conn: _Connection,
        ticket: _Ticket,
        request: Request,
        cookie: str,
        prompt: str | None,
        entry: dict[str, Any],
    ) -> None:
        keep_alive = request.keep_alive

        async def send(status: int, data: bytes) -> None:
            entry["status"] = status
            await conn.send_last(data, ticket)

        if not cookie:
            await send(401, _json_response(401, {"error": "Unauthorized"}, keep_alive))
            return
        if prompt is None:
            await send(400, _json_response(400, {"error": "bad request"}, keep_alive))
            return
        try:
            options = self._options(prompt_options(prompt) | cookie_options(cookie), cookie)
            reply = demo_reply(prompt) if self.locked else reply_text(prompt, options)
        except ValueError as exc:
            body = {"error": "bad emu option", "detail": str(exc)}
            await send(400, _json_response(400, body, keep_alive))
            return
        extra = [("Set-Cookie", line) for line in set_cookie_lines(options.set_cookie_b64)]
        signed_in = options.session != "empty"
        if options.rotate is not None:
            entry["account"] = options.rotate
            self.stats.count_account(options.rotate)
            # Checked on arrival, like the site's auth middleware; the new token comes with the answer.
            signed_in = self.sessions.check(options.rotate, session_token(cookie)) and signed_in
        if options.first_byte_delay:
            await asyncio.sleep(options.first_byte_delay)
        if not signed_in:
            await send(401, _json_response(401, {"error": "Unauthorized"}, keep_alive, extra))
        elif options.poison or (is_poisoned(prompt) and not self.locked):
            await send(500, _full_response(500, _error_page(500), "text/html", keep_alive, extra))
        elif options.waf:
            await send(403, self._waf_response(keep_alive, extra))
        elif options.cf:
            cf_status = options.status if options.status != 200 else 403
            await send(cf_status, self._cf_response(cf_status, keep_alive, extra))
        elif options.status != 200:
            await send(options.status, _status_response(options, keep_alive, extra))
        else:
            if options.rotate is not None:
                extra.append(("Set-Cookie", self.sessions.rotate(options.rotate)))
            entry["status"] = 200
            await self._stream(conn, ticket, options, reply, keep_alive, extra)

    async def _session(self, conn: _Connection, request: Request) -> None:
        """`GET /api/auth/session`: NextAuth's view of the session; `{}` when signed out."""
        keep_alive = request.keep_alive
        cookie = request.headers.get("cookie", "").strip()
        entry = self.stats.record_session_check(request, cookie, conn.id)
        try:
            options = self._options(cookie_options(cookie), cookie)
        except ValueError as exc:
            entry["status"] = 400
            body = {"error": "bad emu option", "detail": str(exc)}
            await conn.send(_json_response(400, body, keep_alive))
            return
        extra = [("Set-Cookie", line) for line in set_cookie_lines(options.set_cookie_b64)]
        if options.session == "error":
            entry["status"] = 500
            await conn.send(_full_response(500, _error_page(500), "text/html", keep_alive, extra))
            return
        entry["status"] = 200
        expired = options.session == "auto" and (options.status in (401, 403) or 300 <= options.status < 400)
        alive = bool(cookie) and options.session != "empty" and not expired
        name = "Emulator User"
        if options.rotate is not None:
            entry["account"] = name = options.rotate
            account = self.sessions.accounts.get(options.rotate)
            if account is not None:
                account.session_checks += 1
            alive = alive and self.sessions.check(options.rotate, session_token(cookie))
            if alive:
                extra.append(("Set-Cookie", self.sessions.rotate(options.rotate)))
        if not alive:
            await conn.send(_json_response(200, {}, keep_alive, extra))
            return
        digest = hashlib.sha256((options.rotate or cookie).encode()).hexdigest()[:12]
        session: dict[str, Any] = {
            "user": {"name": name, "email": f"{digest}@users.emulator.invalid", "image": None},
            "expires": _iso_date(time.time() + SESSION_DAYS * 86_400),
        }
        await conn.send(_json_response(200, session, keep_alive, extra))

    def _waf_response(self, keep_alive: bool, extra: Sequence[tuple[str, str]] = ()) -> bytes:
        self._next_ray += 1
        ray = f"{self._next_ray:016x}"
        headers = [
            ("Server", "cloudflare"),
            ("cf-ray", f"{ray}-SJC"),
            ("Cache-Control", "private, max-age=0, no-store, no-cache, must-revalidate, post-check=0"),
            ("Expires", "Thu, 01 Jan 1970 00:00:01 GMT"),
            ("Referrer-Policy", "same-origin"),
            ("X-Frame-Options", "SAMEORIGIN"),
            *extra,
        ]
        return _full_response(403, _waf_page(ray), "text/html; charset=UTF-8", keep_alive, headers)

    def _cf_response(self, status: int, keep_alive: bool, extra: Sequence[tuple[str, str]] = ()) -> bytes:
        self._next_ray += 1
        ray = f"{self._next_ray:016x}"
        headers = [
            ("Server", "cloudflare"),
            ("cf-mitigated", "challenge"),
            ("cf-ray", f"{ray}-SJC"),
            ("Cache-Control", "private, max-age=0, no-store, no-cache, must-revalidate, post-check=0"),
            ("Cross-Origin-Embedder-Policy", "require-corp"),
            ("Permissions-Policy", "accelerometer=(),camera=(),geolocation=(),microphone=(),usb=()"),
            ("X-Frame-Options", "SAMEORIGIN"),
            *extra,
        ]
        return _full_response(status, _cf_page(ray), "text/html; charset=UTF-8", keep_alive, headers)

    async def _stream(
        self,
        conn: _Connection,
        ticket: _Ticket,
        options: Options,
        reply: str,
        keep_alive: bool,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        content_type, pieces = body_pieces(reply, options)
        delay = options.delay
        if options.duration is not None:
            delay = options.duration / max(1, len(pieces) - 1)
        headers = [
            ("Content-Type", content_type),
            ("Transfer-Encoding", "chunked"),
            ("Cache-Control", "no-cache"),
            *extra,
        ]
        await conn.send(_head(200, headers, keep_alive))
        if options.body_delay:
            await asyncio.sleep(options.body_delay)
        cut = options.cut
        sent = 0
        for index, piece in enumerate(pieces):
            if index and delay:
                await asyncio.sleep(delay)
            if cut is not None and sent + len(piece) >= cut:
                part = piece[: cut - sent]
                if part:
                    await conn.send(b"%x\r\n%b\r\n" % (len(part), part))
                await conn.flush_and_cut(options.cut_mode, ticket)
                return
            await conn.send(b"%x\r\n%b\r\n" % (len(piece), piece))
            sent += len(piece)
        if cut is not None:
            await conn.flush_and_cut(options.cut_mode, ticket)
            return
        await conn.send_last(b"0\r\n\r\n", ticket)


def _status_response(options: Options, keep_alive: bool, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    status = options.status
    if status >= 500:
        return _full_response(status, _error_page(status), "text/html", keep_alive, extra)
    if status == 401:
        return _json_response(status, {"error": "Unauthorized"}, keep_alive, extra)
    if status == 403:
        return _json_response(status, {"message": "Forbidden"}, keep_alive, extra)
    if status == 429:
        body = _json_bytes({"error": "Too Many Requests"})
        headers = [("Retry-After", str(options.retry_after)), *extra]
        return _full_response(status, body, "application/json", keep_alive, headers)
    return _json_response(status, {"error": _reason(status)}, keep_alive, extra)


# --- entry points ------------------------------------------------------------------------------


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    chunk_delay: float = DEFAULT_CHUNK_DELAY,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> None:
    """Run until cancelled; announces the bound address on stdout once listening."""
    emulator = Emulator(chunk_delay=chunk_delay, chunk_size=chunk_size)
    bound_host, bound_port = await emulator.start(host, port)
    sys.stdout.write(f"EMULATOR_LISTENING {bound_host}:{bound_port}\n")
    sys.stdout.flush()
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        await emulator.close()


async def _serve_until_signal(args: argparse.Namespace) -> None:
    task = asyncio.ensure_future(serve(args.host, args.port, args.chunk_delay, args.chunk_size))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _raise_fd_limit() -> None:
    # 1,000 concurrent connections need more descriptors than some default soft limits allow.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gptomni.ai upstream emulator (see module docstring)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--chunk-delay", type=float, default=DEFAULT_CHUNK_DELAY, help="seconds between pieces"
    )
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="bytes per piece")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    args = parser.parse_args(argv)
    if args.chunk_size < 1:
        parser.error("--chunk-size must be >= 1")
    _raise_fd_limit()
    try:
        if args.no_uvloop:
            raise ImportError
        import uvloop
    except ImportError:
        asyncio.run(_serve_until_signal(args))
    else:
        uvloop.run(_serve_until_signal(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
