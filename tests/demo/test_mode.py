"""Demo mode's rules: `--demo` to the environment, when it applies, and what it fills in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from app.config import ConfigError, Settings
from app.credentials.store import CredentialStore, StoreData, StoreError
from app.demo.mode import (
    DEMO_ADMIN_KEY,
    DEMO_API_KEY,
    DEMO_COOKIE,
    cli_environment,
    demo_banner,
    plan_demo,
    public_keys,
    stored_credentials,
)

COOKIE = "__Secure-next-auth.session-token=real-cookie-value-0001"
USER_KEY = "sk-a-key-the-user-chose-0001"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No gateway setting from the machine, and no `.env` in the working directory."""
    names = {name.upper() for name in Settings.model_fields}
    for key in list(os.environ):
        if key.upper() in names:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# --- the command line ---------------------------------------------------------------------------


def test_demo_flag_becomes_the_environment_variable() -> None:
    assert cli_environment(["--demo"]) == {"DEMO": "true"}
    assert cli_environment([]) == {}


def test_unknown_arguments_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_environment(["--demo", "--port", "9"])
    assert info.value.code == 2
    assert "usage: python main.py" in capsys.readouterr().err


def test_help_names_the_demo_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_environment(["--help"])
    assert info.value.code == 0
    assert "--demo" in capsys.readouterr().out


# --- settings -----------------------------------------------------------------------------------


def test_settings_accept_demo_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO", "true")
    loaded = Settings(_env_file=None)  # type: ignore[call-arg]
    assert loaded.demo is True
    assert loaded.api_master_key is None


def test_settings_still_refuse_no_key_without_demo_and_name_the_demo() -> None:
    with pytest.raises(ValueError, match="API_MASTER_KEY") as info:
        settings()
    assert "--demo" in str(info.value)


# --- when demo mode applies ---------------------------------------------------------------------


def test_not_asked_for_changes_nothing() -> None:
    loaded = settings(api_master_key=USER_KEY)
    plan = plan_demo(loaded, stored=0)
    assert plan.settings is loaded
    assert not plan.active and not plan.ignored


def test_no_credential_anywhere_makes_it_active_with_demo_keys_cookie_and_loopback() -> None:
    plan = plan_demo(settings(demo=True, credentials_file="/somewhere/creds.json"), stored=0)
    assert plan.active and not plan.ignored
    run = plan.settings
    assert run.demo is True
    assert run.gptomni_credentials == [DEMO_COOKIE]
    assert "emu_demo=1" in DEMO_COOKIE  # the emulator's demo answers
    assert run.credentials_file is None  # the demo cookie is never written where a real run reads
    assert run.api_master_key is not None and run.api_master_key.get_secret_value() == DEMO_API_KEY
    assert run.admin_key is not None and run.admin_key.get_secret_value() == DEMO_ADMIN_KEY
    assert run.host == "127.0.0.1"
    assert sorted(public_keys(run)) == sorted([DEMO_API_KEY, DEMO_ADMIN_KEY])


def test_keys_and_host_the_user_set_are_kept() -> None:
    admin = "an-admin-key-the-user-chose"
    plan = plan_demo(settings(demo=True, api_master_key=USER_KEY, admin_key=admin, host="0.0.0.0"), stored=0)
    assert plan.active
    run = plan.settings
    assert run.api_master_key == SecretStr(USER_KEY)
    assert run.admin_key == SecretStr(admin)
    assert run.host == "0.0.0.0"
    assert public_keys(run) == []
    banner = demo_banner(run, "http://127.0.0.1:1234")
    assert USER_KEY not in banner and admin not in banner  # a key the user set is never printed
    assert "your API_MASTER_KEY" in banner and "your ADMIN_KEY" in banner


def test_auth_disabled_gets_no_demo_api_key() -> None:
    run = plan_demo(settings(demo=True, auth_disabled=True), stored=0).settings
    assert run.api_master_key is None
    assert "AUTH_DISABLED" in demo_banner(run, "http://127.0.0.1:1")


def test_the_banner_says_canned_and_how_to_try_it() -> None:
    run = plan_demo(settings(demo=True), stored=0).settings
    banner = demo_banner(run, "http://127.0.0.1:4321")
    assert banner.startswith("DEMO MODE")
    assert "canned" in banner and "http://127.0.0.1:4321" in banner
    assert DEMO_API_KEY in banner and DEMO_ADMIN_KEY in banner
    assert "/admin/" in banner and "/docs" in banner and "GPTOMNI_CREDENTIALS" in banner


@pytest.mark.parametrize(
    ("values", "stored", "where"),
    [
        ({"gptomni_credentials": [COOKIE]}, 0, "1 in GPTOMNI_CREDENTIALS"),
        ({"credentials_file": "/x/creds.json"}, 2, "2 in CREDENTIALS_FILE"),
        ({"redis_url": "redis://127.0.0.1:6379/0"}, 0, "REDIS_URL"),
    ],
)
def test_a_configured_credential_means_ignored_and_the_real_upstream(
    values: dict[str, Any], stored: int, where: str
) -> None:
    loaded = settings(demo=True, api_master_key=USER_KEY, **values)
    plan = plan_demo(loaded, stored=stored)
    assert plan.ignored and not plan.active
    assert any(where in item for item in plan.configured)
    run = plan.settings
    assert run.demo is False  # /v1/models does not say canned
    assert run.gptomni_credentials == loaded.gptomni_credentials
    assert run.credentials_file == loaded.credentials_file
    assert run.gptomni_base_url == "https://gptomni.ai"
    assert run.host == "0.0.0.0"


def test_ignored_without_a_key_is_a_config_error_not_demo_keys() -> None:
    with pytest.raises(ConfigError) as info:
        plan_demo(settings(demo=True, gptomni_credentials=[COOKIE]), stored=0)
    message = str(info.value)
    assert "ignored" in message and "API_MASTER_KEY" in message and "GPTOMNI_CREDENTIALS" in message
    assert COOKIE not in message


# --- the credentials file -----------------------------------------------------------------------


def test_stored_credentials_counts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    assert stored_credentials(None) == 0
    assert stored_credentials(str(path)) == 0  # not there yet
    assert not (tmp_path / "creds.json.lock").exists()  # and nothing created for it
    CredentialStore(path).save(
        StoreData([{"cookie": COOKIE, "state": "active", "changed_at": 1.0}], {"dead000000": 2.0})
    )
    assert stored_credentials(str(path)) == 1


def test_stored_credentials_refuses_a_corrupt_file_without_the_cookie(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    path.write_text('{"credentials": [{"cookie": "' + COOKIE + '", ')
    with pytest.raises(StoreError) as info:
        stored_credentials(str(path))
    assert COOKIE not in str(info.value)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_public_demo_keys_never_listen_on_the_network(host: str) -> None:
    with pytest.raises(ConfigError, match="loopback only"):
        plan_demo(settings(demo=True, host=host), stored=0)
    with pytest.raises(ConfigError, match="loopback only"):  # one public key is enough to refuse
        plan_demo(settings(demo=True, api_master_key=USER_KEY, host=host), stored=0)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_public_demo_keys_on_a_loopback_host_are_fine(host: str) -> None:
    assert plan_demo(settings(demo=True, host=host), stored=0).settings.host == host
