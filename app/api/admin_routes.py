"""The `/admin` API: list, add, change, remove, probe and reset credentials. Off (404) without
ADMIN_KEY; with it, only that key opens it (the client key does not). Never shows a cookie, only its
id and a masked preview, nor a proxy's password.

With CREDENTIALS_FILE, a change is answered only once it is in the file on disk (`PoolKeeper.commit`):
an answered change survives a crash. When the file cannot be written the answer is a 503
`credentials_not_saved`; the change stays in effect in memory, unsaved, and a later save writes it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from app.core.errors import GatewayError, invalid_request
from app.credentials.keeper import NotSaved, PoolKeeper
from app.credentials.pool import Credential, CredentialPool
from app.credentials.store import encode_store
from app.http.body import read_body
from app.http.deps import AdminKey, ChatServiceDep
from app.http.respond import json_response
from app.upstream.gptomni import validate_user_agent
from app.upstream.proxy import mask_proxy, validate_proxy

ADMIN_BODY_LIMIT = 1024 * 1024


router = APIRouter(prefix="/admin", dependencies=[AdminKey])


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    try:
        moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None  # a time past what a date can say: shown as none, never a 500
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def credential_view(pool: CredentialPool, credential: Credential) -> dict[str, Any]:
    until = pool.cooling_until_wall(credential)
    return {
        "id": credential.id,
        "preview": credential.preview,
        "state": credential.state.value,
        "cooling_until": iso_time(until),
        "rest_reason": credential.rest_reason.value if credential.rest_reason is not None else None,
        "proxy": mask_proxy(credential.proxy) if credential.proxy else None,
        "user_agent": credential.user_agent,
        "session_renewed_at": iso_time(credential.session_renewed_at),
        "session_expires_at": iso_time(credential.session_expires_at),
        "successes": credential.successes,
        "failures": dict(credential.failures),
        "last_error": credential.last_error,
        "last_used": iso_time(credential.last_used),
        "in_flight": credential.in_flight,
    }


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


async def get_keeper(request: Request) -> PoolKeeper | None:
    keeper: PoolKeeper | None = getattr(request.app.state, "keeper", None)
    return keeper if keeper is not None else PoolKeeper.of(request.app.state.pool)


KeeperDep = Annotated[PoolKeeper | None, Depends(get_keeper)]


async def saved(keeper: PoolKeeper | None) -> None:
    """Wait until the changes made so far are in the credentials file; a 503 if they cannot be."""
    if keeper is None:
        return
    try:
        await keeper.commit()
    except NotSaved as exc:
        raise GatewayError(
            503,
            f"The change was not saved: {exc}. It is in effect in this process but would be lost on a "
            "restart; it is written with the next save that succeeds. Retry once the file can be written.",
            type="server_error",
            code="credentials_not_saved",
        ) from None


@router.get("/credentials")
async def list_credentials(pool: PoolDep) -> Response:
    credentials = pool.credentials
    return json_response(
        {
            "object": "list",
            "counts": pool.counts(),
            "data": [credential_view(pool, c) for c in credentials],
        }
    )


@dataclass(frozen=True)
class NewCredential:
    cookie: str
    proxy: str | None = None
    user_agent: str | None = None


def load_object(body: bytes, usage: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid_request("The body must be JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid_request(usage)
    return data


def egress_field(data: dict[str, Any], key: str, param: str) -> str | None:
    """A `proxy` or `user_agent` value: a string (validated), or None for null, empty or absent."""
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise invalid_request(f"'{key}' must be a string or null.", param=param)
    value = value.strip()
    if key == "proxy":
        try:
            return validate_proxy(value)
        except ValueError as exc:
            raise invalid_request(f"Invalid proxy: {exc}", param=param) from None
    try:
        return validate_user_agent(value)
    except ValueError as exc:
        raise invalid_request(f"Invalid User-Agent: {exc}", param=param) from None


ADD_USAGE = (
    'Send {"cookie": "...", "proxy"?: "...", "user_agent"?: "..."} or {"cookies": ["...", ...]} '
    "(each item a cookie string or such an object)."
)


def parse_new_credentials(body: bytes) -> list[NewCredential]:
    """`{"cookie", "proxy"?, "user_agent"?}` or `{"cookies": [...]}`, each a string or such an object."""
    data = load_object(body, ADD_USAGE)
    if "cookies" in data:
        items, prefix = data["cookies"], "cookies"
    elif "cookie" in data:
        items, prefix = [data], None
    else:
        raise invalid_request(ADD_USAGE, param="cookies")
    if not isinstance(items, list) or not items:
        raise invalid_request(ADD_USAGE, param="cookies")
    parsed: list[NewCredential] = []
    for index, item in enumerate(items):
        where = f"{prefix}[{index}]" if prefix else "cookie"
        fields: dict[str, Any] = {"cookie": item} if isinstance(item, str) else item
        if not isinstance(fields, dict):
            raise invalid_request("Each cookie must be a non-empty string.", param=where)
        cookie = fields.get("cookie")
        if isinstance(cookie, str) and any(ord(c) < 32 or ord(c) == 127 for c in cookie.strip()):
            raise invalid_request("A cookie is one line of text, without control characters.", param=where)
        if not isinstance(cookie, str) or not cookie.strip():
            param = f"{where}.cookie" if prefix and isinstance(item, dict) else where
            raise invalid_request("Each cookie must be a non-empty string.", param=param)
        dot = f"{where}." if prefix else ""
        parsed.append(
            NewCredential(
                cookie.strip(),
                egress_field(fields, "proxy", f"{dot}proxy"),
                egress_field(fields, "user_agent", f"{dot}user_agent"),
            )
        )
    return parsed


@router.post("/credentials")
async def add_credentials(request: Request, pool: PoolDep, keeper: KeeperDep) -> Response:
    items = parse_new_credentials(await read_body(request, ADMIN_BODY_LIMIT))
    added: list[Credential] = []
    existing: list[Credential] = []
    for item in items:
        credential, new = pool.add(item.cookie, proxy=item.proxy, user_agent=item.user_agent)
        (added if new else existing).append(credential)
    request.state.audit_targets = [c.id for c in added + existing]
    await saved(keeper)
    added_views = [credential_view(pool, c) for c in added]
    existing_views = [credential_view(pool, c) for c in existing]
    return json_response({"added": added_views, "existing": existing_views}, status=201 if added else 200)


@router.patch("/credentials/{credential_id}")
async def change_credential(
    credential_id: str, request: Request, pool: PoolDep, keeper: KeeperDep
) -> Response:
    """`{"proxy": "..." | null, "user_agent": "..." | null}`: a field left out stays as it is."""
    credential = _found(pool, credential_id)
    usage = 'Send {"proxy": "..." or null, "user_agent": "..." or null}.'
    data = load_object(await read_body(request, ADMIN_BODY_LIMIT), usage)
    unknown = sorted(set(data) - {"proxy", "user_agent"})
    if unknown or not data:
        raise invalid_request(usage, param=unknown[0] if unknown else None)
    proxy = egress_field(data, "proxy", "proxy") if "proxy" in data else credential.proxy
    agent = egress_field(data, "user_agent", "user_agent") if "user_agent" in data else credential.user_agent
    pool.configure(credential, proxy=proxy, user_agent=agent)
    await saved(keeper)
    return json_response(credential_view(pool, credential))


@router.delete("/credentials/{credential_id}")
async def remove_credential(credential_id: str, pool: PoolDep, keeper: KeeperDep) -> Response:
    if pool.get(credential_id) is None and credential_id in pool.removed:
        await saved(keeper)  # a retry after a failed save: 404 only once the removal is on disk
    _found(pool, credential_id)
    pool.remove(credential_id)
    await saved(keeper)
    return json_response({"id": credential_id, "deleted": True})


@router.post("/credentials/{credential_id}/reset")
async def reset_credential(credential_id: str, pool: PoolDep, keeper: KeeperDep) -> Response:
    credential = _found(pool, credential_id)
    pool.reset(credential)
    await saved(keeper)
    return json_response(credential_view(pool, credential))


@router.post("/credentials/{credential_id}/probe")
async def probe_credential(
    credential_id: str, pool: PoolDep, service: ChatServiceDep, keeper: KeeperDep
) -> Response:
    credential = _found(pool, credential_id)
    failure = await service.probe(credential)
    await saved(keeper)  # the state the probe found
    return json_response(
        {
            "ok": failure is None,
            "error": failure.message if failure else None,
            "credential": credential_view(pool, credential),
        }
    )


@router.get("/export")
async def export_pool(request: Request) -> Response:
    """The whole pool and the client keys (hashes), cookies included, in the credentials file's
    format: a backup, and a `CREDENTIALS_FILE` to start from (import into Redis, or embedded).

    Only with the admin key itself, never with a console session: a cookie value never reaches the
    browser, and a stolen session must not be a way to read them all."""
    if getattr(request.state, "console_session", None) is not None:
        raise GatewayError(
            403,
            "The export holds every cookie: it needs the admin key itself (Authorization: Bearer "
            "<ADMIN_KEY>), not a console session.",
            type="permission_error",
            code="admin_key_required",
        )
    data = await request.app.state.backend.export()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Response(
        encode_store(data),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="gptomni2api-pool-{stamp}.json"',
            "Cache-Control": "no-store",
        },
    )
