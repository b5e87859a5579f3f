"""The agent on a machine: real torch packages (one process and two gloo workers), the package's user
and the token, draining, and what an idle agent holds."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.api.test_cli import _free_port
from tests.api.world import ok
from tests.e2e.harness import AGENT_COMMAND, PROJECT, package, stack, user_exists, wait_for_file

TORCH_REGRESSION = package(
    """
    import os
    import torch
    from trainyard import report


    class Main:
        def __init__(self):
            torch.manual_seed(0)
            self.model = torch.nn.Linear(4, 1)
            if os.path.exists("model.pt"):
                self.model.load_state_dict(torch.load("model.pt"))

        def train(self, data_directory):
            torch.set_num_threads(1)
            x = torch.randn(256, 4)
            y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
            optimiser = torch.optim.SGD(self.model.parameters(), lr=0.1)
            epochs = int(os.environ.get("epochs", "3"))
            for epoch in range(1, epochs + 1):
                optimiser.zero_grad()
                loss = torch.nn.functional.mse_loss(self.model(x), y)
                loss.backward()
                optimiser.step()
                report(epoch=epoch, total_epochs=epochs, loss=loss.item(), learning_rate=0.1)

        def save(self):
            torch.save(self.model.state_dict(), "model.pt")
    """
)

GLOO_TWO_PROCESSES = package(
    """
    import os
    import torch
    import torch.distributed as dist
    from e2e_helpers import mark


    class Main:
        def train(self, data_directory):
            torch.set_num_threads(1)
            dist.init_process_group("gloo")
            rank, world = dist.get_rank(), dist.get_world_size()
            torch.manual_seed(rank)
            model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
            optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
            for _ in range(5):
                optimiser.zero_grad()
                loss = model(torch.randn(8, 2)).pow(2).mean()
                loss.backward()  # gradients all-reduced across both workers
                optimiser.step()
            total = torch.tensor([float(rank + 1)])
            dist.all_reduce(total)
            mark(f"rank{rank}", f"{world} {total.item()}")
            self.weights = model.module.state_dict()
            # DDP holds the process group: left alive into the interpreter's exit, gloo's teardown
            # aborts a worker now and then ("terminate called without an active exception", about
            # 1 run in 20 here), and torchrun fails the run. Drop it, meet, then destroy the group.
            del model, optimiser, loss
            dist.barrier()
            dist.destroy_process_group()

        def save(self):
            torch.save(self.weights, "model.pt")
            mark("saved-by", os.environ.get("RANK"))
    """
)


def _names(content: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(content)).namelist()


async def test_a_torch_package_trains_on_the_cpu_and_its_weights_become_the_next_version() -> None:
    async with stack() as s:
        process = await s.deploy(TORCH_REGRESSION, parameters={"epochs": 3})
        s.start_agent()
        run = await s.start(process)
        await s.wait_succeeded(run["id"])
        download = await s.admin.get(f"/projects/{PROJECT}/packages/p1/versions/1.1/download")
        assert "model.pt" in _names(download.content)


async def test_two_gloo_workers_train_together_and_rank_0_saves() -> None:
    async with stack() as s:
        marks = s.marks("gloo")
        process = await s.deploy(GLOO_TWO_PROCESSES, marks=marks, processes=2, gpus=0)
        s.start_agent()
        run = await s.start(process)
        await s.wait_succeeded(run["id"])
        # Both workers saw a world of two and the all-reduced sum 1 + 2.
        assert (await wait_for_file(marks / "rank0", s)) == "2 3.0"
        assert (await wait_for_file(marks / "rank1", s)) == "2 3.0"
        assert (await wait_for_file(marks / "saved-by", s)) == "0"
        download = await s.admin.get(f"/projects/{PROJECT}/packages/p1/versions/1.1/download")
        assert "model.pt" in _names(download.content)


SNOOPS = package(
    """
    import json, os
    from e2e_helpers import mark


    def attempt(what, read):
        try:
            return {"what": what, "read": read()}
        except OSError as error:
            return {"what": what, "error": type(error).__name__}


    def read(path):
        with open(path, "rb") as f:
            return f.read().decode("latin-1")


    def ancestors():
        pid, found = os.getpid(), []
        while pid > 1:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
            found.append(pid)
        return found


    class Main:
        def train(self, data_directory):
            findings = [{"what": "uid", "read": str(os.getuid())}]
            findings.append({"what": "environ", "read": json.dumps(dict(os.environ))})
            for pid in ancestors():
                for name in ("environ", "cmdline"):
                    findings.append(attempt(f"/proc/{pid}/{name}", lambda: read(f"/proc/{pid}/{name}")))
            findings.append(attempt("token file", lambda: read(os.environ["token_file"])))
            work = os.environ["work_dir"]
            for folder, _, files in os.walk(work):
                for name in files:
                    path = os.path.join(folder, name)
                    findings.append(attempt(path, lambda: read(path)))
            mark("findings", json.dumps(findings))

        def save(self):
            pass
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="making the package's user needs root")
async def test_a_package_run_as_another_user_cannot_read_the_agent_token() -> None:
    if not user_exists("trainyard-run"):
        command = ["useradd", "--system", "--no-create-home", "trainyard-run"]
        await asyncio.to_thread(subprocess.run, command, check=True)
    async with stack() as s:
        marks = s.marks("snoop")
        token = s.token_file.read_text().strip()
        process = await s.deploy(
            SNOOPS,
            marks=marks,
            parameters={"token_file": str(s.token_file), "work_dir": str(s.work_dir)},
        )
        # The token in the agent's environment this time: the one place a package might look first.
        s.start_agent(
            drop=("TRAINYARD_AGENT_TOKEN_FILE",),
            TRAINYARD_AGENT_TOKEN=token,
            TRAINYARD_RUN_AS="trainyard-run",
            TRAINYARD_RUN_PYTHON=_system_python(),
        )
        run = await s.start(process)
        await s.wait_succeeded(run["id"])

        findings = await wait_for_file(marks / "findings", s)
        assert token not in findings
        assert token.split("_", 2)[-1] not in findings
        parsed = json.loads(findings)
        assert parsed[0]["read"] != "0"  # not root
        refused = {f["what"] for f in parsed if f.get("error")}
        assert "token file" in refused
        assert any(what.endswith("/environ") for what in refused)  # the agent's own environment


def _system_python() -> str:
    """A Python every user may run (this machine's own lives under /root)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no system Python readable by other users")


async def test_drain_finishes_the_run_in_hand_then_the_agent_exits() -> None:
    async with stack() as s:
        marks = s.marks("drain")
        from tests.e2e.test_agent_runs import WAITS_FOR_GO

        process = await s.deploy(WAITS_FOR_GO, marks=marks)
        agent = s.start_agent()
        run = await s.start(process)
        await wait_for_file(marks / "pid", s)
        drained = await asyncio.to_thread(
            subprocess.run,
            [*AGENT_COMMAND, "drain"],
            env={"PATH": os.environ["PATH"], "TRAINYARD_AGENT_WORK_DIR": str(s.work_dir)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert drained.returncode == 0, drained.stderr
        agent.expected_down = True
        assert agent.process is not None and agent.process.poll() is None  # still carrying its run
        (marks / "go").write_text("")
        await s.wait_succeeded(run["id"])
        assert agent.process.wait(timeout=90) == 0, s.logs()
        versions = ok(await s.admin.get(f"/projects/{PROJECT}/packages/p1/versions"))
        assert [v["version"] for v in versions["items"]] == ["1.0", "1.1"]


async def test_an_idle_agent_has_not_imported_torch() -> None:
    async with stack() as s:
        agent = s.start_agent()
        await s.wait_polling()
        maps = await asyncio.to_thread(Path(f"/proc/{agent.pid}/maps").read_text)
        assert "libtorch" not in maps


async def test_the_agent_serves_its_own_metrics_when_asked() -> None:
    async with stack() as s:
        port = _free_port()
        marks = s.marks("metrics")
        from tests.e2e.test_agent_runs import WAITS_FOR_GO

        process = await s.deploy(WAITS_FOR_GO, marks=marks)
        s.start_agent(TRAINYARD_AGENT_METRICS_PORT=str(port))
        await s.wait_polling()
        run = await s.start(process)
        await wait_for_file(marks / "pid", s)
        async with httpx.AsyncClient(timeout=30) as client:
            during = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            assert "trainyard_agent_runs_in_hand 1.0" in during, during
            (marks / "go").write_text("")
            await s.wait_run(run["id"], "succeeded", "failed", "stopped")
            for _ in range(600):  # the agent lets go of the run just after `finished`: a bound, not a speed
                after = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                if "trainyard_agent_runs_in_hand 0.0" in after:
                    break
                await asyncio.sleep(0.05)
        assert "trainyard_agent_runs_in_hand 0.0" in after, after
        assert "trainyard_agent_last_push_timestamp_seconds" in after
