"""A large upload through the API onto S3, beside plain copies of the same file to the same server.

    .venv/bin/python bench/upload_s3.py                   # a 2 GB dataset file
    .venv/bin/python bench/upload_s3.py --size-mb 500     # another size
    .venv/bin/python bench/upload_s3.py --quick           # 20 MB, for CI

In one run: SeaweedFS (tests/s3.py's `running_seaweedfs`: master, volume, filer and S3 on loopback
ports, in a temporary folder), the real API on it (`trainyard-api migrate`, then `trainyard-api serve`
with `TRAINYARD_BLOB_STORE=s3://trainyard/api`; SQLite), and one file of that size written to the same
temporary folder from `os.urandom` in 1 MiB pieces (incompressible; never whole in the bench's
memory), hashed on the way. Then, one after the other, the same file goes to the same server:

1. through the REST API, as a dataset file (`POST .../datasets/big/versions`, multipart `files`,
   streamed from disk by httpx), while a thread samples the API process's RSS every 50 ms; the object
   is then looked up under its sha256 key and its size checked;
2. with obstore's own `put` from the file, multipart with the API's own parts (8 MiB, 4 in flight);
3. with SeaweedFS's own client, `weed filer.copy`, into the bucket's folder through the filer.

Figures: MB/s of each (1 MB = 10^6 bytes), the API's idle RSS (after a small upload, so what is
loaded once is in it), its peak during the upload and after it, and the load average around the run.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import obstore
from common import api_command, free_port
from upload_memory import MB, SAMPLE_SECONDS, TOKEN, MiB, Sampler, rss_bytes, wait_until_ready

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests/ below it
from tests.s3 import S3Server, running_seaweedfs, weed_binary

API_PREFIX = "api"  # the API's blobs: s3://trainyard/api/sha256/...
PART_BYTES = 8 * MiB  # as api/core/s3blobs.py sends a large blob
PARTS_IN_FLIGHT = 4


@dataclass
class Figures:
    size: int
    api_seconds: float
    idle_rss: int
    peak_rss: int
    after_rss: int
    obstore_seconds: float
    weed_seconds: float
    load_before: float
    load_after: float


def make_file(path: Path, size: int) -> str:
    """`size` random bytes written 1 MiB at a time; their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left > 0:
            chunk = os.urandom(min(MiB, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def start_api(workdir: Path, server: S3Server) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        **os.environ,
        **server.environment(),
        "TRAINYARD_DATA_DIR": str(workdir / "data"),
        "TRAINYARD_BOOTSTRAP_TOKEN": TOKEN,
        "TRAINYARD_BLOB_STORE": server.url(API_PREFIX),
        "TRAINYARD_S3_ENDPOINT_URL": server.endpoint,
    }
    env.pop("TRAINYARD_DATABASE_URL", None)
    command = api_command()
    subprocess.run([command, "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    log = (workdir / "serve.log").open("wb")
    process = subprocess.Popen(
        [command, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    log.close()  # the child holds its own descriptor
    return process, f"http://127.0.0.1:{port}"


def upload(client: httpx.Client, path: Path) -> None:
    with path.open("rb") as handle:  # httpx streams a file object in chunks: the client holds little
        response = client.post(
            "/api/v1/projects/bench/datasets/big/versions",
            files={"files": (path.name, handle, "application/octet-stream")},
        )
    if response.status_code != 201:
        raise SystemExit(f"upload refused: {response.status_code} {response.text}")


def through_api(workdir: Path, server: S3Server, path: Path, sha256: str) -> tuple[float, int, int, int]:
    """Upload seconds, idle, peak and after RSS of the API process."""
    api, base = start_api(workdir, server)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base, headers=headers, timeout=1800) as client:
            wait_until_ready(client, api)
            client.post("/api/v1/projects", json={"name": "bench"}).raise_for_status()
            small = workdir / "small.bin"
            make_file(small, 16 * MiB)  # multipart too: obstore's upload path is loaded before idle
            upload(client, small)
            time.sleep(0.5)
            idle = sorted(rss_bytes(api.pid) for _ in range(5))[2]
            sampler = Sampler(api.pid)
            sampler.start()
            started = time.perf_counter()
            upload(client, path)
            elapsed = time.perf_counter() - started
            sampler.stop()
            time.sleep(1.0)
            after = rss_bytes(api.pid)
    finally:
        api.terminate()
        try:
            api.wait(timeout=15)
        except subprocess.TimeoutExpired:
            api.kill()
    key = f"sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"
    stored = obstore.head(server.client(API_PREFIX), key)["size"]
    if stored != path.stat().st_size:
        raise SystemExit(f"the API stored {stored} bytes under {key}, not {path.stat().st_size}")
    return elapsed, idle, sampler.peak, after


def with_obstore(server: S3Server, path: Path) -> float:
    store = server.client("plain")
    started = time.perf_counter()
    obstore.put(
        store, "obstore.bin", path, use_multipart=True, chunk_size=PART_BYTES, max_concurrency=PARTS_IN_FLIGHT
    )
    elapsed = time.perf_counter() - started
    if obstore.head(store, "obstore.bin")["size"] != path.stat().st_size:
        raise SystemExit("obstore's copy has the wrong size")
    return elapsed


def with_weed(server: S3Server, path: Path) -> float:
    """`weed filer.copy` with its defaults (4 MB chunks, 8 in flight) into the bucket's folder."""
    target = f"http://{server.filer}/buckets/{server.bucket}/weed/"
    started = time.perf_counter()
    command = [str(weed_binary()), "filer.copy", str(path), target]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"weed filer.copy failed:\n{done.stdout}\n{done.stderr}")
    elapsed = time.perf_counter() - started
    if obstore.head(server.client("weed"), path.name)["size"] != path.stat().st_size:
        raise SystemExit("weed's copy has the wrong size")
    return elapsed


def measure(size: int, workdir: Path) -> Figures:
    path = workdir / "big.bin"
    sha256 = make_file(path, size)
    load_before = os.getloadavg()[0]
    # Volumes of 1 GB, up to 16: room for the three copies of a 2 GB file and a few spare.
    weed_dir = workdir / "seaweedfs"
    weed_dir.mkdir()
    with running_seaweedfs(weed_dir, volume_size_limit_mb=1024, volume_max=16) as server:
        api_seconds, idle, peak, after = through_api(workdir, server, path, sha256)
        obstore_seconds = with_obstore(server, path)
        weed_seconds = with_weed(server, path)
    return Figures(
        size, api_seconds, idle, peak, after, obstore_seconds, weed_seconds, load_before, os.getloadavg()[0]
    )


def table(row: Figures) -> str:
    size_mb = row.size / MB

    def rate(seconds: float) -> str:
        return f"| {seconds:.2f} | {size_mb / seconds:.0f} |"

    def mib(value: int) -> str:
        return f"{value / MiB:.1f}"

    return "\n".join(
        [
            f"{size_mb:.0f} MB file; load average {row.load_before:.2f} before, {row.load_after:.2f} after",
            "",
            "| how | s | MB/s |",
            "| --- | ---: | ---: |",
            f"| through the API (REST upload, then multipart to S3) {rate(row.api_seconds)}",
            f"| obstore `put` (multipart, 8 MiB parts, 4 in flight) {rate(row.obstore_seconds)}",
            f"| `weed filer.copy` (4 MB chunks, 8 in flight) {rate(row.weed_seconds)}",
            "",
            "| API RSS: idle (MiB) | peak during (MiB) | after (MiB) | peak - idle (MiB) |",
            "| ---: | ---: | ---: | ---: |",
            f"| {mib(row.idle_rss)} | {mib(row.peak_rss)} | {mib(row.after_rss)} "
            f"| {mib(row.peak_rss - row.idle_rss)} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=2000.0, help="the file's size (MB, 10^6 bytes)")
    parser.add_argument("--quick", action="store_true", help="a 20 MB file, for CI")
    parser.add_argument("--workdir", type=Path, help="where the file and SeaweedFS go (default: a temp dir)")
    args = parser.parse_args()
    size = int((20.0 if args.quick else args.size_mb) * MB)
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-s3-", dir=args.workdir) as temp:
        row = measure(size, Path(temp))
    print(f"RSS sampled every {SAMPLE_SECONDS * 1000:.0f} ms; {os.cpu_count()} CPUs")
    print()
    print(table(row))


if __name__ == "__main__":
    main()
