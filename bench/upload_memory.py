"""How much memory the API holds while it receives a large package upload, and how fast it takes it.

    .venv/bin/python bench/upload_memory.py                  # a 200 MB package
    .venv/bin/python bench/upload_memory.py --size-mb 50 200 # several sizes, one table
    .venv/bin/python bench/upload_memory.py --quick          # 20 MB, for CI

For each size it starts the real API (`trainyard-api migrate`, then `trainyard-api serve` on a free
port, SQLite and the blob store in a temporary data dir), writes a valid package zip holding one
incompressible random file of that size to the same temporary dir, streams it from disk with httpx,
and samples the API process's resident memory every 50 ms. The limit it is compared with is a plain
copy of the same file on the same disk (`shutil.copyfile`), with and without the fsync the blob store
does (the median of three copies). Peak RSS should not grow with the size of the upload: the body goes
to disk as it arrives.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import api_command, free_port

try:
    import psutil
except ImportError:  # the dev extra installs it; /proc is enough on Linux
    psutil = None

MB = 1_000_000
MiB = 1024 * 1024
TOKEN = "bench-bootstrap-token-0123456789abcdef"
SAMPLE_SECONDS = 0.05
TRAIN_PY = """\
class Main:
    def __init__(self):
        self.weights = None

    def train(self, data_directory):
        self.weights = open("weights.bin", "rb").read(16)

    def save(self):
        pass
"""


def rss_bytes(pid: int) -> int:
    """Resident memory of the process and its children (uvicorn runs the app in-process with one worker)."""
    if psutil is not None:
        try:
            process = psutil.Process(pid)
            return int(sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]))
        except psutil.Error:
            return 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Sampler(threading.Thread):
    """Samples RSS every 50 ms until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1
            self._stop_event.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def make_package(path: Path, size: int) -> None:
    """A valid package whose zip is about `size` bytes: train.py plus a random (incompressible) file."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train.py", TRAIN_PY)
        archive.writestr("requirements.txt", "numpy\n")
        info = zipfile.ZipInfo("weights.bin", date_time=(2026, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        with archive.open(info, "w", force_zip64=True) as out:
            left = size
            while left > 0:
                chunk = os.urandom(min(MiB, left))
                out.write(chunk)
                left -= len(chunk)


@dataclass
class Figures:
    size_mb: float
    idle_rss: int
    peak_rss: int
    after_rss: int
    samples: int
    upload_seconds: float
    copy_seconds: float
    copy_fsync_seconds: float


def copy_seconds(source: Path, target: Path, *, fsync: bool) -> float:
    started = time.perf_counter()
    shutil.copyfile(source, target)
    if fsync:
        with target.open("rb") as handle:
            os.fsync(handle.fileno())
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def measure(size_mb: float, workdir: Path) -> Figures:
    package = workdir / f"package-{size_mb:g}MB.zip"
    make_package(package, int(size_mb * MB))
    data_dir = workdir / f"data-{size_mb:g}"
    env = {**os.environ, "TRAINYARD_DATA_DIR": str(data_dir), "TRAINYARD_BOOTSTRAP_TOKEN": TOKEN}
    env.pop("TRAINYARD_DATABASE_URL", None)
    command = api_command()
    subprocess.run([command, "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    log = (workdir / f"serve-{size_mb:g}.log").open("wb")
    server = subprocess.Popen(
        [command, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600) as client:
            wait_until_ready(client, server)
            client.post("/api/v1/projects", json={"name": "bench"}).raise_for_status()
            # A small upload first, so what is loaded once (imports, caches) is in the idle figure.
            small = workdir / "small.zip"
            make_package(small, 1000)
            upload(client, small)
            time.sleep(0.5)
            idle = statistics.median(rss_bytes(server.pid) for _ in range(5))
            sampler = Sampler(server.pid)
            sampler.start()
            started = time.perf_counter()
            upload(client, package)
            elapsed = time.perf_counter() - started
            sampler.stop()
            time.sleep(1.0)
            after = rss_bytes(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    # The median of three: a shared machine's disk is noisy.
    copy = statistics.median(copy_seconds(package, workdir / "copy.zip", fsync=False) for _ in range(3))
    copy_fsync = statistics.median(copy_seconds(package, workdir / "copy.zip", fsync=True) for _ in range(3))
    figures = Figures(
        package.stat().st_size / MB,
        int(idle),
        sampler.peak,
        after,
        sampler.samples,
        elapsed,
        copy,
        copy_fsync,
    )
    package.unlink()
    shutil.rmtree(data_dir, ignore_errors=True)
    return figures


def wait_until_ready(client: httpx.Client, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"trainyard-api serve exited with {server.returncode}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("trainyard-api serve did not become ready in 60 s")


def upload(client: httpx.Client, path: Path) -> None:
    with path.open("rb") as handle:  # httpx streams a file object in chunks: the client holds little
        response = client.post(
            "/api/v1/projects/bench/packages/big/versions",
            files={"file": (path.name, handle, "application/zip")},
        )
    if response.status_code != 201:
        raise SystemExit(f"upload refused: {response.status_code} {response.text}")


def table(rows: list[Figures]) -> str:
    def mib(value: int) -> str:
        return f"{value / MiB:.1f}"

    lines = [
        "| package | idle RSS before (MiB) | peak RSS during (MiB) | RSS after (MiB) | peak - idle (MiB) "
        "| upload s | upload MB/s | cp s | cp MB/s | cp+fsync s | cp+fsync MB/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.size_mb:.0f} MB | {mib(row.idle_rss)} | {mib(row.peak_rss)} | {mib(row.after_rss)} "
            f"| {mib(row.peak_rss - row.idle_rss)} | {row.upload_seconds:.2f} "
            f"| {row.size_mb / row.upload_seconds:.0f} | {row.copy_seconds:.2f} "
            f"| {row.size_mb / row.copy_seconds:.0f} | {row.copy_fsync_seconds:.2f} "
            f"| {row.size_mb / row.copy_fsync_seconds:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, nargs="+", default=[200.0], help="package sizes (MB)")
    parser.add_argument("--quick", action="store_true", help="one 20 MB package, for CI")
    parser.add_argument(
        "--workdir", type=Path, help="where to put the zip and data dir (default: a temp dir)"
    )
    args = parser.parse_args()
    sizes = [20.0] if args.quick else args.size_mb
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-", dir=args.workdir) as temp:
        rows = [measure(size, Path(temp)) for size in sizes]
    print(
        f"RSS sampled every {SAMPLE_SECONDS * 1000:.0f} ms with {'psutil' if psutil else '/proc VmRSS'}; "
        f"{os.cpu_count()} CPUs"
    )
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
