"""What a prediction costs on each path (issue 15): through the API, direct to the serving process, and a
bare in-process `Main().predict()` call, side by side in one run, for the same model and input.

    .venv/bin/python bench/serving.py              # echo and digits, 1,000 sequential calls, 2,000 loaded
    .venv/bin/python bench/serving.py --quick      # echo only, 100 and 200: for CI, it must keep working
    .venv/bin/python bench/serving.py --requests 5000 --clients 16 --instances 2

It starts the real API (`trainyard-api migrate`, then `serve`, SQLite in a temporary folder) and the
real agent (`trainyard-agent run`), uploads each model as a package, publishes it as a service on the
agent's machine and waits until it serves, then measures, for each model:

- latency: `--requests` calls one after the other, each path on its own kept-alive connection
  (the bench's httpx client; the API's own client to the instance is kept-alive too): p50 and p99;
- throughput: `--clients` concurrent callers sharing the `--requests` x 2 calls: predictions a second;
- bare: `Main().predict(value)` in the bench's own process, the same parsed input, no HTTP at all.

Models: `echo` returns its input (what the paths cost, not the model) and `digits`, the reference
package (examples/packages/digits-classifier) trained one epoch, on an 8x8 image sent as 64 numbers
(JSON). The API path is authenticated with the bootstrap token (an API token costs the same HMAC).
"""

import argparse
import asyncio
import contextlib
import importlib.util
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from agent_latency import TOKEN, Agent, Server, new_machine, percentile, trainyard_api, until

PROJECT = "bench"
MACHINE = "agent"
REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "examples" / "packages" / "digits-classifier"
ECHO_MAIN = "class Main:\n    def predict(self, input):\n        return input\n"
TRAIN_PY = "class Main:\n    def train(self, data_directory): pass\n\n    def save(self): pass\n"


@dataclass
class Route:
    """One way to call the model: its sequential latencies and its throughput under load."""

    name: str
    latencies: list[float] = field(default_factory=list)
    per_second: float = 0.0


@dataclass
class Model:
    name: str
    folder: Path
    value: Any  # the parsed input
    paths: list[Route] = field(default_factory=list)


def zipped(folder: Path) -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                out.write(path, path.relative_to(folder).as_posix())
    return archive.getvalue()


def echo_package(root: Path) -> Path:
    folder = root / "echo"
    folder.mkdir()
    (folder / "main.py").write_text(ECHO_MAIN)
    (folder / "train.py").write_text(TRAIN_PY)
    return folder


def digits_package(root: Path) -> tuple[Path, list[int]]:
    """The digits package trained one epoch (seed 0) through the runner, and one test image as 64
    numbers 0..16."""
    sys.path.insert(0, str(REPO))
    from PIL import Image

    from tests.examples.conftest import EXAMPLES, load_module, run_package

    data = root / "digits-data"
    load_module(EXAMPLES / "export_digits.py", "bench_export_digits").export(data)
    folder = root / "digits-run" / "package"
    shutil.copytree(DIGITS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    run = run_package(folder, "training", data=data / "train", parameters={"epochs": 1, "seed": 0})
    if run.code != 0:
        raise SystemExit(f"digits did not train: {run.outcome.get('detail')}")
    image = sorted((data / "test").rglob("*.png"))[0]
    with Image.open(image) as opened:
        numbers = [round(value * 16 / 255) for value in opened.convert("L").tobytes()]
    return folder, numbers


def bare_main(folder: Path) -> Any:
    """`Main()` of the package in `folder`, built in this process as the serving process builds it."""
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_main_{folder.parent.name}", folder / "main.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.Main()
    finally:
        sys.path.remove(str(folder))


async def publish(admin: httpx.AsyncClient, agent: Agent, model: Model, instances: int) -> str:
    files = {"file": (f"{model.name}.zip", zipped(model.folder), "application/zip")}
    (await admin.post(f"/projects/{PROJECT}/packages/{model.name}/versions", files=files)).raise_for_status()
    fields = {"name": model.name, "package": model.name, "version": "1.0", "machine": MACHINE}
    created = await admin.post(f"/projects/{PROJECT}/services", json={**fields, "instances": instances})
    created.raise_for_status()
    path = f"/projects/{PROJECT}/services/{model.name}"
    (await admin.post(f"{path}/start")).raise_for_status()

    async def serving() -> bool:
        agent.check()
        service = (await admin.get(path)).json()
        if service["status"] in ("failed", "stopped"):
            raise SystemExit(f"the service {model.name} ended: {service}\n{agent.log.read_text()[-3000:]}")
        return service["status"] == "serving" and len(service["serving_instances"]) == instances

    await until(serving, f"the service {model.name} to serve", bound=600)
    return path


async def sequential(call: Callable[[], Awaitable[None]], count: int) -> list[float]:
    for _ in range(min(20, count)):  # warm the connections, the route and the model
        await call()
    took = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        took.append(time.perf_counter() - started)
    return took


async def loaded(call: Callable[[], Awaitable[None]], count: int, clients: int) -> float:
    """Predictions a second with `clients` callers sharing `count` calls."""
    left = count

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(clients)))
    return count / (time.perf_counter() - started)


async def measure_model(
    api: Server, admin: httpx.AsyncClient, model: Model, service: str, requests: int, clients: int
) -> None:
    endpoint = (await admin.get(f"{service}/endpoint")).json()
    addresses, secret = endpoint["addresses"], endpoint["secret"]
    body = json.dumps(model.value).encode()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with (
        httpx.AsyncClient(
            base_url=f"{api.url}/api/v1", headers={"Authorization": f"Bearer {TOKEN}"}, limits=limits
        ) as through,
        httpx.AsyncClient(headers={"Authorization": f"Bearer {secret}"}, limits=limits) as direct,
    ):
        turn = 0

        async def via_api() -> None:
            answer = await through.post(
                f"{service}/predict", content=body, headers={"Content-Type": "application/json"}
            )
            answer.raise_for_status()

        async def to_instance() -> None:
            nonlocal turn
            turn += 1
            address = addresses[turn % len(addresses)]
            answer = await direct.post(
                f"{address}/predict", content=body, headers={"Content-Type": "application/json"}
            )
            answer.raise_for_status()

        main = bare_main(model.folder)

        async def bare() -> None:
            main.predict(json.loads(body))

        for name, call in (("through the API", via_api), ("direct to the instance", to_instance)):
            path = Route(name, await sequential(call, requests), await loaded(call, requests * 2, clients))
            model.paths.append(path)
        bare_path = Route("bare `Main().predict()`", await sequential(bare, requests))
        bare_path.per_second = len(bare_path.latencies) / sum(bare_path.latencies)
        model.paths.append(bare_path)


async def measure(root: Path, models: list[Model], requests: int, clients: int, instances: int) -> None:
    api = trainyard_api(root)
    agent: Agent | None = None
    try:
        async with httpx.AsyncClient(
            base_url=f"{api.url}/api/v1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
        ) as admin:
            for path, body in (("/model-types", {"name": "classifier"}), ("/projects", {"name": PROJECT})):
                (await admin.post(path, json=body)).raise_for_status()
            token = await new_machine(admin, MACHINE)
            agent = Agent(root, api.url, token)
            for model in models:
                service = await publish(admin, agent, model, instances)
                await measure_model(api, admin, model, service, requests, clients)
                await stop(admin, service)
    finally:
        if agent is not None:
            agent.stop()
        api.stop()
        for process in psutil.process_iter(["pid", "cmdline"]):  # what an interrupted run left
            cmdline = process.info["cmdline"] or []
            if any("server.py" in part for part in cmdline) and any(str(root) in part for part in cmdline):
                with contextlib.suppress(psutil.Error):
                    process.kill()


async def stop(admin: httpx.AsyncClient, service: str) -> None:
    (await admin.post(f"{service}/stop")).raise_for_status()

    async def stopped() -> bool:
        return (await admin.get(service)).json()["status"] in ("stopped", "failed")

    await until(stopped, f"{service} to stop")


def report(models: list[Model], requests: int, clients: int, instances: int) -> None:
    print(
        f"\n{requests} sequential predictions per path (p50, p99), then {requests * 2} from {clients} "
        f"concurrent callers (predictions/s); {instances} serving instance(s); {os.cpu_count()} CPUs\n"
    )
    print("| model | path | p50 | p99 | predictions/s |")
    print("| --- | --- | --- | --- | --- |")
    for model in models:
        for path in model.paths:
            p50 = statistics.median(path.latencies) * 1000
            p99 = percentile(path.latencies, 99) * 1000
            concurrency = "1 (in process)" if path.name.startswith("bare") else f"{clients}"
            print(
                f"| {model.name} | {path.name} | {p50:.3f} ms | {p99:.3f} ms | "
                f"{path.per_second:,.0f} ({concurrency}) |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="echo only, 100 sequential calls: CI")
    parser.add_argument("--requests", type=int, help="sequential calls per path (default 1,000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent callers for the throughput")
    parser.add_argument("--instances", type=int, default=1, help="serving processes of each service")
    args = parser.parse_args()
    requests = args.requests or (100 if args.quick else 1000)
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-") as scratch:
        root = Path(scratch)
        os.chmod(root, 0o755)  # the service's user must reach the agent's work dir
        models = [Model("echo", echo_package(root), {"numbers": list(range(64))})]
        if not args.quick:
            folder, numbers = digits_package(root)
            models.append(Model("digits", folder, numbers))
        asyncio.run(measure(root, models, requests, args.clients, args.instances))
    report(models, requests, args.clients, args.instances)


if __name__ == "__main__":
    main()
