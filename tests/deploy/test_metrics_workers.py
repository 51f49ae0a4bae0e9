"""`/metrics` with several uvicorn workers (`python main.py`, WORKERS=2): whichever worker answers
the scrape, it reports every worker's requests (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MASTER_KEY, Emulator, gateway_settings
from tests.deploy.processes import MainProcess

COOKIE = "session=metrics-workers-cookie-0123456789"
ADMIN_KEY = "admin-key-for-the-metrics-test-0123"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_add_up_over_workers(emulator: Emulator, workdir: Path) -> None:
    tmp = workdir / "metrics-w2-tmp"
    tmp.mkdir()
    gateway = MainProcess(
        workdir,
        # TMPDIR only to find the samples directory that main.py makes for its workers.
        gateway_settings(emulator, [COOKIE], WORKERS="2", ADMIN_KEY=ADMIN_KEY, TMPDIR=str(tmp)),
        name="metrics-w2",
    )
    try:
        (samples_dir,) = tmp.glob("gptomni2api-metrics-*")
        requests = 8
        for _ in range(requests):  # a new connection each: the kernel hands them to either worker
            response = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": "gptomni", "messages": [{"role": "user", "content": "count me"}]},
                headers={"Authorization": f"Bearer {MASTER_KEY}"},
                timeout=30,
            )
            assert response.status_code == 200
        worker_pids = {re.sub(r"\D", "", p.name) for p in samples_dir.glob("gauge_livesum_*.db")}
        assert len(worker_pids) == 2, "both workers should be writing samples"

        for _ in range(6):  # several scrapes, answered by either worker: always the same total
            samples = scrape(gateway.url)
            chat = {
                labels: value
                for (name, labels), value in samples.items()
                if name == "gptomni2api_requests_total" and ("route", "/v1/chat/completions") in labels
            }
            assert sum(chat.values()) == requests, chat
            assert samples[("gptomni2api_streams_in_flight", ())] == 0
            assert samples[("gptomni2api_credentials", (("state", "active"),))] == 1
    finally:
        assert gateway.stop() == 0
    assert not samples_dir.exists(), "main.py removes the samples directory at exit"
