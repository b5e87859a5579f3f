"""`python -m tests.agent.shipper_process API_URL TOKEN RUN_ID RUN_DIR STARTED_AT`: a run's telemetry
shipper alone in a process, for tests that SIGKILL it."""

import asyncio
import sys
import uuid
from pathlib import Path

from agent.client import ApiClient
from agent.config import AgentSettings
from agent.telemetry import RunTelemetry
from agent.workdir import RunFolder


def folder_of(root: Path) -> RunFolder:
    return RunFolder(
        root=root,
        package=root / "package",
        data=root / "data",
        test_data=None,
        artifacts=root / "artifacts",
        outcome=root / "outcome.json",
        spool=root / "spool.jsonl",
        stdout=root / "stdout.log",
        stderr=root / "stderr.log",
    )


def settings(api_url: str, token: str, work_dir: Path) -> AgentSettings:
    return AgentSettings(
        api_url=api_url,
        agent_token=token,  # type: ignore[arg-type]
        agent_work_dir=work_dir,
        retry_initial=0.05,
        retry_max=0.5,
        run_as="nobody",  # required when tests run as root; the shipper runs nothing
        allow_insecure_http=True,  # the in-process app, or loopback: no network
    )


async def main(api_url: str, token: str, run_id: str, root: str, started_at: str) -> None:
    async with ApiClient(settings(api_url, token, Path(root).parent)) as client:
        telemetry = RunTelemetry(
            client, uuid.UUID(run_id), folder_of(Path(root)), started_at=float(started_at)
        )
        await telemetry.ship_forever()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
