"""What the browser tests stand on: a real `trainyard-api serve`, Debian's Chromium, axe-core.

Playwright cannot download a browser here: it drives the Chromium that `apt-get install chromium`
puts at /usr/bin/chromium (or TRAINYARD_TEST_CHROMIUM). Without it the tests fail saying what to
install, never skip silently (docs/testing.md).
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.console.vendor import VENDOR
from tests.api.test_cli import Server, migrate, serving
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.console.kit import PASSWORD

AXE = VENDOR / "axe-core" / "axe.min.js"
AXE_URL = "/ui/static/vendor/axe-core/axe.min.js"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
BLOCKING_IMPACTS = frozenset({"serious", "critical"})
SETTINGS = {"bootstrap_token": ADMIN_TOKEN, "secret_key": SECRET_KEY}


def chromium_path() -> str:
    given = os.environ.get("TRAINYARD_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(given).is_file():
        pytest.fail(
            "the console's browser tests need Debian's Chromium: `sudo apt-get install -y chromium` "
            "(or set TRAINYARD_TEST_CHROMIUM to a Chromium binary); Playwright's own download is not used",
            pytrace=False,
        )
    return given


def launch_args() -> list[str]:
    # Chromium refuses to start its sandbox as root (CI's containers): the pages are ours, on localhost.
    return ["--no-sandbox"] if os.geteuid() == 0 else []


def axe_violations(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page as it stands (loaded from this origin:
    the console's CSP allows no inline script, so no injected one either)."""
    page.add_script_tag(url=AXE_URL)
    result = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result
        if v["impact"] in BLOCKING_IMPACTS
    ]


def screenshot(page: Any, name: str, *, full_page: bool = True) -> None:
    """docs/console/<name>.png, committed: the pages as they are, kept current by the tests."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


class Watch:
    """What a page must never do, recorded as it happens: break the Content-Security-Policy (an inline
    script or style somewhere), or open a dialog (a script that ran from a name)."""

    def __init__(self, page: Any) -> None:
        self.csp: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", self._console)
        page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.csp.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


def sign_in(page: Any, name: str = "ann", password: str = PASSWORD) -> None:
    """Fill and send the Sign in form the page shows, as a person does."""
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def accessible(page: Any) -> None:
    assert axe_violations(page) == []


@contextmanager
def console_api(cwd: Path) -> Iterator[tuple[Server, httpx.Client]]:
    """A migrated, served API on SQLite in `cwd`, and a REST client of its bootstrap administrator to
    seed what a test module looks at (`/api/v1` is its base URL)."""
    migrate(cwd, **SETTINGS)
    with serving(cwd, **SETTINGS) as running:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=f"{running.base_url}/api/v1", headers=admin, timeout=30) as api:
            yield running, api
