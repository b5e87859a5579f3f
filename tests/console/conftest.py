"""The browser fixtures every console test module shares: Debian's Chromium, once per module, and a
fresh context and page per test against the module's own `server` fixture (a real
`trainyard-api serve`: each module seeds what it looks at; see tests/console/test_browser.py)."""

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.api.test_cli import Server
from tests.console.browser import chromium_path, launch_args


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=launch_args())
        yield browser
        browser.close()


@pytest.fixture
def context(chromium: Browser, server: Server) -> Iterator[BrowserContext]:
    context = chromium.new_context(base_url=server.base_url, viewport={"width": 1280, "height": 800})
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()
