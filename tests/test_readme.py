"""The README's runnable blocks, run as written: the tours cannot rot.

A runnable block is a ```console block right after an HTML comment `<!-- run: NAME -->`. Its
`$ ` lines are commands (a line ending in `\\` continues on the next); the other lines are what
they print, stdout and stderr together as a terminal shows them, with `...` matching anything
(within a line, or a line of its own: any number of lines), like doctest's ELLIPSIS.

- `<!-- run: servers -->`: its one command (`tui-backfill demo servers`) is started in the
  background once, in the repository; what it prints is compared until it matches, and its `export` lines are the
  environment of every other block. It is stopped (SIGINT, as Ctrl-C) at the end.
- Any other NAME is a group: its blocks run in README order, each in one bash process, all in
  one temporary directory, with the repository's `.venv/bin` first on PATH. The port 8080 in
  a command is replaced by a free port.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MARKER = re.compile(r"^<!-- run: ([a-z0-9-]+) -->$")
SERVERS = "servers"
GROUPS = ("tour-images", "tour-hash", "tour-publish")  # at least these, in this order
README_LIMIT = 15_000  # bytes
BLOCK_TIMEOUT = 60.0
SEPARATOR = "@@readme-command@@"


@dataclass(frozen=True)
class Command:
    text: str  # the command, continuation lines joined by newlines
    expected: str  # what it prints, `...` a wildcard
    line: int  # its line in the README


@dataclass(frozen=True)
class Block:
    name: str
    line: int
    commands: tuple[Command, ...]


def parse_blocks(text: str) -> list[Block]:
    """Every `<!-- run: NAME -->` + ```console block of a README, in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = MARKER.match(lines[i].strip())
        i += 1
        if not match:
            continue
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines) or lines[i].strip() != "```console":
            raise ValueError(f"README line {i}: a run marker not followed by a ```console block")
        start = i + 1
        i = start
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        blocks.append(Block(match.group(1), start, _commands(lines[start:i], start + 1)))
    return blocks


def _commands(body: list[str], first_line: int) -> tuple[Command, ...]:
    commands: list[Command] = []
    text: list[str] = []
    output: list[str] = []
    line = 0
    continued = False
    for n, row in enumerate(body, first_line):
        if continued:
            text.append(row)
            continued = row.endswith("\\")
        elif row.startswith("$ "):
            if text:
                commands.append(Command("\n".join(text), "\n".join(output), line))
            text, output, line = [row[2:]], [], n
            continued = row.endswith("\\")
        elif not text:
            raise ValueError(f"README line {n}: output before any command in a run block")
        else:
            output.append(row)
    if text:
        commands.append(Command("\n".join(text), "\n".join(output), line))
    return tuple(commands)


def pattern(expected: str) -> re.Pattern[str]:
    """`...` matches anything; a line of its own `...` matches any number of lines."""
    parts: list[str] = []
    for row in expected.rstrip("\n").split("\n"):
        if row.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            pieces = [re.escape(piece) for piece in row.rstrip().split("...")]
            parts.append(r".*?".join(pieces) + r"[ \t]*\n")
    return re.compile("".join(parts), re.DOTALL)


def matches(expected: str, actual: str) -> bool:
    actual = actual.rstrip("\n")
    if not expected.strip():
        return not actual.strip()
    return pattern(expected).fullmatch(actual + "\n") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "TUI_BACKFILL_", "B2_", "RAID_", "ORIGIN_"))
        and name not in ("DATABASE_URL", "CDN_BASE_URL", "MAX_RETRIES", "CONCURRENCY")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "80"
    return env


@dataclass
class Servers:
    exports: list[str]


BLOCKS = parse_blocks(README.read_text())


def _blocks(name: str) -> list[Block]:
    return [block for block in BLOCKS if block.name == name]


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    (block,) = _blocks(SERVERS)
    (command,) = block.commands
    process = subprocess.Popen(
        ["bash", "-c", f"exec {command.text}"],
        cwd=REPO,  # "from this directory", as the README says
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + 30
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    try:
        while not matches(command.expected, seen.decode()):
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(
                    f"README line {command.line}: `{command.text}` printed\n{seen.decode()}\n"
                    f"which does not match\n{command.expected}"
                )
            if selector.select(timeout=0.5):
                seen += os.read(fd, 65536)
        exports = [row for row in seen.decode().splitlines() if row.startswith("export ")]
        assert exports, seen
        yield Servers(exports)
    finally:
        selector.close()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
            try:
                code = process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise
            assert code == 0, process.stdout.read()


def _script(commands: tuple[Command, ...], exports: list[str], port: int) -> str:
    rows = ["exec 2>&1", *exports]
    for command in commands:
        rows += [
            "__rc=$?",
            f"printf '\\n%s\\n' {SEPARATOR}",
            "(exit $__rc)",
            command.text.replace("8080", str(port)),
        ]
    rows += ["__rc=$?", f"printf '\\n%s\\n' {SEPARATOR}"]
    return "\n".join(rows) + "\n"


def run_block(block: Block, cwd: Path, exports: list[str]) -> list[str]:
    """Run a block's commands in one bash process; what each printed."""
    process = subprocess.Popen(
        ["bash", "-c", _script(block.commands, exports, _free_port())],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"README block at line {block.line} ran past {BLOCK_TIMEOUT} s:\n{output}")
    finally:
        # what a block started in the background (`serve ... &`) ends with it
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    pieces = output.split(f"\n{SEPARATOR}\n")
    return [piece.strip("\n") for piece in pieces[1:-1]]


@pytest.mark.parametrize("name", [n for n in dict.fromkeys(b.name for b in BLOCKS) if n != SERVERS])
def test_readme_tour(name: str, servers: Servers, tmp_path: Path) -> None:
    """Each group's blocks, run in order, print what the README shows."""
    for block in _blocks(name):
        printed = run_block(block, tmp_path, servers.exports)
        assert len(printed) == len(block.commands), printed
        for command, actual in zip(block.commands, printed, strict=True):
            assert matches(command.expected, actual), (
                f"README line {command.line}: `{command.text}` printed\n{actual}\n\n"
                f"which does not match what the README shows:\n{command.expected}"
            )


def test_readme_is_short_and_has_its_tours() -> None:
    assert len(README.read_bytes()) < README_LIMIT
    names = [block.name for block in BLOCKS]
    assert names.count(SERVERS) == 1
    assert [name for name in dict.fromkeys(names) if name in GROUPS] == list(GROUPS)
    assert all(block.commands for block in BLOCKS)


def test_readme_links_resolve() -> None:
    """Relative links of the README and docs/ point at files of the repository."""
    for page in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_ellipsis() -> None:
    assert matches("a ... c", "a bb c")
    assert matches("a\n...\nd", "a\nb\nc\nd")
    assert matches("a\n...\nd", "a\nd")
    assert matches("x=...", "x=1\n")
    assert not matches("a ... c", "a bb d")
    assert not matches("a", "a\nb")
    assert matches("", "")
    assert not matches("", "out")


def test_parse_blocks() -> None:
    text = (
        "<!-- run: demo -->\n```console\n$ echo a \\\n  b\na b\n$ true\n```\n"
        "```console\n$ not run\n```\n"
    )
    (block,) = parse_blocks(text)
    assert block.name == "demo"
    assert [c.text for c in block.commands] == ["echo a \\\n  b", "true"]
    assert [c.expected for c in block.commands] == ["a b", ""]


def test_tools_for_the_tours() -> None:
    """The tours use the SQLite shell and curl beside tui-backfill."""
    for tool in ("sqlite3", "curl"):
        assert shutil.which(tool), f"{tool} is needed by the README's tours"


def test_demo_servers_takes_no_demo_options(capsys: pytest.CaptureFixture[str]) -> None:
    from tui_backfill.frontends.cli import main

    assert main(["demo", "servers", "--fresh"]) == 2
    assert capsys.readouterr().err == (
        "tui-backfill: error: --fresh: not an option of `demo servers`\n"
    )
