"""A restart resumes (issue 18, item 2; TI-ONE's Restart), through the real API and a real agent.

A package keeps checkpoints in `trainyard.checkpoint_directory()`; a failed or stopped run's folder is
uploaded before its exit is reported, and a restart of the process hands it back to the next run
before `train()` begins. A plain start, and a restart after a run that kept no checkpoint, start over.
The reference digits package resumes from its checkpoint: its epochs count on.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from tests.api.world import ok
from tests.e2e.harness import PROJECT, WAIT_SECONDS, Stack, package, stack
from tests.examples.conftest import EXAMPLES, PACKAGES, load_module

# Says what it found in its checkpoint folder, adds one checkpoint file (if asked), and trains until
# it is stopped.
CHECKPOINTS = package(
    """
    import json, os, time
    from trainyard import checkpoint_directory
    from e2e_helpers import mark


    class Main:
        def train(self, data_directory):
            folder = checkpoint_directory()
            found = sorted(os.listdir(folder))
            if os.environ["write_checkpoint"] == "true":
                with open(os.path.join(folder, "step-%d" % (len(found) + 1)), "w") as f:
                    f.write("state")
            mark("seen", json.dumps(found) + "\\n")
            while True:
                time.sleep(0.02)

        def save(self):
            pass
    """
)


async def _seen(s: Stack, marks: Path, count: int) -> list[list[str]]:
    """The checkpoint folder's files as the first `count` runs found them (a bound on waiting)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        path = marks / "seen"
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        s.check_agents()
        assert time.monotonic() < deadline, f"only {len(lines)} runs began\n{s.logs()}"
        await asyncio.sleep(0.05)


async def _latest(s: Stack, process: str) -> dict[str, Any]:
    latest: dict[str, Any] = ok(await s.admin.get(process))["latest_run"]
    return latest


async def _restart(s: Stack, process: str) -> None:
    response = await s.admin.post(f"{process}/restart")
    assert response.status_code in (201, 202), response.text


async def test_a_restart_hands_the_last_checkpoint_back_and_a_start_starts_over() -> None:
    async with stack() as s:
        keeps, marks = s.marks("keeps"), s.marks("keeps-none")
        writes = await s.deploy(CHECKPOINTS, marks=keeps, parameters={"write_checkpoint": True})
        writes_none = await s.deploy(CHECKPOINTS, marks=marks, parameters={"write_checkpoint": False})
        s.start_agent()

        first = await s.start(writes)
        await _seen(s, keeps, 1)
        await _restart(s, writes)  # stops the run, then starts the next from its checkpoint
        assert (await s.wait_run(first["id"], "stopped", "failed"))["status"] == "stopped"
        await _seen(s, keeps, 2)
        second = await _latest(s, writes)
        assert second["config"]["resumed_from"] == first["id"], second["config"]
        await s.stop(writes)
        await s.wait_run(second["id"], "stopped")

        third = await s.start(writes)  # a start, not a restart: it starts over
        await _seen(s, keeps, 3)
        assert third["config"].get("checkpoint_sha256") is None, third["config"]
        await s.stop(writes)
        await s.wait_run(third["id"], "stopped")
        await _restart(s, writes)  # nothing active: the restart resumes from the stopped third run
        await _seen(s, keeps, 4)
        fourth = await _latest(s, writes)
        assert fourth["config"]["resumed_from"] == third["id"], fourth["config"]
        await s.stop(writes)
        await s.wait_run(fourth["id"], "stopped")

        # Each run found what the one it resumed from left: the first and the third nothing.
        assert await _seen(s, keeps, 4) == [[], ["step-1"], [], ["step-1"]]

        # A restart of a run that kept no checkpoint starts over.
        alone = await s.start(writes_none)
        await _seen(s, marks, 1)
        await _restart(s, writes_none)
        await s.wait_run(alone["id"], "stopped")
        assert await _seen(s, marks, 2) == [[], []]
        again = await _latest(s, writes_none)
        assert again["id"] != alone["id"] and again["config"].get("checkpoint_sha256") is None, again
        await s.stop(writes_none)
        await s.wait_run(again["id"], "stopped")


# -- the reference digits package --------------------------------------------------------------------

DIGITS = "digits-classifier"
EPOCHS = 60  # far more than the test lets it train: each run is stopped after its first epochs


async def _steps(s: Stack, run_id: str, at_least: int) -> list[int]:
    """The epochs the run reported (the `loss` series' steps), once there are `at_least`."""
    deadline = time.monotonic() + WAIT_SECONDS * 3  # a bound on waiting for torch on a busy machine
    while True:
        metrics = ok(
            await s.admin.get(f"/projects/{PROJECT}/runs/{run_id}/metrics", params={"series": "loss"})
        )
        steps = [int(step) for series in metrics["series"] for step in series["step"]]
        if len(steps) >= at_least:
            return steps
        s.check_agents()
        run = await s.run(run_id)
        assert run["status"] in ("starting", "running"), f"{run}\n{s.logs()}"
        assert time.monotonic() < deadline, f"run {run_id} reported {steps}\n{s.logs()}"
        await asyncio.sleep(0.2)


async def test_a_restarted_digits_run_resumes_and_its_epochs_count_on(tmp_path: Path) -> None:
    zip_folder = load_module(EXAMPLES / "zip_package.py", "zip_package").zip_folder
    load_module(EXAMPLES / "export_digits.py", "export_digits").export(tmp_path / "digits")
    async with stack() as s:
        s.start_agent()
        for kind, name, folder in (
            ("packages", DIGITS, PACKAGES / DIGITS),
            ("datasets", "digits", tmp_path / "digits"),
        ):
            files = {"file": (f"{name}.zip", zip_folder(folder), "application/zip")}
            ok(await s.admin.post(f"/projects/{PROJECT}/{kind}/{name}/versions", files=files), 201)
        template = {
            "name": "digits",
            "model_type": "classifier",
            "base_package": DIGITS,
            "dataset": "digits",
            "dataset_path": "train",
            "test_dataset": "digits",
            "test_dataset_path": "test",
            "parameters": {"epochs": EPOCHS, "seed": 0},
        }
        ok(await s.admin.post(f"/projects/{PROJECT}/templates", json=template), 201)
        created = ok(
            await s.admin.post(f"/projects/{PROJECT}/templates/digits/processes", json={"machine": "local"}),
            201,
        )
        process = f"/projects/{PROJECT}/processes/{created['id']}"

        first = await s.start(process)
        await _steps(s, first["id"], at_least=2)
        await _restart(s, process)  # stopped mid-training, then restarted
        assert (await s.wait_run(first["id"], "stopped", "failed"))["status"] == "stopped"
        second = await _latest(s, process)
        assert second["config"]["resumed_from"] == first["id"], second["config"]
        await _steps(s, second["id"], at_least=1)
        await s.stop(process)
        await s.wait_run(second["id"], "stopped")

        before, after = await _steps(s, first["id"], 0), await _steps(s, second["id"], 0)
        assert before == list(range(1, len(before) + 1)), before
        # The second run began after the last epoch the first one checkpointed: the one it reported
        # last, or the next when the stop came between that epoch's checkpoint and its report.
        assert after[0] in (before[-1] + 1, before[-1] + 2), (before, after)
        assert after == list(range(after[0], after[0] + len(after))), after
