"""The Slurm executor (issue 17) through the real API, a real `trainyard-agent run` with
`TRAINYARD_AGENT_EXECUTOR=slurm`, and a real one-node Slurm (`tests/slurm.py`): each run a batch job.

Packages wait on files the test writes and leave files it reads (`tests/e2e/harness.py`), so nothing
here depends on how fast this machine or the cluster's scheduler is.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.api.world import ok
from tests.e2e.harness import (
    PROJECT,
    WAIT_SECONDS,
    AgentProcess,
    Stack,
    alive,
    package,
    stack,
    user_exists,
    wait_for_file,
    wait_gone,
)
from tests.e2e.test_agent_machine import GLOO_TWO_PROCESSES, _system_python
from tests.examples.conftest import EXAMPLES, PACKAGES, load_module
from tests.slurm import OTHER_PARTITION, PARTITION, SlurmCluster, slurm_cluster

__all__ = ["slurm_cluster"]  # the fixture, used by name

# Waits for the test's `go`, leaving its pid and the job it runs in for the test to look at.
WAITS_FOR_GO = package(
    """
    import os
    from e2e_helpers import mark, wait_for


    class Main:
        def train(self, data_directory):
            mark("job", os.environ.get("SLURM_JOB_ID", ""))
            mark("pid", os.getpid())
            wait_for("go", limit=600)

        def save(self):
            with open("model.txt", "w") as f:
                f.write("trained in job " + os.environ.get("SLURM_JOB_ID", ""))
    """
)

# Never ends by itself: only the maximum duration ends it.
NEVER_ENDS = package(
    """
    import os, time
    from e2e_helpers import mark


    class Main:
        def train(self, data_directory):
            mark("pid", os.getpid())
            while True:
                time.sleep(0.05)

        def save(self):
            with open("model.txt", "w") as f:
                f.write("as far as it got")
    """
)


def start_slurm_agent(
    s: Stack, cluster: SlurmCluster, drop: tuple[str, ...] = (), **extra: str
) -> AgentProcess:
    """A `trainyard-agent run` whose runs are jobs of `cluster`."""
    settings = {
        "TRAINYARD_AGENT_EXECUTOR": "slurm",
        "TRAINYARD_SLURM_CONF": str(cluster.conf),
        "TRAINYARD_SLURM_POLL_INTERVAL": "0.3",
        **extra,
    }
    return s.start_agent(drop, **settings)


def jobs_of(cluster: SlurmCluster, run_id: str, field: str = "%i") -> list[str]:
    """The jobs named after the run, in any state slurmctld still knows: `field` of each."""
    listed = cluster.command("squeue", "-h", "-t", "all", "-n", f"trainyard-{run_id}", "-o", field)
    return listed.stdout.split()


def job_state(cluster: SlurmCluster, job: str) -> str:
    shown = cluster.command("scontrol", "show", "job", "--oneliner", job).stdout
    return next(word.split("=", 1)[1] for word in shown.split() if word.startswith("JobState="))


async def wait_no_job(cluster: SlurmCluster, job: str) -> None:
    """Until slurmctld holds the job as ended (no longer pending, running or completing)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while job in cluster.jobs():
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job} is still there: {job_state(cluster, job)}\n{cluster.logs()}")
        await asyncio.sleep(0.1)


async def wait_stage(s: Stack, run_id: str, *stages: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    run = await s.run(run_id)
    while run.get("stage") not in stages:
        if time.monotonic() > deadline or run["status"] in ("succeeded", "failed", "stopped"):
            raise AssertionError(f"run {run_id} never showed a stage of {stages}: {run}\n{s.logs()}")
        s.check_agents()
        await asyncio.sleep(0.05)
        run = await s.run(run_id)
    return run


async def test_digits_trains_to_its_next_version_as_a_slurm_job(
    slurm_cluster: SlurmCluster, tmp_path_factory: Any
) -> None:
    data = tmp_path_factory.mktemp("slurm-digits")
    zip_folder = load_module(EXAMPLES / "zip_package.py", "zip_package").zip_folder
    export_digits = load_module(EXAMPLES / "export_digits.py", "export_digits").export
    await asyncio.to_thread(export_digits, data / "digits")
    async with stack() as s:
        start_slurm_agent(s, slurm_cluster)
        for kind, name, content in (
            ("packages", "digits-classifier", zip_folder(PACKAGES / "digits-classifier")),
            ("datasets", "digits", zip_folder(data / "digits")),
        ):
            files = {"file": (f"{name}.zip", content, "application/zip")}
            ok(await s.admin.post(f"/projects/{PROJECT}/{kind}/{name}/versions", files=files), 201)
        template = {
            "name": "digits",
            "model_type": "classifier",
            "base_package": "digits-classifier",
            "dataset": "digits",
            "dataset_path": "train",
            "test_dataset": "digits",
            "test_dataset_path": "test",
            "pipeline_type": "full",
            "parameters": {"epochs": 1, "seed": 0},
        }
        ok(await s.admin.post(f"/projects/{PROJECT}/templates", json=template), 201)
        created = ok(
            await s.admin.post(f"/projects/{PROJECT}/templates/digits/processes", json={"machine": "local"}),
            201,
        )
        run = await s.start(f"/projects/{PROJECT}/processes/{created['id']}")
        done = await s.wait_succeeded(run["id"])
        version = ok(await s.admin.get(f"/projects/{PROJECT}/packages/digits-classifier/versions/1.1"))
        assert (version["origin"], version["run_id"]) == ("trained", done["id"])
        metrics = ok(
            await s.admin.get(f"/projects/{PROJECT}/runs/{run['id']}/metrics", params={"series": "accuracy"})
        )
        assert metrics["series"][0]["count"] == 1, metrics
        # It ran as a Slurm job: the one the cluster ran to its end, named after the run.
        assert jobs_of(slurm_cluster, run["id"], "%T") == ["COMPLETED"]


async def test_a_stop_mid_training_leaves_no_job_and_no_process(slurm_cluster: SlurmCluster) -> None:
    async with stack() as s:
        marks = s.marks("stop")
        process = await s.deploy(WAITS_FOR_GO, marks=marks)
        start_slurm_agent(s, slurm_cluster)
        run = await s.start(process)
        pid = int(await wait_for_file(marks / "pid", s))
        job = await wait_for_file(marks / "job", s)
        assert job in slurm_cluster.jobs() and alive(pid)
        await s.stop(process)
        done = await s.wait_run(run["id"], "stopped", "failed", "succeeded")
        assert (done["status"], done["reason_code"]) == ("stopped", "user_stop"), done
        await wait_no_job(slurm_cluster, job)
        await wait_gone([pid], s)
        assert job_state(slurm_cluster, job) in ("CANCELLED", "FAILED", "COMPLETED")


async def test_the_maximum_duration_ends_the_job_with_its_reason(slurm_cluster: SlurmCluster) -> None:
    async with stack() as s:
        marks = s.marks("limit")
        process = await s.deploy(NEVER_ENDS, marks=marks, max_duration_seconds=3)
        start_slurm_agent(s, slurm_cluster)
        run = await s.start(process)
        pid = int(await wait_for_file(marks / "pid", s))
        done = await s.wait_run(run["id"], "stopped", "failed", "succeeded")
        assert (done["status"], done["reason_code"]) == ("stopped", "max_duration"), done
        await wait_gone([pid], s)
        assert not slurm_cluster.jobs()


async def test_a_restarted_agent_re_adopts_its_running_job(slurm_cluster: SlurmCluster) -> None:
    async with stack() as s:
        marks = s.marks("adopt")
        process = await s.deploy(WAITS_FOR_GO, marks=marks)
        first = start_slurm_agent(s, slurm_cluster)
        run = await s.start(process)
        pid = int(await wait_for_file(marks / "pid", s))
        job = await wait_for_file(marks / "job", s)
        first.kill()  # SIGKILL: the agent is gone, the job goes on
        assert alive(pid) and job in slurm_cluster.jobs()
        second = start_slurm_agent(s, slurm_cluster)
        await s.wait_polling()
        (marks / "go").write_text("")
        done = await s.wait_succeeded(run["id"])
        assert "re-adopting" in second.output(), second.output()
        download = await s.admin.get(f"/projects/{PROJECT}/packages/p1/versions/1.1/download")
        assert download.status_code == 200 and done["status"] == "succeeded"
        assert jobs_of(slurm_cluster, run["id"]) == [job], "the job was never submitted twice"


async def test_a_two_process_job_trains_with_torch_distributed_on_gloo(slurm_cluster: SlurmCluster) -> None:
    async with stack() as s:
        marks = s.marks("gloo")
        process = await s.deploy(GLOO_TWO_PROCESSES, marks=marks, processes=2, gpus=0)
        start_slurm_agent(s, slurm_cluster)
        run = await s.start(process)
        await s.wait_succeeded(run["id"])
        assert (await wait_for_file(marks / "rank0", s)) == "2 3.0"
        assert (await wait_for_file(marks / "rank1", s)) == "2 3.0"
        assert (await wait_for_file(marks / "saved-by", s)) == "0"


async def test_a_full_cluster_shows_the_queued_stage_with_slurms_reason(slurm_cluster: SlurmCluster) -> None:
    async with stack() as s:
        marks = s.marks("queued")
        process = await s.deploy(WAITS_FOR_GO, marks=marks)
        start_slurm_agent(s, slurm_cluster)
        # Every CPU of the one node taken by a job of someone else's.
        blocker = slurm_cluster.command(
            "sbatch",
            "--parsable",
            f"--cpus-per-task={slurm_cluster.cpus}",
            f"--output={slurm_cluster.folder / 'blocker-%j.out'}",
            "--wrap",
            "sleep 600",
        ).stdout.strip()
        try:
            run = await s.start(process)
            # Slurm's reason: no free resources, or (once the scheduler ranked it) its priority.
            queued = await wait_stage(s, run["id"], "queued: Resources", "queued: Priority")
            assert queued["status"] == "starting", queued
            # Another run queued behind it, stopped while it waits: its job never runs.
            other = await s.deploy(WAITS_FOR_GO, marks=s.marks("never"))
            second = await s.start(other)
            await wait_stage(s, second["id"], "queued: Resources", "queued: Priority")
            [job] = jobs_of(slurm_cluster, second["id"])
            await s.stop(other)
            stopped = await s.wait_run(second["id"], "stopped", "failed", "succeeded")
            assert (stopped["status"], stopped["reason_code"]) == ("stopped", "user_stop"), stopped
            assert job_state(slurm_cluster, job) == "CANCELLED"
            assert not (marks / "pid").exists() and not (s.marks("never") / "pid").exists()
        finally:
            slurm_cluster.command("scancel", blocker)
        await wait_for_file(marks / "pid", s)
        (marks / "go").write_text("")
        done = await s.wait_succeeded(run["id"])
        assert done["status"] == "succeeded"


async def test_an_agent_sigterm_detaches_and_leaves_the_job_running(slurm_cluster: SlurmCluster) -> None:
    """SIGTERM is a detach under Slurm too: the job is not cancelled."""
    async with stack() as s:
        marks = s.marks("detach")
        process = await s.deploy(WAITS_FOR_GO, marks=marks)
        agent = start_slurm_agent(s, slurm_cluster)
        run = await s.start(process)
        job = await wait_for_file(marks / "job", s)
        agent.expected_down = True
        agent.signal(signal.SIGTERM)
        assert agent.process is not None and agent.process.wait(timeout=WAIT_SECONDS) == 0
        assert job in slurm_cluster.jobs()
        start_slurm_agent(s, slurm_cluster)
        (marks / "go").write_text("")
        await s.wait_succeeded(run["id"])


async def test_a_job_cancelled_outside_trainyard_fails_the_run_saying_so(slurm_cluster: SlurmCluster) -> None:
    """Slurm's own endings become reasons; an `scancel` nobody asked Trainyard for is one of them."""
    async with stack() as s:
        marks = s.marks("outside")
        process = await s.deploy(WAITS_FOR_GO, marks=marks)
        start_slurm_agent(s, slurm_cluster)
        run = await s.start(process)
        pid = int(await wait_for_file(marks / "pid", s))
        job = await wait_for_file(marks / "job", s)
        slurm_cluster.command("scancel", job)
        done = await s.wait_run(run["id"], "stopped", "failed", "succeeded")
        assert (done["status"], done["reason_code"]) == ("failed", "cancelled"), done
        assert done["detail"].startswith(f"Slurm ended job {job} CANCELLED: it was cancelled outside"), done
        await wait_gone([pid], s)


async def test_a_template_names_an_allowed_partition_and_no_other(slurm_cluster: SlurmCluster) -> None:
    async with stack() as s:
        start_slurm_agent(s, slurm_cluster, TRAINYARD_SLURM_PARTITIONS=f"{PARTITION},{OTHER_PARTITION}")
        marks = s.marks("partition")
        (marks / "go").write_text("")
        named = await s.deploy(WAITS_FOR_GO, marks=marks, parameters={"slurm_partition": OTHER_PARTITION})
        default = await s.deploy(WAITS_FOR_GO, marks=marks)
        refused = await s.deploy(WAITS_FOR_GO, marks=marks, parameters={"slurm_partition": "gpu-big"})
        runs = [await s.start(process) for process in (named, default, refused)]
        await s.wait_succeeded(runs[0]["id"])
        await s.wait_succeeded(runs[1]["id"])
        assert jobs_of(slurm_cluster, runs[0]["id"], "%P") == [OTHER_PARTITION]
        assert jobs_of(slurm_cluster, runs[1]["id"], "%P") == [PARTITION]  # the first allowed
        done = await s.wait_run(runs[2]["id"], "stopped", "failed", "succeeded")
        assert (done["status"], done["reason_code"]) == ("failed", "machine_refused"), done
        assert "slurm_partition 'gpu-big' is not allowed on this machine" in done["detail"], done
        assert jobs_of(slurm_cluster, runs[2]["id"]) == []


async def test_a_job_that_ended_while_the_agent_was_away_is_reported_with_its_outcome(
    slurm_cluster: SlurmCluster,
) -> None:
    async with stack() as s:
        marks = s.marks("away")
        process = await s.deploy(WAITS_FOR_GO, marks=marks)
        first = start_slurm_agent(s, slurm_cluster)
        run = await s.start(process)
        job = await wait_for_file(marks / "job", s)
        first.kill()
        (marks / "go").write_text("")  # the job trains and saves while no agent watches it
        await wait_no_job(slurm_cluster, job)
        assert job_state(slurm_cluster, job) == "COMPLETED"
        start_slurm_agent(s, slurm_cluster)
        done = await s.wait_succeeded(run["id"])
        assert done["exit_code"] == 0, done
        download = await s.admin.get(f"/projects/{PROJECT}/packages/p1/versions/1.1/download")
        assert download.status_code == 200


# What the job is: its user, and whether anything of the agent's reached its environment.
TELLS_WHO = package(
    """
    import json, os
    from e2e_helpers import mark


    class Main:
        def train(self, data_directory):
            leaked = sorted(name for name in os.environ if name.startswith("TRAINYARD_AGENT"))
            mark("who", json.dumps({"uid": os.getuid(), "leaked": leaked}))

        def save(self):
            pass
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="making the package's user needs root")
async def test_the_job_runs_as_the_run_user_without_the_agents_variables(slurm_cluster: SlurmCluster) -> None:
    if not user_exists("trainyard-run"):
        command = ["useradd", "--system", "--no-create-home", "trainyard-run"]
        await asyncio.to_thread(subprocess.run, command, check=True)
    async with stack() as s:
        marks = s.marks("who")
        process = await s.deploy(TELLS_WHO, marks=marks)
        token = s.token_file.read_text().strip()
        start_slurm_agent(
            s,
            slurm_cluster,
            drop=("TRAINYARD_AGENT_TOKEN_FILE",),
            TRAINYARD_AGENT_TOKEN=token,  # in the agent's environment: the one place a job might find it
            TRAINYARD_RUN_AS="trainyard-run",
            TRAINYARD_RUN_PYTHON=_system_python(),
        )
        run = await s.start(process)
        await s.wait_succeeded(run["id"])
        who = json.loads(await wait_for_file(marks / "who", s))
        assert who["uid"] == pwd.getpwnam("trainyard-run").pw_uid and who["leaked"] == [], who
        assert jobs_of(slurm_cluster, run["id"], "%u") == ["trainyard-run"]


async def test_a_job_slurm_times_out_fails_the_run_with_time_limit(slurm_cluster: SlurmCluster) -> None:
    """An administrator shortens the running job's limit to a minute (the least Slurm counts): Slurm
    ends it TIMEOUT, before the run's own maximum duration, and the run says so."""
    async with stack() as s:
        marks = s.marks("timeout")
        process = await s.deploy(WAITS_FOR_GO, marks=marks)
        start_slurm_agent(s, slurm_cluster)
        run = await s.start(process)
        job = await wait_for_file(marks / "job", s)
        slurm_cluster.command("scontrol", "update", f"JobId={job}", "TimeLimit=1")
        done = await s.wait_run(run["id"], "stopped", "failed", "succeeded")
        assert (done["status"], done["reason_code"]) == ("failed", "time_limit"), done
        words = f"Slurm ended job {job} TIMEOUT: it reached its Slurm time limit"
        assert done["detail"].startswith(words), done


async def test_a_job_queued_when_the_agent_died_is_re_adopted_and_trains(slurm_cluster: SlurmCluster) -> None:
    async with stack() as s:
        marks = s.marks("queued-adopt")
        process = await s.deploy(WAITS_FOR_GO, marks=marks)
        first = start_slurm_agent(s, slurm_cluster)
        blocker = slurm_cluster.command(
            "sbatch",
            "--parsable",
            f"--cpus-per-task={slurm_cluster.cpus}",
            f"--output={slurm_cluster.folder / 'blocker-%j.out'}",
            "--wrap",
            "sleep 600",
        ).stdout.strip()
        try:
            run = await s.start(process)
            await wait_stage(s, run["id"], "queued: Resources", "queued: Priority")
            first.kill()
            second = start_slurm_agent(s, slurm_cluster)
            await s.wait_polling()
            queued = await s.run(run["id"])
            assert queued["status"] == "starting", queued
        finally:
            slurm_cluster.command("scancel", blocker)
        await wait_for_file(marks / "pid", s)
        (marks / "go").write_text("")
        done = await s.wait_succeeded(run["id"])
        assert done["launched_at"] is not None and "re-adopting" in second.output()
        assert len(jobs_of(slurm_cluster, run["id"])) == 1
