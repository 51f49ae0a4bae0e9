"""Token counts, estimated without a tokenizer (no tokenizer file may be downloaded at run time).

The estimate: one token per CJK character (Han, kana, Hangul: BPE tokenizers spend about one each),
and one per four other characters, rounded up. The prompt is counted as the rendered prompt sent
upstream (role labels included) plus 3 tokens of reply priming, as OpenAI's counting recipe adds.
Good to within about 20% for English and Chinese text.
"""

from __future__ import annotations

import re

from app.core.events import Usage

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
REPLY_PRIMING = 3


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    other = len(text) - cjk
    return cjk + (other + 3) // 4


def estimate_prompt_tokens(prompt: str) -> int:
    return estimate_tokens(prompt) + REPLY_PRIMING


def usage(prompt_tokens: int, completion_text: str) -> Usage:
    return Usage(prompt_tokens, estimate_tokens(completion_text))
