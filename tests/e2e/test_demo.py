"""Demo mode as a new user meets it: `python main.py --demo` (a real process) with no cookie and no
key answers, streams and calls tools from the bundled emulator, opens the console with the demo admin
key, and says loudly that its answers are canned. With a credential configured `--demo` is ignored
and says so; without `--demo` and without a cookie, the 503 names both ways forward."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.credentials.store import CredentialStore, StoreData
from app.demo.mode import DEMO_ADMIN_KEY, DEMO_API_KEY
from tests.conftest import MASTER_KEY, ROOT, Emulator
from tests.deploy.processes import MainProcess

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
BANNER = re.compile(r"WARNING gptomni2api: DEMO MODE: .*emulator at (http://127\.0\.0\.1:\d+)")


def main_run(workdir: Path, args: list[str], env: dict[str, str], *, name: str) -> MainProcess:
    """`python main.py <args>` from a clean directory, PORT free, HOST unset unless given."""
    return MainProcess(workdir, env, name=name, args=tuple(args), host=env.get("HOST"), wait=False)


def openai_client(run: MainProcess, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{run.url}/v1", api_key=api_key, max_retries=0, timeout=30.0)


def emulators_in(log: str) -> list[str]:
    """The demo emulator's URL from each banner (one per worker process)."""
    return BANNER.findall(log)


def assert_gone(url: str) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_emu/health", timeout=2)


def test_demo_flag_answers_streams_calls_tools_opens_the_console_and_says_canned(tmp_path: Path) -> None:
    run = main_run(tmp_path, ["--demo"], {}, name="demo").wait_ready()
    try:
        log = run.log()
        assert len(emulators_in(log)) == 1, log
        assert "canned" in log and DEMO_API_KEY in log and DEMO_ADMIN_KEY in log  # how to try it
        assert f"Uvicorn running on http://127.0.0.1:{run.port}" in log  # loopback unless HOST is set
        client = openai_client(run, DEMO_API_KEY)

        models = client.models.list().data
        assert models and all("canned" in model.owned_by for model in models)

        answer = client.chat.completions.create(
            model="gptomni", messages=[{"role": "user", "content": "hello demo"}]
        )
        text = answer.choices[0].message.content or ""
        assert "canned" in text and text.endswith("hello demo")

        pieces = [
            chunk.choices[0].delta.content
            for chunk in client.chat.completions.create(
                model="gptomni", messages=[{"role": "user", "content": "stream please"}], stream=True
            )
            if chunk.choices and chunk.choices[0].delta.content
        ]
        assert len(pieces) >= 3  # it streams, piece by piece
        assert "canned" in "".join(pieces)

        question = [{"role": "user", "content": "Weather in Paris?"}]
        first = client.chat.completions.create(model="gptomni", messages=question, tools=[WEATHER_TOOL])
        assert first.choices[0].finish_reason == "tool_calls"
        calls = first.choices[0].message.tool_calls or []
        assert [call.function.name for call in calls] == ["get_weather"]
        assert "city" in json.loads(calls[0].function.arguments)
        turn: list[Any] = [
            *question,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": calls[0].id, "content": "Sunny, 24 C"},
        ]
        second = client.chat.completions.create(model="gptomni", messages=turn, tools=[WEATHER_TOOL])
        assert second.choices[0].finish_reason == "stop"
        assert "returned: Sunny, 24 C" in (second.choices[0].message.content or "")

        # The console: its page, a sign-in with the demo admin key, the demo credential in the pool.
        assert httpx.get(f"{run.url}/admin/", timeout=5).status_code == 200
        signed_in = httpx.post(f"{run.url}/admin/session", json={"key": DEMO_ADMIN_KEY}, timeout=5)
        assert signed_in.status_code == 200 and signed_in.json()["signed_in"] is True
        pool = httpx.get(
            f"{run.url}/admin/credentials", headers={"Authorization": f"Bearer {DEMO_ADMIN_KEY}"}, timeout=5
        ).json()
        assert pool["counts"]["active"] == 1
    finally:
        code = run.stop()
    assert code == 0
    for url in emulators_in(run.log()):
        assert_gone(url)  # the emulator stopped with the gateway


def test_demo_env_with_workers_gives_each_worker_its_emulator_and_stops_them_all(tmp_path: Path) -> None:
    run = main_run(tmp_path, [], {"DEMO": "true", "WORKERS": "2"}, name="demo-workers").wait_ready()
    try:
        deadline = time.monotonic() + 20
        while len(emulators_in(run.log())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        urls = emulators_in(run.log())
        assert len(set(urls)) == 2, run.log()
        client = openai_client(run, DEMO_API_KEY)
        for _ in range(4):
            answer = client.chat.completions.create(
                model="gptomni", messages=[{"role": "user", "content": "hi"}]
            )
            assert "canned" in (answer.choices[0].message.content or "")
    finally:
        code = run.stop()
    assert code == 0
    for url in urls:
        assert_gone(url)


@pytest.mark.parametrize("where", ["GPTOMNI_CREDENTIALS", "CREDENTIALS_FILE"])
def test_a_configured_credential_ignores_demo_loudly_and_uses_the_real_upstream(
    tmp_path: Path, emulator: Emulator, where: str
) -> None:
    cookie = "session=demo-ignored-cookie-0001"
    env = {"API_MASTER_KEY": MASTER_KEY, "GPTOMNI_BASE_URL": emulator.url, "HOST": "127.0.0.1"}
    if where == "GPTOMNI_CREDENTIALS":
        env["GPTOMNI_CREDENTIALS"] = json.dumps([cookie])
    else:
        path = tmp_path / "creds.json"
        CredentialStore(path).save(StoreData([{"cookie": cookie, "state": "active", "changed_at": 1.0}]))
        env["CREDENTIALS_FILE"] = str(path)
    run = main_run(tmp_path, ["--demo"], env, name="demo-ignored").wait_ready()
    try:
        client = openai_client(run, MASTER_KEY)
        assert [model.owned_by for model in client.models.list().data] == ["gptomni"]
        answer = client.chat.completions.create(model="gptomni", messages=[{"role": "user", "content": "hi"}])
        assert (answer.choices[0].message.content or "").startswith("Hello from the gptomni emulator")
        log = run.log()
        assert re.search(rf"WARNING .*--demo \(DEMO=true\) is ignored: .*1 in {where}", log), log
        assert f"the real upstream {emulator.url} is used" in log
        assert "DEMO MODE" not in log
    finally:
        assert run.stop() == 0


def test_ignored_demo_without_a_key_refuses_to_start_clearly(tmp_path: Path) -> None:
    env = {"GPTOMNI_CREDENTIALS": json.dumps(["session=demo-refused-cookie-0001"])}
    run = main_run(tmp_path, ["--demo"], env, name="demo-refused")
    assert run.proc.wait(30) == 2
    log = run.log()
    assert "ignored" in log and "API_MASTER_KEY" in log
    assert "demo-refused-cookie" not in log and "Traceback" not in log


def test_an_unknown_argument_is_a_usage_error(tmp_path: Path) -> None:
    run = main_run(tmp_path, ["--dmeo"], {"API_MASTER_KEY": MASTER_KEY}, name="bad-arg")
    assert run.proc.wait(30) == 2
    assert "usage: python main.py [-h] [--demo]" in run.log()


def test_without_demo_and_without_a_cookie_the_503_names_both_ways_forward(tmp_path: Path) -> None:
    run = main_run(tmp_path, [], {"API_MASTER_KEY": MASTER_KEY, "HOST": "127.0.0.1"}, name="no-cookie")
    run.wait_ready()
    try:
        response = httpx.post(
            f"{run.url}/v1/chat/completions",
            json={"model": "gptomni", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            timeout=10,
        )
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "no_credentials"
        for way in ("GPTOMNI_CREDENTIALS", "/admin/credentials", "python main.py --demo"):
            assert way in error["message"]
        log = run.log()
        assert "GPTOMNI_CREDENTIALS" in log and "python main.py --demo" in log  # the start-up warning
    finally:
        assert run.stop() == 0


def test_the_readmes_demo_curl_streams_a_canned_answer_as_pasted(tmp_path: Path) -> None:
    section = re.search(r"^## Demo mode\n(.*?)(?=^## )", (ROOT / "README.md").read_text(), re.S | re.M)
    assert section is not None
    command = re.findall(r"```bash\n(.*?)```", section.group(1), re.S)[0]
    assert "http://127.0.0.1:8000" in command
    run = main_run(tmp_path, ["--demo"], {}, name="demo-curl").wait_ready()
    try:
        result = subprocess.run(
            ["bash", "-c", command.replace("http://127.0.0.1:8000", run.url)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        run.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("data: [DONE]")
    pieces = [json.loads(line[6:]) for line in result.stdout.splitlines() if line.startswith("data: {")]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in pieces if p["choices"])
    assert "canned" in text and text.endswith("Hello!")
