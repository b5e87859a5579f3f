"""A real Slurm for the tests: Debian's `slurm-wlm` and `munge`, one node (this machine), started here.

One cluster per test session, in a temporary folder every user can reach: a MUNGE key and `munged`
on a socket of its own, a `slurm.conf` naming this host with its CPUs and memory, `slurmctld` and
`slurmd` in the foreground on free ports, all stopped (every job cancelled first) at the end.
Nothing is written outside the folder, so it runs beside a machine's own Slurm, and beside another
test session's cluster.

How it runs in a container (found by trying, Slurm 22.05): as root (`SlurmUser=root`: slurmd must be
root to start jobs as their user); `ProctrackType=proctrack/linuxproc` and `TaskPlugin=task/none`
(no cgroup hierarchy to delegate); accounting off (`sacct` then says "accounting storage is
disabled": the agent reads a job's end from `scontrol`, kept for `MinJobAge` seconds, see
docs/executors.md); the MUNGE socket named in `AuthInfo=socket=...`, for Slurm's daemons and clients
alike. Clients find the cluster through `SLURM_CONF`, in `SlurmCluster.environment()`.

Skipped, with the reason, where Slurm is not installed (`.ci/run` installs it) or where the tests do
not run as root; a cluster that is installed but does not start fails the tests, with its logs.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_PORTS = range(20000, 32000)  # below the ephemeral range, as tests/s3.py explains
_START_SECONDS = 60.0
PARTITION = "debug"
OTHER_PARTITION = "other"  # the same node again: for a template that names its partition
# Finished jobs stay known to slurmctld (squeue -t all, scontrol) for this long: the agent reads a
# job's end there when accounting (sacct) is off, as it is here.
MIN_JOB_AGE_SECONDS = 3600
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


@dataclass
class SlurmCluster:
    folder: Path
    conf: Path
    node: str
    cpus: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def environment(self) -> dict[str, str]:
        """What a Slurm client (and the agent) needs to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def command(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster, e.g. `command("squeue", "-h")`."""
        env = {**os.environ, **self.environment()}
        result = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {result.returncode}\n{result.stderr}{self.logs()}")
        return result

    def jobs(self) -> list[str]:
        """The ids of the jobs slurmctld holds that have not ended (pending, running, completing)."""
        listed = self.command("squeue", "-h", "-o", "%i")
        return listed.stdout.split()

    def logs(self) -> str:
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.folder / name
            if path.exists():
                parts.append(f"--- {name}:\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


def _free_ports(count: int) -> list[int]:
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.choice(_PORTS)
        if port not in chosen:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            chosen.append(port)
    return chosen


def _memory_mb() -> int:
    with open("/proc/meminfo", encoding="ascii") as file:
        for line in file:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024


def slurm_conf(folder: Path, node: str, cpus: int, ctld_port: int, slurmd_port: int) -> str:
    """A one-node cluster: this host, its CPUs, two partitions over it, consumable cores, no cgroups."""
    memory = max(256, _memory_mb() - 512)  # slurmd refuses a node that claims more than it has
    lines = {
        "ClusterName": "trainyard-tests",
        "SlurmctldHost": f"{node}(127.0.0.1)",
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "SlurmctldPort": str(ctld_port),
        "SlurmdPort": str(slurmd_port),
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={folder / 'munge.socket'}",
        "StateSaveLocation": str(folder / "state"),
        "SlurmdSpoolDir": str(folder / "spool"),
        "SlurmctldPidFile": str(folder / "slurmctld.pid"),
        "SlurmdPidFile": str(folder / "slurmd.pid"),
        "SlurmctldLogFile": str(folder / "slurmctld.log"),
        "SlurmdLogFile": str(folder / "slurmd.log"),
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "JobCompType": "jobcomp/none",
        "SchedulerType": "sched/backfill",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core",
        "MpiDefault": "none",
        "ReturnToService": "2",
        "MinJobAge": str(MIN_JOB_AGE_SECONDS),
        "KillWait": "5",
        "SchedulerParameters": "sched_interval=1",
    }
    text = "".join(f"{key}={value}\n" for key, value in lines.items())
    text += f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN\n"
    text += f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP\n"
    text += f"PartitionName={OTHER_PARTITION} Nodes={node} Default=NO MaxTime=INFINITE State=UP\n"
    return text


def _start(cluster: SlurmCluster, argv: list[str], log: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **cluster.environment()}
    with (cluster.folder / log).open("ab") as output:
        process = subprocess.Popen(
            argv, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=cluster.folder, start_new_session=True
        )
    cluster.processes.append(process)
    return process


def _wait_until(cluster: SlurmCluster, what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _START_SECONDS
    while not ready():
        for process in cluster.processes:
            if process.poll() is not None:
                name = Path(str(process.args[0] if isinstance(process.args, list) else process.args)).name
                pytest.fail(f"{name} exited ({process.returncode}) before {what}\n{cluster.logs()}")
        if time.monotonic() > deadline:
            pytest.fail(f"the Slurm cluster never got to {what}\n{cluster.logs()}")
        time.sleep(0.2)


def _node_idle(cluster: SlurmCluster) -> bool:
    result = cluster.command("sinfo", "-h", "-o", "%t", check=False)
    return result.returncode == 0 and result.stdout.strip() == "idle"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    missing = [program for program in PROGRAMS if _which(program) is None]
    if missing:
        pytest.skip(
            f"Slurm is not installed ({', '.join(missing)} missing): "
            "apt-get install slurm-wlm munge (.ci/run does)"
        )
    if os.geteuid() != 0:
        pytest.skip("the one-node Slurm cluster needs root (slurmd starts jobs as their user)")
    # Not under pytest's folder (root's own): every user that submits a job (TRAINYARD_RUN_AS) must
    # reach slurm.conf and MUNGE's socket.
    folder = Path(tempfile.mkdtemp(prefix="trainyard-slurm-"))
    os.chmod(folder, 0o755)
    for part in ("state", "spool"):
        (folder / part).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    ctld_port, slurmd_port = _free_ports(2)
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, node, os.cpu_count() or 1, ctld_port, slurmd_port))
    os.chmod(conf, 0o644)  # whatever the umask: a job's user's sbatch reads it
    cluster = SlurmCluster(folder, conf, node, os.cpu_count() or 1)
    try:
        _start(
            cluster,
            [
                str(_which("munged")),
                "--foreground",
                "--force",  # as root, in a folder under /tmp
                f"--socket={folder / 'munge.socket'}",
                f"--key-file={key}",
                f"--log-file={folder / 'munged.log'}",
                f"--pid-file={folder / 'munged.pid'}",
                f"--seed-file={folder / 'munged.seed'}",
            ],
            "munged.out",
        )
        _wait_until(cluster, "munged's socket", (folder / "munge.socket").exists)
        _start(cluster, [str(_which("slurmctld")), "-D", "-i"], "slurmctld.out")
        _start(cluster, [str(_which("slurmd")), "-D"], "slurmd.out")
        _wait_until(cluster, "an idle node", lambda: _node_idle(cluster))
        yield cluster
    finally:
        _stop(cluster)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(cluster: SlurmCluster) -> None:
    """Every job cancelled (its processes killed by slurmd), then slurmd, slurmctld and munged."""
    if len(cluster.processes) == 3 and all(process.poll() is None for process in cluster.processes):
        try:
            for job in cluster.jobs():
                cluster.command("scancel", "--signal=KILL", "--full", job, check=False)
                cluster.command("scancel", job, check=False)
            deadline = time.monotonic() + 30
            while cluster.jobs() and time.monotonic() < deadline:
                time.sleep(0.2)
        except (AssertionError, subprocess.SubprocessError, OSError):
            pass
    for process in reversed(cluster.processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
