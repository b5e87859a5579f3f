"""Record what `trainyard` shows a person, as SVG files beside this script (linked from docs/clients.md).

    make up    # or any API with an agent, a project and a process in it (examples/demo.py makes one)
    TRAINYARD_URL=http://127.0.0.1:8000 TRAINYARD_TOKEN=... \\
        .venv/bin/python docs/cli/record.py --project demo --process PROCESS_ID

It starts the process and follows its run with the command's own live display (`cli.follow`),
saving one frame mid-run and the last one, then runs a few commands as real processes in colour
and saves what they printed. Nothing here is a test: the tests are in tests/cli/.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

from cli.client import Api, segment
from cli.follow import Follower

HERE = Path(__file__).resolve().parent
WIDTH = 100
TRAINYARD = Path(sys.executable).with_name("trainyard")


def _save(console: Console, name: str, title: str) -> None:
    path = HERE / name
    console.save_svg(str(path), title=title)
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


def record_follow(api: Api, project: str, process: str) -> str:
    """Start the process and follow its run: a frame once past half way, and the last one."""
    started = api.post(f"/projects/{segment(project)}/processes/{segment(process)}/start")
    follower = Follower(api, project, started["latest_run"]["id"])
    command = f"$ trainyard processes start {process} --follow"
    middle_saved = False
    for state in follower.states():
        if not middle_saved and (state.get("progress") or 0) >= 0.5 and follower.latest:
            frame = Console(record=True, width=WIDTH, force_terminal=True, file=io.StringIO())
            frame.print(Text(command, "bold"))
            frame.print(follower.render())
            _save(frame, "follow-running.svg", "trainyard: following a run")
            middle_saved = True
    last = Console(record=True, width=WIDTH, force_terminal=True, file=io.StringIO())
    last.print(Text(command, "bold"))
    last.print(follower.render())
    last.print(Text(follower.summary()))
    _save(last, "follow-done.svg", "trainyard: the run ended")
    return follower.run_id


def record_command(name: str, *args: str) -> None:
    """`trainyard ARGS` as a real process in colour, its output saved as `name`."""
    env = {**os.environ, "COLUMNS": str(WIDTH), "FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"}
    result = subprocess.run([str(TRAINYARD), *args], env=env, capture_output=True, text=True, check=False)
    console = Console(record=True, width=WIDTH, force_terminal=True, file=io.StringIO())
    console.print(Text("$ trainyard " + " ".join(args), "bold"))
    console.print(Text.from_ansi(result.stderr + result.stdout))
    if result.returncode:
        console.print(Text(f"$ echo $?\n{result.returncode}", "dim"))
    _save(console, name, "trainyard " + " ".join(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--process", required=True, help="the id of a process to start and follow")
    options = parser.parse_args()
    url, token = os.environ.get("TRAINYARD_URL"), os.environ.get("TRAINYARD_TOKEN")
    if not url or not token:
        raise SystemExit("set TRAINYARD_URL and TRAINYARD_TOKEN")
    os.environ["TRAINYARD_PROJECT"] = options.project
    with Api(url.rstrip("/"), token) as api:
        run_id = record_follow(api, options.project, options.process)
    record_command("processes-list.svg", "processes", "list")
    record_command("models-list.svg", "models", "list")
    record_command("logs-grep.svg", "logs", run_id, "--grep", "epoch")
    with Api(url.rstrip("/"), token) as api:  # a refusal to show: starting a disabled process
        process = f"/projects/{segment(options.project)}/processes/{segment(options.process)}"
        api.post(f"{process}/disable")
        try:
            record_command("error.svg", "processes", "start", options.process)
        finally:
            api.post(f"{process}/enable")


if __name__ == "__main__":
    main()
