"""Runs through the real API and the real agent process: success, stop, kill, timeouts, failures."""

from __future__ import annotations

import io
import os
import signal
import zipfile

from tests.api.world import ok
from tests.e2e.harness import PROJECT, Stack, alive, package, stack, wait_for_file, wait_gone

TRAINS_AND_SAVES = package(
    """
    import os
    from trainyard import report
    from e2e_helpers import mark


    class Main:
        def __init__(self):
            self.seen = []

        def train(self, data_directory):
            mark("train", os.getcwd())
            for epoch in range(1, 4):
                report(epoch=epoch, total_epochs=3, loss=1.0 / epoch)
            with open(os.path.join(os.environ["artifacts_directory"], "curve.csv"), "w") as f:
                f.write("epoch,loss\\n1,1.0\\n")

        def save(self):
            with open("model.txt", "w") as f:
                f.write("trained weights")
    """
)


async def test_a_package_trains_and_becomes_the_next_version() -> None:
    async with stack() as s:
        marks = s.marks("success")
        process = await s.deploy(TRAINS_AND_SAVES, marks=marks)
        s.start_agent()
        run = await s.start(process)
        done = await s.wait_succeeded(run["id"])
        assert done["reason_code"] == "completed"
        # The package folder was the run's current directory.
        assert (await wait_for_file(marks / "train")).endswith("/package")

        results = ok(await s.admin.get(f"/projects/{PROJECT}/runs/{run['id']}/results"))
        versions = ok(await s.admin.get(f"/projects/{PROJECT}/packages/p1/versions"))
        assert sorted(v["version"] for v in versions["items"]) == ["1.0", "1.1"], versions
        download = await s.admin.get(f"/projects/{PROJECT}/packages/p1/versions/1.1/download")
        assert download.status_code == 200, download.text
        names = zipfile.ZipFile(io.BytesIO(download.content)).namelist()
        assert "model.txt" in names and "train.py" in names, names
        assert not any("__pycache__" in name for name in names), names
        artifacts = ok(await s.admin.get(f"/projects/{PROJECT}/runs/{run['id']}/artifacts"))
        assert [a["path"] for a in artifacts] == ["curve.csv"], artifacts
        assert results, results


STOPPABLE = package(
    """
    import os, signal, sys, time
    from e2e_helpers import mark


    def on_sigterm(signum, frame):
        mark("sigterm", os.getpid())  # where a package saves its checkpoint
        sys.exit(0)


    class Main:
        def train(self, data_directory):
            signal.signal(signal.SIGTERM, on_sigterm)
            mark("pid", os.getpid())
            while True:
                time.sleep(0.02)

        def save(self):
            pass
    """
)

IGNORES_SIGTERM = package(
    """
    import os, signal, time
    from e2e_helpers import mark


    class Main:
        def train(self, data_directory):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            mark("pid", os.getpid())
            while True:
                time.sleep(0.02)

        def save(self):
            pass
    """
)

FORKS = package(
    """
    import os, subprocess, sys, time
    from e2e_helpers import mark, wait_for


    class Main:
        def train(self, data_directory):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
            mark("child", child.pid)
            if os.fork() == 0:  # a double fork into a session of its own, as daemons do
                os.setsid()
                if os.fork() == 0:
                    mark("grandchild", os.getpid())
                    time.sleep(1000)
                os._exit(0)
            mark("pid", os.getpid())
            wait_for("go")

        def save(self):
            pass
    """
)

WAITS_FOR_GO = package(
    """
    import os
    from e2e_helpers import mark, wait_for


    class Main:
        def train(self, data_directory):
            mark("pid", os.getpid())
            wait_for("go")

        def save(self):
            with open("model.txt", "w") as f:
                f.write("weights")
    """
)


async def _pid(stack: Stack, marks_name: str, name: str = "pid") -> int:
    return int(await wait_for_file(stack.marks_root / marks_name / name, stack))


async def test_a_stop_reaches_the_package_as_sigterm_and_ends_the_run_stopped() -> None:
    async with stack() as s:
        marks = s.marks("stop")
        process = await s.deploy(STOPPABLE, marks=marks)
        s.start_agent()
        run = await s.start(process)
        pid = await _pid(s, "stop")
        await s.stop(process)
        assert int(await wait_for_file(marks / "sigterm", s)) == pid
        done = await s.wait_run(run["id"], "stopped", "failed", "succeeded")
        assert (done["status"], done["reason_code"]) == ("stopped", "user_stop"), done
        await wait_gone([pid], s)
        versions = ok(await s.admin.get(f"/projects/{PROJECT}/packages/p1/versions"))
        assert [v["version"] for v in versions["items"]] == ["1.0"]  # a stopped run makes no version


async def test_a_package_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    async with stack() as s:
        marks = s.marks("ignores")
        process = await s.deploy(IGNORES_SIGTERM, marks=marks)
        s.start_agent()
        run = await s.start(process)
        pid = await _pid(s, "ignores")
        await s.stop(process)
        done = await s.wait_run(run["id"], "stopped", "failed", "succeeded")
        assert (done["status"], done["reason_code"]) == ("stopped", "user_stop"), done
        await wait_gone([pid], s)


async def test_children_and_a_double_forked_grandchild_do_not_outlive_the_run() -> None:
    async with stack() as s:
        marks = s.marks("forks")
        process = await s.deploy(FORKS, marks=marks)
        s.start_agent()
        run = await s.start(process)
        pids = [await _pid(s, "forks", name) for name in ("pid", "child", "grandchild")]
        assert all(alive(pid) for pid in pids)
        (marks / "go").write_text("")
        await s.wait_succeeded(run["id"])
        await wait_gone(pids, s)


async def test_the_maximum_duration_stops_a_run() -> None:
    async with stack() as s:
        marks = s.marks("duration")
        process = await s.deploy(STOPPABLE, marks=marks, max_duration_seconds=1)
        s.start_agent()
        run = await s.start(process)
        pid = await _pid(s, "duration")
        done = await s.wait_run(run["id"], "stopped", "failed", "succeeded")
        assert (done["status"], done["reason_code"]) == ("stopped", "max_duration"), done
        assert (marks / "sigterm").exists()  # the package got its SIGTERM and grace, as for a stop
        await wait_gone([pid], s)


FAILURES = {
    "exception": (
        package(
            """
            class Main:
                def train(self, data_directory):
                    raise ValueError("the labels do not match the images")

                def save(self):
                    pass
            """
        ),
        "exception",
        "ValueError: the labels do not match the images",
    ),
    "syntax-error": (
        package(
            """
            import broken


            class Main:
                def train(self, data_directory):
                    pass

                def save(self):
                    pass
            """,
            **{"broken.py": "def oops(:\n    pass\n"},
        ),
        "invalid_package",
        "SyntaxError",
    ),
    "no-main": (
        package(
            """
            class Main:
                def train(self, data_directory):
                    pass

                def save(self):
                    pass


            del Main
            """
        ),
        "invalid_package",
        "no class Main",
    ),
}


async def test_broken_packages_fail_with_the_reason_and_the_traceback() -> None:
    async with stack() as s:
        s.start_agent()
        for name, (files, reason, detail) in FAILURES.items():
            process = await s.deploy(files)
            run = await s.start(process)
            done = await s.wait_run(run["id"], "failed", "succeeded", "stopped")
            assert (done["status"], done["reason_code"]) == ("failed", reason), (name, done)
            assert detail in done["detail"], (name, done["detail"])
            if name != "no-main":  # a broken contract is said in words; what crashed, with its traceback
                assert "Traceback" in done["detail"], (name, done["detail"])


async def test_a_killed_agent_re_adopts_its_run_and_a_stop_still_reaches_the_package() -> None:
    async with stack() as s:
        marks = s.marks("readopt-stop")
        process = await s.deploy(STOPPABLE, marks=marks)
        first = s.start_agent()
        run = await s.start(process)
        pid = await _pid(s, "readopt-stop")
        first.kill()
        assert alive(pid)  # the training outlives its agent
        s.start_agent()
        await s.stop(process)
        assert int(await wait_for_file(marks / "sigterm", s)) == pid
        done = await s.wait_run(run["id"], "stopped", "failed", "succeeded")
        assert (done["status"], done["reason_code"]) == ("stopped", "user_stop"), done
        await wait_gone([pid], s)


async def test_after_sigkill_or_sigterm_of_the_agent_the_run_still_registers_its_outputs() -> None:
    async with stack() as s:
        for number, how in enumerate((signal.SIGKILL, signal.SIGTERM)):
            marks = s.marks(f"readopt-{number}")
            process = await s.deploy(WAITS_FOR_GO, marks=marks)
            agent = s.start_agent()
            run = await s.start(process)
            pid = await _pid(s, f"readopt-{number}")
            agent.expected_down = True
            agent.signal(how)
            assert agent.process is not None and agent.process.wait(timeout=60) is not None
            assert alive(pid)
            (marks / "go").write_text("")  # it finishes while no agent runs
            await wait_gone([pid], s)
            s.start_agent()
            done = await s.wait_run(run["id"], "succeeded", "failed", "stopped")
            assert done["status"] == "succeeded", (how, done)
            versions = ok(await s.admin.get(f"/projects/{PROJECT}/packages/p{number + 1}/versions"))
            assert [v["version"] for v in versions["items"]] == ["1.0", "1.1"], versions
            s.agents[-1].stop()
            os.sync()


async def test_a_package_can_neither_have_the_agent_read_a_file_for_it_nor_hang_it() -> None:
    # The run's folder is the package's and the agent may read it as root: a log made a symlink to a
    # file only the agent's user may read must not reach the API, an outcome made a FIFO must not
    # block the agent.
    async with stack() as s:
        secret = s.marks("secret") / "secret.txt"
        secret.write_text("TOP-SECRET-7d1f\n")
        os.chmod(secret, 0o600)
        process = await s.deploy(
            package(
                f"""
                import os


                class Main:
                    def train(self, data_directory):
                        os.unlink("../stderr.log")
                        os.symlink({str(secret)!r}, "../stderr.log")
                        os.mkfifo("../outcome.json")
                        os._exit(3)

                    def save(self):
                        pass
                """
            )
        )
        s.start_agent()
        run = await s.start(process)
        done = await s.wait_run(run["id"], "failed", "succeeded", "stopped")
        assert (done["status"], done["reason_code"]) == ("failed", "exit_nonzero"), done
        assert "TOP-SECRET" not in str(done), done
