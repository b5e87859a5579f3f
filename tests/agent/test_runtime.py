"""The run-side runtime: `trainyard.report()` and the runner, with real processes and no mocks."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.runtime import trainyard
from agent.telemetry import read_spool, spool_end

RUNTIME = Path(__file__).resolve().parents[2] / "agent" / "runtime"
RUNNER = RUNTIME / "runner.py"
PATIENCE = 20.0  # a bound on waiting for things that should happen at once, never a timing assertion


class Run:
    def __init__(self, folder: Path, process: subprocess.Popen[str]) -> None:
        self.folder = folder
        self.process = process

    @property
    def outcome(self) -> dict[str, Any]:
        return json.loads((self.folder / "outcome.json").read_text())  # type: ignore[no-any-return]

    @property
    def spool(self) -> list[dict[str, Any]]:
        return read_spool(self.folder / "spool.jsonl")

    def wait(self) -> int:
        return self.process.wait(timeout=60)


def package(tmp_path: Path, train: str, **files: str) -> Path:
    folder = tmp_path / "package"
    folder.mkdir()
    (folder / "train.py").write_text(textwrap.dedent(train))
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def start(folder: Path, pipeline: str = "training", **env: str) -> Run:
    data = folder.parent / "data"
    data.mkdir(exist_ok=True)
    environment = {
        **{k: v for k, v in os.environ.items() if k not in ("RANK", "TRAINYARD_SPOOL")},
        "data_directory": str(data),
        "artifacts_directory": str(folder.parent / "artifacts"),
        "TRAINYARD_PIPELINE": pipeline,
        "TRAINYARD_OUTCOME": str(folder.parent / "outcome.json"),
        "TRAINYARD_SPOOL": str(folder.parent / "spool.jsonl"),
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, str(RUNNER)], cwd=folder, env=environment, text=True, start_new_session=True
    )
    return Run(folder.parent, process)


def run(folder: Path, pipeline: str = "training", **env: str) -> tuple[int, Run]:
    started = start(folder, pipeline, **env)
    return started.wait(), started


def eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def pid_in(path: Path) -> int:
    eventually(path.exists)
    return int(path.read_text())


TRAINS_AND_SAVES = """
    import os
    from trainyard import report

    class Main:
        def __init__(self):
            self.seen = None

        def train(self, data_directory):
            self.seen = data_directory
            for epoch in range(1, 4):
                report(epoch=epoch, total_epochs=3, loss=1.0 / epoch, accuracy=0.5, note="text")

        def evaluate(self, data_directory):
            return {"accuracy": 0.75, "directory": data_directory}

        def save(self):
            with open("model.pkl", "w") as file:
                file.write(self.seen)
"""


# -- report() -------------------------------------------------------------------------------------------


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The spool of an in-process run of rank 0, in the environment."""
    path = tmp_path / "spool.jsonl"
    monkeypatch.setenv("TRAINYARD_SPOOL", str(path))
    monkeypatch.delenv("RANK", raising=False)
    return path


def test_report_outside_a_run_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINYARD_SPOOL", raising=False)
    monkeypatch.chdir(tmp_path)
    trainyard.report(epoch=1, loss=0.5)
    assert list(tmp_path.iterdir()) == []


def test_report_under_torchrun_records_on_rank_zero_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool.jsonl"
    monkeypatch.setenv("TRAINYARD_SPOOL", str(spool))
    monkeypatch.setenv("RANK", "1")
    trainyard.report(epoch=1, loss=0.5)
    assert not spool.exists()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TRAINYARD_SPOOL", str(spool))  # RANK is read when the spool is chosen
    trainyard.report(epoch=1, loss=0.5)
    trainyard.flush()
    assert [record["series"] for record in read_spool(spool)] == [{"loss": 0.5}]


def test_report_keeps_finite_numbers_and_never_raises(spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    long_name = "x" * 300
    series: dict[str, Any] = {
        "loss": 1,
        "nan": float("nan"),
        "inf": float("inf"),
        "text": "0.5",
        long_name: 2.5,
    }
    trainyard.report(epoch=2, total_epochs=float("nan"), step=7, total_steps=10, stage="training", **series)
    trainyard.flush()
    [record] = read_spool(spool)
    assert record["series"] == {"loss": 1.0, "x" * 128: 2.5}
    assert (record["epoch"], record["total_epochs"], record["step"], record["total_steps"]) == (
        2,
        None,
        7,
        10,
    )
    assert record["stage"] == "training"
    assert isinstance(record["t"], float) and isinstance(record["seq"], int)

    monkeypatch.setenv("TRAINYARD_SPOOL", str(spool.parent / "no-such-folder" / "spool.jsonl"))
    trainyard.report(loss=1.0)  # an unwritable spool is not the training's problem


def test_report_is_thread_safe(spool: Path) -> None:

    def many() -> None:
        for step in range(200):
            trainyard.report(step=step, loss=0.1)

    threads = [threading.Thread(target=many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trainyard.flush()
    records = read_spool(spool)
    # Every line whole and in order: none lost or torn by another thread's.
    assert len(records) == 800
    sequences = [record["seq"] for record in records]
    assert sequences == list(range(sequences[0], sequences[0] + 800))
    assert sorted(record["step"] for record in records) == sorted(list(range(200)) * 4)


def test_a_report_from_a_signal_handler_inside_report_does_not_deadlock(
    spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainyard.report(step=1, loss=1.0)
    monkeypatch.setattr(trainyard, "_last", 0)  # the next report is stored at once, under the lock
    with trainyard._lock:  # what a handler interrupting report() finds: its own thread holds the lock
        trainyard.report(step=2, loss=2.0)
    trainyard.flush()
    assert [record["step"] for record in read_spool(spool)] == [1, 2]


def reporting_process(spool: Path, script: str) -> subprocess.CompletedProcess[str]:
    """`script` run by a Python process of its own, `report` imported, the spool in its environment."""
    environment = {k: v for k, v in os.environ.items() if k != "RANK"} | {"TRAINYARD_SPOOL": str(spool)}
    code = f"import os, signal, sys\nsys.path.insert(0, {str(RUNTIME)!r})\nfrom trainyard import report\n"
    return subprocess.run(
        [sys.executable, "-c", code + textwrap.dedent(script)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_report_waits_only_when_it_follows_another_closely(tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    done = reporting_process(
        spool,
        """
        import fractions, trainyard
        trainyard.WINDOW, trainyard._WINDOW_NS = 600.0, 600 * 10**9  # the flusher never comes here
        def stored():
            with open(os.environ["TRAINYARD_SPOOL"], "rb") as file:
                return file.read().split(b"\\0")[0].count(b"\\n")
        counts = []
        report(step=0, loss=1.0)  # the first: stored before report() returns
        counts.append(stored())
        report(step=1, loss=1.0)  # right after the one before: queued
        counts.append(stored())
        report(step=2, loss=fractions.Fraction(1, 2))  # not a float: stored at once, after step 1
        counts.append(stored())
        report(step=3, loss=1.0)
        counts.append(stored())
        trainyard.flush()
        counts.append(stored())
        report(step=4, loss=1.0)  # queued, then lost with the process
        print(*counts, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.split() == ["1", "1", "3", "3", "4"]
    records = read_spool(spool)
    assert [record["step"] for record in records] == [0, 1, 2, 3]
    assert [record["seq"] for record in records] == [1, 2, 3, 4]
    assert records[2]["series"] == {"loss": 0.5}


def test_reports_survive_a_sigkill_and_the_next_writer_continues_after_them(tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    killed = reporting_process(
        spool,
        """
        for step in range(100):
            report(step=step, total_steps=100, loss=1.0 / (step + 1))
        # The flusher stores what was queued within 50 ms; waited for here, never timed.
        while open(os.environ["TRAINYARD_SPOOL"], "rb").read().split(b"\\0")[0].count(b"\\n") < 100:
            pass
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    assert killed.returncode == -signal.SIGKILL
    data = spool.read_bytes()
    # The spool is still the size it was extended to: the lines, then zeros that no reader takes.
    assert data.endswith(b"\0") and spool_end(spool) == data.index(b"\0")
    assert [record["step"] for record in read_spool(spool)] == list(range(100))

    after = reporting_process(spool, "report(stage='saving')")
    assert after.returncode == 0, after.stderr
    records = read_spool(spool)
    assert [record["step"] for record in records[:100]] == list(range(100))
    assert records[100]["stage"] == "saving" and len(records) == 101
    assert b"\0" not in spool.read_bytes()  # cut back to its lines at a clean exit


def test_the_spool_grows_past_its_mapping(spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainyard, "GROWTH", 4096)
    for step in range(300):  # about 30,000 bytes: seven extensions of 4,096
        trainyard.report(step=step, total_steps=300, loss=step / 7, **{f"s{step % 5}": float(step)})
    trainyard.flush()
    records = read_spool(spool)
    assert [record["step"] for record in records] == list(range(300))
    assert [record["series"]["loss"] for record in records] == [step / 7 for step in range(300)]
    assert spool.stat().st_size < spool_end(spool) + 2 * 4096


def test_one_process_writes_a_spool_and_another_says_it_does_not(tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    done = reporting_process(
        spool,
        """
        report(step=1, loss=1.0)
        child = os.fork()
        if child == 0:  # a DataLoader worker, say: it shares the parent's mapping but must not use it
            report(step=2, loss=2.0)
            os._exit(0)
        os.waitpid(child, 0)
        report(step=3, loss=3.0)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert [record["step"] for record in read_spool(spool)] == [1, 3]
    assert "another process of this run records into its spool: this one does not" in done.stderr


# -- the runner: pipelines and outcomes -------------------------------------------------------------


def test_training_runs_saves_and_reports(tmp_path: Path) -> None:
    folder = package(tmp_path, TRAINS_AND_SAVES)
    code, result = run(folder, "training")
    assert code == 0
    outcome = result.outcome
    assert (outcome["status"], outcome["reason_code"], outcome["evaluation"]) == (
        "succeeded",
        "completed",
        None,
    )
    assert set(outcome["stage_times"]) == {"training", "saving"}
    assert (folder / "model.pkl").read_text() == str(tmp_path / "data")
    spool = result.spool
    assert [r["stage"] for r in spool if r["stage"]] == ["training", "saving"]
    metrics = [r for r in spool if r["series"]]
    assert [r["epoch"] for r in metrics] == [1, 2, 3]
    assert metrics[0]["series"] == {"loss": 1.0, "accuracy": 0.5}
    assert [r["seq"] for r in spool] == list(range(1, len(spool) + 1))


def test_evaluation_returns_a_dict_of_metrics(tmp_path: Path) -> None:
    folder = package(tmp_path, TRAINS_AND_SAVES)
    test_data = tmp_path / "test-data"
    test_data.mkdir()
    code, result = run(folder, "evaluation", test_data_directory=str(test_data))
    assert code == 0
    outcome = result.outcome
    assert outcome["status"] == "succeeded"
    assert outcome["evaluation"] == {"accuracy": 0.75, "directory": str(test_data)}
    assert set(outcome["stage_times"]) == {"evaluation"}
    assert not (folder / "model.pkl").exists()  # an evaluation neither trains nor saves


def test_full_pipeline_processes_trains_evaluates_and_saves_a_score(tmp_path: Path) -> None:
    folder = package(
        tmp_path,
        """
        class Main:
            def process_data(self, input_directory):
                open("processed", "w").close()

            def train(self, data_directory):
                pass

            def evaluate(self, data_directory):
                return 0.875

            def save(self):
                open("model.pkl", "w").close()
        """,
    )
    code, result = run(folder, "full")
    assert code == 0
    outcome = result.outcome
    assert outcome["evaluation"] == {"score": 0.875}
    assert list(outcome["stage_times"]) == ["process_data", "training", "evaluation", "saving"]
    assert [r["stage"] for r in result.spool] == ["process_data", "training", "evaluation", "saving"]
    assert (folder / "processed").exists() and (folder / "model.pkl").exists()


SPLITS = """
import os


class Main:
    def process_data(self, input_directory):
        with open(os.path.join(os.environ["training_data_directory"], "part"), "w") as f:
            f.write("train")

    def train(self, training_directory):
        self.trained_on = training_directory

    def evaluate(self, evaluation_directory):
        return {"train": self.trained_on, "evaluate": evaluation_directory,
                "files": sorted(os.listdir(evaluation_directory))}

    def save(self):
        pass
"""


def test_a_full_pipeline_hands_train_and_evaluate_the_split_process_data_wrote(tmp_path: Path) -> None:
    """UiPath: train gets `training_data_directory`; evaluate gets `test_data_directory` even when
    process_data left it empty (the split folders are made for it, by the run's own user)."""
    folder = package(tmp_path, SPLITS)
    training, test = tmp_path / "split" / "training", tmp_path / "split" / "test"
    code, result = run(folder, "full", training_data_directory=str(training), test_data_directory=str(test))
    assert code == 0, result.outcome
    assert result.outcome["evaluation"] == {"train": str(training), "evaluate": str(test), "files": []}


def test_a_full_pipeline_without_process_data_trains_and_evaluates_on_its_input(tmp_path: Path) -> None:
    folder = package(tmp_path, SPLITS.replace("def process_data", "def _unused"))
    split = tmp_path / "split"
    code, result = run(
        folder,
        "full",
        training_data_directory=str(split / "training"),
        test_data_directory=str(split / "test"),
    )
    assert code == 0, result.outcome
    data = str(tmp_path / "data")
    assert result.outcome["evaluation"] == {"train": data, "evaluate": data, "files": []}


def test_a_syntax_error_is_an_invalid_package(tmp_path: Path) -> None:
    folder = package(tmp_path, "class Main:\n    def train(self, d):\n        return )\n")
    code, result = run(folder)
    assert code == 1
    outcome = result.outcome
    assert (outcome["status"], outcome["reason_code"]) == ("failed", "invalid_package")
    assert "train.py" in outcome["detail"] and "line 3" in outcome["detail"]
    assert "return )" in outcome["detail"]


@pytest.mark.parametrize(
    ("train", "words"),
    [
        ("X = 1\n", "no class Main"),
        ("class Main:\n    def train(self, d):\n        pass\n", "no save"),
        (None, "no train.py"),
    ],
)
def test_a_package_breaking_the_contract_is_invalid(tmp_path: Path, train: str | None, words: str) -> None:
    folder = package(tmp_path, train or "")
    if train is None:
        (folder / "train.py").unlink()
    code, result = run(folder)
    assert code == 1
    assert (result.outcome["reason_code"], words in result.outcome["detail"]) == ("invalid_package", True)


def test_an_evaluation_without_evaluate_fails_clearly(tmp_path: Path) -> None:
    folder = package(tmp_path, "class Main:\n    def train(self, d): pass\n    def save(self): pass\n")
    code, result = run(folder, "evaluation")
    assert code == 1
    assert result.outcome["reason_code"] == "invalid_package"
    assert "evaluate" in result.outcome["detail"]


def test_an_exception_in_train_fails_with_its_traceback(tmp_path: Path) -> None:
    folder = package(
        tmp_path,
        """
        class Main:
            def train(self, data_directory):
                raise ValueError("the data is wrong")

            def save(self):
                open("model.pkl", "w").close()
        """,
    )
    code, result = run(folder)
    assert code == 1
    outcome = result.outcome
    assert (outcome["status"], outcome["reason_code"]) == ("failed", "exception")
    assert "Traceback" in outcome["detail"] and "ValueError: the data is wrong" in outcome["detail"]
    assert "train.py" in outcome["detail"]
    assert not (folder / "model.pkl").exists()


def test_a_packages_own_modules_do_not_collide_with_ours(tmp_path: Path) -> None:
    own = {f"{name}.py": f"OWN = {name!r}\n" for name in ("agent", "api", "shared", "runner")}
    folder = package(
        tmp_path,
        """
        import agent, api, shared, runner, trainyard

        class Main:
            def train(self, data_directory):
                assert (agent.OWN, api.OWN, shared.OWN, runner.OWN) == ("agent", "api", "shared", "runner")
                trainyard.report(loss=0.25)

            def save(self):
                with open("trainyard-from", "w") as file:
                    file.write(trainyard.__file__)
        """,
        **own,
    )
    code, result = run(folder)
    assert code == 0, result.outcome["detail"]
    assert Path((folder / "trainyard-from").read_text()).parent.parent == RUNTIME
    assert [r["series"] for r in result.spool if r["series"]] == [{"loss": 0.25}]


# -- the runner: stopping and supervising ---------------------------------------------------------------


def test_sigterm_runs_the_packages_handler_and_the_runner_exits(tmp_path: Path) -> None:
    folder = package(
        tmp_path,
        """
        import signal, sys, time

        def stop(signum, frame):
            open("stopped-cleanly", "w").close()
            sys.exit(3)

        class Main:
            def train(self, data_directory):
                signal.signal(signal.SIGTERM, stop)
                open("ready", "w").close()
                time.sleep(600)

            def save(self):
                pass
        """,
    )
    started = start(folder)
    eventually((folder / "ready").exists)
    started.process.send_signal(signal.SIGTERM)
    assert started.wait() == 1
    assert (folder / "stopped-cleanly").exists()
    assert (started.outcome["status"], started.outcome["reason_code"]) == ("failed", "exception")


FORKS = """
    import os, time

    def write(path, text):
        with open(path + ".tmp", "w") as file:
            file.write(text)
        os.rename(path + ".tmp", path)

    def linger(name):
        try:
            write(name, str(os.getpid()))
            time.sleep(600)
        finally:
            os._exit(0)

    class Main:
        def train(self, data_directory):
            if os.fork() == 0:
                linger("child.pid")
            if os.fork() == 0:  # a daemon: fork again, the middle one exits at once
                try:
                    os.setsid()
                    if os.fork() == 0:
                        linger("grandchild.pid")
                finally:
                    os._exit(0)
            while not (os.path.exists("child.pid") and os.path.exists("grandchild.pid")):
                time.sleep(0.01)
            if os.environ.get("STAY"):
                open("ready", "w").close()
                time.sleep(600)

        def save(self):
            open("model.pkl", "w").close()
"""


def test_descendants_are_stopped_when_training_ends(tmp_path: Path) -> None:
    folder = package(tmp_path, FORKS)
    started = start(folder, TRAINYARD_STOP_GRACE="5")
    pids = [pid_in(folder / "child.pid"), pid_in(folder / "grandchild.pid")]
    assert started.wait() == 0
    assert started.outcome["status"] == "succeeded"
    for pid in pids:
        eventually(lambda pid=pid: gone(pid))


def test_sigterm_stops_every_descendant(tmp_path: Path) -> None:
    folder = package(tmp_path, FORKS)
    started = start(folder, STAY="1", TRAINYARD_STOP_GRACE="5")
    eventually((folder / "ready").exists)
    pids = [pid_in(folder / "child.pid"), pid_in(folder / "grandchild.pid")]
    started.process.send_signal(signal.SIGTERM)
    assert started.wait() == 128 + signal.SIGTERM
    assert (started.outcome["status"], started.outcome["reason_code"]) == ("failed", "exit_nonzero")
    assert "SIGTERM" in started.outcome["detail"]
    for pid in pids:
        eventually(lambda pid=pid: gone(pid))


def test_a_package_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    folder = package(
        tmp_path,
        """
        import signal, time

        class Main:
            def train(self, data_directory):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                open("ready", "w").close()
                time.sleep(600)

            def save(self):
                pass
        """,
    )
    started = start(folder, TRAINYARD_STOP_GRACE="1")
    eventually((folder / "ready").exists)
    started.process.send_signal(signal.SIGTERM)
    assert started.wait() == 128 + signal.SIGKILL
    assert started.outcome["status"] == "failed"
    assert "SIGKILL" in started.outcome["detail"]


def test_an_import_error_is_an_exception_with_its_traceback(tmp_path: Path) -> None:
    folder = package(tmp_path, "import no_such_module_here\n")
    code, result = run(folder)
    assert code == 1
    assert result.outcome["reason_code"] == "exception"
    assert (
        "ModuleNotFoundError" in result.outcome["detail"]
        and "no_such_module_here" in result.outcome["detail"]
    )


def test_a_training_process_ending_without_an_outcome_is_a_failure(tmp_path: Path) -> None:
    folder = package(
        tmp_path,
        """
        import os

        class Main:
            def train(self, data_directory):
                os._exit(0)

            def save(self):
                pass
        """,
    )
    code, result = run(folder)
    assert code == 1
    assert (result.outcome["status"], result.outcome["reason_code"]) == ("failed", "exit_nonzero")
    assert "code 0" in result.outcome["detail"]
