"""`GatewayError`: an error a client should see, as data. Each surface writes it in its own envelope.

`type` and `code` use OpenAI's vocabulary (the gateway's first dialect); other surfaces map `status`
and `type` to their own words.
"""

from __future__ import annotations


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.code or self.type}: {self.message!r})"


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, type="invalid_request_error", param=param, code=code)
