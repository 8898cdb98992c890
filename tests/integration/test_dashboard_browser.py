"""The demo in a real headless Chromium: produce, kill a consumer, watch the group recover,
and the charts over time (uPlot, served by the dashboard) fill with points.

Starts ``partstream demo`` as a process (with its consumer fleet) against the test server,
drives the page with Playwright (Debian's chromium by path) and saves a screenshot to
``artifacts/dashboard.png``. Every process it started is stopped by pid at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from partitions._client.config import ClientConfig
from tests.helpers import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
pytestmark = pytest.mark.timeout(150)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _state(base: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(base + "api/state", timeout=10) as res:
        return orjson.loads(res.read())  # type: ignore[no-any-return]


@pytest.fixture
def demo(client_config: ClientConfig) -> Iterator[str]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    assert client_config.url is not None
    port = _free_port()
    log = open(ARTIFACTS / "demo.log", "wb") if ARTIFACTS.exists() else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "partitions", "--url", client_config.url,
         "--namespace", client_config.namespace, "demo", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/"
    worker_pids: set[int] = set()
    try:
        wait_until(lambda: _state(base)["workers"], 30, "the demo to serve its state")
        yield base
    finally:
        with contextlib.suppress(Exception):
            worker_pids = {w["pid"] for w in _state(base)["workers"]}
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in worker_pids:  # the demo stops its fleet; make sure of it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# Per chart: x points, series names, the largest value and how many values are not null.
CHARTS_JS = """() => Object.fromEntries(Object.entries(window.charts).map(([name, c]) => {
  const values = c.u.data.slice(1).flat().filter((v) => v !== null && v !== undefined);
  return [name, {points: c.u.data[0].length, series: c.keys, values: values.length,
                 max: values.length ? Math.max(...values) : null}];
}))"""


def test_demo_in_chromium(demo: str) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    start_ms = int(time.time() * 1000) - 1
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(demo)
            page.wait_for_function("document.getElementById('conn').textContent === 'live'")
            lag = page.get_by_test_id("lag-notifications")

            # produce 1,000 events; the fleet drains them
            page.fill("#produce-count", "1000")
            page.get_by_test_id("produce").click()
            page.wait_for_function(
                "document.getElementById('log').textContent.includes('produced 1000')"
            )
            wait_until(lambda: lag.inner_text() == "0", 60, "notifications lag to drain")

            # kill -9 one notifications consumer: its partitions move to the survivor
            owners = lambda: [  # noqa: E731
                page.get_by_test_id(f"owner-notifications-{p}").inner_text() for p in range(8)
            ]
            before = owners()
            victim = "notifications-1"
            assert victim in before, before
            page.locator(f"button[data-worker='{victim}'][data-action='kill']").click()
            wait_until(
                lambda: all(o not in ("-", victim) for o in owners()),
                30,
                "the group to rebalance away from the killed consumer",
            )
            after = owners()
            assert after != before and victim not in after
            epoch_text = page.get_by_test_id("epoch-notifications").inner_text()
            assert int(epoch_text) >= 2
            page.get_by_test_id("produce").click()  # 1000 more while one consumer is down
            wait_until(lambda: lag.inner_text() == "0", 60, "lag to drain after the rebalance")

            # reset the group to a time before everything: lag rises, then drains again
            page.fill("#reset-to", f"@{start_ms}")
            page.select_option("#group-select", "notifications")
            page.get_by_test_id("reset-group").click()
            wait_until(lambda: int(lag.inner_text()) > 0, 15, "lag to rise after the reset")
            wait_until(lambda: lag.inner_text() == "0", 90, "lag to drain after the reset")
            # poison: the next 2 records of a tenant fail every delivery and are dead-lettered
            page.fill("#fail-count", "2")
            page.select_option("#fail-tenant", "tenant-03")
            page.get_by_test_id("fail").click()
            page.wait_for_function(
                "document.getElementById('log').textContent.includes('will fail')"
            )
            page.fill("#produce-count", "20")
            page.select_option("#produce-tenant", "tenant-03")
            page.get_by_test_id("produce").click()
            dlq_rows = page.locator("[data-testid=dlq] tbody tr")
            wait_until(lambda: dlq_rows.count() >= 4, 30, "2 dead letters in each of the 2 groups")
            assert "max_deliveries" in page.get_by_test_id("dlq").inner_text()
            wait_until(lambda: lag.inner_text() == "0", 30, "the partition to flow past the poison")

            # the charts over time: points after producing, for the topic and every group
            charts = page.evaluate(CHARTS_JS)
            assert set(charts) == {"produce", "consume", "lag", "lag_seconds", "append"}
            assert charts["produce"]["points"] >= 5 and charts["produce"]["series"] == ["orders"]
            assert charts["produce"]["max"] > 0, charts  # 1,000 events at once
            for name in ("consume", "lag", "lag_seconds"):
                assert {"notifications", "analytics"} <= set(charts[name]["series"]), charts
                assert charts[name]["max"] > 0, (name, charts)  # behind after the reset
            assert charts["append"]["series"] == ["p50", "p99"] and charts["append"]["values"] >= 2
            drawn = page.locator("[data-testid=chart-produce] canvas")
            assert drawn.count() == 1 and drawn.bounding_box()["width"] > 200  # type: ignore[index]

            # reclaim stuck entries now: the request goes through and is reported
            page.get_by_test_id("reclaim").click()
            page.wait_for_function(
                "document.getElementById('log').textContent.includes('reclaim notifications')"
            )
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            # every consumer process saw each tenant's events in order
            state = _state(demo)
            assert all(w["out_of_order"] == 0 for w in state["workers"]), state["workers"]
        finally:
            browser.close()
