"""`/docs` and `/openapi.json` on a real gateway: every client route documented with an example, the
admin API left out, and a reference page that loads whole from the gateway itself (checked in the
HTML, on each asset, and in headless Chromium, which must ask no other host for anything)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from app.api.docs_routes import ASSETS
from tests.conftest import MASTER_KEY, Emulator, Gateway, gateway_settings

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright never downloads a browser here
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, emulator: Emulator) -> Any:
    workdir = tmp_path_factory.mktemp("docs")
    gw = Gateway(workdir, gateway_settings(emulator, ["session=docs-cookie-0001"]), name="docs")
    yield gw
    gw.stop()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def has_example(content: dict[str, Any]) -> bool:
    return any("example" in media or media.get("examples") for media in content.values())


def test_every_route_in_openapi_has_an_example(gateway: Gateway) -> None:
    schema = httpx.get(f"{gateway.url}/openapi.json", timeout=5).json()
    found = operations(schema)
    assert len(found) >= 11  # chat, models (2), messages (2), responses (3), completions, health, ready
    missing = []
    for path, method, operation in found:
        body = operation.get("requestBody")
        if body is not None and not has_example(body["content"]):
            missing.append(f"{method.upper()} {path}: request")
        answers = [answer.get("content", {}) for answer in operation["responses"].values()]
        if not any(has_example(content) for content in answers):
            missing.append(f"{method.upper()} {path}: response")
        if method == "post" and path != "/v1/responses/{response_id}" and body is None:
            missing.append(f"{method.upper()} {path}: no request body described")
    assert missing == []


def test_openapi_leaves_the_admin_api_out_and_says_how_to_authorize(gateway: Gateway) -> None:
    schema = httpx.get(f"{gateway.url}/openapi.json", timeout=5).json()
    assert not [path for path in schema["paths"] if path.startswith(("/admin", "/metrics", "/docs"))]
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {"bearer": []} in schema["security"]
    assert schema["paths"]["/health"]["get"]["security"] == []  # public
    named = {tag["name"] for tag in schema["tags"]}
    assert all(set(operation["tags"]) <= named for _, _, operation in operations(schema))
    streaming = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert "data: [DONE]" in streaming["text/event-stream"]["example"]


def asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)


def test_docs_html_and_its_assets_come_from_the_gateway_only(gateway: Gateway) -> None:
    page = httpx.get(f"{gateway.url}/docs", timeout=5)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "SwaggerUIBundle" in html and "/openapi.json" in html
    assert not re.search(r"https?:|//[a-z]", html, re.IGNORECASE), "an absolute URL in the page"
    urls = asset_urls(html)
    assert len(urls) == 3  # stylesheet, icon, script
    for url in urls:
        assert url.startswith("/docs/assets/")
        asset = httpx.get(urljoin(gateway.url, url), timeout=5)
        assert asset.status_code == 200
        assert asset.headers["content-type"] == ASSETS[url.rsplit("/", 1)[1]]
        assert len(asset.content) > 1000
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert not re.search(r"https?:", policy)
    missing = httpx.get(f"{gateway.url}/docs/assets/..%2F..%2Fmain.py", timeout=5)
    assert missing.status_code == 404
    assert httpx.get(f"{gateway.url}/docs/assets/index.html", timeout=5).status_code == 404


def test_docs_render_in_chromium_without_asking_any_other_host(gateway: Gateway, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium package is needed (apt-get install chromium)"
    schema = httpx.get(f"{gateway.url}/openapi.json", timeout=5).json()
    origin = urlsplit(gateway.url).netloc
    requested: list[str] = []
    failed: list[str] = []
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.on(
                "console", lambda message: errors.append(message.text) if message.type == "error" else None
            )
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{gateway.url}/docs", wait_until="networkidle")
            blocks = page.locator(".opblock")
            blocks.first.wait_for(timeout=15_000)
            assert blocks.count() == len(operations(schema))
            assert page.get_by_text("/v1/chat/completions", exact=True).count() >= 1
            page.screenshot(path=str(tmp_path / "docs.png"), full_page=False)
            # A user authorizes with the key, opens the chat route, and sends its example as it is.
            page.locator("button.authorize").first.click()
            page.locator(".auth-container", has_text="bearer").locator("input").fill(MASTER_KEY)
            page.locator(".auth-container", has_text="bearer").locator("button.authorize").click()
            page.locator("button.btn-done").first.click()
            operation = page.locator(".opblock", has_text="/v1/chat/completions").first
            operation.locator(".opblock-summary").click()
            operation.locator("button.try-out__btn").click()
            operation.locator("button.execute").click()
            answer = operation.locator(".live-responses-table")
            answer.get_by_text("Hello from the gptomni emulator").first.wait_for(timeout=15_000)
            assert (
                answer.locator("tr.response .response-col_status")
                .first.inner_text()
                .strip()
                .startswith("200")
            )
        finally:
            browser.close()
    elsewhere = [
        url for url in requested if urlsplit(url).scheme != "data" and urlsplit(url).netloc != origin
    ]
    assert elsewhere == []
    assert failed == [] and errors == []
    assert any(url.endswith("/openapi.json") for url in requested)
