"""Processes, Monitoring and Compare in Debian's Chromium, through a real `trainyard-api serve` and a real
`trainyard-agent` training the digits package: create a process from the page, start it, watch the
status reach Running and the chart gain points without a reload, stop, restart; compare the two runs;
a viewer sees no action and a forged POST is refused; axe on each page; the screenshots."""

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.api.test_cli import Server
from tests.console.browser import Watch, accessible, console_api, screenshot, sign_in
from tests.console.kit import PASSWORD
from tests.e2e.harness import AGENT_COMMAND, AgentProcess, public_tempdir, run_as_user
from tests.examples.conftest import EXAMPLES, PACKAGES, load_module

PROJECT = "digits-lab"
MACHINE = "local"
LIVE = 120_000  # ms: a bound on waiting for the real run (torch's import, an epoch), not a speed check
PROCESSES = f"/ui/projects/{PROJECT}/processes/"


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response.json()


def _seed(api: httpx.Client, root: Path) -> Path:
    """People, the project, the digits package and dataset, a template, the machine; its token file."""
    for body in (
        {"name": "ann", "password": PASSWORD, "is_admin": True},
        {"name": "vera", "password": PASSWORD},
    ):
        _ok(api.post("/users", json=body), 201)
    _ok(api.post("/model-types", json={"name": "classifier"}), 201)
    _ok(api.post("/projects", json={"name": PROJECT}), 201)
    _ok(api.put(f"/projects/{PROJECT}/members/vera", json={"role": "viewer"}))
    zip_folder = load_module(EXAMPLES / "zip_package.py", "zip_package").zip_folder
    load_module(EXAMPLES / "export_digits.py", "export_digits").export(root / "digits")
    for kind, name, folder in (
        ("packages", "digits-classifier", PACKAGES / "digits-classifier"),
        ("datasets", "digits", root / "digits"),
    ):
        files = {"file": (f"{name}.zip", zip_folder(folder), "application/zip")}
        _ok(api.post(f"/projects/{PROJECT}/{kind}/{name}/versions", files=files), 201)
    template = {
        "name": "digits",
        "model_type": "classifier",
        "base_package": "digits-classifier",
        "dataset": "digits",
        "dataset_path": "train",
        "test_dataset": "digits",
        "test_dataset_path": "test",
        "pipeline_type": "full",
        "parameters": {"epochs": 500, "seed": 0},  # far longer than the test looks: it stops the run
    }
    _ok(api.post(f"/projects/{PROJECT}/templates", json=template), 201)
    machine = _ok(api.post("/machines", json={"name": MACHINE, "address": "127.0.0.1", "capacity": 4}), 201)
    # One process the viewer looks at, made through the API (the administrator makes another on the page).
    _ok(api.post(f"/projects/{PROJECT}/templates/digits/processes", json={"machine": MACHINE}), 201)
    token_file = root / "agent-token"
    token_file.write_text(machine["agent_token"] + "\n")
    token_file.chmod(0o600)
    return token_file


def _agent(root: Path, api_url: str, token_file: Path) -> AgentProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "TRAINYARD_API_URL": api_url,
        "TRAINYARD_AGENT_TOKEN_FILE": str(token_file),
        "TRAINYARD_AGENT_WORK_DIR": str(root / "agent"),
        "TRAINYARD_STOP_GRACE": "2",
        "TRAINYARD_ALLOW_UNSAFE_RUN_USER": "true",  # as tests/e2e/harness.py: the suite's Python is root's
    }
    run_as = run_as_user()
    if run_as is not None:
        env["TRAINYARD_RUN_AS"] = run_as
    (root / "agent").mkdir(mode=0o755)
    assert AGENT_COMMAND
    return AgentProcess(env, root / "agent.log").start()


def _stop_every_run(api: httpx.Client) -> None:
    """Nothing left training when the module ends: stop what runs, and wait for it to end."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        processes = _ok(api.get(f"/projects/{PROJECT}/processes", params={"limit": 200}))["items"]
        active = [p for p in processes if p["status"] in ("starting", "running", "stopping")]
        if not active:
            return
        for process in active:
            if process["status"] != "stopping":
                api.post(f"/projects/{PROJECT}/processes/{process['id']}/stop")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    root = public_tempdir("trainyard-console-")
    try:
        with console_api(root) as (running, api):
            token_file = _seed(api, root)
            agent = _agent(root, running.base_url, token_file)
            try:
                yield running
            finally:
                _stop_every_run(api)
                agent.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _row(page: Page, index: int = -1) -> Any:
    rows = page.locator("#processes tbody tr")
    return rows.nth(index if index >= 0 else rows.count() - 1)


def _act(page: Page, row: Any, action: str) -> None:
    row.locator("summary").click()
    row.get_by_role("button", name=action, exact=True).click()
    page.wait_for_load_state()


def _not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__kept === true"), "the page was reloaded"


def test_create_start_watch_stop_restart_and_compare(page: Page) -> None:
    watch = Watch(page)
    page.goto(PROCESSES)
    sign_in(page, "ann")
    expect(page.get_by_role("heading", name="Processes", level=1)).to_be_visible()
    rows = page.locator("#processes tbody tr")
    expect(rows.first).to_be_visible()
    before = rows.count()
    page.get_by_label("Template").select_option("digits")
    page.get_by_label("Machine").select_option(MACHINE)
    page.get_by_role("button", name="Create", exact=True).click()
    expect(rows).to_have_count(before + 1)
    row = _row(page)  # ids sort by creation: the new process is the last row
    expect(row.locator('[data-field="status"]')).to_have_text("Created")
    expect(row.get_by_role("button", name="Stop", exact=True)).to_be_hidden()
    accessible(page)

    _act(page, row, "Start")
    row = _row(page)
    page.evaluate("window.__kept = true")
    expect(row.locator('[data-field="status"]')).to_have_text("Running", timeout=LIVE)
    expect(row.locator('[data-field="progress"]')).to_be_visible(timeout=LIVE)
    _not_reloaded(page)  # the status and the progress came by the long-poll
    row.locator("summary").click()
    expect(row.get_by_role("button", name="Stop", exact=True)).to_be_visible()
    expect(row.get_by_role("button", name="Start", exact=True)).to_be_hidden()
    expect(row.get_by_role("button", name="Delete", exact=True)).to_be_hidden()
    accessible(page)
    screenshot(page, "processes")

    row.get_by_role("link", name="Monitoring").click()
    expect(page.get_by_role("heading", name="Monitoring: digits #1")).to_be_visible()
    page.evaluate("window.__kept = true")
    # Functions, not expressions: Playwright evaluates an expression with eval, which the CSP refuses.
    drawn = "Number(document.querySelector('#chart').dataset.points || 0)"
    page.wait_for_function(f"() => {drawn} >= 1", timeout=LIVE)  # the epochs reported so far
    first = page.evaluate(f"() => {drawn}")
    page.wait_for_function(f"() => {drawn} > {first}", timeout=LIVE)  # the next epoch, live
    _not_reloaded(page)
    assert page.evaluate("performance.getEntriesByName('chart-painted').length") == 1
    expect(page.locator("#chart canvas")).to_be_visible()
    expect(page.locator("#trail")).to_contain_text("starting → running")
    accessible(page)
    screenshot(page, "monitoring")

    page.goto(PROCESSES)
    row = _row(page)
    _act(page, row, "Stop")
    page.evaluate("window.__kept = true")
    row = _row(page)
    expect(row.locator('[data-field="status"]')).to_have_text("Stopped", timeout=LIVE)
    _not_reloaded(page)
    _act(page, row, "Restart")
    row = _row(page)
    expect(row.locator('[data-field="status"]')).to_have_text("Running", timeout=LIVE)
    row.get_by_role("link", name="Monitoring").click()
    expect(page.get_by_role("heading", name="Monitoring: digits #2")).to_be_visible()
    page.wait_for_function(f"() => {drawn} >= 1", timeout=LIVE)  # the new run's first epoch
    page.goto(PROCESSES)
    row = _row(page)
    _act(page, row, "Stop")
    expect(_row(page).locator('[data-field="status"]')).to_have_text("Stopped", timeout=LIVE)

    page.goto(f"/ui/projects/{PROJECT}/runs/")
    boxes = page.get_by_role("checkbox", name=re.compile(r"^Compare digits #"))
    expect(boxes.first).to_be_visible()
    for index in range(boxes.count()):
        boxes.nth(index).check()
    page.get_by_label("Metric").select_option("loss")
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.get_by_role("heading", name="loss of the chosen runs")).to_be_visible()
    expect(page.locator("#chart")).to_have_attribute("data-points", re.compile(r"[1-9]"))
    accessible(page)
    screenshot(page, "compare")
    assert watch.csp == [] and watch.dialogs == []


def test_a_viewer_sees_no_action_and_a_forged_post_is_refused(page: Page) -> None:
    watch = Watch(page)
    page.goto(PROCESSES)
    sign_in(page, "vera")
    expect(page.get_by_role("heading", name="Processes", level=1)).to_be_visible()
    expect(page.locator("#processes tbody tr").first).to_be_visible()
    assert page.locator("#processes summary").count() == 0
    assert page.locator("button[data-action]").count() == 0
    expect(page.get_by_role("heading", name="Create a process")).to_have_count(0)
    accessible(page)
    process_id = page.locator("#processes tbody tr").first.get_attribute("data-id")
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    forged = page.request.post(f"{PROCESSES}{process_id}/start", form={"csrf_token": token or ""})
    assert forged.status == 403
    page.reload()
    expect(page.locator("#processes tbody tr").first.locator('[data-field="status"]')).to_have_text("Created")
    assert watch.csp == [] and watch.dialogs == []
