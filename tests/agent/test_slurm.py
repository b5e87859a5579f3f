"""The Slurm executor's pure parts (agent/slurm.py): what sbatch is given, how Slurm's answers are read,
which Slurm endings become which reasons, and its settings. The executor against a real Slurm is in
tests/e2e/test_slurm.py."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import AgentSettings
from agent.executor import RunRefused
from agent.slurm import (
    SLURM_ENDS,
    JobInfo,
    parse_sacct,
    parse_scontrol,
    sbatch_arguments,
    time_limit_minutes,
)
from agent.workdir import run_folder
from shared.enums import PipelineType, ReasonCode
from shared.names import InvalidName, check_parameter_name
from shared.protocol import StartRunPayload

SCONTROL = (
    "JobId=7 JobName=trainyard-x UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901758 "
    "Nice=0 Account=(null) QOS=(null) JobState={state} Reason={reason} Dependency=(null) Requeue=0 "
    "Restarts=0 BatchFlag=1 Reboot=0 ExitCode={exit} RunTime=00:00:03 TimeLimit=00:02:00"
)


def settings(tmp_path: Path, **values: Any) -> AgentSettings:
    return AgentSettings(
        api_url="https://api.test",
        agent_token="ty_abc_secret",
        agent_work_dir=tmp_path,
        run_as="root" if os.geteuid() == 0 else None,  # as root, it must be named
        allow_unsafe_run_user=True,
        agent_executor="slurm",
        **values,
    )


def payload(**values: Any) -> StartRunPayload:
    fields: dict[str, Any] = {
        "run_id": uuid.uuid4(),
        "process_id": uuid.uuid4(),
        "project": "p",
        "template": "t",
        "pipeline_type": PipelineType.TRAINING,
        "max_duration_seconds": 3600,
        **values,
    }
    return StartRunPayload(**fields)


def arguments(tmp_path: Path, start: StartRunPayload, **values: Any) -> list[str]:
    chosen = settings(tmp_path, **values)
    return sbatch_arguments(start, run_folder(chosen, start), chosen, tmp_path / "job.sh")


def test_scontrol_gives_the_state_the_reason_and_the_exit() -> None:
    pending = parse_scontrol(SCONTROL.format(state="PENDING", reason="Resources", exit="0:0"))
    assert pending == JobInfo("PENDING", "Resources", 0, None) and pending.waiting and not pending.ended
    failed = parse_scontrol(SCONTROL.format(state="FAILED", reason="NonZeroExitCode", exit="3:0"))
    assert failed == JobInfo("FAILED", "NonZeroExitCode", 3, None) and failed.ended
    killed = parse_scontrol(SCONTROL.format(state="CANCELLED", reason="None", exit="0:15"))
    assert killed == JobInfo("CANCELLED", "None", None, 15)
    assert parse_scontrol("slurm_load_jobs error: Invalid job id specified") is None


def test_sacct_reads_a_state_with_its_author() -> None:
    assert parse_sacct("CANCELLED by 0|0:15|None\n") == JobInfo("CANCELLED", "None", None, 15)
    assert parse_sacct("TIMEOUT|0:0|TimeLimit") == JobInfo("TIMEOUT", "TimeLimit", 0, None)
    assert parse_sacct("") is None


def test_every_ending_slurm_gives_itself_has_a_reason_of_its_own() -> None:
    assert {state: reason for state, (reason, _) in SLURM_ENDS.items()} == {
        "TIMEOUT": ReasonCode.TIME_LIMIT,
        "DEADLINE": ReasonCode.TIME_LIMIT,
        "NODE_FAIL": ReasonCode.NODE_FAILURE,
        "BOOT_FAIL": ReasonCode.NODE_FAILURE,
        "PREEMPTED": ReasonCode.PREEMPTED,
        "OUT_OF_MEMORY": ReasonCode.OUT_OF_MEMORY,
        "CANCELLED": ReasonCode.CANCELLED,
    }
    assert all(JobInfo(state).ended for state in SLURM_ENDS)


def test_the_time_limit_is_the_maximum_duration_with_the_grace_in_whole_minutes() -> None:
    assert time_limit_minutes(3600, 30) == 62
    assert time_limit_minutes(1, 2) == 2


def test_sbatch_gets_one_item_per_option_and_the_script_last(tmp_path: Path) -> None:
    start = payload(processes=2, gpus=1, max_duration_seconds=60)
    argv = arguments(tmp_path, start)
    folder = tmp_path / "runs" / str(start.run_id)
    assert argv == [
        "--parsable",
        f"--job-name=trainyard-{start.run_id}",
        f"--chdir={folder / 'package'}",
        f"--output={folder / 'runner.log'}",
        "--open-mode=append",
        "--export=ALL",
        "--no-requeue",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=2",
        f"--time={time_limit_minutes(60, 30)}",
        "--gres=gpu:1",
        str(tmp_path / "job.sh"),
    ]


def test_partition_account_and_qos_only_from_the_allow_lists(tmp_path: Path) -> None:
    lists = {"slurm_partitions": "gpu, cpu", "slurm_accounts": "lab", "slurm_qos": "normal,high"}
    chosen = payload(parameters={"slurm_partition": "cpu", "slurm_account": "lab", "slurm_qos": "high"})
    argv = arguments(tmp_path, chosen, **lists)
    assert {"--partition=cpu", "--account=lab", "--qos=high"} <= set(argv)
    # Named by none: the first partition allowed, Slurm's own default account and QoS.
    argv = arguments(tmp_path, payload(), **lists)
    assert "--partition=gpu" in argv and not any(item.startswith(("--account", "--qos")) for item in argv)
    for parameters in (
        {"slurm_partition": "gpu --uid=0"},
        {"slurm_account": "other"},
        {"slurm_qos": ["high"]},
        {"slurm_partition": "debug"},
    ):
        with pytest.raises(RunRefused) as refused:
            arguments(tmp_path, payload(parameters=parameters), **lists)
        assert refused.value.reason is ReasonCode.MACHINE_REFUSED
        assert "not allowed on this machine" in refused.value.detail
    with pytest.raises(RunRefused):  # no list: none may be named
        arguments(tmp_path, payload(parameters={"slurm_partition": "gpu"}))


def test_the_settings_refuse_a_name_slurm_would_not_take_and_the_sandbox(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a Slurm name"):
        settings(tmp_path, slurm_partitions="gpu,$(id)")
    with pytest.raises(ValidationError, match="TRAINYARD_SANDBOX=bwrap is for local runs"):
        settings(tmp_path, sandbox="bwrap")
    chosen = settings(tmp_path, slurm_conf=tmp_path / "slurm.conf")
    assert chosen.slurm_poll_interval == 5 and chosen.slurm_conf == tmp_path / "slurm.conf"


@pytest.mark.parametrize("name", ["SLURM_CONF", "SBATCH_PARTITION", "SRUN_CPUS_PER_TASK", "SALLOC_ACCOUNT"])
def test_a_template_cannot_name_a_parameter_slurm_reads(name: str) -> None:
    with pytest.raises(InvalidName):
        check_parameter_name(name)
