"""`trainyard-agent run [--api URL]` and `trainyard-agent drain [--wait S]`.

The token never appears on a command line (any process on the machine can read those): it comes from
`TRAINYARD_AGENT_TOKEN` or the file named by `TRAINYARD_AGENT_TOKEN_FILE`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from agent.config import AgentSettings, default_work_dir

if TYPE_CHECKING:
    from agent.client import ApiClient
    from agent.daemon import Agent

EXIT_USAGE = 2
PR_SET_DUMPABLE = 4


def _settings(api: str | None) -> AgentSettings:
    overrides = {"api_url": api} if api else {}
    try:
        return AgentSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        raise SystemExit(f"trainyard-agent: invalid settings: {problems}") from None


def build_agent(settings: AgentSettings, client: ApiClient) -> Agent:
    """The daemon and its parts, each made here and handed in: the API client, the run states, the
    input cache, the GPUs and their pool, the run user, each run's telemetry shipper."""
    from agent.daemon import Agent
    from agent.gpus import GpuPool, discover
    from agent.machine import Machine, RunUser
    from agent.run_state import StateStore
    from agent.telemetry import RunTelemetry
    from agent.workdir import BlobCache

    work_dir = Path(settings.agent_work_dir)
    gpus = discover()
    machine = Machine(
        settings=settings,
        client=client,
        cache=BlobCache(work_dir),
        states=StateStore(work_dir),
        gpus=GpuPool([gpu.index for gpu in gpus]),
        runner=Path(),  # installed by the daemon's start-up, under its lock on the work dir
        run_user=RunUser.resolve(settings.run_as),
        python=settings.run_python,
        telemetry=lambda client, run_id, folder, started_at: RunTelemetry(
            client, run_id, folder, started_at=started_at
        ),
    )
    return Agent(machine, gpus)


async def _serve(settings: AgentSettings) -> None:
    from agent.client import ApiClient

    async with ApiClient(settings) as client:
        agent = build_agent(settings, client)
        if settings.agent_metrics_port is not None:
            from agent.metrics import start_metrics_server  # prometheus-client only when asked for

            start_metrics_server(settings.agent_metrics_port, agent)
        await agent.run()


def not_dumpable() -> None:
    """PR_SET_DUMPABLE 0: no process of the same uid may read this one's memory or
    /proc/<pid>/environ (where TRAINYARD_AGENT_TOKEN may be), nor attach a debugger to it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def run(args: argparse.Namespace) -> int:
    not_dumpable()
    settings = _settings(args.api)
    from agent.daemon import AlreadyRunning
    from agent.sandbox import LaunchRefused

    try:
        asyncio.run(_serve(settings))
    except (AlreadyRunning, LaunchRefused) as error:
        print(f"trainyard-agent: {error}", file=sys.stderr)
        return 1
    return 0


def drain(args: argparse.Namespace) -> int:
    from agent.daemon import DRAIN_SIGNAL, read_pid

    work_dir = Path(os.environ.get("TRAINYARD_AGENT_WORK_DIR") or default_work_dir())
    pid = read_pid(work_dir)
    if pid is None:
        print(f"trainyard-agent: no agent runs in {work_dir} (no agent.pid)", file=sys.stderr)
        return 1
    try:
        os.kill(pid, DRAIN_SIGNAL)
    except ProcessLookupError:
        print(f"trainyard-agent: the agent (pid {pid}) is not running", file=sys.stderr)
        return 1
    print(f"trainyard-agent: draining the agent (pid {pid}): it finishes its runs, then exits")
    deadline = time.monotonic() + args.wait
    while args.wait and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("trainyard-agent: drained")
            return 0
        time.sleep(0.2)
    return 0 if not args.wait else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainyard-agent", description="Trainyard's target-machine agent.")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="poll the API and run training runs on this machine")
    run_parser.add_argument("--api", help="the API's root URL (else TRAINYARD_API_URL)")
    run_parser.set_defaults(handler=run)
    drain_parser = commands.add_parser(
        "drain", help="let the running agent finish its runs, take no new one, and exit"
    )
    drain_parser.add_argument(
        "--wait", type=float, default=0.0, metavar="S", help="wait up to S seconds for it to exit"
    )
    drain_parser.set_defaults(handler=drain)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("TRAINYARD_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
