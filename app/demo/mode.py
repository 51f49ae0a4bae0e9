"""When demo mode applies, and the settings the gateway then runs with.

`--demo` (or `DEMO=true`) applies only while no credential is configured: no cookie in
`GPTOMNI_CREDENTIALS`, none in `CREDENTIALS_FILE`, no shared pool (`REDIS_URL`). Then the upstream is
the bundled emulator, the pool holds one demo cookie and is saved nowhere, and the keys not set are
the public demo keys below: they exist only in demo mode, which is why they may be printed in the log,
and demo mode listens on 127.0.0.1 unless HOST is set, so nothing is exposed. With a credential
configured, the request is ignored (the real upstream is used) and the keys must be set as usual.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from app.config import ConfigError, Settings
from app.credentials.store import CredentialStore

DEMO_API_KEY = "sk-demo-gptomni-2api"
DEMO_ADMIN_KEY = "demo-admin-gptomni-2api"
# `emu_demo=1` asks the emulator for its demo answers (app/demo/emulator.py, reply rule 4).
DEMO_COOKIE = "__Secure-next-auth.session-token=demo-session; emu_demo=1"
DEMO_HOST = "127.0.0.1"
# What /v1/models says each model is owned by in demo mode.
DEMO_OWNER = "gptomni-2api demo mode: canned answers, no model"


def cli_environment(argv: Sequence[str]) -> dict[str, str]:
    """The environment variables `python main.py [--demo]` sets before the settings load.

    An environment variable, not a value in memory: uvicorn imports `main:app` again, in this
    process and in each worker process, and they all read the same settings from the environment.
    Exits with a usage message (2) on an unknown argument, and prints the help on `--help`."""
    parser = argparse.ArgumentParser(
        prog="python main.py",
        description="gptomni-2api. Settings come from the environment or .env (see the README).",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="demo mode, the same as DEMO=true: with no cookie configured, canned answers from the "
        "bundled upstream emulator",
    )
    args = parser.parse_args(list(argv))
    return {"DEMO": "true"} if args.demo else {}


def configured_credentials(settings: Settings, stored: int) -> list[str]:
    """Where credentials are configured, in words (empty: none is, so demo mode may apply).
    `stored` is how many credentials `CREDENTIALS_FILE` holds."""
    found = []
    if settings.gptomni_credentials:
        found.append(f"{len(settings.gptomni_credentials)} in GPTOMNI_CREDENTIALS")
    if stored:
        found.append(f"{stored} in CREDENTIALS_FILE")
    if settings.redis_url is not None:
        found.append("REDIS_URL (the shared pool)")
    return found


def stored_credentials(path: str | None) -> int:
    """How many credentials the credentials file holds; 0 without one. Raises StoreError when it is
    corrupt (the message names the file, never a cookie)."""
    if path is None or not Path(path).exists():
        return 0
    data = CredentialStore(path).load()
    return 0 if data is None else len(data.credentials)


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """What the gateway runs with. `active`: the emulator is the upstream (then `settings.demo` is
    true). `ignored`: demo mode was asked for, but credentials are configured (`configured` says
    where), so the real upstream is used (then `settings.demo` is false)."""

    settings: Settings
    configured: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.settings.demo

    @property
    def ignored(self) -> bool:
        return bool(self.configured)


def plan_demo(settings: Settings, stored: int) -> DemoPlan:
    """The settings to run with, given those loaded and the credentials file's count. Raises
    ConfigError when demo mode is ignored and no API key is set (demo keys only exist in demo mode)."""
    if not settings.demo:
        return DemoPlan(settings)
    configured = configured_credentials(settings, stored)
    if configured:
        if settings.api_master_key is None and not settings.auth_disabled:
            raise ConfigError(
                f"--demo (DEMO=true) is ignored because credentials are configured "
                f"({', '.join(configured)}): the real upstream is used, so API_MASTER_KEY must be set "
                "(demo keys exist only in demo mode)."
            )
        return DemoPlan(settings.model_copy(update={"demo": False}), configured=configured)
    update: dict[str, object] = {
        "gptomni_credentials": [DEMO_COOKIE],
        "credentials_file": None,  # the demo cookie must never land in a file a later real run reads
    }
    if settings.api_master_key is None and not settings.auth_disabled:
        update["api_master_key"] = SecretStr(DEMO_API_KEY)
    if settings.admin_key is None:
        update["admin_key"] = SecretStr(DEMO_ADMIN_KEY)
    if "host" not in settings.model_fields_set:
        update["host"] = DEMO_HOST
    elif not is_loopback(settings.host) and {"api_master_key", "admin_key"} & update.keys():
        # The demo keys are public: with them, the gateway must not be reachable from the network
        # (the Docker image sets HOST=0.0.0.0; the console could export a cookie pasted meanwhile).
        raise ConfigError(
            f"demo mode with the public demo keys listens on loopback only, not HOST={settings.host}: "
            "set API_MASTER_KEY and ADMIN_KEY of your own to run the demo on the network"
        )
    return DemoPlan(settings.model_copy(update=update))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def demo_banner(settings: Settings, upstream_url: str) -> str:
    """The loud start-up line of demo mode: answers are canned, and how to try it. The demo keys
    are printed because they are public and exist only in demo mode; a key the user set is not."""
    api_key = _shown(settings.api_master_key, DEMO_API_KEY, "your API_MASTER_KEY")
    admin_key = _shown(settings.admin_key, DEMO_ADMIN_KEY, "your ADMIN_KEY")
    auth = "no key (AUTH_DISABLED=true)" if settings.auth_disabled else f"API key {api_key}"
    return (
        f"DEMO MODE: every answer is canned, from the bundled upstream emulator at {upstream_url}; "
        "no request goes to gptomni.ai and nothing is saved. "
        f"Clients: {auth}, any model in /v1/models. Console: /admin/ with admin key {admin_key}. "
        "API reference: /docs. For real answers, add your gptomni.ai cookie to GPTOMNI_CREDENTIALS "
        "(see the README) and start without --demo."
    )


def _shown(key: SecretStr | None, public: str, otherwise: str) -> str:
    return public if key is not None and key.get_secret_value() == public else otherwise


def public_keys(settings: Settings) -> list[str]:
    """The demo keys in use: public, so they need not (and, to be printed, must not) be redacted."""
    return [
        key.get_secret_value()
        for key, public in ((settings.api_master_key, DEMO_API_KEY), (settings.admin_key, DEMO_ADMIN_KEY))
        if key is not None and key.get_secret_value() == public
    ]
