"""The console in Debian's Chromium, against a real `trainyard-api serve`: sign in, see and create
projects, a hostile text stays text, CSRF, sign-out on the server, an ended session, the offline docs;
axe-core on every page, and a screenshot of each into docs/console/."""

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from tests.api.test_cli import Server
from tests.conftest import ADMIN_TOKEN
from tests.console.browser import Watch, accessible, console_api, screenshot, sign_in
from tests.console.kit import PASSWORD

HOSTILE = "<img src=x onerror=alert(1)><script>alert(2)</script>"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One API for the module, on SQLite, with the people and projects the tests look at."""
    with console_api(tmp_path_factory.mktemp("console")) as (running, api):
        for body in (
            {"name": "ann", "display_name": "Ann", "password": PASSWORD, "is_admin": True},
            {"name": "vera", "password": PASSWORD},
        ):
            assert api.post("/users", json=body).status_code == 201
        made = api.post("/projects", json={"name": "invoices", "description": HOSTILE})
        assert made.status_code == 201
        assert api.put("/projects/invoices/members/vera", json={"role": "viewer"}).status_code == 200
        yield running


def test_sign_in_see_projects_create_one(page: Page) -> None:
    watch = Watch(page)
    page.goto("/")  # 307 to /ui/, then 303 to Sign in
    expect(page).to_have_url("/ui/sign-in?next=/ui/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    accessible(page)
    screenshot(page, "sign-in")

    sign_in(page)
    expect(page).to_have_url("/ui/")
    expect(page.get_by_role("heading", name="Projects", level=1)).to_be_visible()
    expect(page.get_by_role("link", name="invoices")).to_be_visible()
    accessible(page)

    page.get_by_label("Name").fill("Классификатор-счетов_v1.2")
    page.get_by_label("Description").fill("Счета-фактуры, 2026")
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.get_by_role("heading", name="Классификатор-счетов_v1.2", level=1)).to_be_visible()
    expect(page.get_by_text("Pages of this project")).to_be_visible()
    accessible(page)
    screenshot(page, "project-home")

    page.goto("/ui/")
    page.get_by_label("Name").fill("has space")
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.get_by_text("must not contain ' '")).to_be_visible()
    expect(page.get_by_label("Name")).to_be_focused()  # the script puts the keyboard on the field
    accessible(page)
    screenshot(page, "projects-refused-name")

    page.goto("/ui/")
    screenshot(page, "projects")
    assert watch.csp == [] and watch.dialogs == []


def test_a_hostile_text_renders_as_text(page: Page) -> None:
    watch = Watch(page)
    page.goto("/ui/projects/invoices/")
    sign_in(page)
    expect(page.get_by_text(HOSTILE)).to_be_visible()  # the characters themselves, on screen
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    assert watch.dialogs == []


def test_a_post_without_the_csrf_token_is_refused(page: Page, server: Server) -> None:
    page.goto("/ui/sign-in")
    sign_in(page)
    form = page.locator('form[action="/ui/projects"]')
    form.locator('input[name="csrf_token"]').evaluate("field => field.remove()")
    page.get_by_label("Name").fill("forged")
    with page.expect_response("**/ui/projects") as answer:
        page.get_by_role("button", name="Create", exact=True).click()
    assert answer.value.status == 403
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    accessible(page)
    screenshot(page, "csrf-refused")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert httpx.get(f"{server.base_url}/api/v1/projects/forged", headers=admin).status_code == 404


def test_a_viewer_sees_no_create_form(page: Page) -> None:
    page.goto("/ui/sign-in")
    sign_in(page, "vera")
    expect(page.get_by_role("link", name="invoices")).to_be_visible()
    expect(page.get_by_role("heading", name="Create a project")).to_have_count(0)


def test_sign_out_ends_the_session_on_the_server(chromium: Browser, page: Page, server: Server) -> None:
    page.goto("/ui/sign-in")
    sign_in(page)
    cookies = page.context.cookies()
    session = next(c for c in cookies if c["name"] == "trainyard_session")
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url("/ui/sign-in")

    thief = chromium.new_context(base_url=server.base_url)
    try:
        thief.add_cookies(cookies)  # the old cookie, kept by someone else
        stolen = thief.new_page()
        stolen.goto("/ui/")
        expect(stolen).to_have_url("/ui/sign-in?next=/ui/")
    finally:
        thief.close()


def test_an_ended_session_returns_to_sign_in_then_to_the_page_asked(page: Page, server: Server) -> None:
    page.goto("/ui/sign-in")
    sign_in(page)
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "trainyard_session")
    ended = httpx.post(f"{server.base_url}/api/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert ended.status_code == 204  # the same token, revoked through the REST API

    page.goto("/ui/projects/invoices/")
    expect(page).to_have_url("/ui/sign-in?next=/ui/projects/invoices/")
    sign_in(page)
    expect(page).to_have_url("/ui/projects/invoices/")
    expect(page.get_by_role("heading", name="invoices", level=1)).to_be_visible()


def test_russian_and_the_keyboard(page: Page) -> None:
    page.goto("/ui/sign-in")
    sign_in(page)
    page.get_by_role("link", name="Русский").click()
    expect(page.get_by_role("heading", name="Проекты", level=1)).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "ru")
    accessible(page)
    screenshot(page, "projects-ru")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Перейти к содержимому")).to_be_focused()
    page.get_by_role("link", name="English").click()
    expect(page.get_by_role("heading", name="Projects", level=1)).to_be_visible()


@pytest.mark.parametrize(("path", "shows"), [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")])
def test_the_docs_render_with_no_request_leaving_the_origin(
    context: BrowserContext, server: Server, path: str, shows: str
) -> None:
    origin = urlsplit(server.base_url).netloc
    elsewhere: list[str] = []

    def only_this_origin(route: Route) -> None:
        if urlsplit(route.request.url).netloc in (origin, ""):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_this_origin)
    page = context.new_page()
    watch = Watch(page)
    page.goto(path)
    expect(page.locator(shows).first).to_contain_text("Trainyard", timeout=30_000)
    screenshot(page, path.strip("/"), full_page=False)  # the first screen: a whole API is megabytes
    assert elsewhere == []
    # ReDoc's side menu shows its maker's logo from their CDN: the docs' CSP refuses it (it is the one
    # thing either page asks of another origin), so it is never fetched.
    assert [m for m in watch.csp if "cdn.redoc.ly/redoc/logo-mini.svg" not in m] == []
