"""Through the real API and a real agent process (issue 18, items 1 and 4): a run its maximum duration
cuts short is saved and kept as a version marked so, with its artifacts; a failed or stopped run keeps
its artifacts and its log."""

from __future__ import annotations

import io
import zipfile
from typing import Any

from tests.api.packages_kit import zip_bytes
from tests.api.world import ok
from tests.e2e.harness import PROJECT, Stack, package, stack, wait_for_file

# A training loop that checks `should_stop()`: it returns at the limit, and `save()` keeps its state.
CHECKS_SHOULD_STOP = package(
    """
    import os, time
    import trainyard
    from trainyard import report


    class Main:
        def train(self, data_directory):
            self.epochs = 0
            while not trainyard.should_stop():
                self.epochs += 1
                report(epoch=self.epochs, loss=1.0 / self.epochs)
                time.sleep(0.05)
            with open(os.path.join(os.environ["artifacts_directory"], "curve.csv"), "w") as f:
                f.write(f"epochs,{self.epochs}\\n")

        def save(self):
            with open("model.txt", "w") as f:
                f.write(f"{self.epochs} epochs")
    """
)

# One that never checks: `train()` is interrupted at the limit and the model saved as it is.
NEVER_CHECKS = package(
    """
    import os, time


    class Main:
        def train(self, data_directory):
            with open(os.path.join(os.environ["artifacts_directory"], "started.txt"), "w") as f:
                f.write("training")
            self.weights = "as far as it got"
            while True:
                time.sleep(0.05)

        def save(self):
            with open("model.txt", "w") as f:
                f.write(self.weights)
    """
)

FAILS = package(
    """
    import os


    class Main:
        def train(self, data_directory):
            os.makedirs(os.path.join(os.environ["artifacts_directory"], "debug"))
            with open(os.path.join(os.environ["artifacts_directory"], "debug", "batch-17.txt"), "w") as f:
                f.write("the batch that broke it")
            print("loading batch 17 of 40", flush=True)
            raise ValueError("the labels do not match the images")

        def save(self):
            pass
    """
)

STOPPED = package(
    """
    import os
    from e2e_helpers import mark, wait_for


    class Main:
        def train(self, data_directory):
            with open(os.path.join(os.environ["artifacts_directory"], "progress.txt"), "w") as f:
                f.write("half way")
            mark("ready")
            wait_for("never")

        def save(self):
            with open("model.txt", "w") as f:
                f.write("weights")
    """
)


async def _versions(s: Stack, package_name: str) -> list[str]:
    versions = ok(await s.admin.get(f"/projects/{PROJECT}/packages/{package_name}/versions"))
    return sorted(v["version"] for v in versions["items"])


async def _artifacts(s: Stack, run_id: str) -> list[str]:
    listed: list[dict[str, Any]] = ok(await s.admin.get(f"/projects/{PROJECT}/runs/{run_id}/artifacts"))
    return sorted(a["path"] for a in listed)


async def _kept_model(s: Stack, package_name: str, run_id: str) -> str:
    """The model file of the version the run kept, checked to be marked cut short by the limit."""
    assert await _versions(s, package_name) == ["1.0", "1.1"]
    version = ok(await s.admin.get(f"/projects/{PROJECT}/packages/{package_name}/versions/1.1"))
    assert version["lineage"]["cut_short"] == "max_duration"
    assert version["lineage"]["run_id"] == run_id
    results = ok(await s.admin.get(f"/projects/{PROJECT}/runs/{run_id}/results"))
    assert results["run_summary"]["cut_short"] == "max_duration"
    download = await s.admin.get(f"/projects/{PROJECT}/packages/{package_name}/versions/1.1/download")
    assert download.status_code == 200, download.text
    return zipfile.ZipFile(io.BytesIO(download.content)).read("model.txt").decode()


async def test_the_maximum_duration_keeps_the_model_of_a_loop_that_checks_should_stop() -> None:
    async with stack() as s:
        data = zip_bytes({"0/a.png": "zero", "1/b.png": "one"})
        uploaded = await s.admin.post(
            f"/projects/{PROJECT}/datasets/digits/versions",
            files={"file": ("digits.zip", data, "application/zip")},
        )
        ok(uploaded, 201)
        process = await s.deploy(
            CHECKS_SHOULD_STOP, max_duration_seconds=2, dataset="digits", save_training_data=True
        )
        s.start_agent()
        run = await s.start(process)
        done = await s.wait_run(run["id"], "stopped", "failed", "succeeded")
        assert (done["status"], done["reason_code"], done["exit_code"]) == ("stopped", "max_duration", 0), (
            done
        )
        model = await _kept_model(s, "p1", run["id"])
        assert model.endswith(" epochs") and int(model.split()[0]) >= 1
        assert await _artifacts(s, run["id"]) == ["curve.csv"]
        # The data it trained on, as a dataset version of its own.
        version = ok(await s.admin.get(f"/projects/{PROJECT}/packages/p1/versions/1.1"))
        snapshot = version["lineage"]["snapshot"]
        assert (snapshot["dataset"], snapshot["version"], snapshot["files"]) == ("digits-snapshots", 1, 2)
        files = ok(await s.admin.get(f"/projects/{PROJECT}/datasets/digits-snapshots/versions/1/files"))
        assert [f["path"] for f in files["items"]] == ["0/a.png", "1/b.png"]


async def test_the_maximum_duration_interrupts_a_package_that_never_checks_and_keeps_it() -> None:
    async with stack() as s:
        process = await s.deploy(NEVER_CHECKS, max_duration_seconds=2)
        s.start_agent()
        run = await s.start(process)
        done = await s.wait_run(run["id"], "stopped", "failed", "succeeded")
        assert (done["status"], done["reason_code"]) == ("stopped", "max_duration"), done
        assert await _kept_model(s, "p1", run["id"]) == "as far as it got"
        assert await _artifacts(s, run["id"]) == ["started.txt"]


async def test_a_failed_run_keeps_its_artifacts_and_its_log() -> None:
    async with stack() as s:
        process = await s.deploy(FAILS)
        s.start_agent()
        run = await s.start(process)
        done = await s.wait_run(run["id"], "stopped", "failed", "succeeded")
        assert (done["status"], done["reason_code"]) == ("failed", "exception"), done
        assert "the labels do not match the images" in done["detail"]
        assert await _artifacts(s, run["id"]) == ["debug/batch-17.txt"]
        artifact = await s.admin.get(f"/projects/{PROJECT}/runs/{run['id']}/artifacts/debug/batch-17.txt")
        assert artifact.content == b"the batch that broke it"
        lines = ok(await s.admin.get(f"/projects/{PROJECT}/runs/{run['id']}/logs"))["lines"]
        assert any(line["text"] == "loading batch 17 of 40" for line in lines), lines
        assert await _versions(s, "p1") == ["1.0"]


async def test_a_stopped_run_keeps_its_artifacts_and_no_version() -> None:
    async with stack() as s:
        marks = s.marks("stopped")
        process = await s.deploy(STOPPED, marks=marks)
        s.start_agent()
        run = await s.start(process)
        await wait_for_file(marks / "ready", s)
        await s.stop(process)
        done = await s.wait_run(run["id"], "stopped", "failed", "succeeded")
        assert (done["status"], done["reason_code"]) == ("stopped", "user_stop"), done
        assert await _artifacts(s, run["id"]) == ["progress.txt"]
        assert await _versions(s, "p1") == ["1.0"]
