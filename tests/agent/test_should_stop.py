"""A stop at the maximum duration keeps the model: `trainyard.should_stop()` and the runner's answer to
a SIGTERM whose reason is `max_duration` (save, outcome `cut_short`), against any other SIGTERM (the run
ends, nothing saved). Real runner processes, no mocks."""

import signal
import subprocess
import sys
from pathlib import Path

from agent.runtime import trainyard
from tests.agent.test_runtime import Run, eventually, package, start

CHECKS = """
    import time
    import trainyard

    class Main:
        def train(self, data_directory):
            self.epochs = 0
            while not trainyard.should_stop():
                if self.epochs == 0:  # ready once it has checked: a stop now finds a package that checks
                    open("ready", "w").close()
                self.epochs += 1
                time.sleep(0.01)
            open("returned", "w").close()

        def evaluate(self, data_directory):
            open("evaluated", "w").close()
            return 1.0

        def save(self):
            with open("model.txt", "w") as file:
                file.write(f"{self.epochs}")
"""

NEVER_CHECKS = """
    import time

    class Main:
        def train(self, data_directory):
            self.weights = "partial"
            open("ready", "w").close()
            while True:
                time.sleep(0.01)

        def save(self):
            with open("model.txt", "w") as file:
                file.write(self.weights)
"""


def _stopped(folder: Path, reason: str | None, pipeline: str = "training") -> tuple[int, Run]:
    """The runner started on `folder`, stopped once training is under way with `reason` written where
    the agent writes it (None: no file at all, as for a person's stop)."""
    reason_file = folder.parent / "stop-reason"
    started = start(folder, pipeline, TRAINYARD_STOP_REASON_FILE=str(reason_file), TRAINYARD_STOP_GRACE="60")
    eventually((folder / "ready").exists)
    if reason is not None:
        reason_file.write_text(reason + "\n")
    started.process.send_signal(signal.SIGTERM)
    return started.wait(), started


def test_should_stop_is_false_outside_a_run_and_until_the_runner_asks() -> None:
    code = (
        "import trainyard\n"
        "assert trainyard.should_stop() is False\n"
        "assert trainyard._ask_to_stop() is True  # the package had checked\n"
        "assert trainyard.should_stop() is True\n"
    )
    runtime = Path(trainyard.__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=runtime, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "should_stop" in trainyard.__all__


def test_a_loop_that_checks_should_stop_returns_and_is_saved(tmp_path: Path) -> None:
    folder = package(tmp_path, CHECKS)
    code, run = _stopped(folder, "max_duration")
    assert code == 0, run.outcome
    assert (folder / "returned").exists()
    assert int((folder / "model.txt").read_text()) >= 1
    assert (run.outcome["status"], run.outcome["cut_short"]) == ("succeeded", "max_duration")
    assert "saving" in run.outcome["stage_times"]


def test_the_full_pipeline_skips_evaluation_when_cut_short_in_training(tmp_path: Path) -> None:
    folder = package(tmp_path, CHECKS)
    code, run = _stopped(folder, "max_duration", pipeline="full")
    assert code == 0, run.outcome
    assert (folder / "model.txt").exists() and not (folder / "evaluated").exists()
    assert run.outcome["cut_short"] == "max_duration" and run.outcome["evaluation"] is None


def test_a_package_that_never_checks_is_interrupted_and_saved(tmp_path: Path) -> None:
    folder = package(tmp_path, NEVER_CHECKS)
    code, run = _stopped(folder, "max_duration")
    assert code == 0, run.outcome
    assert (folder / "model.txt").read_text() == "partial"
    assert (run.outcome["status"], run.outcome["cut_short"]) == ("succeeded", "max_duration")


def test_any_other_stop_ends_the_run_and_saves_nothing(tmp_path: Path) -> None:
    for reason in (None, "user_stop"):
        root = tmp_path / (reason or "no-file")
        root.mkdir()
        folder = package(root, CHECKS)
        code, run = _stopped(folder, reason)
        assert code != 0
        assert not (folder / "model.txt").exists() and not (folder / "returned").exists()
        assert run.outcome["status"] == "failed" and "cut_short" not in run.outcome
