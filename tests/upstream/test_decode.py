"""Incremental decoding of the upstream body: SSE, JSON and raw text, split at any byte."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.upstream.decode import (
    AnswerDecoder,
    JsonDecoder,
    RawTextDecoder,
    SseDecoder,
    decoder_for,
)
from app.upstream.failures import FailureKind, UpstreamFailure


def decode_all(decoder: AnswerDecoder, chunks: Iterable[bytes]) -> str:
    out = "".join(decoder.feed(chunk) for chunk in chunks)
    return out + decoder.finish()


def sse(*chunks: bytes) -> str:
    return decode_all(SseDecoder(), chunks)


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, points: Iterable[int]) -> list[bytes]:
    cuts = sorted(set(points))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


# One stream with every feature the splitting must survive: a comment, a role-only delta, LF,
# CRLF and CR line ends, multi-line data joined by a CRLF (a split between its CR and LF must not
# end the event early), 2-, 3- and 4-byte UTF-8, JSON and raw payloads, [DONE] and data after it.
STREAM = (
    b": keep-alive comment\r\n\r\n"
    b'data: {"choices":[{"delta":{"role":"assistant"}}]}\r\n\r\n'
    b'data: {"text":"h\xc3\xa9llo "}\n\n' + "data: 你好😀\r\r".encode() + b"data: one\r\ndata: two\r\n\r\n"
    b"event: message\nid: 7\ndata: three\rdata: four\r\r"
    b'data: {"content":" end"}\r\n\r\n'
    b"data: [DONE]\r\n\r\n"
    b"data: after done\n\n"
)
STREAM_TEXT = "héllo 你好😀one\ntwothree\nfour end"


class TestSse:
    def test_whole_stream(self) -> None:
        decoder = SseDecoder()
        assert decode_all(decoder, [STREAM]) == STREAM_TEXT
        assert decoder.done

    def test_byte_by_byte(self) -> None:
        decoder = SseDecoder()
        pieces = [decoder.feed(chunk) for chunk in byte_by_byte(STREAM)]
        assert "".join(pieces) + decoder.finish() == STREAM_TEXT
        assert "\ufffd" not in "".join(pieces)

    def test_two_halves_at_every_split_point(self) -> None:
        for point in range(len(STREAM) + 1):
            assert decode_all(SseDecoder(), split_at(STREAM, [point])) == STREAM_TEXT, point

    def test_three_pieces_at_every_pair_of_split_points_around_crlf(self) -> None:
        data = b"data: a\r\ndata: b\r\n\r\ndata: c\r\r"
        for first in range(len(data) + 1):
            for second in range(first, len(data) + 1):
                assert decode_all(SseDecoder(), split_at(data, [first, second])) == "a\nbc"

    def test_crlf_split_between_cr_and_lf_is_one_line_end(self) -> None:
        decoder = SseDecoder()
        assert decoder.feed(b"data: a\r") == ""
        # Were the LF taken as a second line end, "a" would be dispatched as an event of its own.
        assert decoder.feed(b"\ndata: b\r") == ""
        assert decoder.feed(b"\n\r") == "a\nb"
        assert decoder.feed(b"\n") == ""
        assert decoder.finish() == ""

    def test_multibyte_char_split_inside_is_held_back(self) -> None:
        data = "data: 你😀\n\n".encode()
        decoder = SseDecoder()
        assert decoder.feed(data[:7]) == ""  # "data: " and the first byte of 你
        assert decoder.feed(data[7:12]) == ""  # the rest of 你 and half of 😀
        assert decoder.feed(data[12:]) == "你😀"

    @pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
    def test_line_ends(self, eol: str) -> None:
        data = f": hi{eol}data: one{eol}data: two{eol}{eol}data: three{eol}{eol}".encode()
        decoder = SseDecoder()
        assert decoder.feed(data) == "one\ntwothree"
        assert decoder.finish() == ""

    def test_events_are_emitted_as_they_complete(self) -> None:
        decoder = SseDecoder()
        assert decoder.feed(b"data: one\n") == ""
        assert decoder.feed(b"\n") == "one"
        assert decoder.feed(b"data: two\n\n") == "two"

    def test_done_stops_and_later_data_is_ignored(self) -> None:
        decoder = SseDecoder()
        assert decoder.feed(b"data: a\n\ndata: [DONE]\n\ndata: b\n\n") == "a"
        assert decoder.done
        assert decoder.feed(b"data: c\n\n") == ""
        assert decoder.finish() == ""

    def test_done_with_surrounding_space(self) -> None:
        decoder = SseDecoder()
        assert decoder.feed(b"data:  [DONE] \n\ndata: b\n\n") == ""
        assert decoder.done

    def test_not_done_before_done_marker(self) -> None:
        decoder = SseDecoder()
        decoder.feed(b"data: a\n\n")
        assert not decoder.done

    def test_comments_and_other_fields_are_ignored(self) -> None:
        data = b": data: not this\n\nevent: x\nid: 1\nretry: 10\n\n:comment\ndata: yes\n\n"
        assert sse(data) == "yes"

    def test_multi_line_data_joined_with_newline(self) -> None:
        assert sse(b"data: first\ndata: second\ndata:\ndata: fourth\n\n") == "first\nsecond\n\nfourth"

    @pytest.mark.parametrize(
        ("line", "text"),
        [
            (b"data:x", "x"),  # no space after the colon
            (b"data:  x", " x"),  # only one space is stripped
            (b"data: x ", "x "),
        ],
    )
    def test_field_value_spacing(self, line: bytes, text: str) -> None:
        assert sse(line + b"\n\n") == text

    @pytest.mark.parametrize(
        ("payload", "text"),
        [
            ({"text": "a"}, "a"),
            ({"content": "a"}, "a"),
            ({"choices": [{"delta": {"content": "a"}}]}, "a"),
            ({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "a"}}]}, "a"),
            ({"choices": [{"message": {"content": "a"}}]}, "a"),
            ({"choices": [{"text": "a"}]}, "a"),
            ({"delta": {"content": "a"}}, "a"),
            ({"data": {"text": "a"}}, "a"),
            ({"message": {"content": "a"}}, "a"),
            ({"answer": "a", "id": 3}, "a"),
            ({"text": 'a\nb "q" 你'}, 'a\nb "q" 你'),
            ({"text": "ok", "error": None}, "ok"),
            ("a", "a"),  # a JSON string
        ],
    )
    def test_json_payload_shapes(self, payload: object, text: str) -> None:
        data = b"data: " + json.dumps(payload).encode() + b"\n\n"
        assert sse(data) == text

    @pytest.mark.parametrize(
        "payload",
        [
            {"choices": [{"delta": {"role": "assistant"}}]},
            {"choices": [{"delta": {"content": None}, "finish_reason": "stop"}]},
            {"role": "assistant"},
            {"usage": {"prompt_tokens": 1}},
        ],
    )
    def test_dict_without_text_yields_nothing(self, payload: object) -> None:
        data = b"data: " + json.dumps(payload).encode() + b"\n\ndata: next\n\n"
        assert sse(data) == "next"

    @pytest.mark.parametrize(
        ("data", "text"),
        [
            (b"data: hello, world\n\n", "hello, world"),
            (b"data: {not json\n\n", "{not json"),
            (b"data: 42\n\n", "42"),
            (b"data: 3.5\n\n", "3.5"),
        ],
    )
    def test_raw_payload_is_text(self, data: bytes, text: str) -> None:
        assert sse(data) == text

    @pytest.mark.parametrize(
        "payload",
        [
            {"error": {"type": "rate_limit_exceeded", "message": "slow down"}},
            {"error": {"code": "unauthorized"}},
            {"error": "Unauthorized"},
            {"error": True},
            {"error": "Unauthorized", "message": "Session expired, please sign in again"},
        ],
        ids=["typed", "code", "string", "true", "string-with-message"],
    )
    def test_error_object_raises_bad_response(self, payload: object) -> None:
        decoder = SseDecoder()
        assert decoder.feed(b"data: before\n\n") == "before"
        with pytest.raises(UpstreamFailure) as info:
            decoder.feed(b"data: " + json.dumps(payload).encode() + b"\n\n")
        assert info.value.kind is FailureKind.BAD_RESPONSE

    def test_error_message_names_the_kind_not_the_content(self) -> None:
        payload = {"error": {"type": "quota", "message": "secret-ish detail"}}
        with pytest.raises(UpstreamFailure) as info:
            sse(b"data: " + json.dumps(payload).encode() + b"\n\n")
        assert "quota" in info.value.detail
        assert "secret-ish detail" not in info.value.detail

    @pytest.mark.parametrize("tail", [b"", b"\n", b"\r\n", b"\r"])
    def test_last_event_without_blank_line_is_flushed_by_finish(self, tail: bytes) -> None:
        decoder = SseDecoder()
        assert decoder.feed(b"data: first\n\ndata: last" + tail) == "first"
        assert decoder.finish() == "last"
        assert decoder.done

    def test_finish_flushes_a_truncated_multibyte_char_as_replacement(self) -> None:
        decoder = SseDecoder()
        assert decoder.feed("data: a你".encode()[:-1]) == ""
        assert decoder.finish() == "a\ufffd"


TEXT = "中文回答：你好，世界！ Emoji 😀👍🏽🇨🇳 and ascii, é ß ∑."


class TestRaw:
    def test_every_byte_is_text(self) -> None:
        data = b'data: not sse\n\n{"text": 1}'
        assert decode_all(RawTextDecoder(), [data]) == data.decode()

    def test_byte_by_byte(self) -> None:
        decoder = RawTextDecoder()
        pieces = [decoder.feed(chunk) for chunk in byte_by_byte(TEXT.encode())]
        assert "\ufffd" not in "".join(pieces)
        assert "".join(pieces) + decoder.finish() == TEXT

    def test_two_halves_at_every_split_point(self) -> None:
        data = TEXT.encode()
        for point in range(len(data) + 1):
            assert decode_all(RawTextDecoder(), split_at(data, [point])) == TEXT, point

    def test_truncated_multibyte_at_end_becomes_replacement_char(self) -> None:
        decoder = RawTextDecoder()
        assert decoder.feed("ok😀".encode()[:-2]) == "ok"
        assert decoder.finish() == "\ufffd"
        assert decoder.done

    def test_invalid_bytes_are_replaced_not_raised(self) -> None:
        assert decode_all(RawTextDecoder(), [b"a\xffb"]) == "a\ufffdb"


class TestJson:
    def test_whole_answer_only_at_finish(self) -> None:
        data = json.dumps({"choices": [{"message": {"content": "你好 world"}}]}, ensure_ascii=False).encode()
        for point in range(len(data) + 1):
            decoder = JsonDecoder()
            assert decoder.feed(data[:point]) == ""
            assert decoder.feed(data[point:]) == ""
            assert decoder.finish() == "你好 world"
            assert decoder.done

    @pytest.mark.parametrize(
        ("payload", "text"),
        [
            ({"text": "a"}, "a"),
            ({"content": "a"}, "a"),
            ({"response": {"text": "a"}}, "a"),
            ("a", "a"),
        ],
    )
    def test_answer_shapes(self, payload: object, text: str) -> None:
        assert decode_all(JsonDecoder(), [json.dumps(payload).encode()]) == text

    @pytest.mark.parametrize(
        "body",
        [
            b'{"error": {"type": "invalid_session", "message": "expired"}}',
            b'{"error": "Unauthorized"}',
            b'{"error": "Unauthorized", "message": "Session expired, please sign in again"}',
            b"<html><body>Internal error</body></html>",
            b'{"text": "cut off',
            b"",
            b"\xff\xfe",
            b'{"status": "ok"}',
            b"[1, 2]",
            b"42",
        ],
    )
    def test_failures(self, body: bytes) -> None:
        with pytest.raises(UpstreamFailure) as info:
            decode_all(JsonDecoder(), [body])
        assert info.value.kind is FailureKind.BAD_RESPONSE


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("text/event-stream", SseDecoder),
        ("text/event-stream; charset=utf-8", SseDecoder),
        ("Text/Event-Stream;charset=UTF-8", SseDecoder),
        ("  text/event-stream  ", SseDecoder),
        ("application/json", JsonDecoder),
        ("APPLICATION/JSON; charset=utf-8", JsonDecoder),
        ("application/problem+json", JsonDecoder),
        ("text/plain;charset=UTF-8", RawTextDecoder),
        ("text/html", RawTextDecoder),
        ("application/octet-stream", RawTextDecoder),
        ("", RawTextDecoder),
    ],
)
def test_decoder_for(content_type: str, kind: type) -> None:
    decoder = decoder_for(content_type)
    assert type(decoder) is kind
    assert decoder.done is False


# --- properties --------------------------------------------------------------------------------


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    return split_at(data, [cut % (len(data) + 1) for cut in cuts])


@settings(max_examples=300, deadline=None)
@given(text=st.text(), cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_raw_decoding_of_any_split_equals_text(text: str, cuts: list[int]) -> None:
    decoder = RawTextDecoder()
    assert decode_all(decoder, _chunks(text.encode(), cuts)) == text


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.tuples(st.text(), st.sampled_from(["\n", "\r\n", "\r"])), max_size=8),
    done=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_sse_encoding_of_pieces_decodes_to_their_concatenation(
    events: list[tuple[str, str]], done: bool, cuts: list[int]
) -> None:
    body = "".join(
        f"data: {json.dumps({'text': piece}, ensure_ascii=False)}{eol}{eol}" for piece, eol in events
    )
    if done:
        body += 'data: [DONE]\n\ndata: {"text": "never"}\n\n'
    decoder = SseDecoder()
    assert decode_all(decoder, _chunks(body.encode(), cuts)) == "".join(piece for piece, _ in events)
    assert decoder.done


@pytest.mark.parametrize("decoder", [SseDecoder, JsonDecoder], ids=["sse", "json"])
def test_an_escaped_lone_surrogate_becomes_a_replacement_character(decoder: type[AnswerDecoder]) -> None:
    # JSON may escape half a UTF-16 pair; no client encoder takes it, so it must not reach one.
    body = (
        b'data: {"text": "a\\ud800b \\ud83d\\ude00"}\n\n'
        if decoder is SseDecoder
        else b'{"text": "a\\ud800b \\ud83d\\ude00"}'
    )
    instance = decoder()
    text = instance.feed(body) + instance.finish()
    assert text == "a\ufffdb \U0001f600"
    text.encode("utf-8")
