"""The runner's bounded logs: stamped lines, undecodable bytes kept readable, floods bounded."""

import re
from pathlib import Path

from tests.agent.test_runtime import package, run

STAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z ")


def logs(tmp_path: Path) -> dict[str, str]:
    return {
        "TRAINYARD_STDOUT_LOG": str(tmp_path / "stdout.log"),
        "TRAINYARD_STDERR_LOG": str(tmp_path / "stderr.log"),
    }


def test_lines_are_stamped_and_bytes_that_are_not_utf8_stay_readable(tmp_path: Path) -> None:
    folder = package(
        tmp_path,
        """
        import os, sys

        class Main:
            def train(self, data_directory):
                print("héllo")
                sys.stdout.flush()
                sys.stdout.buffer.write(b"bad \\xff\\xfe bytes\\r\\nno newline at the end")
                print("to stderr", os.environ.get("TRAINYARD_STDOUT_LOG"), file=sys.stderr)

            def save(self):
                pass
        """,
    )
    code, _ = run(folder, **logs(tmp_path))
    assert code == 0
    out = (tmp_path / "stdout.log").read_bytes().splitlines()
    err = (tmp_path / "stderr.log").read_bytes().splitlines()
    assert all(STAMP.match(line) for line in out + err), out + err
    assert [STAMP.sub(b"", line).decode() for line in out] == [
        "héllo",
        "bad \\xff\\xfe bytes",
        "no newline at the end",
    ]
    assert [STAMP.sub(b"", line) for line in err] == [b"to stderr None"]  # the paths stay ours


def test_a_flood_stays_bounded_keeping_head_tail_and_a_count(tmp_path: Path) -> None:
    folder = package(
        tmp_path,
        """
        import sys

        class Main:
            def train(self, data_directory):
                line = "x" * 99 + "\\n"
                sys.stdout.write("FIRST\\n")
                for _ in range(200):
                    sys.stdout.write(line * 1000)  # 20 MB
                sys.stdout.write("LAST\\n")

            def save(self):
                pass
        """,
    )
    limits = {"TRAINYARD_LOG_HEAD_BYTES": "20000", "TRAINYARD_LOG_RATE_BYTES": "10000"}
    code, _ = run(folder, **logs(tmp_path), **limits, TRAINYARD_LOG_MAX_BYTES="100000")
    assert code == 0
    data = (tmp_path / "stdout.log").read_bytes()
    assert len(data) < 100_000 + 2 * 10_000 + 1_000, len(data)
    lines = [STAMP.sub(b"", line) for line in data.splitlines()]
    assert lines[0] == b"FIRST" and lines[-1] == b"LAST"
    notes = [line for line in lines if line.startswith(b"[trainyard] ")]
    dropped = sum(int(note.split()[1]) for note in notes)
    kept = sum(1 for line in lines if line.startswith(b"xxx"))
    assert notes and b"of stdout dropped here" in notes[0]
    assert 20_000_000 - 200_000 < dropped + kept * 100 <= 20_000_000
