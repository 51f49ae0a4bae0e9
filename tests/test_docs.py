"""The README is the user's manual: its configuration table, `.env.example` and its test command
must match the code and CI."""

from __future__ import annotations

import re

from app.config import Settings
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
# Settings read by other programs than the app: Docker Compose and nginx.
DEPLOYMENT_ONLY = {"NGINX_PORT", "GATEWAY_SUBNET"}


def setting_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def table_rows() -> dict[str, str]:
    rows = {}
    for line in README.splitlines():
        match = re.match(r"^\| `([A-Z0-9_]+)` \| (.*?) \|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_every_setting_has_a_row_and_every_row_a_setting() -> None:
    rows = set(table_rows())
    assert setting_names() - rows == set(), "settings missing from the README's table"
    assert rows - setting_names() - DEPLOYMENT_ONLY == set(), "README rows for settings that do not exist"


def test_table_defaults_match_the_code() -> None:
    rows = table_rows()
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        cell = rows[name.upper()]
        if default is None or default == [] or default == {}:
            assert cell.startswith("*("), f"{name.upper()}: {cell} should say there is no default"
            continue
        if isinstance(default, list):
            default = ",".join(default)
        if isinstance(default, bool):
            default = str(default).lower()
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        assert cell == f"`{default}`", f"{name.upper()}: README says {cell}, the code says {default!r}"


def test_every_setting_is_in_env_example() -> None:
    example = (ROOT / ".env.example").read_text()
    for name in setting_names():
        assert re.search(rf"^#? ?{name}=", example, re.MULTILINE), f"{name} missing from .env.example"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    match = re.search(r"\*\*Run the tests\*\*.*?```bash\n(.+?)\n```", README, re.DOTALL)
    assert match, "README has no test command block"
    command = match.group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == command


def test_readme_start_command_is_the_one_tested() -> None:
    match = re.search(r"\*\*Start the service\*\*.*?```bash\n(.+?)\n```", README, re.DOTALL)
    assert match
    # The first of the quick start's two commands; tests/e2e/test_quickstart.py runs it as written.
    first = "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python main.py"
    first += " --demo"
    assert match.group(1).strip() == first
