"""The README's Python examples, run as pasted (only the address swapped for a test gateway's),
against the gateway and the emulator: they must work when a user copies them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Emulator, gateway_settings

README = (ROOT / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
README_KEY = "sk-pick-a-long-key"


def test_the_readme_has_python_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_python_example_runs_as_pasted(
    index: int, start_gateway: Any, emulator: Emulator, tmp_path: Path
) -> None:
    gw = start_gateway(
        gateway_settings(emulator, ["session=readme-cookie-000000"], API_MASTER_KEY=README_KEY)
    )
    code = EXAMPLES[index]
    assert "http://localhost:8000" in code  # with /v1 for the OpenAI SDK; the Anthropic SDK adds it
    script = tmp_path / "example.py"
    script.write_text(code.replace("http://localhost:8000", gw.url))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Hello from the gptomni emulator" in result.stdout  # it printed the model's answer
