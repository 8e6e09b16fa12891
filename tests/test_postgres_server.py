"""The throwaway PostgreSQL server of the tests and the demo (tui_backfill/servers/postgres.py)
stops with the process that started it, even when that process is killed before `stop()`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_STARTER = """
import json, sys, time
from tui_backfill.servers.postgres import PostgresServer
server = PostgresServer().start()
print(json.dumps({"port": server.port, "dir": str(server._dir)}), flush=True)
time.sleep(600)
"""


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_server_whose_starter_is_killed_is_stopped_and_removed() -> None:
    starter = subprocess.Popen(
        [sys.executable, "-c", _STARTER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert starter.stdout is not None
        started = json.loads(starter.stdout.readline())
        port, where = started["port"], Path(started["dir"])
        assert _accepts(port) and where.is_dir()
    finally:
        os.kill(starter.pid, signal.SIGKILL)  # no stop(), no atexit: as a timeout's kill
        starter.wait()
    deadline = time.monotonic() + 20
    while (_accepts(port) or where.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _accepts(port), "the server outlived the process that started it"
    assert not where.exists(), "its directory was left behind"
