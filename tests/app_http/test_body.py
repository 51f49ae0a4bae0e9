"""The JSON nesting limit shared by the surfaces that echo parts of a request back (app/http/body.py).

This folder is not called `http`: the emulator runs as a script from tests/, where a package of that
name would shadow the standard library's."""

from __future__ import annotations

from typing import Any

import orjson

from app.http.body import MAX_JSON_DEPTH, too_deep


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for index in range(levels):
        value = {"a": value} if index % 2 else [value]
    return value


def test_depth_is_counted_in_containers() -> None:
    assert not too_deep("scalar", limit=0)
    assert not too_deep(nested(3), limit=3)
    assert too_deep(nested(4), limit=3)
    assert not too_deep({"a": [], "b": {"c": 1}}, limit=2)  # an empty container is a level
    assert too_deep({"a": [], "b": {"c": [[]]}}, limit=3)


def test_the_default_limit_keeps_anything_accepted_encodable() -> None:
    assert not too_deep(nested(MAX_JSON_DEPTH))
    assert too_deep(nested(MAX_JSON_DEPTH + 1))
    orjson.dumps({"echoed": {"tools": [nested(MAX_JSON_DEPTH)]}})  # the encoder's own limit is 254


def test_a_very_deep_value_does_not_recurse() -> None:
    assert too_deep(nested(5000))
