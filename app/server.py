"""`create_app()`: the FastAPI app, with its long-lived parts built once in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from fastapi import FastAPI

from app.api import admin_routes, docs_routes, health_routes, key_routes, metrics_routes
from app.api.audit import AuditMiddleware
from app.config import ConfigError, Settings, load_settings
from app.console import routes as console_routes
from app.core.draining import Draining
from app.core.service import ChatService
from app.credentials.pool import Credential, CredentialPool, PoolPolicy
from app.credentials.store import StoreError
from app.demo.mode import demo_banner, plan_demo, public_keys, stored_credentials
from app.demo.upstream import DemoUpstream
from app.http.client_address import ClientAddressMiddleware
from app.http.errors import install_error_handlers
from app.http.ip_rules import IpRulesMiddleware
from app.keys.registry import KeyRegistry
from app.logs import configure_logging, register_secret, unregister_secret
from app.observability.access import AccessLogMiddleware
from app.observability.metrics import Metrics, multiproc_dir
from app.observability.traffic import TrafficBuffer
from app.state.backend import build_state
from app.surfaces.anthropic import routes as anthropic_routes
from app.surfaces.completions import routes as completions_routes
from app.surfaces.openai_chat import routes as openai_chat_routes
from app.surfaces.openai_responses import routes as responses_routes
from app.upstream.gptomni import GptomniClient
from app.upstream.proxy import proxy_secret
from app.upstream.transport import Timeouts, build_transport

log = logging.getLogger("gptomni2api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    try:
        demo = plan_demo(settings, stored_credentials(settings.credentials_file) if settings.demo else 0)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    settings = demo.settings  # in demo mode: the demo cookie, keys and host filled in
    if settings.api_master_key is not None:
        register_secret(settings.api_master_key.get_secret_value())
    if settings.admin_key is not None:
        register_secret(settings.admin_key.get_secret_value())
    if settings.upstream_proxy is not None:
        register_secret(proxy_secret(settings.upstream_proxy.get_secret_value()))
    for cookie in settings.gptomni_credentials:
        register_secret(cookie)
    pool = CredentialPool(policy=pool_policy(settings))
    keys = KeyRegistry()
    keys.add_env(settings.api_keys)
    for secret in settings.api_keys:
        register_secret(secret)
    backend = build_state(settings, pool, keys)  # may refuse: a corrupt file, an unreachable Redis
    keeper = backend.keeper
    metrics = Metrics(multiproc_dir())

    def on_panic(credential: Credential) -> None:
        metrics.pool_panics.inc()
        log.warning(
            "panic mode: no credential is active, so credential %s serves a request while resting "
            "for failures",
            credential.id,
        )

    pool.on_panic = on_panic

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)  # uvicorn set up its handlers after import
        transport = build_transport(
            settings.upstream_transport,
            impersonate=settings.curl_impersonate,
            threads=settings.cloudscraper_threads,
            slot_wait=settings.rate_limit_wait,
        )
        timeouts = Timeouts(
            connect=settings.upstream_connect_timeout,
            first_byte=settings.upstream_first_byte_timeout,
            idle=settings.upstream_idle_timeout,
        )
        demo_upstream = DemoUpstream() if demo.active else None
        base_url = await demo_upstream.start() if demo_upstream is not None else settings.gptomni_base_url
        client = GptomniClient(transport, base_url, timeouts)
        metrics.watch_credentials(pool.counts)
        service = ChatService(settings, pool, client)
        app.state.chat_service = service
        drain_on_stop(service.draining, settings.shutdown_grace_seconds)
        backend.start(on_degraded=lambda degraded: metrics.state_degraded.set(int(degraded)))
        tasks = []
        if settings.probe_interval > 0:
            tasks.append(asyncio.create_task(probe_forever(service, settings.probe_interval)))
        if settings.session_check_interval > 0:
            tasks.append(
                asyncio.create_task(check_sessions_forever(service, settings.session_check_interval))
            )
        if settings.auth_disabled:
            log.warning("AUTH_DISABLED=true: the API answers anyone who can reach it")
        if len(pool) == 0:
            log.warning(
                "No gptomni credential configured: chat requests will get 503. Sign in at gptomni.ai, copy "
                "the Cookie header of a chatWithText request, and set GPTOMNI_CREDENTIALS='[\"<cookie>\"]' "
                "(or add it through the admin API, POST /admin/credentials, or the console at /admin/). "
                "To see the gateway work first, with canned answers: python main.py --demo"
            )
        log.info(
            "serving models %s with %d credential(s) via %s -> %s",
            ", ".join(settings.model_table),
            len(pool),
            transport.name,
            base_url,
        )
        if demo_upstream is not None:
            for public in public_keys(settings):
                unregister_secret(public)  # documented demo keys, printed on purpose
            log.warning("%s", demo_banner(settings, base_url))
        elif demo.ignored:
            log.warning(
                "--demo (DEMO=true) is ignored: credentials are configured (%s), so the real upstream "
                "%s is used",
                ", ".join(demo.configured),
                base_url,
            )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await backend.stop()
            await client.aclose()
            if demo_upstream is not None:
                await demo_upstream.close()

    app = FastAPI(title="gptomni-2api", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.pool = pool
    app.state.keeper = keeper
    app.state.backend = backend
    app.state.responses_store = backend.responses
    app.state.keys = keys
    app.state.metrics = metrics
    app.state.traffic = traffic = TrafficBuffer()
    install_error_handlers(app)
    app.add_middleware(AuditMiddleware)
    # Inside the access log (a refusal is logged and counted), outside everything else.
    app.add_middleware(IpRulesMiddleware, allow=settings.allow_ips, deny=settings.deny_ips)
    app.add_middleware(AccessLogMiddleware, metrics=metrics, traffic=traffic)
    # Outermost: every layer below, the access log first, sees the real client address.
    app.add_middleware(ClientAddressMiddleware, trusted=settings.trusted_proxies)
    app.include_router(health_routes.router)
    app.include_router(openai_chat_routes.router)
    app.include_router(anthropic_routes.router)
    app.include_router(responses_routes.router)
    app.include_router(completions_routes.router)
    docs_routes.install(app)  # /docs, offline; the routes above are what /openapi.json describes
    # The API description is for clients: the admin routes are left out of /openapi.json.
    app.include_router(metrics_routes.router, include_in_schema=False)
    app.include_router(admin_routes.router, include_in_schema=False)
    app.include_router(key_routes.router, include_in_schema=False)
    app.include_router(console_routes.router, include_in_schema=False)
    return app


def pool_policy(settings: Settings) -> PoolPolicy:
    return PoolPolicy(
        cloudflare_cooldown=settings.cloudflare_cooldown,
        rate_limit_cooldown=settings.rate_limit_cooldown,
        failure_threshold=settings.failure_threshold,
        failure_cooldown=settings.failure_cooldown,
        max_in_flight=settings.max_streams_per_credential,
        rate=settings.rate_limit,
        max_ejected_percent=settings.max_ejected_percent,
    )


def drain_on_stop(draining: Draining, grace: float) -> None:
    """On SIGTERM or SIGINT, end the answers still running shortly before the server's grace period
    runs out, each with an error event in its dialect (the server would cut them mid-body).

    The server (uvicorn) has put its own handlers in place by now; ours runs, then calls its. It
    restores the original handlers when it stops, which removes ours too."""
    if threading.current_thread() is not threading.main_thread():
        return  # signals are only for the main thread (an in-process test client runs elsewhere)
    loop = asyncio.get_running_loop()
    after = max(0.0, grace - min(1.0, grace / 4))
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(draining.begin, after)
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)


async def check_sessions_forever(service: ChatService, interval: float) -> None:
    """Ask the site about each session now and then: an ended one is marked invalid before a user's
    request finds out, a live one is renewed."""
    while True:
        await asyncio.sleep(interval)
        try:
            await service.check_sessions()
        except Exception:  # a check must never take the loop down; the next round tries again
            log.exception("session check round failed")


async def probe_forever(service: ChatService, interval: float) -> None:
    """Re-check invalid credentials now and then, so a cookie refreshed upstream is noticed."""
    while True:
        await asyncio.sleep(interval)
        try:
            await service.probe_invalid()
        except Exception:  # a probe must never take the loop down; the next round tries again
            log.exception("credential probe round failed")
