"""Services through the real API and a real agent process (issue 15): a trained digits version
published on the machine, serving, answering `predict` through the API; its serving process killed and
restarted; stopped with no process left; re-adopted by a restarted agent; stopped at its maximum run
time; given up on after its restart budget when its model cannot load.

The serving processes are found by their command line (`server.py --service <id> --instance <n>`), as
the agent finds them after a restart. Every wait is a bound on waiting for a process, never a timing
assertion.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import textwrap
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from agent.run_process import command_lines
from tests.api.packages_kit import zip_bytes
from tests.api.world import ok
from tests.e2e.harness import PROJECT, WAIT_SECONDS, Stack, alive, stack, wait_gone
from tests.examples.conftest import EXAMPLES, PACKAGES, copy_package, load_module, run_package

MACHINE = "local"
ECHO_MAIN = """
import os

class Main:
    def __init__(self):
        if os.path.exists("broken"):
            raise RuntimeError("the model file is damaged")

    def predict(self, input):
        return {"pid": os.getpid(), "echo": input if not isinstance(input, bytes) else input.decode()}
"""

TRAIN = (
    "class Main:\n    def train(self, data_directory):\n        pass\n\n    def save(self):\n        pass\n"
)


def agent_settings() -> dict[str, str]:
    """A window of ports of this test's own (pytest-xdist runs other agents at the same time), and
    /health asked often, so that a hung instance is found soon."""
    first = random.randrange(20000, 40000, 100)
    return {
        "TRAINYARD_AGENT_SERVE_PORTS": f"{first}-{first + 99}",
        "TRAINYARD_AGENT_SERVE_LIVENESS_SECONDS": "0.5",
    }


def servers(service_id: str) -> dict[int, int]:
    """{instance: pid} of the live serving processes of `service_id`."""
    found: dict[int, int] = {}
    for pid, cmdline in command_lines():
        args = cmdline.split(b"\0")
        if b"server.py" not in cmdline or b"--service" not in args or b"--instance" not in args:
            continue
        if args[args.index(b"--service") + 1] == service_id.encode() and alive(pid):
            found[int(args[args.index(b"--instance") + 1])] = pid
    return found


async def upload(s: Stack, name: str, files: Mapping[str, str | bytes]) -> None:
    body = {"file": (f"{name}.zip", zip_bytes(files), "application/zip")}
    ok(await s.admin.post(f"/projects/{PROJECT}/packages/{name}/versions", files=body), 201)


async def publish(s: Stack, name: str, package: str, **fields: Any) -> str:
    """Create the service and start it; its path."""
    created = {"name": name, "package": package, "version": "1.0", "machine": MACHINE, **fields}
    ok(await s.admin.post(f"/projects/{PROJECT}/services", json=created), 201)
    path = f"/projects/{PROJECT}/services/{name}"
    ok(await s.admin.post(f"{path}/start"), 202)
    return path


async def wait_service(s: Stack, path: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        service: dict[str, Any] = ok(await s.admin.get(path))
        if service["status"] in statuses:
            return service
        s.check_agents()
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} stayed {service['status']}: {service}\n{s.logs()}")
        await asyncio.sleep(0.05)


async def events(s: Stack, path: str) -> list[dict[str, Any]]:
    page = ok(await s.admin.get(f"{path}/events", params={"limit": 200}))
    return list(page["items"])


async def wait_for(condition: Any, s: Stack, what: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while not (found := await condition()):
        s.check_agents()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened\n{s.logs()}")
        await asyncio.sleep(0.05)
    return found


@pytest.fixture
async def served() -> AsyncIterator[Stack]:
    async with stack() as s:
        s.start_agent((), **agent_settings())
        await s.wait_polling()
        try:
            yield s
        finally:
            for agent in s.agents:
                agent.stop()
            for pid, cmdline in command_lines():  # a failed test must leave no serving process behind
                if str(s.work_dir).encode() in cmdline and b"server.py" in cmdline:
                    with suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits-data")
    load_module(EXAMPLES / "export_digits.py", "trainyard_example_export_digits").export(out)
    return out


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory: pytest.TempPathFactory, digits_data: Path) -> Path:
    """The digits package trained (one epoch, seed 0) as the runner trains it: its folder, model.pt in."""
    folder = copy_package(PACKAGES / "digits-classifier", tmp_path_factory.mktemp("digits") / "run")
    run = run_package(folder, "training", data=digits_data / "train", parameters={"epochs": 1, "seed": 0})
    assert run.code == 0, run.outcome["detail"]
    return folder


def package_files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


async def test_digits_serves_restarts_when_killed_and_stops_leaving_nothing(
    served: Stack, trained_digits: Path, digits_data: Path
) -> None:
    s = served
    await upload(s, "digits", package_files(trained_digits))
    path = await publish(s, "digits", "digits")
    service = await wait_service(s, path, "serving", "failed")
    assert service["status"] == "serving", service
    assert service["serving_instances"] == [0]

    image = sorted((digits_data / "test" / "7").glob("*.png"))[0]
    with Image.open(image) as opened:
        numbers = [round(value * 16 / 255) for value in opened.convert("L").tobytes()]
    answer = await s.admin.post(f"{path}/predict", json=numbers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")  # digits returns a JSON string
    by_numbers = json.loads(answer.text)
    assert by_numbers["label"] in [str(d) for d in range(10)]
    # What the same model answers in process, called bare.
    bare = load_module(trained_digits / "main.py", "trainyard_e2e_digits_main").Main()
    assert by_numbers == json.loads(bare.predict(image.read_bytes()))
    as_png = await s.admin.post(
        f"{path}/predict", content=image.read_bytes(), headers={"Content-Type": "image/png"}
    )
    assert as_png.status_code == 200, as_png.text
    assert json.loads(as_png.text) == by_numbers  # the same image
    # The model raising (not an image) is the model's error, and the instance serves on.
    failed = await s.admin.post(f"{path}/predict", content=b"not an image")
    assert failed.status_code == 422 and failed.json()["code"] == "prediction_failed", failed.text

    # Killed: reported exited, launched again, serving again with a new process.
    [(index, first)] = servers(service["id"]).items()
    os.kill(first, signal.SIGKILL)
    again = await wait_for(
        lambda: _new_server(s, path, service["id"], first), s, "a new serving process after the kill"
    )
    trail = await events(s, path)
    exited = [e for e in trail if e["kind"] == "instance_exited"]
    assert exited and "restarting" in exited[-1]["detail"] and "signal 9" in exited[-1]["detail"]
    assert json.loads((await s.admin.post(f"{path}/predict", json=numbers)).text) == by_numbers

    stopping = ok(await s.admin.post(f"{path}/stop"), 202)
    assert stopping["status"] in ("stopping", "stopped")
    stopped = await wait_service(s, path, "stopped", "failed")
    assert (stopped["status"], stopped["reason_code"]) == ("stopped", "user_stop"), stopped
    await wait_gone([again], s)
    assert servers(service["id"]) == {}
    assert not (s.work_dir / "services" / service["id"]).exists()
    assert index == 0


async def _new_server(s: Stack, path: str, service_id: str, old: int, index: int = 0) -> int | None:
    """The new process of instance `index` once it serves (and `old` is no longer its process)."""
    live = servers(service_id)
    service = ok(await s.admin.get(path))
    if live.get(index, old) != old and index in service["serving_instances"]:
        return live[index]
    return None


async def test_a_restarted_agent_re_adopts_its_serving_instances(served: Stack) -> None:
    s = served
    await upload(s, "echo", {"main.py": textwrap.dedent(ECHO_MAIN), "train.py": TRAIN})
    path = await publish(s, "echo", "echo", instances=2)
    await wait_for(lambda: _serving_instances(s, path, 2), s, "both instances serving")
    service = ok(await s.admin.get(path))
    before = servers(service["id"])
    assert sorted(before) == [0, 1]
    answers = {ok(await s.admin.post(f"{path}/predict", json={"n": n}))["pid"] for n in range(4)}
    assert answers == set(before.values())  # round robin across both

    s.agents[0].kill()  # SIGKILL: the instances go on
    assert all(alive(pid) for pid in before.values())
    s.start_agent((), **agent_settings())
    await s.wait_polling()
    # The new agent says each instance serves again once it answered its /health.
    await wait_for(lambda: _reported_serving(s, path, 4), s, "both instances reported again")
    assert servers(service["id"]) == before  # the same processes, re-adopted, not restarted
    echoed = ok(await s.admin.post(f"{path}/predict", content=b"hi"))
    assert echoed["echo"] == "hi"

    # Alive but answering nothing (SIGSTOP): its /health fails, the agent kills it and starts another.
    os.kill(before[1], signal.SIGSTOP)
    replaced = await wait_for(
        lambda: _new_server(s, path, service["id"], before[1], index=1), s, "instance 1 replaced"
    )
    assert not alive(before[1]) and alive(before[0])
    exited = [e for e in await events(s, path) if e["kind"] == "instance_exited"]
    assert exited[-1]["instance"] == 1 and "stopped answering /health" in exited[-1]["detail"]

    ok(await s.admin.post(f"{path}/stop"), 202)  # only an agent that re-adopted them can stop them
    stopped = await wait_service(s, path, "stopped", "failed")
    assert stopped["status"] == "stopped", stopped
    await wait_gone([before[0], replaced], s)


async def _serving_instances(s: Stack, path: str, count: int) -> bool:
    service = ok(await s.admin.get(path))
    assert service["status"] in ("starting", "serving"), service
    return service["status"] == "serving" and len(service["serving_instances"]) == count


async def _reported_serving(s: Stack, path: str, count: int) -> bool:
    return len([e for e in await events(s, path) if e["kind"] == "instance_serving"]) >= count


async def test_its_maximum_run_time_stops_it(served: Stack) -> None:
    s = served
    await upload(s, "brief", {"main.py": textwrap.dedent(ECHO_MAIN), "train.py": TRAIN})
    path = await publish(s, "brief", "brief", max_run_seconds=3)
    service = await wait_service(s, path, "stopped", "failed")
    assert (service["status"], service["reason_code"]) == ("stopped", "max_duration"), service
    await wait_for(lambda: _none_left(service["id"]), s, "no serving process left")


async def _none_left(service_id: str) -> bool:
    return not servers(service_id)


async def test_a_model_that_cannot_load_fails_after_its_restart_budget(served: Stack) -> None:
    s = served
    files = {"main.py": textwrap.dedent(ECHO_MAIN), "train.py": TRAIN, "broken": ""}
    await upload(s, "broken", files)
    path = await publish(s, "broken", "broken")
    service = await wait_service(s, path, "failed", "stopped")
    assert service["status"] == "failed", service
    assert "RuntimeError: the model file is damaged" in service["error_tail"]
    exited = [e for e in await events(s, path) if e["kind"] == "instance_exited"]
    assert len(exited) == 5 and "not restarted" in exited[-1]["detail"]
    assert servers(service["id"]) == {}
