"""The console's pages at scale: the Processes page with 1,000 processes, and Monitoring's first chart
paint for a 1,000,000-point run in Chromium, each beside the limit measured in the same run.

    .venv/bin/python bench/console.py            # 1,000 processes, a 1,000,000-point run, 7 rounds
    .venv/bin/python bench/console.py --quick    # 100 processes, 100,000 points, 2 rounds: for CI

It starts the real API (`trainyard-api migrate`, then `serve` on a free port, SQLite in a temporary
folder), seeds through the REST API and the agent's telemetry route (bench/telemetry.py's run and its
packed batches of 50,000 points: four series in turn), signs a person in through the console's form,
and measures:

- Processes: the page's server time (the GET's round trip on loopback: the page is rendered whole
  before its first byte) and its size, the first page (200 rows, the API's largest page) of N
  processes; its live route (`state`, answered at once); beside them GET /healthz and the REST list
  of the same 200 processes (`GET .../processes?limit=200`), which the page's query is.
- Monitoring: in Debian's Chromium (Playwright), from navigation start to the chart's first paint
  with points (`performance.mark("chart-painted")` in runs.js, read with the Performance API), the
  page's own response end and the chart's data fetch (Resource Timing) beside it; then the REST
  metrics route's read of the same run (2,000 points a series) and a zoom's window read at full
  resolution (1 % of the steps) through the console route.
- Training log: the same run with N log lines (1,000,000; batches of 20,000 through the agent's
  telemetry route): in Chromium, from navigation start to the first lines drawn in the virtual
  viewport, and how many line rows the page holds (bounded, whatever N); the console's block read of
  1,000 lines at the start, the middle and the end, and a search (`q`) over all N, beside the REST
  logs route's read of the same block (the limit: the page's route calls it).
"""

import argparse
import io
import re
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
from telemetry import TOKEN, Api, a_running_run, batches

PASSWORD = "bench password, long enough"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def ms(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1000:.1f}"


def timed(call: Any, rounds: int) -> tuple[list[float], Any]:
    times, answer = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        answer = call()
        times.append(time.perf_counter() - started)
    return times, answer


def seed_processes(base: str, count: int) -> None:
    """`count` processes of one template on one machine (its capacity raised), through the REST API."""
    admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    admin.post("/projects", json={"name": "many"}).raise_for_status()
    admin.post(
        "/projects/many/packages/pkg/versions",
        files={"file": ("pkg.zip", package_zip(), "application/zip")},
    ).raise_for_status()
    template = {"name": "tpl", "model_type": "classifier", "base_package": "pkg"}
    admin.post("/projects/many/templates", json=template).raise_for_status()
    admin.post("/machines", json={"name": "big", "address": "10.0.0.2", "capacity": count}).raise_for_status()
    for _ in range(count):
        admin.post("/projects/many/templates/tpl/processes", json={"machine": "big"}).raise_for_status()
    admin.post("/users", json={"name": "ann", "password": PASSWORD, "is_admin": True}).raise_for_status()


def package_zip() -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as folder:
        folder.writestr(
            "train.py",
            "class Main:\n    def train(self, d):\n        pass\n\n    def save(self):\n        pass\n",
        )
    return archive.getvalue()


def signed_in(origin: str) -> httpx.Client:
    client = httpx.Client(base_url=origin, timeout=120)
    form = client.get("/ui/sign-in")
    token = CSRF.search(form.text)
    assert token is not None
    data = {"username": "ann", "password": PASSWORD, "next": "/ui/", "csrf_token": token.group(1)}
    assert client.post("/ui/sign-in", data=data).status_code == 303
    return client


def processes(origin: str, base: str, count: int, rounds: int) -> list[tuple[str, str, str]]:
    page_url = "/ui/projects/many/processes/"
    shown = min(count, 200)  # the API's largest page; a link leads to the next
    browser = signed_in(origin)
    rest = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    try:
        browser.get(page_url)  # warm: the templates' compilation, the statements' caches
        health, _ = timed(lambda: browser.get("/healthz"), rounds)  # the same connection, as the page's
        page, answer = timed(lambda: browser.get(page_url), rounds)
        assert answer.status_code == 200 and answer.text.count('<tr id="process-') == shown, (
            answer.status_code
        )
        state, live = timed(lambda: browser.get(f"{page_url}state"), rounds)
        listed, body = timed(lambda: rest.get("/projects/many/processes", params={"limit": 200}), rounds)
        assert len(body.json()["items"]) == shown
    finally:
        browser.close()
        rest.close()
    return [
        (f"Processes page, {shown} rows", ms(page), f"{len(answer.content) / 1024:.0f} KiB"),
        ("its live route (`state`), at once", ms(state), f"{len(live.content) / 1024:.0f} KiB"),
        (f"REST list of the same {shown} (limit)", ms(listed), f"{len(body.content) / 1024:.0f} KiB"),
        ("GET /healthz (limit)", ms(health), ""),
    ]


def seed_run(base: str, points: int) -> tuple[str, str]:
    run_id, agent_token = a_running_run(base)
    with httpx.Client(
        base_url=f"{base}/agent", headers={"Authorization": f"Bearer {agent_token}"}, timeout=300
    ) as agent:
        for batch in batches(points, 50_000):
            reply = agent.post(
                f"/runs/{run_id}/telemetry", content=batch.body, headers={"Content-Type": "application/json"}
            )
            reply.raise_for_status()
    return run_id, agent_token


LOG_BATCH = 20_000  # MAX_TELEMETRY_LOG_LINES


def seed_log(base: str, run_id: str, agent_token: str, lines: int, first_seq: int) -> None:
    """`lines` log lines (stdout, one in 97 holding "checkpoint") after the run's metric batches."""
    now = time.time()
    with httpx.Client(
        base_url=f"{base}/agent", headers={"Authorization": f"Bearer {agent_token}"}, timeout=300
    ) as agent:
        for seq, start in enumerate(range(0, lines, LOG_BATCH), start=first_seq):
            n = min(LOG_BATCH, lines - start)
            text = [
                f"epoch {i // 1000} batch {i % 1000}: loss {1 / (1 + i):.6f}"
                + (" checkpoint" if i % 97 == 0 else "")
                for i in range(start, start + n)
            ]
            body = {"seq": seq, "logs": {"stream": ["stdout"] * n, "time": [now] * n, "text": text}}
            agent.post(f"/runs/{run_id}/telemetry", json=body).raise_for_status()


def log_page(origin: str, run_id: str, rounds: int) -> list[dict[str, float]]:
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.console.browser import chromium_path, launch_args

    url = f"{origin}/ui/projects/bench/runs/{run_id}/log"
    found = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=launch_args())
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.goto(f"{origin}/ui/sign-in")
        page.get_by_label("Username").fill("ann")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{origin}/ui/")
        for _ in range(rounds + 1):  # the first warms the browser's cache of the scripts
            page.goto(url)
            page.wait_for_function(
                "() => document.querySelectorAll('.log-rows .log-line:not(.pending)').length > 0",
                timeout=60_000,
                polling="raf",
            )
            found.append(
                page.evaluate(
                    """() => ({
                      drawn: performance.now(),
                      page: performance.getEntriesByType('navigation')[0].responseEnd,
                      rows: document.querySelectorAll('.log-line').length,
                    })"""
                )
            )
        browser.close()
    return found[1:]


def first_paint(origin: str, run_id: str, rounds: int) -> list[dict[str, float]]:
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.console.browser import chromium_path, launch_args

    url = f"{origin}/ui/projects/bench/runs/{run_id}/"
    found = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=launch_args())
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(f"{origin}/ui/sign-in")
        page.get_by_label("Username").fill("ann")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{origin}/ui/")
        for _ in range(rounds + 1):  # the first warms the browser's cache of the scripts, as a second visit
            page.goto(url)
            page.wait_for_function(
                "() => performance.getEntriesByName('chart-painted').length > 0", timeout=60_000
            )
            found.append(
                page.evaluate(
                    """() => {
                      const nav = performance.getEntriesByType('navigation')[0];
                      const data = performance.getEntriesByType('resource')
                        .find((r) => r.name.includes('/metrics?'));
                      return {
                        paint: performance.getEntriesByName('chart-painted')[0].startTime,
                        page: nav.responseEnd,
                        fetch: data ? data.responseEnd - data.startTime : -1,
                        points: Number(document.querySelector('#chart').dataset.points),
                      };
                    }"""
                )
            )
        browser.close()
    return found[1:]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    args = parser.parse_args()
    count, points, rounds = (100, 100_000, 2) if args.quick else (1000, 1_000_000, 7)
    lines = 40_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-console-") as scratch:
        api = Api(Path(scratch), None)
        try:
            base = api.base
            origin = base.removesuffix("/api/v1")
            run_id, agent_token = seed_run(base, points)  # first: it makes the model type the processes use
            seed_processes(base, count)
            rows = processes(origin, base, count, rounds)
            paints = first_paint(origin, run_id, rounds)
            with httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
            ) as rest:
                metrics, _ = timed(
                    lambda: rest.get(f"/projects/bench/runs/{run_id}/metrics", params={"max_points": 2000}),
                    rounds,
                )
            browser = signed_in(origin)
            low, high = points // 4 * 0.5, points // 4 * 0.51  # 1 % of each series' steps
            window, answer = timed(
                lambda: browser.get(
                    f"/ui/projects/bench/runs/{run_id}/metrics",
                    params={"low": low, "high": high, "series": "loss", "max_points": 20_000},
                ),
                rounds,
            )
            seed_log(base, run_id, agent_token, lines, first_seq=len(batches(points, 50_000)) + 1)
            log_loads = log_page(origin, run_id, rounds)
            blocks = []
            for where, offset in (("start", 0), ("middle", lines // 2), ("end", lines - 1000)):
                params = {"offset": offset, "limit": 1000}
                console_read, _ = timed(
                    lambda p=params: browser.get(f"/ui/projects/bench/runs/{run_id}/log/lines", params=p),
                    rounds,
                )
                with httpx.Client(
                    base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
                ) as rest:
                    rest_read, _ = timed(
                        lambda p=params: rest.get(f"/projects/bench/runs/{run_id}/logs", params=p), rounds
                    )
                blocks.append((where, ms(console_read), ms(rest_read)))
            search, found = timed(
                lambda: browser.get(
                    f"/ui/projects/bench/runs/{run_id}/log/lines",
                    params={"offset": 0, "limit": 1000, "q": "checkpoint"},
                ),
                rounds,
            )
            browser.close()
            zoomed = len(answer.json()["series"][0]["step"])
        finally:
            api.stop()
    print(f"\nProcesses, {count:,} processes, median of {rounds}:\n")
    print("| what | ms | size |")
    print("| --- | ---: | ---: |")
    for what, time_ms, size in rows:
        print(f"| {what} | {time_ms} | {size} |")
    print(f"\nMonitoring, a run of {points:,} points (4 series), median of {rounds} loads in Chromium:\n")
    print("| what | ms |")
    print("| --- | ---: |")
    print(
        f"| first chart paint, from navigation start | {statistics.median(p['paint'] for p in paints):.0f} |"
    )
    print(f"| the page's response end (limit) | {statistics.median(p['page'] for p in paints):.0f} |")
    fetch = statistics.median(p["fetch"] for p in paints)
    print(f"| the chart's data fetch (all 4 series, 2,000 points each at most) | {fetch:.0f} |")
    print(f"| REST metrics route, 2,000 points a series, 4 series (limit) | {ms(metrics)} |")
    print(f"| a zoom's window, 1 % of a series at full resolution ({zoomed:,} points) | {ms(window)} |")
    print(f"\nsteps drawn in the overview: {int(statistics.median(p['points'] for p in paints)):,}")
    print(f"\nTraining log, {lines:,} lines, median of {rounds}:\n")
    print("| what | ms |")
    print("| --- | ---: |")
    drawn = statistics.median(p["drawn"] for p in log_loads)
    print(f"| first lines drawn in Chromium, from navigation start | {drawn:.0f} |")
    print(f"| the page's response end (limit) | {statistics.median(p['page'] for p in log_loads):.0f} |")
    for where, console_ms, rest_ms in blocks:
        what = f"1,000 lines at the {where}: console route / REST logs route (limit)"
        print(f"| {what} | {console_ms} / {rest_ms} |")
    hits = len(found.json()["lines"])
    print(f"| a search over all {lines:,} lines, first {hits:,} hits | {ms(search)} |")
    rows = max(int(p["rows"]) for p in log_loads)
    print(f"\nline rows in the page at most: {rows:,} (of {lines:,} lines)")


if __name__ == "__main__":
    main()
