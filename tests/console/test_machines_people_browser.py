"""Machines and People in Debian's Chromium, against a real `trainyard-api serve`: register a machine,
see its agent token once and copy it, rotate it; add a person, give a role, make a token and see it
once; a viewer sees no action and a forged POST is refused; axe-core on each page; screenshots."""

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Dialog, Page, expect

from tests.api.packages_kit import valid_package, zip_bytes
from tests.api.test_cli import Server
from tests.console.browser import accessible, console_api, screenshot, sign_in
from tests.console.kit import PASSWORD

HOSTILE = "<img src=x onerror=alert(1)>"


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """ann (an administrator), vera (a viewer of `invoices`), an empty project, and a machine with a
    GPU that runs a process of `vision` (its agent said hello; the run waits to be launched)."""
    with console_api(tmp_path_factory.mktemp("console-machines")) as (running, api):
        for body in (
            {"name": "ann", "display_name": "Ann", "password": PASSWORD, "is_admin": True},
            {"name": "vera", "password": PASSWORD},
            {"name": "rpa-invoices", "display_name": f"RPA {HOSTILE}"},
        ):
            _ok(api.post("/users", json=body), 201)
        for project in ("invoices", "vision", "Пустой"):
            _ok(api.post("/projects", json={"name": project}), 201)
        _ok(api.put("/projects/invoices/members/vera", json={"role": "viewer"}))
        _ok(api.put("/projects/invoices/members/rpa-invoices", json={"role": "trainer"}))
        _ok(api.post("/model-types", json={"name": "detector"}), 201)
        package = zip_bytes(valid_package(parameters=None))
        files = {"file": ("yolo.zip", package, "application/zip")}
        _ok(api.post("/projects/vision/packages/yolo/versions", files=files), 201)
        template = {"name": "Детектор", "model_type": "detector", "base_package": "yolo", "gpus": 1}
        _ok(api.post("/projects/vision/templates", json=template), 201)
        machine = {"name": "gpu-02", "address": "10.0.3.18", "description": "rack 4"}
        token = _ok(api.post("/machines", json=machine), 201)["agent_token"]
        process = _ok(
            api.post("/projects/vision/templates/Детектор/processes", json={"machine": "gpu-02"}), 201
        )
        _ok(api.post(f"/projects/vision/processes/{process['id']}/start"), 201)
        gpus = [{"index": i, "name": "NVIDIA H100 80GB HBM3", "memory_total_mb": 81559} for i in range(2)]
        hello = {"agent_version": "1.4.0", "gpus": gpus}
        agent = {"Authorization": f"Bearer {token}"}
        _ok(api.post("/agent/hello", json=hello, headers=agent))
        _ok(api.post("/machines", json={"name": "cpu-01", "address": "10.0.9.1"}), 201)
        yield running


def _csp_watch(page: Page) -> list[str]:
    """CSP violations, and every confirmation accepted (Watch would dismiss them)."""
    seen: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            seen.append(message.text)

    def dialog(question: Dialog) -> None:
        question.accept()

    page.on("console", console)
    page.on("dialog", dialog)
    return seen


def test_register_copy_and_rotate_a_machines_token(page: Page, server: Server) -> None:
    csp = _csp_watch(page)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
    page.goto("/ui/machines/")
    sign_in(page)
    expect(page.get_by_role("heading", name="Machines", level=1)).to_be_visible()
    running = page.get_by_role("row").filter(has_text="gpu-02")
    expect(running).to_contain_text("Online")
    expect(running).to_contain_text("0: NVIDIA H100 80GB HBM3")
    expect(running).to_contain_text("vision / Детектор #1: Starting")
    accessible(page)

    page.get_by_label("Name").fill("gpu-01")
    page.get_by_label("Address").fill("10.0.3.17")
    page.get_by_role("button", name="Register", exact=True).click()
    expect(page.get_by_role("heading", name="Machine gpu-01 registered")).to_be_visible()
    token = page.locator("#agent-token").inner_text()
    assert token.startswith("ty_") and token not in page.url
    page.get_by_role("button", name="Copy the token").click()
    expect(page.get_by_role("status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == token
    accessible(page)
    screenshot(page, "machine-registered")

    page.get_by_role("link", name="Back to the machines").click()
    expect(page.get_by_role("row").filter(has_text="gpu-01")).to_contain_text(
        "Its agent has not connected yet"
    )
    assert token not in page.content()
    screenshot(page, "machines")

    page.get_by_role("button", name="New agent token gpu-01").click()  # confirmed by the dialog handler
    expect(page.get_by_role("heading", name="A new agent token for gpu-01")).to_be_visible()
    rotated = page.locator("#agent-token").inner_text()
    assert rotated.startswith("ty_") and rotated != token
    page.goto("/ui/machines/")
    page.get_by_role("button", name="Disable gpu-01").click()
    expect(page.get_by_role("row").filter(has_text="gpu-01")).to_contain_text("Disabled")
    page.get_by_role("button", name="Revoke agent token gpu-01").click()
    expect(page.get_by_role("row").filter(has_text="gpu-01")).to_contain_text("No agent token")
    assert csp == []


def test_add_a_person_give_a_role_and_make_a_token(page: Page, server: Server) -> None:
    csp = _csp_watch(page)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
    page.goto("/ui/people/")
    sign_in(page)
    expect(page.get_by_role("heading", name="People", level=1)).to_be_visible()
    expect(page.get_by_text(f"RPA {HOSTILE}")).to_be_visible()  # the characters, as text
    page.get_by_label("Username").fill("Ольга")
    page.get_by_label("Display name").fill("Ольга Петрова")
    page.get_by_label("Password", exact=True).fill("a long password for olga")
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.get_by_role("heading", name="Ольга (Ольга Петрова)", level=1)).to_be_visible()

    roles = page.get_by_role("region", name="Roles in projects")
    roles.get_by_label("Project", exact=True).select_option("invoices")
    roles.get_by_label("Role", exact=True).select_option("trainer")
    roles.get_by_role("button", name="Give the role").click()
    expect(page.get_by_role("row").filter(has_text="invoices")).to_contain_text("trainer")
    accessible(page)
    screenshot(page, "person")

    page.goto("/ui/people/")
    accessible(page)
    screenshot(page, "people")

    page.get_by_role("link", name="rpa-invoices").click()
    page.get_by_label("Token name").fill("invoices-bot")
    page.get_by_label("Expires").select_option("1")
    page.get_by_label("Only the permissions ticked below").check()
    page.get_by_label("processes.view").check()
    page.get_by_label("processes.manage").check()
    page.get_by_role("button", name="Make the token").click()
    expect(page.get_by_role("heading", name="Token invoices-bot made")).to_be_visible()
    token = page.locator("#api-token").inner_text()
    page.get_by_role("button", name="Copy the token").click()
    expect(page.get_by_role("status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == token
    accessible(page)
    screenshot(page, "tokens")

    page.get_by_role("link", name="Back to rpa-invoices").click()
    row = page.get_by_role("row").filter(has_text="invoices-bot")
    expect(row).to_contain_text("Active")
    assert token not in page.content()
    page.get_by_role("button", name="Revoke invoices-bot").click()
    expect(page.get_by_role("row").filter(has_text="invoices-bot")).to_contain_text("Revoked")
    assert csp == []


def test_a_viewer_sees_no_action_and_a_forged_post_is_refused(page: Page, server: Server) -> None:
    page.goto("/ui/machines/")
    sign_in(page, "vera")
    expect(page.get_by_role("row").filter(has_text="gpu-02")).to_contain_text(
        "Runs in projects you cannot see: 1"
    )
    expect(page.get_by_role("button", name="Disable gpu-02")).to_have_count(0)
    expect(page.get_by_role("heading", name="Register a machine")).to_have_count(0)
    accessible(page)
    csrf = page.locator('input[name="csrf_token"]').first.input_value()
    forged = page.request.post("/ui/machines/gpu-02/disable", form={"csrf_token": csrf}, max_redirects=0)
    assert forged.status == 403
    page.goto("/ui/people/")
    expect(page.get_by_text("Seeing other people needs the permission users.view.")).to_be_visible()
    forged = page.request.post(
        "/ui/people", form={"name": "x", "bot": "true", "csrf_token": csrf}, max_redirects=0
    )
    assert forged.status == 403
    page.goto("/ui/machines/")
    expect(page.get_by_role("row").filter(has_text="gpu-02")).to_contain_text("Enabled")


def test_an_empty_project(page: Page) -> None:
    """What a newcomer sees in a project with nothing yet, in each of its pages that exists."""
    page.goto("/ui/projects/Пустой/")
    sign_in(page)
    expect(page.get_by_role("heading", name="Пустой", level=1)).to_be_visible()
    accessible(page)
    screenshot(page, "project-empty")
    links = page.get_by_role("navigation", name="Pages").get_by_role("link")
    pages = [href for href in links.evaluate_all("links => links.map(a => a.getAttribute('href'))")]
    inside = [href for href in pages if href and href.startswith("/ui/projects/")]
    for href in inside:
        answer = page.goto(href)
        assert answer is not None and answer.status == 200, href
        accessible(page)
    if any(href.endswith("/processes/") for href in inside):
        page.goto(next(href for href in inside if href.endswith("/processes/")))
        screenshot(page, "processes-empty")
