"""`/admin/keys`: named client keys. Create (the key is shown once, only its hash is kept), list with
limits and usage, change limits or disable, revoke. Behind ADMIN_KEY like the rest of `/admin`; a
change is answered once it is saved, as for credentials."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from app.api.admin_routes import ADMIN_BODY_LIMIT, KeeperDep, iso_time, load_object, saved
from app.core.errors import GatewayError, invalid_request
from app.http.body import read_body
from app.http.deps import AdminKey
from app.http.respond import json_response
from app.keys.registry import EDITABLE, ClientKey, KeyFieldError, KeyRegistry

router = APIRouter(prefix="/admin", dependencies=[AdminKey])
FIELDS = EDITABLE  # what PATCH may change; create takes all but `disabled`


def key_view(key: ClientKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "source": key.source,
        "rpm": key.rpm,
        "max_streams": key.max_streams,
        "models": key.models,
        "expires_at": iso_time(key.expires_at),
        "disabled": key.disabled,
        "created_at": iso_time(key.created_at),
        "last_used": iso_time(key.last_used),
        "usage": key.usage.to_record(),
    }


async def get_registry(request: Request) -> KeyRegistry:
    registry: KeyRegistry = request.app.state.keys
    return registry


RegistryDep = Annotated[KeyRegistry, Depends(get_registry)]


def _fields(body: bytes, *, creating: bool) -> dict[str, Any]:
    usage = (
        'Send {"name", "rpm"?, "max_streams"?, "models"?, "expires_at"?'
        + ("" if creating else ', "disabled"?')
        + "}."
    )
    data = load_object(body, usage)
    if not creating and not data:
        raise invalid_request(usage)
    allowed = FIELDS if not creating else FIELDS[:-1]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise invalid_request(f"Unknown field '{unknown[0]}'. {usage}", param=unknown[0])
    if creating and "name" not in data:
        raise invalid_request(f"Missing required parameter: 'name'. {usage}", param="name")
    if "expires_at" in data and data["expires_at"] is not None:
        data["expires_at"] = _timestamp(data["expires_at"])
    return data


def _timestamp(value: Any) -> float:
    """`expires_at` as epoch seconds (a number) or an ISO 8601 date-time ("2027-01-01T00:00:00Z")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()
    raise invalid_request("'expires_at' must be an ISO 8601 date-time or epoch seconds.", param="expires_at")


def _found(registry: KeyRegistry, key_id: str) -> ClientKey:
    key = registry.get(key_id)
    if key is None:
        raise GatewayError(404, f"No client key with id '{key_id}'.", param="id", code="key_not_found")
    return key


def _fixed(key: ClientKey) -> None:
    if key.source == "env":
        raise GatewayError(
            409,
            f"The key '{key.name}' comes from API_KEYS in the environment: change it there.",
            code="key_from_environment",
        )


@router.post("/keys")
async def create_key(request: Request, registry: RegistryDep, keeper: KeeperDep) -> Response:
    fields = _fields(await read_body(request, ADMIN_BODY_LIMIT), creating=True)
    try:
        key, secret = registry.create(**fields)
    except KeyFieldError as exc:
        raise invalid_request(str(exc), param=exc.field) from None
    request.state.audit_targets = [key.id]
    try:
        await saved(keeper)
    except GatewayError:
        registry.delete(key.id)  # nobody would hold its secret: it must not stay live
        raise
    return json_response({**key_view(key), "key": secret}, status=201)


@router.get("/keys")
async def list_keys(registry: RegistryDep) -> Response:
    return json_response({"object": "list", "data": [key_view(key) for key in registry.list()]})


@router.get("/keys/{key_id}")
async def get_key(key_id: str, registry: RegistryDep) -> Response:
    return json_response(key_view(_found(registry, key_id)))


@router.patch("/keys/{key_id}")
async def change_key(key_id: str, request: Request, registry: RegistryDep, keeper: KeeperDep) -> Response:
    _fixed(_found(registry, key_id))
    fields = _fields(await read_body(request, ADMIN_BODY_LIMIT), creating=False)
    try:
        key = registry.patch(key_id, **fields)
    except KeyFieldError as exc:
        raise invalid_request(str(exc), param=exc.field) from None
    await saved(keeper)
    return json_response(key_view(key))


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, registry: RegistryDep, keeper: KeeperDep) -> Response:
    _fixed(_found(registry, key_id))
    registry.delete(key_id)
    await saved(keeper)
    return json_response({"id": key_id, "deleted": True})
