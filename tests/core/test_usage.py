"""Token counts estimated without a tokenizer."""

from __future__ import annotations

import math

import pytest

from app.core.events import Usage
from app.core.usage import REPLY_PRIMING, estimate_prompt_tokens, estimate_tokens, usage


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("a", 1),
        ("abcd", 1),
        ("abcde", 2),
        ("Hello, world!", 4),  # 13 characters
        ("你好世界", 4),  # Han: one each
        ("こんにちは", 5),  # kana
        ("カタカナ", 4),
        ("안녕하세요", 5),  # Hangul
        ("你好ab", 3),  # 2 CJK + ceil(2 / 4)
        ("你好，世界！", 6),  # fullwidth punctuation counts as CJK
        ("😀", 1),
        ("\n\n\n\n\n", 2),
    ],
)
def test_estimate_tokens(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_english_is_about_a_quarter_of_the_characters() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 40
    assert estimate_tokens(text) == math.ceil(len(text) / 4)


def test_chinese_is_one_per_character() -> None:
    text = "人工智能正在改变世界" * 30
    assert estimate_tokens(text) == len(text)


def test_prompt_estimate_adds_reply_priming() -> None:
    assert REPLY_PRIMING == 3
    assert estimate_prompt_tokens("") == 3
    assert estimate_prompt_tokens("abcd") == 4
    assert estimate_prompt_tokens("User: 你好") == estimate_tokens("User: 你好") + 3


def test_usage_totals() -> None:
    assert usage(10, "abcdefgh") == Usage(prompt_tokens=10, completion_tokens=2)
    assert usage(10, "abcdefgh").total_tokens == 12
    assert usage(7, "") == Usage(prompt_tokens=7, completion_tokens=0)
