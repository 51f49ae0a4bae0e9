"""The `/admin` API: list, add, remove, probe and reset credentials. Off (404) without ADMIN_KEY;
with it, only that key opens it (the client key does not). Never shows a cookie, only its id and a
masked preview."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from app.core.errors import GatewayError, invalid_request
from app.credentials.pool import Credential, CredentialPool
from app.http.body import read_body
from app.http.deps import AdminKey, ChatServiceDep

ADMIN_BODY_LIMIT = 1024 * 1024


router = APIRouter(prefix="/admin", dependencies=[AdminKey])


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def credential_view(pool: CredentialPool, credential: Credential) -> dict[str, Any]:
    until = pool.cooling_until_wall(credential)
    return {
        "id": credential.id,
        "preview": credential.preview,
        "state": credential.state.value,
        "cooling_until": _iso(until),
        "successes": credential.successes,
        "failures": dict(credential.failures),
        "last_error": credential.last_error,
        "last_used": _iso(credential.last_used),
        "in_flight": credential.in_flight,
    }


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _found(pool: CredentialPool, credential_id: str) -> Credential:
    credential = pool.get(credential_id)
    if credential is None:
        raise GatewayError(
            404, f"No credential with id '{credential_id}'.", param="id", code="credential_not_found"
        )
    return credential


async def get_pool(request: Request) -> CredentialPool:
    pool: CredentialPool = request.app.state.pool
    return pool


PoolDep = Annotated[CredentialPool, Depends(get_pool)]


@router.get("/credentials")
async def list_credentials(pool: PoolDep) -> Response:
    credentials = pool.credentials
    return _json(
        {
            "object": "list",
            "counts": pool.counts(),
            "data": [credential_view(pool, c) for c in credentials],
        }
    )


def parse_cookies(body: bytes) -> list[str]:
    """`{"cookie": "..."}` or `{"cookies": ["...", ...]}`."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid_request("The body must be JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid_request('Send {"cookie": "..."} or {"cookies": ["...", ...]}.')
    cookies = data.get("cookies", [data["cookie"]] if "cookie" in data else None)
    if not isinstance(cookies, list) or not cookies:
        raise invalid_request('Send {"cookie": "..."} or {"cookies": ["...", ...]}.', param="cookies")
    for index, cookie in enumerate(cookies):
        if not isinstance(cookie, str) or not cookie.strip():
            raise invalid_request("Each cookie must be a non-empty string.", param=f"cookies[{index}]")
    return [c.strip() for c in cookies]


@router.post("/credentials")
async def add_credentials(request: Request, pool: PoolDep) -> Response:
    cookies = parse_cookies(await read_body(request, ADMIN_BODY_LIMIT))
    added: list[dict[str, Any]] = []
    existing: list[dict[str, Any]] = []
    for cookie in cookies:
        credential, new = pool.add(cookie)
        (added if new else existing).append(credential_view(pool, credential))
    return _json({"added": added, "existing": existing}, status=201 if added else 200)


@router.delete("/credentials/{credential_id}")
async def remove_credential(credential_id: str, pool: PoolDep) -> Response:
    _found(pool, credential_id)
    pool.remove(credential_id)
    return _json({"id": credential_id, "deleted": True})


@router.post("/credentials/{credential_id}/reset")
async def reset_credential(credential_id: str, pool: PoolDep) -> Response:
    credential = _found(pool, credential_id)
    pool.reset(credential)
    return _json(credential_view(pool, credential))


@router.post("/credentials/{credential_id}/probe")
async def probe_credential(credential_id: str, pool: PoolDep, service: ChatServiceDep) -> Response:
    credential = _found(pool, credential_id)
    failure = await service.probe(credential)
    return _json(
        {
            "ok": failure is None,
            "error": failure.message if failure else None,
            "credential": credential_view(pool, credential),
        }
    )
