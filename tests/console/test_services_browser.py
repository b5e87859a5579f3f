"""Services in Debian's Chromium, against a real `trainyard-api serve`: publish a version from the page,
start it, see it reach Serving without a reload (the test acts as the agent over the real protocol and
a real HTTP server on loopback stands for the serving process, tests/api/serving_stand_in.py), send the
service-test form pasted JSON and a file and read the answers, an instance's hostile stderr arriving
live as text; stop it; a viewer sees no button and no form; axe on each page; the screenshots. Then
the whole way with a real `trainyard-agent` on a machine of its own: the page starts the service, the
agent's real serving process answers the form, the page stops it."""

import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import FilePayload, Page, expect

from tests.api.packages_kit import zip_bytes
from tests.api.serving_stand_in import serving
from tests.api.test_cli import Server
from tests.api.world import BASE_PACKAGE, BASE_PACKAGE_ZIP
from tests.console.browser import Watch, accessible, console_api, screenshot, sign_in
from tests.console.kit import PASSWORD
from tests.e2e.harness import AgentProcess, public_tempdir, run_as_user

PROJECT = "digits-lab"
MACHINE = "gpu-01"
SERVICES = f"/ui/projects/{PROJECT}/services/"
HOSTILE = "<img src=x onerror=alert(1)>"
LIVE = 30_000  # ms: a bound on the long-poll's answer, not a speed check
AGENT_MACHINE = "local"
STARTED = 120_000  # ms: a bound on a real agent fetching the package and its server loading it
ECHO = "echo"
ECHO_MAIN = """
class Main:
    def __init__(self):
        self.loaded = "echo-model"

    def predict(self, input):
        if isinstance(input, bytes):
            return f"{len(input)} bytes"
        return {"model": self.loaded, "echo": input}
"""
ECHO_TRAIN = (
    "class Main:\n    def train(self, data_directory):\n        pass\n\n    def save(self):\n        pass\n"
)


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response.json()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str]]:
    """ann (an administrator), vera (a viewer), the project with a package that can serve, a machine
    and its agent token (the test acts as its agent), a service `viewed` for the viewer."""
    with console_api(tmp_path_factory.mktemp("console-services")) as (running, api):
        for body in (
            {"name": "ann", "password": PASSWORD, "is_admin": True},
            {"name": "vera", "password": PASSWORD},
        ):
            _ok(api.post("/users", json=body), 201)
        _ok(api.post("/projects", json={"name": PROJECT}), 201)
        _ok(api.put(f"/projects/{PROJECT}/members/vera", json={"role": "viewer"}))
        files = {"file": ("pkg.zip", BASE_PACKAGE_ZIP, "application/zip")}
        _ok(api.post(f"/projects/{PROJECT}/packages/{BASE_PACKAGE}/versions", files=files), 201)
        machine = _ok(api.post("/machines", json={"name": MACHINE, "address": "127.0.0.1"}), 201)
        body = {"name": "viewed", "package": BASE_PACKAGE, "version": "1.0", "machine": MACHINE}
        _ok(api.post(f"/projects/{PROJECT}/services", json=body), 201)
        echo = zip_bytes({"train.py": ECHO_TRAIN, "main.py": ECHO_MAIN})
        _ok(
            api.post(f"/projects/{PROJECT}/packages/{ECHO}/versions", files={"file": ("echo.zip", echo)}), 201
        )
        local = _ok(api.post("/machines", json={"name": AGENT_MACHINE, "address": "127.0.0.1"}), 201)
        yield running, machine["agent_token"], local["agent_token"]


@pytest.fixture(scope="module")
def server(seeded: tuple[Server, str, str]) -> Server:
    return seeded[0]


def _agent(server: Server, token: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=f"{server.base_url}/api/v1/agent", headers=headers, timeout=30)


def _take(agent: httpx.Client, kind: str) -> dict[str, Any]:
    commands = [c for c in _ok(agent.get("/commands")) if c["kind"] == kind]
    assert len(commands) == 1, commands
    _ok(agent.post(f"/commands/{commands[0]['id']}/ack"))
    command: dict[str, Any] = commands[0]
    return command


def test_publish_start_and_test_a_service(page: Page, seeded: tuple[Server, str, str]) -> None:
    server, agent_token, _ = seeded
    watch = Watch(page)
    page.goto(SERVICES)
    sign_in(page)
    expect(page.get_by_role("heading", name="Services", level=1)).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="viewed")).to_contain_text("Created")
    accessible(page)

    page.get_by_label("Name", exact=True).fill("digits-online")
    page.get_by_label("Version to serve").select_option(f"{BASE_PACKAGE}/1.0")
    page.get_by_label("Machine", exact=True).select_option(MACHINE)
    page.get_by_label("Maximum run time, hours").fill("2")
    page.get_by_role("button", name="Publish", exact=True).click()
    expect(page.get_by_role("heading", name="digits-online", level=1)).to_be_visible()
    status = page.locator('#service [data-field="status"]')
    expect(status).to_have_text("Created")
    expect(page.get_by_role("button", name="Predict")).to_be_disabled()
    expect(page.get_by_text("The service is not serving")).to_be_visible()

    page.get_by_role("button", name="Start", exact=True).click()
    expect(status).to_have_text("Starting")
    expect(page.get_by_role("button", name="Start", exact=True)).to_be_hidden()
    expect(page.locator("#live-note")).to_be_visible()
    with _agent(server, agent_token) as agent:
        start = _take(agent, "start_service")["payload"]["start"]
        with serving(start["secret"]) as instance:
            _ok(
                agent.post(
                    f"/services/{start['service_id']}/events",
                    json={"type": "serving", "address": instance.address},
                )
            )
            # Live: no reload, the status and the form follow the agent's report.
            expect(status).to_have_text("Serving", timeout=LIVE)
            expect(page.get_by_role("button", name="Predict")).to_be_enabled()
            expect(page.locator('[data-field="addresses"]')).to_contain_text(f"{instance.address}/predict")
            expect(page.locator("#history")).to_contain_text("starting → serving")

            page.get_by_label("Or JSON").fill('{"pixels": [0, 3, 16], "label": "' + HOSTILE + '"}')
            page.get_by_role("button", name="Predict").click()
            answer = page.locator(".answer-body")
            expect(answer).to_contain_text('"instance": 0')
            expect(answer).to_contain_text(HOSTILE)  # as text
            expect(page.locator(".answer .meta")).to_contain_text(" ms")
            accessible(page)
            screenshot(page, "service-test")

            page.get_by_label("A file").set_input_files(
                files=[
                    FilePayload(
                        name="digit.png", mimeType="image/png", buffer=b"\x89PNG\r\n\x1a\n" + bytes(56)
                    )
                ]
            )
            page.get_by_label("Or JSON").fill("")
            page.get_by_role("button", name="Predict").click()
            expect(page.locator(".answer-body")).to_have_text("64")
            expect(page.locator(".answer .meta")).to_contain_text("text/plain")

            page.get_by_label("Or JSON").fill('{"raise": "no model"}')
            page.get_by_role("button", name="Predict").click()
            expect(page.locator(".answer")).to_contain_text("Prediction failed")
            expect(page.locator(".answer")).to_contain_text("ValueError: no model")

            # The instance dies with hostile stderr: it arrives live, as text, and the form closes.
            exited = {
                "type": "exited",
                "instance": 0,
                "exit_code": 1,
                "error_tail": HOSTILE,
                "restarting": True,
            }
            _ok(agent.post(f"/services/{start['service_id']}/events", json=exited))
            expect(status).to_have_text("Starting", timeout=LIVE)
            expect(page.locator('[data-field="error_tail"]')).to_have_text(HOSTILE)
            expect(page.get_by_role("button", name="Predict")).to_be_disabled()
            _ok(
                agent.post(
                    f"/services/{start['service_id']}/events",
                    json={"type": "serving", "address": instance.address},
                )
            )
            expect(status).to_have_text("Serving", timeout=LIVE)

            page.get_by_role("button", name="Stop", exact=True).click()
            expect(status).to_have_text("Stopping")
            _take(agent, "stop_service")
            _ok(
                agent.post(f"/services/{start['service_id']}/events", json={"type": "stopped", "instance": 0})
            )
            expect(status).to_have_text("Stopped", timeout=LIVE)
            expect(page.get_by_role("button", name="Start", exact=True)).to_be_visible()
            assert instance.calls == 3

    page.get_by_role("link", name="Services", exact=True).first.click()
    row = page.get_by_role("row").filter(has_text="digits-online")
    expect(row).to_contain_text("Stopped")
    expect(row).to_contain_text(f"{BASE_PACKAGE} 1.0")
    accessible(page)
    screenshot(page, "services")
    assert watch.csp == [] and watch.dialogs == []


def test_a_viewer_sees_no_button_and_no_form(page: Page) -> None:
    watch = Watch(page)
    page.goto(f"{SERVICES}viewed/")
    sign_in(page, "vera")
    expect(page.get_by_role("heading", name="viewed", level=1)).to_be_visible()
    expect(page.locator("button[data-action]")).to_have_count(0)
    expect(page.locator("#test-form")).to_have_count(0)
    expect(page.get_by_text("You do not hold services.predict")).to_be_visible()
    accessible(page)
    page.goto(SERVICES)
    expect(page.get_by_text("Publish a version")).to_have_count(0)
    assert watch.csp == [] and watch.dialogs == []


def _real_agent(root: Path, api_url: str, token: str) -> AgentProcess:
    token_file = root / "agent-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    first = random.randrange(20000, 40000, 100)  # a window of ports of this test's own
    env = {
        "PATH": "/usr/bin:/bin",
        "TRAINYARD_API_URL": api_url,
        "TRAINYARD_AGENT_TOKEN_FILE": str(token_file),
        "TRAINYARD_AGENT_WORK_DIR": str(root / "agent"),
        "TRAINYARD_STOP_GRACE": "2",
        "TRAINYARD_AGENT_SERVE_PORTS": f"{first}-{first + 99}",
        "TRAINYARD_ALLOW_UNSAFE_RUN_USER": "true",  # as tests/e2e/harness.py: the suite's Python is root's
    }
    run_as = run_as_user()
    if run_as is not None:
        env["TRAINYARD_RUN_AS"] = run_as
    (root / "agent").mkdir(mode=0o755)
    return AgentProcess(env, root / "agent.log").start()


def test_a_real_agent_serves_the_test_form(page: Page, seeded: tuple[Server, str, str]) -> None:
    server, _, local_token = seeded
    watch = Watch(page)
    root = public_tempdir("trainyard-console-serving-")
    agent = _real_agent(root, server.base_url, local_token)
    try:
        page.goto(SERVICES)
        sign_in(page)
        page.get_by_label("Name", exact=True).fill("echo-live")
        page.get_by_label("Version to serve").select_option(f"{ECHO}/1.0")
        page.get_by_label("Machine", exact=True).select_option(AGENT_MACHINE)
        page.get_by_role("button", name="Publish", exact=True).click()
        status = page.locator('#service [data-field="status"]')
        expect(status).to_have_text("Created")
        page.get_by_role("button", name="Start", exact=True).click()
        expect(status).to_have_text("Serving", timeout=STARTED)
        expect(page.get_by_role("button", name="Predict")).to_be_enabled()

        page.get_by_label("Or JSON").fill('{"rows": [[5.1, 3.5, 1.4, 0.2]], "note": "' + HOSTILE + '"}')
        page.get_by_role("button", name="Predict").click()
        answer = page.locator(".answer-body")
        expect(answer).to_contain_text('"model": "echo-model"')
        expect(answer).to_contain_text(HOSTILE)
        page.get_by_label("A file").set_input_files(
            files=[FilePayload(name="x.bin", mimeType="application/octet-stream", buffer=bytes(100))]
        )
        page.get_by_label("Or JSON").fill("")
        page.get_by_role("button", name="Predict").click()
        expect(page.locator(".answer-body")).to_have_text("100 bytes")

        page.get_by_role("button", name="Stop", exact=True).click()
        expect(status).to_have_text("Stopped", timeout=STARTED)
        expect(page.get_by_role("button", name="Predict")).to_be_disabled()
        assert watch.csp == [] and watch.dialogs == []
    finally:
        agent.stop()
        shutil.rmtree(root, ignore_errors=True)
