"""A throwaway PostgreSQL server on loopback, for the tests and the demo.

Debian's server binaries (`initdb`, `pg_ctl`, `psql`: on PATH or under
`/usr/lib/postgresql/*/bin`) on a temporary directory, listening on 127.0.0.1 and a free port,
with durability off (`fsync`, `synchronous_commit`, `full_page_writes`) for speed: about 1 s
from nothing to ready. `initdb` refuses root, so as root the server runs as the `postgres`
user (`runuser -u postgres --`) on a directory it owns.

The superuser `postgres` connects without a password (trust, loopback only); the role
`publisher` needs its password (scram-sha-256), so tests can check that no message leaks it.
`.url` is publisher's URL of database `publish`; `create_database(name)` makes another.

Usable synchronously (`start()`/`stop()`, `with PostgresServer() as pg`). `pg_ctl` runs the
server as a daemon, so a small watchdog process holds one end of a pipe from the process that
started it: when that process ends without `stop()` (a test run killed by a timeout), the pipe
closes and the watchdog stops the server and removes its directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["PostgresError", "PostgresServer", "find_pg_bin"]

# argv: the directory, then the pg_ctl command that stops the server. It waits for its stdin to
# close (the starter's end of the pipe: `stop()`, or the starter's death), then stops the
# server unless `stop()` said it has (a line on stdin), and removes the directory.
_WATCHDOG = """
import shutil, subprocess, sys
said = sys.stdin.buffer.read()
if not said:
    subprocess.run(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


class PostgresError(RuntimeError):
    """The PostgreSQL binaries could not be found, or the server did not start."""


def find_pg_bin() -> Path:
    """The directory holding initdb, pg_ctl and psql (PATH first, then Debian's layout)."""
    found = shutil.which("pg_ctl")
    if found:
        real = Path(os.path.realpath(found)).parent
        if (real / "initdb").exists() and (real / "psql").exists():
            return real
    for candidate in sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    ):
        path = Path(candidate)
        if (path / "pg_ctl").exists() and (path / "initdb").exists():
            return path
    raise PostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
        "/usr/lib/postgresql/*/bin: install Debian's `postgresql` package"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """PostgreSQL on 127.0.0.1 and a free port, in a temporary directory removed on stop."""

    def __init__(
        self,
        *,
        user: str = "publisher",
        database: str = "publish",
        password: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.user = user
        self.database = database
        self.password = password or "pw-" + secrets.token_hex(12)
        self.startup_timeout = startup_timeout
        self.port = 0
        self._bin: Path | None = None
        self._dir: Path | None = None
        self._as: list[str] = []
        self._started = False
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- public -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> Self:
        self._bin = find_pg_bin()
        self._dir = Path(tempfile.mkdtemp(prefix="tui-backfill-pg-", dir="/tmp"))
        try:
            self._prepare()
            self._initdb()
            last = ""
            for _ in range(3):  # a port taken between choosing and binding: choose again
                self.port = _free_port()
                done = self._run(
                    "pg_ctl",
                    "-D",
                    str(self._data),
                    "-l",
                    str(self._dir / "server.log"),
                    "-w",
                    "-t",
                    str(int(self.startup_timeout)),
                    "-o",
                    f"-h 127.0.0.1 -p {self.port} -k {self._dir}"
                    " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                    " -c max_connections=200",
                    "start",
                    check=False,
                )
                if done.returncode == 0:
                    self._started = True
                    self._watch()
                    break
                last = self._log_tail()
            else:
                raise PostgresError(f"PostgreSQL did not start: {last}")
            self.psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}' CREATEDB")
            self.create_database(self.database)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._watchdog is not None:  # stopped here: the watchdog only leaves
            with contextlib.suppress(OSError):
                assert self._watchdog.stdin is not None
                self._watchdog.stdin.write(b"stopped\n")
                self._watchdog.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(timeout=5)
            self._watchdog = None
        if self._started and self._dir is not None:
            self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "stop", check=False)
            self._started = False
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket; its output."""
        done = self._run(
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self._dir),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-At",
            "-c",
            sql,
        )
        return done.stdout

    def create_database(self, name: str) -> str:
        """A fresh database owned by the password role; its URL."""
        self.psql(f"CREATE DATABASE {name} OWNER {self.user}")
        return self.url_for(name)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------------

    def _watch(self) -> None:
        """The watchdog that stops the server if this process ends without `stop()`."""
        assert self._dir is not None and self._bin is not None
        stop = [
            *self._as,
            str(self._bin / "pg_ctl"),
            "-D",
            str(self._data),
            "-m",
            "immediate",
            "stop",
        ]
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self._dir), *stop],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the tests' process group leaves it be
            close_fds=True,
        )

    @property
    def _data(self) -> Path:
        assert self._dir is not None
        return self._dir / "data"

    def _prepare(self) -> None:
        assert self._dir is not None
        if os.geteuid() != 0:
            return
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresError(
                "running as root and no `postgres` user to run the server as"
            ) from None
        os.chown(self._dir, owner.pw_uid, owner.pw_gid)
        os.chmod(self._dir, 0o700)
        runuser = shutil.which("runuser")
        self._as = [runuser, "-u", "postgres", "--"] if runuser else []
        if not self._as:
            raise PostgresError("running as root and `runuser` is missing")

    def _initdb(self) -> None:
        assert self._dir is not None
        self._run(
            "initdb",
            "-D",
            str(self._data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        hba = (
            "local all postgres trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "local all all scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        self._run("sh", "-c", f"cat > {self._data / 'pg_hba.conf'}", stdin=hba, binary=False)

    def _run(
        self,
        program: str,
        *args: str,
        check: bool = True,
        stdin: str | None = None,
        binary: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        exe = str(self._bin / program) if binary and self._bin is not None else program
        env = {**os.environ, "LC_ALL": "C", "PGTZ": "UTC"}
        env.pop("PGPASSWORD", None)
        done = subprocess.run(
            [*self._as, exe, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd="/tmp",
            check=False,
            timeout=self.startup_timeout + 30,
        )
        if check and done.returncode != 0:
            message = " ".join((done.stderr or done.stdout).split())[-500:]
            raise PostgresError(f"{program} failed ({done.returncode}): {message}")
        return done

    def _log_tail(self) -> str:
        assert self._dir is not None
        with contextlib.suppress(OSError):
            lines = (self._dir / "server.log").read_text(errors="replace").splitlines()
            return " | ".join(lines[-5:])
        return "(no server log)"
