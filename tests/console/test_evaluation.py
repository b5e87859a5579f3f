"""A run's Evaluation page in process, on SQLite and PostgreSQL: the document as the API reads it,
per-class metrics, the shaded confusion matrix, badcases with their images through the console's file
route, the test set; hostile dataset files served so that nothing runs; the API's permissions."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from api.console.views.evaluation import shaded
from api.runs.evaluation import ConfusionMatrix
from tests.api.packages_kit import zip_bytes
from tests.api.test_evaluation import _evaluated
from tests.api.world import World, make_world, ok
from tests.console.kit import make_person, sign_in
from tests.examples.conftest import EXAMPLES, load_module

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
HOSTILE = '<img src=x onerror=alert(1)>"'
DIGITS = {
    "train/3/a.png": PNG,
    "test/3/b.png": PNG,
    f"test/8/{HOSTILE}.png": PNG,
    "test/8/page.html": b"<script>alert(1)</script>",
    "test/8/vector.svg": b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
}
EVALUATION: dict[str, Any] = {
    "accuracy": 0.5,
    "samples": 4,
    "per_class": {
        "3": {"precision": 0.5, "recall": 1.0, "support": 1},
        HOSTILE: {"precision": 1, "recall": 0.25},
    },
    "confusion_matrix": {"labels": ["3", "8"], "matrix": [[1, 0], [3, 1]]},
    "badcases": [
        {"path": f"8/{HOSTILE}.png", "label": "8", "prediction": HOSTILE, "confidence": 0.9},
        {"path": "8/vector.svg", "label": "8", "prediction": "3", "confidence": 0.6},
        {"path": "8/gone.png", "label": "8", "prediction": "3"},
    ],
    "predictions": [  # the true labels come from the class folders
        {"file": "3/b.png", "predicted": "3", "confidence": 0.8},
        {"file": f"8/{HOSTILE}.png", "predicted": HOSTILE},
        {"file": "8/vector.svg", "predicted": "3"},
        {"file": "../escape.png", "predicted": "3"},
    ],
}


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


async def evaluated_run(client: AsyncClient, app: FastAPI) -> tuple[World, str]:
    world = await make_world(client)
    files = {"file": ("digits.zip", zip_bytes(DIGITS), "application/zip")}
    ok(await client.post(f"/projects/{world.project}/datasets/digits/versions", files=files), 201)
    fields = {
        "pipeline_type": "full",
        "dataset": "digits",
        "dataset_path": "train",
        "test_dataset": "digits",
        "test_dataset_path": "test",
    }
    ok(await client.patch(f"/projects/{world.project}/templates/{world.template}", json=fields))
    return world, await _evaluated(client, app, world, EVALUATION)


def test_the_matrix_is_shaded_by_each_cells_share_of_its_row() -> None:
    rows = shaded(ConfusionMatrix(labels=["a", "b"], matrix=[[4, 0], [1, 3]]))
    assert [(row.label, row.total) for row in rows] == [("a", 4), ("b", 4)]
    assert [[(c.count, c.level, c.diagonal) for c in row.cells] for row in rows] == [
        [(4, 5, True), (0, 0, False)],
        [(1, 1, False), (3, 4, True)],
    ]
    assert shaded(ConfusionMatrix(labels=["a"], matrix=[[0]]))[0].cells[0].level == 0  # an empty row
    one_in_a_hundred = shaded(ConfusionMatrix(labels=["a", "b"], matrix=[[99, 1], [0, 0]]))[0]
    assert [cell.level for cell in one_in_a_hundred.cells] == [5, 1]


async def test_the_page_shows_metrics_matrix_and_badcases_as_text(
    client: AsyncClient, app: FastAPI, browser: AsyncClient
) -> None:
    world, run_id = await evaluated_run(client, app)
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    base = f"/ui/projects/{world.project}/runs/{run_id}/evaluation"
    page = await browser.get(base)
    assert page.status_code == 200, page.text
    text = page.text
    assert HOSTILE not in text and "&lt;img src=x onerror=alert(1)&gt;&#34;" in text
    assert "100.0 %" in text and "25.0 %" in text  # recall of each class
    assert 'class="heat-4"' in text and 'class="heat-1 diagonal"' in text  # 3 of 4, and 1 of 4
    assert "Badcases 1 to 3 of 3" in text
    image = f"{base}/files/test/8/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E%22.png"
    assert f'src="{image}"' in text
    assert "vector.svg" in text and f'src="{base}/files/test/8/vector.svg"' not in text  # never an <img>
    assert text.count("<img ") == 1

    served = await browser.get(image)
    assert served.status_code == 200 and served.content == PNG
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-disposition"].startswith("attachment; filename*=UTF-8''")
    assert served.headers["content-security-policy"] == "default-src 'none'; sandbox"
    for name in ("page.html", "vector.svg"):
        hostile = await browser.get(f"{base}/files/test/8/{name}")
        assert hostile.status_code == 200 and hostile.headers["content-type"] == "application/octet-stream"
        assert hostile.headers["content-disposition"] == f'attachment; filename="{name}"'
    assert (await browser.get(f"{base}/files/test/8/gone.png")).status_code == 404

    second = await browser.get(base, params={"offset": 2})
    assert "Badcases 3 to 3 of 3" in second.text and "gone.png" in second.text

    test_set = await browser.get(f"{base}/test-set")
    assert test_set.status_code == 200
    assert "test/3/b.png" in test_set.text and "train/3/a.png" not in test_set.text  # the folder it read
    assert HOSTILE not in test_set.text


def _figures(text: str) -> list[str]:
    """Each sample's figure of the test set page, as text."""
    return text.split('<ul class="badcases test-set">')[1].split("</ul>")[0].split("<li")[1:]


async def test_the_test_set_shows_true_and_predicted_labels_and_filters_the_wrong_ones(
    client: AsyncClient, app: FastAPI, browser: AsyncClient
) -> None:
    world, run_id = await evaluated_run(client, app)
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    base = f"/ui/projects/{world.project}/runs/{run_id}/evaluation/test-set"
    page = await browser.get(base)
    assert page.status_code == 200, page.text
    assert HOSTILE not in page.text and "the file&#39;s folder" in page.text
    assert "The evaluation predicted 3 samples." in page.text and "1 predictions were left out" in page.text
    figures = _figures(page.text)
    assert len(figures) == 4  # test/3/b.png, the hostile image, page.html, vector.svg
    right, hostile, html, svg = figures
    assert 'class="right"' in right and '<strong class="truth">3</strong>' in right and "(80.0 %)" in right
    assert 'class="wrong"' in hostile and "&lt;img src=x onerror=alert(1)&gt;&#34;</strong>" in hostile
    assert '<strong class="truth">8</strong>' in html and '<strong class="predicted">?</strong>' in html
    assert 'class="wrong"' in svg and "<img " not in svg  # an SVG is never an <img>
    assert 'src="/ui/projects/' in right and "/evaluation/files/test/3/b.png" in right

    wrong = await browser.get(base, params={"show": "wrong"})
    assert [("vector.svg" in f, 'class="wrong"' in f) for f in _figures(wrong.text)] == [
        (False, True),
        (True, True),
    ]
    assert '<option value="wrong" selected>' in wrong.text
    only_3 = await browser.get(base, params={"label": "3"})
    assert len(_figures(only_3.text)) == 1 and "3/b.png" in only_3.text
    none = await browser.get(base, params={"label": "7", "show": "right"})
    assert none.status_code == 200 and "No sample on this page matches the filter" in none.text
    assert (await browser.get(base, params={"show": "maybe"})).status_code == 422
    bad = await browser.get(base, params={"cursor": "!!"})
    assert bad.status_code == 404 and "not one the console gave out" in bad.text


async def test_the_test_set_pages_with_its_filter(
    client: AsyncClient, app: FastAPI, browser: AsyncClient
) -> None:
    world = await make_world(client)
    images = {f"test/{n % 2}/{n:03}.png": PNG for n in range(60)}
    files = {"file": ("digits.zip", zip_bytes(images), "application/zip")}
    ok(await client.post(f"/projects/{world.project}/datasets/digits/versions", files=files), 201)
    fields = {"pipeline_type": "evaluation", "dataset": "digits", "dataset_path": "test"}
    ok(await client.patch(f"/projects/{world.project}/templates/{world.template}", json=fields))
    predictions = [{"file": f"{n % 2}/{n:03}.png", "predicted": "0"} for n in range(60)]  # the odd ones wrong
    run_id = await _evaluated(client, app, world, {"predictions": predictions})
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    base = f"/ui/projects/{world.project}/runs/{run_id}/evaluation/test-set"
    first = await browser.get(base, params={"show": "wrong"})
    assert len(_figures(first.text)) == 30 and "First page" not in first.text
    assert "Next" not in first.text  # 30 wrong ones fit one page of 48

    everything = await browser.get(base)
    assert len(_figures(everything.text)) == 48
    [next_url] = [line for line in everything.text.split('"') if line.startswith("?cursor=")]
    second = await browser.get(base + next_url.replace("&amp;", "&"))
    assert len(_figures(second.text)) == 12 and "First page" in second.text and "?cursor=" not in second.text


async def test_a_run_without_evaluation_says_so(client: AsyncClient, browser: AsyncClient) -> None:
    world = await make_world(client)
    run = ok(await client.post(f"{world.process_path}/start"), 201)["latest_run"]
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    page = await browser.get(f"/ui/projects/{world.project}/runs/{run['id']}/evaluation")
    assert page.status_code == 404 and "This run has no evaluation" in page.text


async def test_permissions_are_the_apis(client: AsyncClient, app: FastAPI, browser: AsyncClient) -> None:
    world, run_id = await evaluated_run(client, app)
    base = f"/ui/projects/{world.project}/runs/{run_id}/evaluation"
    for name, permissions in (
        ("olga", ["projects.view", "models.view"]),
        ("rita", ["projects.view", "runs.view"]),
    ):
        ok(await client.post("/roles", json={"name": f"role-{name}", "permissions": permissions}), 201)
        await make_person(client, name)
        ok(await client.put(f"/projects/{world.project}/members/{name}", json={"role": f"role-{name}"}))

    await sign_in(browser, "olga")  # no runs.view: no evaluation
    refused = await browser.get(base)
    assert refused.status_code == 403 and "Badcases" not in refused.text

    browser.cookies.clear()
    await sign_in(browser, "rita")  # runs.view without datasets.view: the evaluation, no dataset file
    page = await browser.get(base)
    assert page.status_code == 200 and "Badcases 1 to 3 of 3" in page.text
    assert "<img " not in page.text and "Browse the test set" not in page.text
    assert (await browser.get(f"{base}/files/test/3/b.png")).status_code == 403
    assert (await browser.get(f"{base}/test-set")).status_code == 403
    assert (await browser.get(f"{base}/test-set", params={"show": "wrong"})).status_code == 403


def test_the_demo_prints_a_console_link_for_the_badcases() -> None:
    """examples/demo.py's badcases point at the console's Evaluation page, not at token-only API paths."""
    demo = load_module(EXAMPLES / "demo.py", "demo_console_links")
    assert demo.evaluation_link("http://h:8000", "демо проект", "r1") == (
        "http://h:8000/ui/projects/%D0%B4%D0%B5%D0%BC%D0%BE%20%D0%BF%D1%80%D0%BE%D0%B5%D0%BA%D1%82/runs/r1/evaluation"
    )
    assert "case['url']" not in (EXAMPLES / "demo.py").read_text()
