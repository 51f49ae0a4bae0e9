"""The renderer changes only what a loopback test run needs, and refuses a config whose shape drifted."""

from __future__ import annotations

import difflib
import subprocess
from pathlib import Path

import pytest

from tests.deploy.processes import nginx_binary
from tests.deploy.render_nginx import SHIPPED, RenderError, main, render

SOURCE = SHIPPED.read_text()


def rendered(tmp_path: Path, **kwargs: object) -> str:
    options: dict[str, object] = {
        "upstreams": ["127.0.0.1:9001", "127.0.0.1:9002"],
        "listen": "127.0.0.1:9088",
        "runtime_dir": tmp_path,
    } | kwargs
    return render(SOURCE, **options)  # type: ignore[arg-type]


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    diff = list(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))
    removed = [ln[1:].strip() for ln in diff if ln.startswith("-") and not ln.startswith("---")]
    added = [ln[1:].strip() for ln in diff if ln.startswith("+") and not ln.startswith("+++")]
    return removed, added


def test_only_addresses_listen_timeout_and_runtime_paths_change(tmp_path: Path) -> None:
    removed, added = changed_lines(SOURCE, rendered(tmp_path, read_timeout="3s"))
    assert removed == ["server app:8000 resolve;", "listen 80;", "proxy_read_timeout 600s;"]
    assert "server 127.0.0.1:9001;" in added and "server 127.0.0.1:9002;" in added
    assert "listen 127.0.0.1:9088;" in added
    assert "proxy_read_timeout 3s;" in added
    others = [
        ln
        for ln in added
        if ln
        and not ln.startswith(("server 127.0.0.1", "listen ", "proxy_read_timeout", "#", "user ", "http {"))
    ]
    assert all(str(tmp_path) in ln for ln in others), others  # pid and temp paths only


def test_the_shipped_read_timeout_is_kept_unless_asked(tmp_path: Path) -> None:
    assert "proxy_read_timeout 600s;" in rendered(tmp_path)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("server app:8000 resolve;", "server gateway:8000 resolve;"),
        ("listen 80;", "listen 8080;"),
        ("proxy_read_timeout 600s;", "proxy_read_timeout 10m;"),
        ("\nhttp {\n", "\nhttp{\n"),
    ],
)
def test_a_config_that_changed_shape_is_refused(tmp_path: Path, old: str, new: str) -> None:
    assert old in SOURCE
    with pytest.raises(RenderError):
        render(
            SOURCE.replace(old, new),
            upstreams=["127.0.0.1:9001"],
            listen="127.0.0.1:9088",
            runtime_dir=tmp_path,
            read_timeout="3s",
        )


def test_a_token_found_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="found 2"):
        render(SOURCE + "\n#\n    listen 80;\n", upstreams=["a:1"], listen="b:2", runtime_dir=tmp_path)


def test_the_cli_fails_loudly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "nginx.conf"
    broken.write_text(SOURCE.replace("listen 80;", "listen 81;"))
    args = ["--upstream", "127.0.0.1:1", "--listen", "127.0.0.1:2", "--runtime-dir", str(tmp_path)]
    assert main([*args, "--source", str(broken)]) == 1
    assert "listen line" in capsys.readouterr().err
    assert main(args) == 0
    assert "listen 127.0.0.1:2;" in capsys.readouterr().out


def test_the_real_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(rendered(tmp_path, read_timeout="3s"))
    result = subprocess.run(
        [nginx_binary(), "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
