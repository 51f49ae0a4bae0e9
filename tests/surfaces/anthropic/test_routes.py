"""The Anthropic error envelope as an HTTP response, and the paths it is registered for."""

from __future__ import annotations

import json

from app.core.errors import GatewayError
from app.http.errors import renderer_for
from app.surfaces.anthropic.routes import render_error


def test_an_error_response_keeps_its_headers() -> None:
    error = GatewayError(503, "No usable credential.", type="server_error", headers={"Retry-After": "7"})
    response = render_error(error)
    assert response.status_code == 529
    assert response.headers["retry-after"] == "7"
    assert response.headers["content-type"] == "application/json"
    assert json.loads(bytes(response.body)) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "No usable credential."},
    }


def test_the_envelope_covers_messages_and_count_tokens_only() -> None:
    assert renderer_for("/v1/messages") is render_error
    assert renderer_for("/v1/messages/count_tokens") is render_error
    assert renderer_for("/v1/messages/batches") is render_error
    assert renderer_for("/v1/messagesx") is not render_error
    assert renderer_for("/v1/chat/completions") is not render_error
