"""Shared fixtures: real servers on loopback (no mocked S3 or HTTP clients).

- ``rclone_s3`` / ``moto_s3``: an :class:`S3Target` (endpoint, credentials, bucket
  ``test-bucket``) served by ``rclone serve s3`` or moto's threaded server. Test conditional
  writes (``If-None-Match: *``) against moto: rclone ignores the header.
- ``s3_proxy``: factory ``await s3_proxy(target_or_url, faults=None) -> ReverseProxy``; use
  ``target.via(proxy)`` for an S3Target that goes through it.
- ``s3_env``: AWS_* variables for the rclone target (merge into ``os.environ`` for subprocesses).
- ``origin``: an in-process :class:`OriginServer` (healthy; mutate ``origin.faults``).
- ``ftp_server``: factory ``await ftp_server({"100000_1": b"..."}) -> FtpOrigin``.
- ``catalog_db``: factory ``catalog_db(active, inactive=0, **kw) -> Path``.
- ``make_job`` / ``make_api``: a CLI-driven job; the same with its `serve` process (the HTTP API).

Every server, process and thread is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aioftp
import pytest

from tui_backfill.servers.catalog import make_catalog
from tui_backfill.servers.origin import OriginServer
from tui_backfill.servers.proxy import ProxyFaults, ReverseProxy
from tui_backfill.servers.rclone_s3 import RcloneS3

TEST_BUCKET = "test-bucket"
FTP_USER = "backfill"
FTP_PASSWORD = "s3cret-ftp"


@dataclass(frozen=True)
class S3Target:
    """Where and how to reach an S3-compatible server with a ready bucket."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str = TEST_BUCKET
    region: str = "us-east-1"
    kind: str = "rclone"  # "rclone" or "moto"
    data_dir: Path | None = None  # rclone only: buckets are its subdirectories
    server: Any = field(default=None, compare=False, repr=False)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def via(self, proxy: ReverseProxy) -> S3Target:
        """The same target reached through ``proxy``."""
        return replace(self, endpoint_url=proxy.endpoint_url)

    def client(self, **config: Any) -> Any:
        """A sync boto3 S3 client (tests only), botocore retries off."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(retries={"total_max_attempts": 1}, **config),
        )

    def keys(self, prefix: str = "") -> list[str]:
        """All keys of the bucket under ``prefix`` (sorted as listed)."""
        paginator = self.client().get_paginator("list_objects_v2")
        out: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend(obj["Key"] for obj in page.get("Contents", []))
        return out


@pytest.fixture
def rclone_s3(tmp_path: Path) -> Iterator[S3Target]:
    with RcloneS3(tmp_path / "s3", buckets=[TEST_BUCKET]) as server:
        # `rclone serve s3` can answer 500 when PUTs race to create the first object of a
        # directory (FIELD-NOTES). The tool retries it, but a test asserting the exact errors
        # by code would see it: the default key prefix exists from the start. (Invisible to
        # listings: a directory is no key.)
        (server.data_dir / TEST_BUCKET / "rsr" / "highres").mkdir(parents=True, exist_ok=True)
        yield S3Target(
            endpoint_url=server.endpoint_url,
            access_key=server.access_key,
            secret_key=server.secret_key,
            kind="rclone",
            data_dir=server.data_dir,
            server=server,
        )


@contextlib.contextmanager
def moto_target(server_class: Any = None) -> Iterator[S3Target]:
    """moto's server (``server_class``: a ThreadedMotoServer or a subclass) on 127.0.0.1,
    reset, with the test bucket; stopped on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = (server_class or ThreadedMotoServer)(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # moto's backends are process-global: start every test from an empty state
        urllib.request.urlopen(
            urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10
        ).close()
        target = S3Target(
            endpoint_url=endpoint,
            access_key="testing",
            secret_key="testing",
            kind="moto",
            server=server,
        )
        target.client().create_bucket(Bucket=TEST_BUCKET)
        yield target
    finally:
        _stop_moto(server)


def _stop_moto(server: Any) -> None:
    """``server.stop()`` without its idle half second: werkzeug's serve loop notices a
    shutdown request only every 0.5 s, or when a connection arrives, so connect until it ends."""
    host, port = server.get_host_and_port()
    stopping = threading.Thread(target=server.stop)
    stopping.start()
    while stopping.is_alive():
        with contextlib.suppress(OSError):
            socket.create_connection((host, port), timeout=0.1).close()
        stopping.join(0.01)


@pytest.fixture
def moto_s3() -> Iterator[S3Target]:
    with moto_target() as target:
        yield target


@pytest.fixture
def s3_env(rclone_s3: S3Target) -> dict[str, str]:
    """AWS_* environment for the rclone target: ``env={**os.environ, **s3_env}``."""
    return rclone_s3.env()


@pytest.fixture
async def s3_proxy() -> AsyncIterator[Callable[..., Awaitable[ReverseProxy]]]:
    started: list[ReverseProxy] = []

    async def make(upstream: S3Target | str, faults: ProxyFaults | None = None) -> ReverseProxy:
        url = upstream if isinstance(upstream, str) else upstream.endpoint_url
        proxy = await ReverseProxy(url, faults).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in reversed(started):
        await proxy.stop()


@pytest.fixture
async def origin() -> AsyncIterator[OriginServer]:
    async with OriginServer() as server:
        yield server


@dataclass(frozen=True)
class FtpOrigin:
    host: str
    port: int
    user: str
    password: str
    root: Path
    server: aioftp.Server = field(repr=False)

    @property
    def url_template(self) -> str:
        """With credentials in the URL."""
        return f"ftp://{self.user}:{self.password}@{self.host}:{self.port}/{{sku}}_{{angle}}"

    @property
    def bare_url_template(self) -> str:
        """Without credentials (give them as ORIGIN_USERNAME / ORIGIN_PASSWORD)."""
        return f"ftp://{self.host}:{self.port}/{{sku}}_{{angle}}"


@pytest.fixture
async def ftp_server(
    tmp_path: Path,
) -> AsyncIterator[Callable[[dict[str, bytes]], Awaitable[FtpOrigin]]]:
    started: list[aioftp.Server] = []

    async def make(files: dict[str, bytes]) -> FtpOrigin:
        root = tmp_path / f"ftp{len(started)}"
        root.mkdir()
        for name, data in files.items():
            (root / name).write_bytes(data)
        user = aioftp.User(
            FTP_USER,
            FTP_PASSWORD,
            base_path=root,
            permissions=[aioftp.Permission("/", readable=True, writable=False)],
        )
        server = aioftp.Server([user], socket_timeout=30, idle_timeout=30)
        started.append(server)
        await server.start(host="127.0.0.1", port=0)
        _, port = server.address
        return FtpOrigin("127.0.0.1", port, FTP_USER, FTP_PASSWORD, root, server)

    yield make
    for server in reversed(started):
        await server.close()


@pytest.fixture
def catalog_db(tmp_path: Path) -> Callable[..., Path]:
    count = 0

    def make(active: int, inactive: int = 0, **kwargs: Any) -> Path:
        nonlocal count
        count += 1
        path = tmp_path / f"catalog{count}.sqlite3"
        make_catalog(path, active, inactive, **kwargs)
        return path

    return make


@pytest.fixture
async def make_job(
    tmp_path: Path,
    rclone_s3: S3Target,
    s3_proxy: Any,
    origin: OriginServer,
    catalog_db: Callable[..., Path],
) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await make_job(active_skus, **kw)``: a CLI-driven job (tests/helpers.Backfill) over
    rclone behind the counting proxy, the origin and a fresh catalog; closed at teardown."""
    from helpers import Backfill, new_backfill

    jobs: list[Backfill] = []

    async def make(active: int, **kwargs: Any) -> Backfill:
        job = await new_backfill(
            tmp_path,
            origin=origin,
            proxy=await s3_proxy(rclone_s3),
            direct=rclone_s3,
            catalog=catalog_db(active, 10),
            **kwargs,
        )
        jobs.append(job)
        return job

    try:
        yield make
    finally:
        for job in jobs:
            await job.close()


@pytest.fixture
async def make_api(make_job: Any) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await make_api(active_skus, limit=..., token=..., extra=...)``: a job
    (tests/helpers.Backfill) and a client (tests/helpers.Api) of its `serve` process, stopped
    with SIGTERM at teardown. ``index_db=PATH``: the job is a hash-index job named
    ``hash-index`` over the test bucket with that index file (``--limit`` does not apply)."""
    import aiohttp
    from helpers import Api, Backfill, Running, served_url

    sessions: list[aiohttp.ClientSession] = []
    procs: list[Running] = []

    async def make(
        active: int,
        *,
        limit: int = 2000,
        token: str = "",
        extra: tuple[str, ...] = (),
        index_db: Path | None = None,
    ) -> tuple[Backfill, Api]:
        job = await make_job(active)
        if token:
            original = job.env
            job.env = lambda: {**original(), "TUI_BACKFILL_API_TOKEN": token}  # type: ignore[method-assign]
        if index_db is None:
            flags = job.run_flags(limit=limit)
        else:
            job.job = "hash-index"
            flags = job.hash_flags(index_db)
        proc = await job.start("serve", *flags, "--port", "0", *extra)
        procs.append(proc)
        url = await served_url(proc)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=120))
        sessions.append(session)
        return job, Api(url, proc, session)

    try:
        yield make
    finally:
        for session in sessions:
            await session.close()
        for proc in procs:
            if proc.alive:
                proc.signal(signal.SIGTERM)
                await proc.wait(30)


# -- PostgreSQL (the publish queue) --------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One PostgreSQL server for the session (tui_backfill.servers.postgres); fails loudly when
    the binaries are missing (CI installs Debian's `postgresql`)."""
    from tui_backfill.servers.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


_pg_databases = iter(range(1, 1_000_000))


@pytest.fixture
def pg_url(postgres_server: Any) -> str:
    """A fresh, empty database on the session's server, owned by the password role: its URL."""
    return str(postgres_server.create_database(f"t{next(_pg_databases)}"))
