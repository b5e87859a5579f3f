"""Telemetry through the real agent and API processes, each SIGKILLed mid-run and restarted: every
point the package reported and every line it printed is stored exactly once, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.agent.test_telemetry import printed, reported, stored
from tests.e2e.harness import PROJECT, Stack, package, stack, wait_for_file

STEPS = 3000
REPORTS_STEADILY = package(
    f"""
    import random, time
    from trainyard import report
    from e2e_helpers import mark


    class Main:
        def train(self, data_directory):
            rng = random.Random(11)
            for step in range({STEPS}):
                report(step=step, total_steps={STEPS}, loss=rng.random(), accuracy=step / {STEPS})
                if step % 10 == 0:
                    print(f"step {{step}} \\u00e9", flush=True)
                if step % 1000 == 999:
                    mark(f"at{{step + 1}}")
                time.sleep(0.001)

        def save(self):
            pass
    """
)


async def _compare(s: Stack, run_id: str) -> None:
    folder = s.work_dir / "runs" / run_id
    chart, lines = await stored(s.api_url, PROJECT, run_id)
    series = chart["series"]
    want = await asyncio.to_thread(reported, folder)
    assert len(want["loss"]) == STEPS
    for name, points in want.items():
        assert series[name] == points, name
    assert lines == await asyncio.to_thread(printed, folder)


async def _run_with_faults(s: Stack, marks: Path, fault: str) -> str:
    process = await s.deploy(REPORTS_STEADILY, marks=marks)
    s.start_agent()
    run = await s.start(process)
    for at in (1000, 2000):
        await wait_for_file(marks / f"at{at}", s)
        if fault == "agent":
            s.agents[-1].kill()
            s.start_agent()
        else:
            s.kill_api()
            s.restart_api()
    await s.wait_succeeded(run["id"])
    return str(run["id"])


async def test_the_agent_killed_twice_mid_run_loses_and_duplicates_no_point() -> None:
    async with stack() as s:
        run_id = await _run_with_faults(s, s.marks("agent-faults"), "agent")
        await _compare(s, run_id)


async def test_the_api_killed_twice_mid_run_loses_and_duplicates_no_point() -> None:
    async with stack() as s:
        run_id = await _run_with_faults(s, s.marks("api-faults"), "api")
        await _compare(s, run_id)
