"""The whole flow through `trainyard` alone, as a person at a shell drives it: a real API, a real agent
process, the digits package of examples/ trained to a new version. Then a run that fails and one
that is stopped, each telling itself apart by the exit code of the command that followed it, the
stopped one followed across a restart of the API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.cli.kit import COMMAND, Cli, cli_for, ok
from tests.conftest import ADMIN_TOKEN
from tests.e2e.harness import MACHINE, PROJECT, WAIT_SECONDS, package, stack, wait_for_file
from tests.examples.conftest import EXAMPLES, PACKAGES, load_module

FAILS = package(
    """
    class Main:
        def train(self, data_directory):
            print("about to fail", flush=True)
            raise RuntimeError("boom: the package gave up")

        def save(self):
            pass
    """
)

RUNS_UNTIL_STOPPED = package(
    """
    import time
    from e2e_helpers import mark


    class Main:
        def train(self, data_directory):
            print("training forever", flush=True)
            mark("started")
            while True:
                time.sleep(0.05)

        def save(self):
            pass
    """
)


def _train_digits(cli: Cli, data: Path) -> None:
    load_module(EXAMPLES / "export_digits.py", "export_digits").export(data)
    uploaded = cli("datasets", "upload", "digits", str(data))
    assert ok(uploaded).strip() == "Uploaded digits version 1 (1797 files)."
    ok(cli("packages", "upload", "digits-classifier", str(PACKAGES / "digits-classifier")))
    ok(
        cli(
            "templates", "create", "digits", "--model-type", "classifier", "--package", "digits-classifier",
            "--dataset", "digits", "--dataset-path", "train", "--test-dataset", "digits",
            "--test-dataset-path", "test", "--pipeline", "full", "--param", "epochs=1", "--param", "seed=0",
        )
    )  # fmt: skip


async def test_login_upload_train_follow_logs_and_models(tmp_path: Path) -> None:
    async with stack() as s:
        s.start_agent()
        cli = cli_for(tmp_path)
        ok(cli("login", s.api_url, "--token", "--project", PROJECT, stdin=ADMIN_TOKEN))
        _train_digits(cli, tmp_path / "digits")
        process = json.loads(ok(cli("processes", "create", "-t", "digits", "-m", MACHINE, "--json")))

        followed = cli("processes", "start", process["id"], "--follow", timeout=WAIT_SECONDS * 3)
        assert followed.returncode == 0, (followed.stdout, followed.stderr, s.logs())
        # What a person reads at the end: how it ended and what it made.
        last = followed.stdout.strip().splitlines()[-1]
        assert last.startswith("Run #1 succeeded (completed) after ") and last.endswith(
            "Made digits-classifier 1.1."
        ), followed.stdout
        # Without a terminal the live display is one line per change, on stderr.
        assert any(line.startswith("running") for line in followed.stderr.splitlines()), followed.stderr
        assert "accuracy" in followed.stderr

        runs = json.loads(ok(cli("runs", "list", "--process", process["id"], "--json")))
        run_id = runs[0]["id"]
        grep = ok(cli("logs", run_id, "--grep", "EPOCH 1/1")).splitlines()
        assert len(grep) == 1 and grep[0].startswith("epoch 1/1: "), grep
        every = ok(cli("logs", run_id)).splitlines()
        assert grep[0] in every and ok(cli("logs", run_id, "--grep", "in no line at all")) == ""

        models = json.loads(ok(cli("models", "list", "--json")))
        assert [(m["package"], m["version"], m["run_id"]) for m in models] == [
            ("digits-classifier", "1.1", run_id)
        ]
        table = ok(cli("models", "list")).splitlines()
        assert table[1].split()[:4] == ["digits-classifier", "1.1", "trained", "1.0"], table

        states = [json.loads(line) for line in ok(cli("runs", "follow", run_id, "--json")).splitlines()]
        assert states[-1]["status"] == "succeeded" and states[-1]["id"] == run_id


async def test_a_failed_run_exits_one_and_a_stopped_run_two(tmp_path: Path) -> None:
    async with stack() as s:
        s.start_agent()
        cli = cli_for(tmp_path)
        ok(cli("login", s.api_url, "--token", "-p", PROJECT, stdin=ADMIN_TOKEN))

        failing = (await s.deploy(FAILS)).rsplit("/", 1)[1]
        failed = cli("processes", "start", failing, "--follow", timeout=WAIT_SECONDS * 2)
        assert failed.returncode == 1, (failed.stdout, failed.stderr, s.logs())
        assert "Run #1 failed (" in failed.stdout and "boom: the package gave up" in failed.stderr

        marks = s.marks("stopped")
        stoppable = (await s.deploy(RUNS_UNTIL_STOPPED, marks=marks)).rsplit("/", 1)[1]
        started = json.loads(ok(cli("processes", "start", stoppable, "--json")))
        run_id = started["latest_run"]["id"]
        pipes = {"stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.PIPE, "env": cli.env}
        follow = await asyncio.create_subprocess_exec(*COMMAND, "runs", "follow", run_id, **pipes)
        logs = await asyncio.create_subprocess_exec(*COMMAND, "logs", run_id, "--follow", **pipes)
        try:
            await wait_for_file(marks / "started", s)  # printed its line, flushed, and runs on
            # An API restart while both wait on it: they retry until it answers again (a deploy
            # must not end a follow that has lasted an hour).
            assert follow.stderr is not None  # its first state's line: past its first read
            first = await asyncio.wait_for(follow.stderr.readline(), WAIT_SECONDS)
            assert first.decode().startswith("running"), first
            s.kill_api()
            s.restart_api()
            assert ok(cli("processes", "stop", stoppable)).startswith("Stopping")
            out, err = await asyncio.wait_for(follow.communicate(), WAIT_SECONDS)
            assert follow.returncode == 2, (out, err, s.logs())
            assert "Run #1 stopped (user_stop)" in out.decode()
            assert "retrying: cannot reach" in err.decode(), err
            lines, _ = await asyncio.wait_for(logs.communicate(), WAIT_SECONDS)
            assert logs.returncode == 0 and "training forever" in lines.decode().splitlines()
            # The follower read the run once at once, then only reads the API holds until a change.
            reads = [line for line in s.server.output().splitlines() if f"/runs/{run_id}" in line]
            assert sum(f"/runs/{run_id} HTTP" in line for line in reads) == 1, reads
            assert any(f"/runs/{run_id}?wait=30 HTTP" in line for line in reads), reads
        finally:
            for child in (follow, logs):
                if child.returncode is None:
                    child.kill()
                    await child.wait()
