"""The Training log, Models, a model version and Evaluation in Debian's Chromium, against a real
`trainyard-api serve` and a REAL `trainyard-agent run` training the digits package once (the module's
one run): the log shows lines and search narrows them; Models lists the new version; its page shows
its lineage both ways and `_results.json`; Evaluation shows per-class metrics and a badcase image; axe
on each page, screenshots into docs/console/. And the log of a 120,000-line run never holds more than
a bounded number of rows in the page, follows new lines live, and reaches its last line."""

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.api.test_cli import Server
from tests.console.browser import Watch, accessible, console_api, screenshot, sign_in
from tests.console.kit import PASSWORD
from tests.e2e.harness import AGENT_COMMAND, AgentProcess, public_tempdir, run_as_user
from tests.examples.conftest import EXAMPLES, PACKAGES, load_module

PROJECT = "demo"
PACKAGE = "digits-classifier"
WAIT_SECONDS = 600.0  # a bound on waiting for a real training on a shared machine, never a speed check
LOG_LINES = 120_000
BATCH_LINES = 20_000
MAX_ROWS = 120  # the viewport's rows and its overscan, whatever the log holds


@dataclass
class Seeded:
    server: Server
    run_id: str  # the digits run: succeeded
    long_run_id: str  # the run whose 120,000 lines the test wrote as its agent
    agent: httpx.Client  # that run's machine's agent
    project: str = PROJECT

    @property
    def base_url(self) -> str:
        return self.server.base_url


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.request.url}: {response.status_code} {response.text}"
    return response.json() if response.content else None


def _machine(api: httpx.Client, name: str) -> str:
    return str(
        ok(api.post("/machines", json={"name": name, "address": "127.0.0.1", "capacity": 2}), 201)[
            "agent_token"
        ]
    )


def _process(api: httpx.Client, template: dict[str, Any], machine: str) -> str:
    ok(api.post(f"/projects/{PROJECT}/templates", json={"model_type": "classifier", **template}), 201)
    created = ok(
        api.post(f"/projects/{PROJECT}/templates/{template['name']}/processes", json={"machine": machine}),
        201,
    )
    return f"/projects/{PROJECT}/processes/{created['id']}"


def _wait_ended(api: httpx.Client, run_id: str, agent: AgentProcess) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        run = ok(api.get(f"/projects/{PROJECT}/runs/{run_id}"))
        if run["status"] in ("succeeded", "failed", "stopped"):
            return dict(run)
        assert time.monotonic() < deadline, f"the run stayed {run['status']}\n{agent.output()[-4000:]}"
        time.sleep(0.2)


def _lines(seq: int, first: int, count: int) -> dict[str, Any]:
    texts = [
        f"line {first + i} of the long log" + (" needle" if (first + i) % 1000 == 0 else "")
        for i in range(count)
    ]
    return {
        "seq": seq,
        "names": [],
        "points": {"series": [], "step": [], "value": [], "time": []},
        "logs": {"stream": ["stdout"] * count, "time": [1_700_000_000.0] * count, "text": texts},
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    root = public_tempdir("trainyard-console-models-")
    data = tmp_path_factory.mktemp("digits")
    load_module(EXAMPLES / "export_digits.py", "export_digits").export(data)
    zip_folder = load_module(EXAMPLES / "zip_package.py", "zip_package").zip_folder
    with console_api(root) as (running, api):
        ok(api.post("/users", json={"name": "ann", "password": PASSWORD, "is_admin": True}), 201)
        ok(api.post("/model-types", json={"name": "classifier"}), 201)
        ok(api.post("/projects", json={"name": PROJECT}), 201)
        for kind, name, folder in (("packages", PACKAGE, PACKAGES / PACKAGE), ("datasets", "digits", data)):
            files = {"file": (f"{name}.zip", zip_folder(folder), "application/zip")}
            ok(api.post(f"/projects/{PROJECT}/{kind}/{name}/versions", files=files), 201)
        token_file = root / "agent-token"
        token_file.write_text(_machine(api, "local") + "\n")
        os.chmod(token_file, 0o600)
        work_dir = root / "agent"
        work_dir.mkdir(mode=0o755)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TRAINYARD_API_URL": running.base_url,
            "TRAINYARD_AGENT_TOKEN_FILE": str(token_file),
            "TRAINYARD_AGENT_WORK_DIR": str(work_dir),
            "TRAINYARD_STOP_GRACE": "2",
            "TRAINYARD_ALLOW_UNSAFE_RUN_USER": "true",  # as tests/e2e/harness.py explains
        }
        if (run_as := run_as_user()) is not None:
            env["TRAINYARD_RUN_AS"] = run_as
        agent = AgentProcess(env, root / "agent.log").start()
        assert AGENT_COMMAND
        try:
            digits = {
                "name": "digits",
                "base_package": PACKAGE,
                "pipeline_type": "full",
                "dataset": "digits",
                "dataset_path": "train",
                "test_dataset": "digits",
                "test_dataset_path": "test",
                "parameters": {"epochs": 2, "seed": 0},
            }
            process = _process(api, digits, "local")
            run_id = str(ok(api.post(f"{process}/start"), 201)["latest_run"]["id"])
            run = _wait_ended(api, run_id, agent)
            assert run["status"] == "succeeded", (run, agent.output()[-4000:])

            # A run on a machine of the test's own: the test is its agent and writes 120,000 lines.
            token = _machine(api, "logs")
            long_process = _process(api, {**digits, "name": "long-log"}, "logs")
            long_run = str(ok(api.post(f"{long_process}/start"), 201)["latest_run"]["id"])
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(
                base_url=f"{running.base_url}/api/v1/agent", headers=headers, timeout=60
            ) as bot:
                for command in ok(bot.get("/commands")):
                    ok(bot.post(f"/commands/{command['id']}/ack"))
                ok(bot.post(f"/runs/{long_run}/events", json={"type": "launched"}))
                for seq in range(1, LOG_LINES // BATCH_LINES + 1):
                    ok(
                        bot.post(
                            f"/runs/{long_run}/telemetry",
                            json=_lines(seq, (seq - 1) * BATCH_LINES, BATCH_LINES),
                        )
                    )
                yield Seeded(running, run_id, long_run, bot)
        finally:
            agent.stop()


def _signed_in(page: Page, path: str) -> Watch:
    watch = Watch(page)
    page.goto(path)
    sign_in(page)
    expect(page).to_have_url(path)
    return watch


def test_the_training_log_shows_lines_and_search_narrows_them(page: Page, server: Seeded) -> None:
    path = f"/ui/projects/{PROJECT}/runs/{server.run_id}/log"
    watch = _signed_in(page, path)
    expect(page.get_by_role("heading", name="Training log of run 1")).to_be_visible()
    rows = page.locator("#log-scroll .log-line:not([hidden])")
    expect(rows.filter(has_text="epoch 2/2")).to_be_visible()
    total = rows.count()
    accessible(page)
    screenshot(page, "training-log")

    page.get_by_label("Search").fill("epoch 2/")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#log-count")).to_have_text("1 matching lines")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("epoch 2/2")
    assert total > 1
    accessible(page)
    assert watch.csp == [] and watch.dialogs == []


def test_a_long_log_keeps_few_rows_in_the_page_and_follows_live(page: Page, server: Seeded) -> None:
    watch = _signed_in(page, f"/ui/projects/{PROJECT}/runs/{server.long_run_id}/log")
    expect(page.locator("#log-count")).to_have_text("120,000 lines")
    expect(page.get_by_label("Follow live")).to_be_checked()  # the run is running: the view follows it
    expect(page.locator("#log-tools")).to_be_visible()  # the script's viewport has replaced the static page
    expect(page.locator(".log-rows .log-line", has_text="line 119999 of the long log")).to_be_visible()
    assert page.locator(".log-line").count() <= MAX_ROWS

    server.agent.post(
        f"/runs/{server.long_run_id}/telemetry", json=_lines(7, LOG_LINES, 3)
    ).raise_for_status()
    expect(page.locator(".log-line", has_text="line 120002 of the long log")).to_be_visible()  # no reload
    expect(page.locator("#log-count")).to_have_text("120,003 lines")

    page.get_by_label("Follow live").uncheck()
    page.get_by_role("button", name="To the first line").click()
    expect(page.locator(".log-line", has_text="line 0 of the long log")).to_be_visible()
    page.locator("#log-scroll").evaluate("node => { node.scrollTop = node.scrollHeight / 2; }")
    first_shown = """() => {
        const text = document.querySelector('#log-scroll .log-line:not(.pending):not([hidden]) .t');
        const found = text && /^line (\\d+) of/.exec(text.textContent);
        return found && Number(found[1]) > 1000 ? Number(found[1]) : null;
    }"""
    middle = page.wait_for_function(first_shown).json_value()  # the rows of the middle, read by offset
    assert 50_000 < middle < 70_000, middle
    assert page.locator(".log-line").count() <= MAX_ROWS

    page.get_by_label("Search").fill("needle")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#log-count")).to_contain_text("121 matching lines")  # 0, 1000, ... 120000
    expect(
        page.locator(".log-line", has_text="line 120000 of the long log needle")
    ).to_be_visible()  # following
    page.get_by_role("button", name="To the first line").click()
    expect(page.locator(".log-line", has_text="line 1000 of the long log needle")).to_be_visible()
    assert page.locator(".log-line").count() <= MAX_ROWS
    accessible(page)
    assert watch.csp == [] and watch.dialogs == []


def test_models_list_the_version_and_its_page_shows_lineage_and_results(page: Page, server: Seeded) -> None:
    watch = _signed_in(page, f"/ui/projects/{PROJECT}/models/")
    expect(page.get_by_role("heading", name="Models", level=1)).to_be_visible()
    link = page.get_by_role("link", name=f"{PACKAGE} 1.1")
    expect(link).to_be_visible()
    accessible(page)
    screenshot(page, "models")

    link.click()
    expect(page.get_by_role("heading", name=f"{PACKAGE} 1.1", level=1)).to_be_visible()
    tree = page.locator(".tree")
    expect(tree.get_by_role("link", name="1.0")).to_be_visible()  # where it came from
    expect(tree.locator("[aria-current]")).to_contain_text("made by run 1")
    expect(page.locator("pre.json")).to_contain_text('"run_summary"')
    expect(page.get_by_role("link", name=f"Download {PACKAGE} 1.1 (zip)")).to_be_visible()
    accessible(page)
    screenshot(page, "model-version")

    tree.get_by_role("link", name="1.0").click()  # and what was made from 1.0: 1.1
    expect(page.get_by_role("heading", name=f"{PACKAGE} 1.0", level=1)).to_be_visible()
    expect(page.locator(".tree").get_by_role("link", name="1.1")).to_be_visible()
    assert watch.csp == [] and watch.dialogs == []


def test_evaluation_shows_per_class_metrics_and_a_badcase_image(page: Page, server: Seeded) -> None:
    watch = _signed_in(page, f"/ui/projects/{PROJECT}/models/{PACKAGE}/1.1/")
    page.get_by_role("link", name="Evaluation", exact=True).click()
    expect(page.get_by_role("heading", name="Evaluation of run 1")).to_be_visible()
    classes = page.get_by_role("table", name="Precision and recall of each class")
    expect(classes.get_by_role("rowheader", name="7", exact=True)).to_be_visible()
    expect(
        page.get_by_role("table", name="Confusion matrix: true class by row, predicted class by column")
    ).to_be_visible()
    image = page.locator(".badcases img").first
    expect(image).to_be_visible()
    # decode() settles once the image has loaded: it rejects a broken one, and a PNG has a width
    assert image.evaluate("img => img.decode().then(() => img.naturalWidth)") > 0  # the dataset's PNG
    accessible(page)
    screenshot(page, "evaluation")

    page.get_by_role("link", name="Browse the test set").click()
    expect(page.get_by_role("heading", name="Test set of run 1")).to_be_visible()
    expect(page.locator(".test-set img").first).to_be_visible()
    # each sample with its true and predicted label (the digits package returns every prediction)
    expect(page.locator(".test-set .predicted").first).not_to_have_text("?")
    accessible(page)
    page.locator("#test-set-show").select_option("wrong")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator(".test-set li.wrong").first).to_be_visible()  # the badcase shown above, at least
    assert page.locator(".test-set li.right").count() == 0
    accessible(page)
    assert watch.csp == [] and watch.dialogs == []
