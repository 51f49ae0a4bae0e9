"""Settings from the environment: credentials, aliases, models, base URL and the API key rule."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from pydantic import ValidationError

from app.config import ConfigError, Settings, parse_aliases, parse_credentials, parse_csv

COOKIE = "__Secure-next-auth.session-token=eyJhbGciOiJkaXIi.SECRETTOKEN..tag; NEXT_LOCALE=zh; _ga=GA1.1.123"
OTHER = "__Secure-next-auth.session-token=eyJ.OTHERTOKEN..tag2; NEXT_LOCALE=en"
PREFIXES = ("API_", "GPTOMNI_", "UPSTREAM_", "AUTH_", "ADMIN_", "CREDENTIAL", "MODEL_", "SERVED_", "PROMPT_")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No gateway setting from the machine, and no `.env` in the working directory."""
    names = {name.upper() for name in Settings.model_fields}
    for key in list(os.environ):
        if key.upper() in names or key.upper().startswith(PREFIXES):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def load(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    env.setdefault("AUTH_DISABLED", "true")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def load_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    """The error messages as main.py shows them (without the input)."""
    with pytest.raises(ValidationError) as info:
        load(monkeypatch, **env)
    return [str(error["msg"]) for error in info.value.errors(include_input=False, include_url=False)]


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch)
    assert settings.gptomni_credentials == []
    assert settings.served_models == ["gptomni"]
    assert settings.model_aliases == {}
    assert settings.gptomni_base_url == "https://gptomni.ai"
    assert settings.prompt_mode == "full"
    assert settings.model_table == {"gptomni": "gptomni"}


class TestCredentials:
    def test_json_list(self, monkeypatch: pytest.MonkeyPatch) -> None:
        raw = json.dumps([COOKIE, f"  {OTHER}  ", COOKIE, "", "   "])
        assert load(monkeypatch, GPTOMNI_CREDENTIALS=raw).gptomni_credentials == [COOKIE, OTHER]

    def test_one_raw_cookie_string(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert load(monkeypatch, GPTOMNI_CREDENTIALS=f"  {COOKIE}\n").gptomni_credentials == [COOKIE]

    @pytest.mark.parametrize("raw", ["", "   ", "[]"])
    def test_empty(self, monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
        assert load(monkeypatch, GPTOMNI_CREDENTIALS=raw).gptomni_credentials == []

    @pytest.mark.parametrize("raw", [f'["{COOKIE}", "{OTHER}"', f"['{COOKIE}']", f'["{COOKIE}",]'])
    def test_invalid_json_list_error_hides_the_cookie(
        self, monkeypatch: pytest.MonkeyPatch, raw: str
    ) -> None:
        messages = load_error(monkeypatch, GPTOMNI_CREDENTIALS=raw)
        assert any("GPTOMNI_CREDENTIALS" in message for message in messages)
        for message in messages:
            assert "SECRETTOKEN" not in message
            assert "OTHERTOKEN" not in message
            assert "session-token" not in message
        with pytest.raises(ConfigError) as info:
            parse_credentials(raw)
        assert "SECRETTOKEN" not in str(info.value)
        assert "session-token" not in str(info.value)

    def test_non_string_item(self, monkeypatch: pytest.MonkeyPatch) -> None:
        messages = load_error(monkeypatch, GPTOMNI_CREDENTIALS=json.dumps([COOKIE, 5]))
        assert any("GPTOMNI_CREDENTIALS[1]" in message for message in messages)

    @pytest.mark.parametrize(
        ("raw", "cookies"),
        [
            (None, []),
            ([COOKIE, " ", COOKIE, OTHER], [COOKIE, OTHER]),
            (json.dumps([OTHER, COOKIE, OTHER]), [OTHER, COOKIE]),
            ("a=1;b=2", ["a=1;b=2"]),
        ],
    )
    def test_parse_credentials(self, raw: Any, cookies: list[str]) -> None:
        assert parse_credentials(raw) == cookies

    def test_parse_credentials_bad_json(self) -> None:
        with pytest.raises(ConfigError):
            parse_credentials("[1")


class TestMasterKey:
    def test_missing_key_refuses_to_start(self, monkeypatch: pytest.MonkeyPatch) -> None:
        messages = load_error(monkeypatch, AUTH_DISABLED="false")
        assert any("API_MASTER_KEY" in m and "AUTH_DISABLED" in m for m in messages)

    def test_blank_key_counts_as_missing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        messages = load_error(monkeypatch, AUTH_DISABLED="false", API_MASTER_KEY="   ")
        assert any("API_MASTER_KEY" in m for m in messages)

    def test_no_env_at_all_refuses(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with pytest.raises(ValidationError, match="API_MASTER_KEY"):
            Settings(_env_file=None)  # type: ignore[call-arg]

    def test_auth_disabled_without_key_works(self, monkeypatch: pytest.MonkeyPatch) -> None:
        settings = load(monkeypatch, AUTH_DISABLED="true")
        assert settings.auth_disabled is True
        assert settings.api_master_key is None

    def test_key_is_kept_secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        settings = load(monkeypatch, AUTH_DISABLED="false", API_MASTER_KEY="sk-very-secret-key-123")
        assert settings.api_master_key is not None
        assert settings.api_master_key.get_secret_value() == "sk-very-secret-key-123"
        assert "sk-very-secret-key-123" not in repr(settings)


class TestModels:
    @pytest.mark.parametrize(
        "raw",
        ["gpt-4o=gptomni", " gpt-4o = gptomni ,", '{"gpt-4o": "gptomni"}', '  {"gpt-4o": " gptomni "}'],
    )
    def test_aliases(self, monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
        settings = load(monkeypatch, MODEL_ALIASES=raw)
        assert settings.model_aliases == {"gpt-4o": "gptomni"}
        assert settings.model_table == {"gptomni": "gptomni", "gpt-4o": "gptomni"}

    def test_several_aliases(self, monkeypatch: pytest.MonkeyPatch) -> None:
        settings = load(monkeypatch, MODEL_ALIASES="gpt-4o=gptomni,gpt-4=gptomni,,gpt-3.5-turbo=gptomni")
        assert settings.model_aliases == {"gpt-4o": "gptomni", "gpt-4": "gptomni", "gpt-3.5-turbo": "gptomni"}

    def test_alias_to_unknown_model(self, monkeypatch: pytest.MonkeyPatch) -> None:
        messages = load_error(monkeypatch, MODEL_ALIASES="gpt-4o=gpt-5")
        assert any("gpt-4o" in m and "gpt-5" in m and "SERVED_MODELS" in m for m in messages)

    @pytest.mark.parametrize(
        "raw", ["gpt-4o", "=gptomni", "gpt-4o=", "gpt-4o=gptomni,broken", '{"a": 1}', '["a"]', "{bad json"]
    )
    def test_malformed_aliases(self, monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
        messages = load_error(monkeypatch, MODEL_ALIASES=raw)
        assert any("MODEL_ALIASES" in m for m in messages)

    @pytest.mark.parametrize(
        ("raw", "aliases"),
        [(None, {}), ("", {}), ({" a ": " b "}, {"a": "b"}), ("x=y, z=w", {"x": "y", "z": "w"})],
    )
    def test_parse_aliases(self, raw: Any, aliases: dict[str, str]) -> None:
        assert parse_aliases(raw) == aliases

    def test_served_models_comma_list(self, monkeypatch: pytest.MonkeyPatch) -> None:
        settings = load(
            monkeypatch, SERVED_MODELS=" gptomni, gptomni-pro ,,", MODEL_ALIASES="gpt-4o=gptomni-pro"
        )
        assert settings.served_models == ["gptomni", "gptomni-pro"]
        assert settings.model_table == {
            "gptomni": "gptomni",
            "gptomni-pro": "gptomni-pro",
            "gpt-4o": "gptomni-pro",
        }

    def test_served_models_json_list(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert load(monkeypatch, SERVED_MODELS='["a", "b"]').served_models == ["a", "b"]

    @pytest.mark.parametrize("raw", ["", " , ,"])
    def test_no_served_model(self, monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
        messages = load_error(monkeypatch, SERVED_MODELS=raw)
        assert any("SERVED_MODELS" in m for m in messages)

    @pytest.mark.parametrize(("raw", "models"), [(None, []), (["a ", " "], ["a"]), ("a,b", ["a", "b"])])
    def test_parse_csv(self, raw: Any, models: list[str]) -> None:
        assert parse_csv(raw) == models


class TestBaseUrl:
    @pytest.mark.parametrize(
        ("raw", "url"),
        [
            ("https://gptomni.ai/", "https://gptomni.ai"),
            ("http://127.0.0.1:9000//", "http://127.0.0.1:9000"),
            ("  https://example.test/base/  ", "https://example.test/base"),
        ],
    )
    def test_trailing_slash_stripped(self, monkeypatch: pytest.MonkeyPatch, raw: str, url: str) -> None:
        assert load(monkeypatch, GPTOMNI_BASE_URL=raw).gptomni_base_url == url

    @pytest.mark.parametrize("raw", ["ftp://gptomni.ai", "gptomni.ai", "//gptomni.ai", ""])
    def test_non_http_rejected(self, monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
        messages = load_error(monkeypatch, GPTOMNI_BASE_URL=raw)
        assert any("GPTOMNI_BASE_URL" in m for m in messages)


def test_prompt_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(monkeypatch, PROMPT_MODE="last_user").prompt_mode == "last_user"
    with pytest.raises(ValidationError):
        load(monkeypatch, PROMPT_MODE="everything")


def test_glob_aliases_resolve_agents_dated_model_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_ALIASES", "claude-*=gptomni,gpt-5*=gptomni,claude-sonnet-4-5=gptomni")
    settings = load(monkeypatch)
    assert settings.resolve_model("claude-sonnet-4-5-20250929") == "gptomni"
    assert settings.resolve_model("claude-haiku-4-5") == "gptomni"
    assert settings.resolve_model("gpt-5.1-codex") == "gptomni"
    assert settings.resolve_model("gptomni") == "gptomni"
    assert settings.resolve_model("gpt-4o") is None
    assert settings.resolve_model("xclaude-1") is None  # a glob matches the whole name
    # Exact names are listed as models; globs are not names.
    assert set(settings.model_table) == {"gptomni", "claude-sonnet-4-5"}


def test_glob_alias_must_point_at_a_served_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_ALIASES", "claude-*=claude")
    with pytest.raises(ValidationError, match="not in SERVED_MODELS"):
        load(monkeypatch)


def test_max_prompt_chars_blank_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_PROMPT_CHARS", " ")
    assert load(monkeypatch).max_prompt_chars is None
    monkeypatch.setenv("MAX_PROMPT_CHARS", "5000")
    assert load(monkeypatch).max_prompt_chars == 5000


@pytest.mark.parametrize("name", ["API_MASTER_KEY", "ADMIN_KEY"])
def test_short_keys_are_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    keys = {
        "AUTH_DISABLED": "false",
        "API_MASTER_KEY": "sk-long-enough-key-1",
        "ADMIN_KEY": "admin-long-enough-1",
    }
    messages = load_error(monkeypatch, **(keys | {name: "short-key-15chr"}))
    assert any(name in m and "shorter than 16" in m for m in messages)
    assert not any("short-key-15chr" in m for m in messages)  # never echoed
    load(monkeypatch, **(keys | {name: "sixteen-chars-ok"}))


def test_the_admin_key_must_differ_from_the_client_key(monkeypatch: pytest.MonkeyPatch) -> None:
    same = "sk-the-very-same-key-0001"
    messages = load_error(monkeypatch, AUTH_DISABLED="false", API_MASTER_KEY=same, ADMIN_KEY=same)
    assert any("ADMIN_KEY equals API_MASTER_KEY" in m for m in messages)
    assert not any(same in m for m in messages)
