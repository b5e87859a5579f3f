"""Seed a demo project on a running Trainyard and train the digits package once, watching it live.

    TRAINYARD_TOKEN=... python examples/demo.py --api http://127.0.0.1:8000

The token is an administrator's (`make up` passes the bootstrap token), read from `TRAINYARD_TOKEN`
(else `TRAINYARD_BOOTSTRAP_TOKEN`), never from the command line. It makes, reusing whatever exists
already (so running it again on the same data trains again and makes the next version): the model
type `classifier`, the project `demo`, the package `digits-classifier` 1.0 (examples/packages), the
dataset `digits` (examples/export_digits.py), the template `digits` (pipeline `full`, `train` and
`test` of that dataset, augmentation `rotations+exposure+noise`, epochs 5, seed 0) and its process
on the machine `local`. It starts the process and draws a progress bar with the ETA and the latest
learning rate, loss and accuracy until the run ends, then prints the new version, the evaluation and
the URLs. Exit code 0 when the run succeeded, 1 when it did not, 2 on a usage or API error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

EXAMPLES = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLES))

from export_digits import export  # noqa: E402
from zip_package import zip_folder  # noqa: E402

PROJECT = "demo"
MODEL_TYPE = "classifier"
PACKAGE = "digits-classifier"
DATASET = "digits"
TEMPLATE = "digits"
SERIES = ("learning_rate", "loss", "accuracy")
ACTIVE = {"starting", "running", "stopping"}
REFRESH_SECONDS = 0.5
BAR_WIDTH = 24


class DemoError(Exception):
    """The API refused something the demo needs: the message says what."""


def _check(response: httpx.Response, *expected: int) -> Any:
    if response.status_code not in expected:
        raise DemoError(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text[:500]}"
        )
    return response.json() if response.content else None


def _found(response: httpx.Response) -> Any | None:
    """The body of a 200, None for a 404, DemoError otherwise."""
    if response.status_code == 404:
        return None
    return _check(response, 200)


def _create(client: httpx.Client, path: str, body: dict[str, Any]) -> None:
    """POST `body`; a 409 means it exists already, which is what we want."""
    _check(client.post(path, json=body), 201, 409)


def seed(client: httpx.Client, machine: str, epochs: int) -> str:
    """Everything the demo trains, made once and reused after; the process's path."""
    _create(client, "/model-types", {"name": MODEL_TYPE})
    _create(client, "/projects", {"name": PROJECT})
    base = f"/projects/{PROJECT}"
    if _found(client.get(f"{base}/packages/{PACKAGE}/versions/1.0")) is None:
        data = zip_folder(EXAMPLES / "packages" / PACKAGE)
        files = {"file": (f"{PACKAGE}.zip", data, "application/zip")}
        _check(client.post(f"{base}/packages/{PACKAGE}/versions", files=files), 201)
        print(f"uploaded the package {PACKAGE} 1.0")
    if _found(client.get(f"{base}/datasets/{DATASET}/versions/latest")) is None:
        with tempfile.TemporaryDirectory(prefix="trainyard-digits-") as folder:
            counts = export(Path(folder))
            data = zip_folder(folder)
        files = {"file": (f"{DATASET}.zip", data, "application/zip")}
        version = _check(client.post(f"{base}/datasets/{DATASET}/versions", files=files), 201)
        print(
            f"uploaded the dataset {DATASET} {version['number']}: {counts['train']} training and "
            f"{counts['test']} test images"
        )
    if _found(client.get(f"{base}/templates/{TEMPLATE}")) is None:
        template = {
            "name": TEMPLATE,
            "model_type": MODEL_TYPE,
            "description": "The demo: handwritten digits, 8x8 images, a small convolutional network.",
            "pipeline_type": "full",
            "base_package": PACKAGE,
            "base_version": "1.0",
            "dataset": DATASET,
            "dataset_path": "train",
            "test_dataset": DATASET,
            "test_dataset_path": "test",
            "augmentation": "rotations+exposure+noise",
            "parameters": {"epochs": epochs, "seed": 0},
        }
        _check(client.post(f"{base}/templates", json=template), 201)
        print(f"made the template {TEMPLATE}")
    processes = _check(client.get(f"{base}/templates/{TEMPLATE}/processes"), 200)["items"]
    mine = [p for p in processes if p["machine"] == machine]
    if mine:
        return f"{base}/processes/{mine[0]['id']}"
    created = _check(client.post(f"{base}/templates/{TEMPLATE}/processes", json={"machine": machine}), 201)
    print(f"made a process of {TEMPLATE} on the machine {machine}")
    return f"{base}/processes/{created['id']}"


def start(client: httpx.Client, process: str) -> str:
    """Start the process; if a run of it is still active (an earlier demo), follow that one."""
    response = client.post(f"{process}/start")
    if response.status_code == 409 and response.json().get("code") == "run_active":
        run = _check(client.get(process), 200)["latest_run"]
        print(f"run {run['number']} of the process is still {run['status']}: following it")
        return str(run["id"])
    return str(_check(response, 201)["latest_run"]["id"])


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = max(0, round(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def _latest(metrics: dict[str, Any]) -> dict[str, Any]:
    """Each series' latest point, by name."""
    return {s["name"]: s["latest"] for s in metrics["series"] if s["latest"] is not None}


def status_line(metrics: dict[str, Any]) -> str:
    progress = metrics["progress"] or 0.0
    filled = round(progress * BAR_WIDTH)
    latest = _latest(metrics)
    values = "  ".join(
        f"{name} {latest[name]['value']:.4g}" if name in latest else f"{name} -" for name in SERIES
    )
    epoch = f"epoch {latest['loss']['step']}" if "loss" in latest else metrics["stage"] or metrics["status"]
    ended = "" if metrics["status"] in ACTIVE else f"  {metrics['status']}"
    return (
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {progress:4.0%} {epoch}  "
        f"elapsed {_duration(metrics['elapsed_seconds'])}  ETA {_duration(metrics['eta_seconds'])}  "
        f"{values}{ended}"
    )


def watch(client: httpx.Client, run_id: str, tty: bool) -> str:
    """Draw the run's progress until it ends; its final status."""
    path = f"/projects/{PROJECT}/runs/{run_id}/metrics"
    params = [("series", name) for name in SERIES] + [("max_points", "4")]
    shown_points, shown_status = -1, ""
    width = 0
    while True:
        metrics = _check(client.get(path, params=params), 200)
        line = status_line(metrics)
        if tty:
            sys.stdout.write("\r" + line.ljust(width))
            sys.stdout.flush()
            width = len(line)
        else:  # a log (CI): a line when the status changes or an epoch ends, not twice a second
            points = sum(s["count"] for s in metrics["series"])
            if points != shown_points or metrics["status"] != shown_status:
                print(line, flush=True)
                shown_points, shown_status = points, metrics["status"]
        if metrics["status"] not in ACTIVE:
            if tty:
                print()
            return str(metrics["status"])
        time.sleep(REFRESH_SECONDS)


def run_link(root: str, project: str, run_id: str, page: str = "") -> str:
    """The run's page in the console: its Monitoring chart, or `log` and `evaluation`."""
    return f"{root}/ui/projects/{quote(project, safe='')}/runs/{run_id}/{page}"


def evaluation_link(root: str, project: str, run_id: str) -> str:
    """The run's Evaluation page in the console (a person signs in there; no token in the URL)."""
    return run_link(root, project, run_id, "evaluation")


def report_run(client: httpx.Client, run_id: str, root: str) -> None:
    base = f"/projects/{PROJECT}/runs/{run_id}"
    run = _check(client.get(base), 200)
    elapsed = run["elapsed_seconds"] or 0.0
    print(f"run {run['number']} {run['status']} ({run['reason_code']}) after {elapsed:.1f} s")
    if run["status"] != "succeeded":
        print(run["detail"][-3000:])
        return
    results = _check(client.get(f"{base}/results"), 200) or {}
    version = (results.get("run_summary") or {}).get("outputs", {}).get("version")
    print(f"new version: {PACKAGE} {version}, trained from {run['config'].get('base_version')}")
    evaluation = _found(client.get(f"{base}/evaluation", params={"badcases_limit": 3}))
    if evaluation is None:
        print("no evaluation")
        return
    accuracy = evaluation["accuracy"] if evaluation["accuracy"] is not None else evaluation["score"]
    print(
        f"evaluation on {evaluation['test_dataset']['name']} {evaluation['test_dataset']['version']}"
        f"/{evaluation['test_dataset']['path']}: accuracy {accuracy:.3f}, "
        f"{evaluation['samples']} samples, {evaluation['badcase_count']} badcases"
    )
    weakest = sorted(evaluation["per_class"], key=lambda c: c["recall"] if c["recall"] is not None else 1)
    if weakest:
        shown = ", ".join(f"{c['label']} {c['recall']:.2f}" for c in weakest[:3])
        print(f"weakest classes (recall): {shown}")
    for case in evaluation["badcases"]:
        print(
            f"  badcase {case['path']}: a {case['label']} read as {case['prediction']} "
            f"({case['confidence']:.0%} sure)"
        )
    if evaluation["badcases"]:  # the console shows them with their images; the API's links need a token
        print(f"the badcases with their images, in the console: {evaluation_link(root, PROJECT, run_id)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api", default="http://127.0.0.1:8000", help="the API's root URL")
    parser.add_argument("--machine", default="local", help="the target machine the process runs on")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of a newly made template")
    args = parser.parse_args(argv)
    token = os.environ.get("TRAINYARD_TOKEN") or os.environ.get("TRAINYARD_BOOTSTRAP_TOKEN")
    if not token:
        print("demo: set TRAINYARD_TOKEN to an administrator's token", file=sys.stderr)
        return 2
    root = args.api.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"{root}/api/v1", headers=headers, timeout=120) as client:
        try:
            process = seed(client, args.machine, args.epochs)
            run_id = start(client, process)
            print(f"training {PACKAGE} on the machine {args.machine}: run {run_id}")
            status = watch(client, run_id, sys.stdout.isatty())
            report_run(client, run_id, root)
        except (DemoError, httpx.HTTPError) as error:
            print(f"\ndemo: {error}", file=sys.stderr)
            return 2
    if status != "succeeded":
        print(
            f"demo: the run ended {status}; its detail is above and its training log at "
            f"{run_link(root, PROJECT, run_id, 'log')}",
            file=sys.stderr,
        )
        return 1
    print(f"\nthe run's chart, in the console: {run_link(root, PROJECT, run_id)}")
    print(f"API docs (OpenAPI): {root}/docs\nPrometheus metrics:  {root}/metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
