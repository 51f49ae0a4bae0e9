"""The one `Settings` object: every knob, its type, default and meaning.

Read from the environment and `.env`. Nothing else in the project reads `os.environ`; the README's
configuration table mirrors the fields below (a test checks that they stay in step).
"""

from __future__ import annotations

import ipaddress
import json
from fnmatch import fnmatchcase
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.state.link import validate_redis_url
from app.upstream.proxy import validate_proxy

MIN_KEY_LENGTH = 16


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and how to fix it."""


def parse_credentials(raw: str | list[str] | None) -> list[str]:
    """`GPTOMNI_CREDENTIALS` as a JSON list of cookie strings, or one raw cookie string."""
    if raw is None:
        return []
    if isinstance(raw, list):
        items: list[object] = list(raw)
    else:
        text = raw.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as exc:
                # Never echo the text: it holds cookies.
                raise ConfigError(
                    f"GPTOMNI_CREDENTIALS looks like a JSON list but does not parse "
                    f'(line {exc.lineno}, column {exc.colno}); use \'["cookie1", "cookie2"]\''
                ) from None
            if not isinstance(loaded, list):
                raise ConfigError("GPTOMNI_CREDENTIALS must be a JSON list of strings")
            items = loaded
        else:
            items = [text]
    cookies: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(f"GPTOMNI_CREDENTIALS[{index}] must be a string")
        cookie = item.strip()
        if cookie and cookie not in cookies:
            cookies.append(cookie)
    return cookies


def parse_aliases(raw: str | dict[str, str] | None) -> dict[str, str]:
    """`MODEL_ALIASES` as JSON (`{"gpt-4o": "gptomni"}`) or `alias=model,alias2=model`."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return {str(k).strip(): str(v).strip() for k, v in raw.items()}
    text = raw.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"MODEL_ALIASES is not valid JSON: {exc.msg}") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise ConfigError('MODEL_ALIASES must map names to names, e.g. {"gpt-4o": "gptomni"}')
        return {str(k).strip(): v.strip() for k, v in loaded.items()}
    aliases: dict[str, str] = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        alias, sep, target = pair.partition("=")
        if not sep or not alias.strip() or not target.strip():
            raise ConfigError(f"MODEL_ALIASES entry {pair.strip()!r} is not alias=model")
        aliases[alias.strip()] = target.strip()
    return aliases


def parse_csv(raw: str | list[str] | None) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, list):
        return [s.strip() for s in raw if s.strip()]
    text = raw.strip()
    if text.startswith("["):
        loaded = json.loads(text)
        if isinstance(loaded, list):
            return [str(s).strip() for s in loaded if str(s).strip()]
    return [s.strip() for s in text.split(",") if s.strip()]


def parse_rate_limit(raw: str) -> tuple[int, float]:
    """`20/60` -> 20 requests per 60 seconds."""
    count, sep, period = raw.strip().partition("/")
    try:
        requests, seconds = int(count), float(period)
    except ValueError:
        requests, seconds = 0, 0.0
    if not sep or requests < 1 or seconds <= 0:
        raise ConfigError(f"CREDENTIAL_RATE_LIMIT must be N/SECONDS, e.g. 20/60 (got {raw.strip()!r})")
    return requests, seconds


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- access -------------------------------------------------------------------------------
    api_master_key: SecretStr | None = Field(
        default=None, description="The key clients send as `Authorization: Bearer` (or `x-api-key`)."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="More client keys, fixed (JSON list or comma list), without limits; see `/admin/keys`.",
    )
    allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Only these client addresses or CIDRs may call the API (comma-separated). Empty: all.",
    )
    deny_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Client addresses or CIDRs refused with 403 (comma-separated); deny wins over allow.",
    )
    auth_disabled: bool = Field(
        default=False, description="Set to true to serve without a key (only on a trusted network)."
    )

    # --- upstream -----------------------------------------------------------------------------
    gptomni_credentials: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description='Cookie strings, as a JSON list `["cookie1","cookie2"]` or one raw cookie string.',
    )
    gptomni_base_url: str = Field(default="https://gptomni.ai", description="The upstream site.")
    upstream_transport: Literal["curl_cffi", "cloudscraper"] = Field(
        default="curl_cffi", description="HTTP client for the upstream: `curl_cffi` or `cloudscraper`."
    )
    curl_impersonate: str = Field(
        default="chrome", description="Browser that curl_cffi impersonates (TLS and HTTP/2 fingerprint)."
    )
    upstream_connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to connect to the upstream."
    )
    upstream_first_byte_timeout: float = Field(
        default=60.0, gt=0, description="Seconds from sending the prompt to the upstream's first byte."
    )
    upstream_idle_timeout: float = Field(
        default=120.0, gt=0, description="Seconds the upstream may stay silent between two reads."
    )
    upstream_max_attempts: int = Field(
        default=3,
        ge=1,
        description="Credentials tried for one request when one fails before anything reached the client.",
    )
    cloudscraper_threads: int = Field(
        default=64, ge=1, description="Thread pool size of the cloudscraper transport (its stream limit)."
    )

    # --- credential pool ----------------------------------------------------------------------
    admin_key: SecretStr | None = Field(
        default=None, description="Key for the `/admin` API (Bearer). Unset: the admin API is off (404)."
    )
    console_session_ttl: float = Field(
        default=28800.0,
        gt=0,
        description="Seconds a sign-in to the admin console (`/admin/`) lasts before the key is asked again.",
    )
    credentials_file: str | None = Field(
        default=None, description="JSON file the pool is kept in (atomic writes), so it survives restarts."
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="`redis://[:password@]host:port/db` or `rediss://` (TLS): pool, limits, keys and "
        "stored responses shared by every replica. Unset: this process alone (memory + CREDENTIALS_FILE).",
    )
    stream_lease_seconds: float = Field(
        default=15.0,
        gt=0,
        description="With REDIS_URL: a stream's slot lease, renewed while it runs; a dead replica's "
        "slots free up after this long.",
    )
    credential_rate_limit: str | None = Field(
        default=None,
        description="Requests per credential as `N/SECONDS` (e.g. `20/60`): a burst of N, then N per period.",
    )
    rate_limit_wait: float = Field(
        default=5.0,
        ge=0,
        description="Seconds a request waits for a credential under its limit before a 429.",
    )
    max_streams_per_credential: int = Field(
        default=0, ge=0, description="Concurrent requests per credential; 0: no cap."
    )
    cloudflare_cooldown: float = Field(
        default=60.0, ge=0, description="Seconds a Cloudflare-challenged credential rests."
    )
    rate_limit_cooldown: float = Field(
        default=60.0, ge=0, description="Seconds a credential rests after a 429 without `Retry-After`."
    )
    failure_threshold: int = Field(
        default=3, ge=1, description="Consecutive 5xx, connect, time-out or cut-off failures before a rest."
    )
    failure_cooldown: float = Field(
        default=30.0, ge=0, description="Seconds a credential rests after `FAILURE_THRESHOLD` failures."
    )
    max_ejected_percent: int = Field(
        default=50,
        ge=0,
        le=100,
        description="Most credentials (percent; at least one) resting for failure counts at once.",
    )
    session_check_interval: float = Field(
        default=600.0,
        ge=0,
        description="Seconds between checks of each session at the site (0: off); an ended one is invalid.",
    )
    upstream_proxy: SecretStr | None = Field(
        default=None,
        description="Proxy for all upstream traffic (http, https or socks5 URL, may hold user:password).",
    )
    probe_interval: float = Field(
        default=0.0,
        ge=0,
        description="Seconds between re-checks of invalid credentials; 0: no background probe.",
    )

    # --- models and prompt --------------------------------------------------------------------
    served_models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["gptomni"], description="Model ids served, comma-separated."
    )
    model_aliases: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Extra names for served models: `gpt-4o=gptomni,claude-*=gptomni` (globs) or JSON.",
    )
    max_prompt_chars: int | None = Field(
        default=None,
        ge=1,
        description="Longest prompt sent upstream (characters); oldest turns are dropped to fit. Unset: off.",
    )
    responses_ttl: float = Field(
        default=3600.0, gt=0, description="Seconds a stored Responses API response can be continued or read."
    )
    responses_max: int = Field(
        default=10_000,
        ge=1,
        description="Stored Responses API responses kept at most (oldest dropped first).",
    )
    responses_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Bytes of stored Responses API responses (as JSON) kept at most (oldest dropped first).",
    )
    prompt_mode: Literal["full", "last_user"] = Field(
        default="full",
        description="`full`: the whole conversation in the prompt; `last_user`: the last user message only.",
    )

    # --- HTTP surface -------------------------------------------------------------------------
    max_request_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted (bytes); larger gets 413.",
    )
    keepalive_interval: float = Field(
        default=15.0, gt=0, description="Seconds of upstream silence before a `: keep-alive` SSE comment."
    )
    host: str = Field(default="0.0.0.0", description="Address `python main.py` listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `python main.py` listens on.")
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes for `python main.py`.")
    shutdown_grace_seconds: int = Field(
        default=30,
        ge=0,
        description="On SIGTERM, seconds `python main.py` lets requests in flight (streams) finish.",
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest request head (request line and headers) in bytes; larger gets 431.",
    )
    header_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a client has to send a whole request head before it is cut."
    )
    keepalive_timeout: float = Field(
        default=15.0, gt=0, description="Seconds an idle keep-alive connection is kept open."
    )
    max_connections: int | None = Field(
        default=None,
        ge=1,
        description="Open client connections taken; more get a fast 503. Unset: sized from the fd limit.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs or addresses whose X-Forwarded-For is believed (nginx). Empty: nobody's.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")

    # --- demo ---------------------------------------------------------------------------------
    demo: bool = Field(
        default=False,
        description="Demo mode (`python main.py --demo`): with no credential configured, canned answers "
        "from the bundled upstream emulator, demo keys, HOST 127.0.0.1 (app/demo/mode.py).",
    )

    @field_validator("upstream_proxy", mode="before")
    @classmethod
    def _proxy(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            raise ConfigError("UPSTREAM_PROXY must be a proxy URL")
        try:
            return validate_proxy(value.strip())
        except ValueError as exc:
            raise ConfigError(f"UPSTREAM_PROXY: {exc}") from None

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            raise ConfigError("REDIS_URL must be a redis:// or rediss:// URL")
        try:
            return validate_redis_url(value.strip())
        except ValueError as exc:
            raise ConfigError(f"REDIS_URL: {exc}") from None

    @field_validator("api_master_key", "admin_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("gptomni_credentials", mode="before")
    @classmethod
    def _credentials(cls, value: object) -> list[str]:
        if value is None or isinstance(value, (str, list)):
            return parse_credentials(value)
        raise ConfigError("GPTOMNI_CREDENTIALS must be a JSON list of cookie strings")

    @field_validator("trusted_proxies", "allow_ips", "deny_ips", mode="before")
    @classmethod
    def _networks(cls, value: object, info: ValidationInfo) -> list[str]:
        name = (info.field_name or "").upper()
        if value is None or isinstance(value, (str, list)):
            networks = parse_csv(value)
        else:
            raise ConfigError(f"{name} must be a comma-separated list of addresses or CIDRs")
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(f"{name}: {network!r} is not an address or a CIDR") from None
        return networks

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> list[str]:
        if value is None or isinstance(value, (str, list)):
            try:
                keys = parse_csv(value)
            except json.JSONDecodeError:
                raise ConfigError("API_KEYS looks like a JSON list but does not parse") from None
        else:
            raise ConfigError("API_KEYS must be a JSON list or a comma-separated list of keys")
        for index, key in enumerate(keys):
            if len(key) < MIN_KEY_LENGTH:
                raise ConfigError(f"API_KEYS[{index}] is shorter than {MIN_KEY_LENGTH} characters")
        return list(dict.fromkeys(keys))

    @field_validator("max_connections", mode="before")
    @classmethod
    def _auto(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("", "auto") else value

    @field_validator("served_models", mode="before")
    @classmethod
    def _models(cls, value: object) -> list[str]:
        if value is None or isinstance(value, (str, list)):
            return parse_csv(value)
        raise ConfigError("SERVED_MODELS must be a comma-separated list")

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _aliases(cls, value: object) -> dict[str, str]:
        if value is None or isinstance(value, (str, dict)):
            return parse_aliases(value)
        raise ConfigError("MODEL_ALIASES must be alias=model pairs")

    @field_validator("credential_rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_rate_limit(value)
            return value.strip()
        return None

    @field_validator("max_prompt_chars", mode="before")
    @classmethod
    def _blank_is_off(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("credentials_file", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("gptomni_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ConfigError("GPTOMNI_BASE_URL must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.served_models:
            raise ConfigError("SERVED_MODELS must name at least one model")
        for alias, target in self.model_aliases.items():
            if target not in self.served_models:
                raise ConfigError(
                    f"MODEL_ALIASES maps {alias!r} to {target!r}, which is not in SERVED_MODELS"
                )
        # Demo mode fills in public demo keys when it applies (app/demo/mode.py decides).
        if self.api_master_key is None and not self.auth_disabled and not self.demo:
            raise ConfigError(
                "API_MASTER_KEY is not set. Set it (e.g. API_MASTER_KEY=sk-something-long) in the "
                "environment or .env, or set AUTH_DISABLED=true to serve without a key "
                "(or try the gateway with canned answers: python main.py --demo)."
            )
        for name, key in (("API_MASTER_KEY", self.api_master_key), ("ADMIN_KEY", self.admin_key)):
            if key is not None and len(key.get_secret_value()) < MIN_KEY_LENGTH:
                raise ConfigError(
                    f"{name} is shorter than {MIN_KEY_LENGTH} characters: a short key can be guessed. Use "
                    "a long random one: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
        if self.admin_key is not None and (
            (
                self.api_master_key is not None
                and self.admin_key.get_secret_value() == self.api_master_key.get_secret_value()
            )
            or self.admin_key.get_secret_value() in self.api_keys
        ):
            raise ConfigError(
                "ADMIN_KEY equals API_MASTER_KEY or one of API_KEYS: then a client could open /admin. "
                "Give the admin API a key of its own."
            )
        return self

    @property
    def rate_limit(self) -> tuple[int, float] | None:
        return parse_rate_limit(self.credential_rate_limit) if self.credential_rate_limit else None

    @cached_property
    def model_table(self) -> dict[str, str]:
        """Every exact name a client may send, mapped to the served model it means (globs aside)."""
        table = {model: model for model in self.served_models}
        table.update({alias: model for alias, model in self.model_aliases.items() if not is_glob(alias)})
        return table

    @cached_property
    def model_patterns(self) -> list[tuple[str, str]]:
        """The glob aliases (`claude-*`), in the order given."""
        return [(alias, model) for alias, model in self.model_aliases.items() if is_glob(alias)]

    def resolve_model(self, name: str) -> str | None:
        """The served model a client's model name means: an exact name first, then the first glob."""
        served = self.model_table.get(name)
        if served is not None:
            return served
        return next((model for pattern, model in self.model_patterns if fnmatchcase(name, pattern)), None)


def is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def load_settings() -> Settings:
    """Settings from the environment, or a ConfigError that names each bad setting and why.

    Never the value: pydantic's own message would quote it, and it may be a cookie or a key."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            name = "_".join(str(p) for p in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{name}: {message}" if name else message)
        raise ConfigError("; ".join(problems)) from None
