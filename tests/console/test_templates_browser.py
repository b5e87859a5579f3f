"""Templates, Packages and Datasets in Debian's Chromium, against a real `trainyard-api serve`: a
package uploaded by drag and drop with its byte progress shown, a template made through the form with
the digits package's own parameters (a bad value refused with the API's message, a hostile name kept
as text), a dataset's folders browsed; axe-core on each page, and their screenshots."""

import base64
import io
import zipfile
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.api.test_cli import Server
from tests.console.browser import Watch, accessible, console_api, screenshot, sign_in
from tests.console.kit import PASSWORD
from tests.examples.conftest import EXAMPLES, PACKAGES, load_module

zip_package = load_module(EXAMPLES / "zip_package.py", "trainyard_example_zip_package")
HOSTILE = "<img src=x onerror=alert(1)>"
DIGITS = zip_package.zip_folder(PACKAGES / "digits-classifier")
# Records what the upload's progress bar and status line showed, across the navigation that follows.
RECORD_PROGRESS = """() => {
  const bar = document.querySelector("[data-bar]");
  const status = document.querySelector("[data-status]");
  const seen = [];
  const keep = () => sessionStorage.setItem("progress", JSON.stringify(seen));
  new MutationObserver(() => { seen.push(["bar", bar.value, bar.max]); keep(); })
    .observe(bar, { attributes: true, attributeFilter: ["value", "max"] });
  new MutationObserver(() => { seen.push(["status", status.textContent]); keep(); })
    .observe(status, { childList: true, subtree: true, characterData: true });
}"""
DROP = """([selector, name, data]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type: "application/zip" }));
  const drop = new DragEvent("drop", { dataTransfer: transfer, bubbles: true });
  document.querySelector(selector).dispatchEvent(drop);
}"""


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One API on SQLite: ann, a model type, the project `digits` with the digits package 1.0 and a
    small dataset of folders."""
    with console_api(tmp_path_factory.mktemp("console-templates")) as (running, api):
        body = {"name": "ann", "display_name": "Ann", "password": PASSWORD, "is_admin": True}
        assert api.post("/users", json=body).status_code == 201
        assert api.post("/model-types", json={"name": "classifier"}).status_code == 201
        assert api.post("/projects", json={"name": "digits"}).status_code == 201
        package = {"file": ("digits.zip", DIGITS, "application/zip")}
        assert api.post("/projects/digits/packages/digits/versions", files=package).status_code == 201
        files = {f"train/{label}/{n}.png": bytes([label, n]) for label in range(3) for n in range(4)}
        files |= {"test/0/0.png": b"t", "labels.csv": b"path,label\n", f"train/{HOSTILE}.txt": b"x"}
        dataset = {"file": ("digits.zip", _zip(files), "application/zip")}
        assert api.post("/projects/digits/datasets/digits/versions", files=dataset).status_code == 201
        yield running


def test_a_package_dropped_on_the_form_uploads_with_its_progress(page: Page) -> None:
    watch = Watch(page)
    page.goto("/ui/projects/digits/packages/")
    sign_in(page)
    expect(page.get_by_role("heading", name="Packages", level=1)).to_be_visible()
    accessible(page)
    page.get_by_label("Package", exact=True).fill("цифры")
    page.evaluate(DROP, ["[data-drop]", "digits.zip", base64.b64encode(DIGITS).decode()])
    assert page.get_by_label("Package zip").evaluate("input => input.files[0].name") == "digits.zip"
    screenshot(page, "packages")
    page.evaluate(RECORD_PROGRESS)
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("heading", name="цифры 1.0")).to_be_visible()
    seen = page.evaluate("() => JSON.parse(sessionStorage.getItem('progress') || '[]')")
    bars = [entry for entry in seen if entry[0] == "bar"]
    assert bars and bars[-1][1] == bars[-1][2] > len(DIGITS)  # every byte of the body, as sent
    assert any(entry[0] == "status" and "bytes sent" in entry[1] for entry in seen)
    expect(page.get_by_role("rowheader", name="learning_rate_decay")).to_be_visible()
    expect(page.get_by_role("link", name="Download 1.0 (zip)")).to_be_visible()
    accessible(page)
    screenshot(page, "package-version")
    assert watch.csp == [] and watch.dialogs == []


def test_a_template_through_the_form_with_the_packages_parameters(page: Page) -> None:
    watch = Watch(page)
    page.goto("/ui/projects/digits/templates/new")
    sign_in(page)
    expect(page.get_by_role("heading", name="New template")).to_be_visible()
    page.get_by_label("Name", exact=True).fill(HOSTILE)
    page.get_by_label("Model type").select_option("classifier")
    page.get_by_label("Base package").select_option("digits")
    # The script re-renders the chosen package's parameters, with their defaults.
    expect(page.get_by_label("learning_rate", exact=True)).to_have_value("0.003")
    page.get_by_label("epochs").fill("many")
    page.get_by_label("Description").fill(HOSTILE)
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_text("must not contain '<'").first).to_be_visible()  # the API's name rule
    expect(page.get_by_label("Name", exact=True)).to_have_value(HOSTILE)  # as text, kept
    page.get_by_label("Name", exact=True).fill("цифры-cnn")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_text("parameter 'epochs' must be an integer")).to_be_visible()
    expect(page.get_by_label("epochs")).to_have_attribute("aria-invalid", "true")
    accessible(page)
    screenshot(page, "template-form")
    page.get_by_label("epochs").fill("3")
    page.get_by_label("epochs").press("Enter")  # the keyboard's implicit submission is Create
    expect(page.get_by_role("heading", name="Templates", level=1)).to_be_visible()
    expect(page.get_by_role("link", name="цифры-cnn")).to_be_visible()
    accessible(page)
    screenshot(page, "templates")
    page.get_by_role("link", name="цифры-cnn").click()
    expect(page.get_by_label("epochs")).to_have_value("3")
    expect(page.get_by_label("Description")).to_have_value(HOSTILE)
    accessible(page)
    assert page.locator("main img").count() == 0
    assert watch.csp == [] and watch.dialogs == []


def test_a_datasets_folders_browsed(page: Page) -> None:
    watch = Watch(page)
    page.goto("/ui/projects/digits/datasets/")
    sign_in(page)
    expect(page.get_by_role("link", name="digits", exact=True)).to_be_visible()
    accessible(page)
    screenshot(page, "datasets")
    page.get_by_role("link", name="1", exact=True).click()
    page.get_by_role("link", name="train/").click()
    expect(page.get_by_role("link", name=f"{HOSTILE}.txt")).to_be_visible()
    page.get_by_role("link", name="2/").click()
    expect(page.get_by_role("link", name="3.png")).to_be_visible()
    accessible(page)
    screenshot(page, "dataset-files")
    assert page.locator("main img").count() == 0
    assert watch.csp == [] and watch.dialogs == []
