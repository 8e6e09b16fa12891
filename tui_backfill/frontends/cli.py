"""The command line: run, hash-index, publish, status, runs, failed, pause, resume, attach,
coverage, serve, demo.

Startup stays light: `status`, `runs`, `pause` and `--help` import neither botocore nor
textual. Every problem found before work starts is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from tui_backfill import __version__
from tui_backfill.core.records import Command
from tui_backfill.frontends.helptext import HelpFormatter, example, with_default
from tui_backfill.frontends.logs import log_to_stderr
from tui_backfill.frontends.running import (
    EXIT_OK,
    EXIT_PAUSED,
    EXIT_USAGE,
    has_terminal,
    port_number,
    quiet_stdout,
    run_console,
    run_headless,
    wants_console,
)
from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.config import (
    BY_NAME,
    DEFAULT_STATE,
    OPTIONS,
    PIPELINE_DEFAULTS,
    Option,
    Resolved,
    resolve,
)

if TYPE_CHECKING:  # imported lazily at run time: startup stays light
    from tui_backfill.core.records import FailedItem
    from tui_backfill.core.store import JobStore
    from tui_backfill.frontends.status import JobStatus


LISTINGS = ("status", "runs", "failed", "coverage")  # commands that only print


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        # `--conc 2` is no `--concurrency 2`: an abbreviation that works today would name
        # another option, or none, once an option with the same start is added
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # One line, exit 2 (argparse prints the whole usage otherwise).
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# Options of the image job alone: the hash-index command does not offer them.
IMAGE_ONLY = frozenset(
    {
        "limit_skus", "angles", "only_missing", "skus_file", "skus_db", "skus_query",
        "origin", "origin_endpoint_url", "origin_region", "origin_path_style", "origin_profile",
        "key_template", "exists_check", "max_bandwidth",
    }
)  # fmt: skip
# ...and the other way round: `run` and `serve` accept them (a job of pipeline hash-index runs
# and is served by them), and list them in `hash-index --help`.
HASH_ONLY = frozenset(
    {
        "prefix", "index_db", "index_table", "uploader_id", "emit_sql", "since", "verify",
        "repair", "mismatch_file", "limit_objects",
    }
)  # fmt: skip
# What `coverage` reads of a job's settings: the catalog, angles, key template and bucket.
COVERAGE_OPTIONS = (
    "skus_file", "skus_db", "skus_query", "angles", "key_template",
    "bucket", "endpoint_url", "region", "path_style", "timeout",
)  # fmt: skip
HASH_HELP = {
    "bucket": "the bucket whose objects are hashed (nothing is ever written to it)",
    "checkpoint_every": "persist the checkpoint at least every N objects",
    "concurrency": "parallel object GETs",
    "max_concurrency": "highest --concurrency allowed",
    "upload_concurrency": "parallel listings and other S3 calls beside the GETs",
    "timeout": "seconds to the first byte of an answer, and of each idle gap in a body",
}
COVERAGE_HELP = {
    "timeout": "hard timeout of one S3 listing call, seconds",
    "bucket": "the bucket to list",
}
METAVARS = {
    "pipeline": "NAME", "angles": "SPEC", "skus_file": "PATH", "skus_db": "PATH",
    "skus_query": "SQL", "origin": "URL_TEMPLATE", "origin_endpoint_url": "URL",
    "origin_region": "NAME", "origin_profile": "NAME", "bucket": "NAME", "endpoint_url": "URL",
    "region": "NAME", "key_template": "TEMPLATE", "exists_check": "{list,head}",
    "max_bandwidth": "BYTES_PER_S", "prefix": "P", "index_db": "PATH", "index_table": "NAME",
    "uploader_id": "ID", "emit_sql": "FILE", "since": "ISO-8601", "mismatch_file": "FILE",
    "notify_url": "URL",
}  # fmt: skip
SETTINGS_NOTE = (
    "Each option --foo-bar is also TUI_BACKFILL_FOO_BAR in the environment and foo_bar in the "
    "--config file (top level, or under [jobs.NAME]); a flag wins over the environment, which "
    "wins over the file."
)


def _metavar(option: Option) -> str:
    if option.kind is int:
        return "N"
    if option.kind is float:
        return "SECONDS"
    return METAVARS.get(option.name, option.name.upper())


class _Unbuilt:
    """The options of a command that this invocation does not run, taken and dropped (see
    `build_parser`)."""

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        return None

    def add_mutually_exclusive_group(self, **kwargs: Any) -> _Unbuilt:
        return self

    def add_argument_group(self, *args: Any, **kwargs: Any) -> _Unbuilt:
        return self


def _command(
    commands: Any, name: str, text: str, examples: Sequence[str], description: str = ""
) -> argparse.ArgumentParser:
    """A subcommand with its one line in the list, its description and its example; only its
    name when `build_parser` was asked for another command alone."""
    if commands.only not in (None, name):
        commands.add_parser(name)
        return _Unbuilt()  # type: ignore[return-value]  # (takes what a parser is given)
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=text,
        description=description or text[:1].upper() + text[1:] + ".",
        epilog=example(*examples),
    )
    return parser


def _add_job_state(parser: argparse.ArgumentParser, default_job: str = "default") -> None:
    parser.add_argument("--job", metavar="NAME", help=with_default("job name", default_job))
    parser.add_argument("--state", metavar="PATH", help=with_default("state file", DEFAULT_STATE))
    parser.add_argument(
        "--config", metavar="FILE", help="TOML configuration file (its [jobs.NAME] settings)"
    )


def _add_options(
    parser: argparse.ArgumentParser,
    names: Collection[str],
    *,
    hash_index: bool = False,
    hidden: Collection[str] = (),
    texts: Mapping[str, str] | None = None,
) -> None:
    """OPTIONS of `names`, in their order, each with its default (the hash index's for
    `hash_index`); `hidden` ones are accepted but not listed."""
    defaults = PIPELINE_DEFAULTS["hash-index"] if hash_index else {}
    for option in OPTIONS:
        if option.name not in names:
            continue
        text = (texts or {}).get(option.name, option.help)
        if hash_index:
            text = text.removeprefix("hash index: ").removeprefix("hash index, ")
        default = defaults.get(option.name, option.default)
        if option.name in hidden:
            text = argparse.SUPPRESS
        else:
            text = with_default(text, None if default == "" else default)
        if option.kind is bool:
            parser.add_argument(
                option.flag, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            parser.add_argument(option.flag, default=None, metavar=_metavar(option), help=text)


def _add_run_options(parser: argparse.ArgumentParser, *, hash_index: bool = False) -> None:
    names = [o.name for o in OPTIONS if o.name not in ("job", "state")]
    if hash_index:  # --pipeline is accepted (the flags of `serve`), never another pipeline
        names = [n for n in names if n not in IMAGE_ONLY]
        _add_options(parser, names, hash_index=True, texts=HASH_HELP, hidden=("pipeline",))
    else:
        _add_options(parser, names, hidden=HASH_ONLY)
    _add_run_flags(parser, hash_index=hash_index)


def _add_run_flags(parser: argparse.ArgumentParser, *, hash_index: bool) -> None:
    parser.add_argument(
        "--no-ui", action="store_true", help="headless: progress on stderr, final JSON on stdout"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list and apply the skip rule; no download, nothing written (reports wouldUpdate)"
        if hash_index
        else "plan and check existence; no download, no upload",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="abandon an unfinished run and start a new one"
    )
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="start the new run at the first key (not after a --limit-objects run's end)"
        if hash_index
        else "start the new run at the first SKU (not after the last run's end)",
    )
    parser.add_argument(
        "--serve", metavar="PORT", help="headless, with the HTTP control API on 127.0.0.1:PORT"
    )


def _add_plan_file(parser: argparse.ArgumentParser, lines: str) -> None:
    parser.add_argument(
        "--plan-file",
        metavar="PATH",
        help=f"with --dry-run: write what a run would do, one {lines} KEY line per item",
    )


COMMANDS = (
    "run", "hash-index", "status", "runs", "failed", "pause", "resume", "attach", "serve",
    "coverage", "publish", "demo",
)  # fmt: skip


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line. With `only` (one of COMMANDS), that command's options alone are
    built, the others by name: the same parse of a command line naming it, in a tenth of the
    time (all of them cost about 25 ms, a start-up's share that `status` in a loop pays)."""
    parser = _Parser(
        prog="tui-backfill",
        description="Fill an S3-compatible bucket from an origin, resumably.",
        epilog=example("tui-backfill demo", "tui-backfill run --help"),
    )
    parser.add_argument("--version", action="version", version=f"tui-backfill {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, metavar="COMMAND", title="commands"
    )
    commands.only = only if only in COMMANDS else None  # type: ignore[attr-defined]
    run = _command(
        commands,
        "run",
        "run (or continue) the backfill job",
        [
            "tui-backfill run --skus-file skus.txt --bucket images \\",
            "    --origin 'https://img.example.com/{sku}_{angle}.jpg' --limit-skus 500",
        ],
        description="Run the job, or continue its unfinished run: the console on a terminal, "
        "headless otherwise or with --no-ui. A job whose pipeline is hash-index (pipeline = "
        '"hash-index" in the --config file) also takes the options of `tui-backfill hash-index '
        "--help`, with that command's defaults.\n\n" + SETTINGS_NOTE,
    )
    _add_job_state(run)
    _add_run_options(run)
    _add_plan_file(run, "fetch/skip")

    hash_index = _command(
        commands,
        "hash-index",
        "fill the content_hash of an index table from the objects of a bucket",
        ["tui-backfill hash-index --bucket media --index-db index.sqlite3 --no-ui"],
        description="List the bucket in key order, hash each object (SHA-256) and upsert "
        "content_hash into the index table; resumable, idempotent (the skip rule), verifiable."
        "\n\n" + SETTINGS_NOTE,
    )
    _add_job_state(hash_index, default_job="hash-index")
    _add_run_options(hash_index, hash_index=True)
    _add_plan_file(hash_index, "hash/skip")

    status = _command(
        commands,
        "status",
        "show the job's status snapshot",
        ["tui-backfill status --job images --json"],
        description="The status of the job's latest run, live or after it ended (a publish "
        "job: its queue and live workers, as `publish status`).",
    )
    _add_job_state(status)
    status.add_argument("--json", action="store_true", help="the snapshot as JSON")

    runs = _command(
        commands,
        "runs",
        "past runs of the job: outcome, counters, coverage",
        ["tui-backfill runs --job images --limit 5"],
    )
    _add_job_state(runs)
    runs.add_argument("--json", action="store_true", help="the run history as JSON")
    runs.add_argument(
        "--limit", type=int, default=20, metavar="N", help=with_default("the newest N runs", 20)
    )

    failed = _command(
        commands,
        "failed",
        "the job's failed items (retried first by its next run); forget them",
        ["tui-backfill failed --job images", "tui-backfill failed --job images --forget KEY"],
    )
    _add_job_state(failed)
    failed.add_argument("--json", action="store_true", help='{"job": ..., "items": [...]}')
    forget = failed.add_mutually_exclusive_group()
    forget.add_argument(
        "--forget", metavar="KEY", help="drop the failed item with this destination key"
    )
    forget.add_argument("--forget-all", action="store_true", help="drop every failed item")

    pause = _command(
        commands,
        "pause",
        "gracefully stop a running job (it exits 75, resumable)",
        ["tui-backfill pause --job images"],
    )
    _add_job_state(pause)
    pause.add_argument("--no-wait", action="store_true", help="return once the request is sent")
    pause.add_argument(
        "--worker", metavar="ID", help="a publish job: one instance's id (default: all)"
    )

    resume = _command(
        commands,
        "resume",
        "continue a paused or interrupted run",
        ["tui-backfill resume --job images --no-ui"],
        description="Continue the job's paused or interrupted run with its stored settings "
        "(secrets are read again from the environment); release a run held by a console. Only "
        "the pace may change.",
    )
    _add_job_state(resume)
    resume.add_argument(
        "--no-ui", action="store_true", help="headless: progress on stderr, final JSON on stdout"
    )
    resume.add_argument(
        "--worker", metavar="ID", help="a publish job: one instance's id (default: all)"
    )
    for name in ("concurrency", "max_concurrency", "timeout", "max_bandwidth"):
        option = BY_NAME[name]
        resume.add_argument(
            option.flag,
            default=None,
            metavar=_metavar(option),
            help=with_default(option.help, "the run's own"),
        )
    resume.add_argument(
        "--progress-interval",
        default=None,
        metavar="SECONDS",
        help=with_default(BY_NAME["progress_interval"].help, BY_NAME["progress_interval"].default),
    )
    resume.add_argument(
        "--notify-url",
        default=None,
        metavar="URL",
        help="POST the final status as JSON here when the run ends; a run started with one "
        "needs it again (a secret: never stored)",
    )
    resume.add_argument(
        "--serve", metavar="PORT", help="headless, with the HTTP control API on 127.0.0.1:PORT"
    )

    attach = _command(
        commands,
        "attach",
        "the console over a run going on in another process",
        ["tui-backfill attach --job images", "tui-backfill attach --url http://127.0.0.1:8080"],
    )
    _add_job_state(attach)
    attach.add_argument(
        "--url", help="a serving process's API (run --serve, serve) instead of the state file"
    )

    serve = _command(
        commands,
        "serve",
        "the HTTP control API: start, watch, pause and resume the job remotely",
        ["tui-backfill serve --config backfill.toml --job images --port 8080"],
        description="The HTTP control API of one job until SIGINT or SIGTERM: a run it "
        "started then pauses at its checkpoint. POST .../run sets limitSkus, angles, "
        "concurrency, onlyMissing, dryRun, fresh and fromStart. A hash-index job "
        "(--pipeline hash-index) also takes the options of `tui-backfill hash-index --help`."
        "\n\n" + SETTINGS_NOTE,
    )
    _add_job_state(serve)
    names = [o.name for o in OPTIONS if o.name not in ("job", "state", "progress_interval")]
    _add_options(serve, names, hidden=HASH_ONLY)
    serve.add_argument(
        "--host", default="127.0.0.1", help=with_default("address to bind", "127.0.0.1")
    )
    serve.add_argument(
        "--port", default="8080", metavar="N", help=with_default("port (0: a free one)", 8080)
    )

    coverage = _command(
        commands,
        "coverage",
        "how many expected objects exist; write the gap",
        ["tui-backfill coverage --job images --gap-file gap.txt"],
        description="Coverage of the whole catalog: expected objects (SKUs x angles) against "
        "one listing of the bucket; nothing is fetched or written. Settings not given come "
        "from the job's latest run. A hash-index job: the index table's coverage.",
    )
    _add_job_state(coverage)
    _add_options(coverage, COVERAGE_OPTIONS, texts=COVERAGE_HELP)
    coverage.add_argument("--json", action="store_true", help="the report as JSON")
    coverage.add_argument("--gap-file", metavar="PATH", help="write the missing keys, one per line")
    coverage.add_argument(
        "--fillable-file",
        metavar="PATH",
        help="write the missing keys not known to be absent at the origin (404), one per line",
    )

    if commands.only in (None, "publish"):  # type: ignore[attr-defined]
        from tui_backfill.frontends.publish import add_publish_parser

        add_publish_parser(commands, _Parser)
    else:
        commands.add_parser("publish")

    demo = _command(
        commands,
        "demo",
        "self-contained demo: local S3 server, origin and catalog (or: demo hash-index, demo "
        "publish)",
        ["tui-backfill demo", "tui-backfill demo hash-index --no-ui"],
        description="A job on embedded servers, nothing to configure. `demo` (or `demo images`): "
        "the image backfill (state/demo.sqlite3, job demo). `demo hash-index`: the content-hash "
        "index over a local bucket of 3,000 objects and an index with gaps "
        "(state/demo-hash.sqlite3, job demo-hash). `demo publish`: the media publishing worker "
        "on a SQLite queue of 300 files (state/demo-publish). Run it again to continue. "
        "`demo servers`: only the servers, for the README's tours: prints the `export` lines "
        "that point tui-backfill at them and serves until Ctrl-C.",
    )
    demo.add_argument(
        "which",
        nargs="?",
        choices=DEMOS,
        default="images",
        help=with_default("which demo", "images"),
    )
    demo.add_argument(
        "--no-ui", action="store_true", help="headless: progress on stderr, final JSON on stdout"
    )
    demo.add_argument(
        "--fresh", action="store_true", help="start the demo over (wipe its bucket and state)"
    )
    demo.add_argument(
        "--limit-skus",
        type=int,
        default=None,
        metavar="N",
        help=with_default("images: SKUs of this run", BY_NAME["limit_skus"].default),
    )
    demo.add_argument(
        "--dry-run", action="store_true", help="hash-index: plan only; no download, no write"
    )
    demo.add_argument(
        "--verify", action="store_true", help="hash-index: re-hash every hashed object, compare"
    )
    demo.add_argument(
        "--repair", action="store_true", help="hash-index, with --verify: fix mismatched hashes"
    )
    demo.add_argument(
        "--mismatch-file", metavar="F", help="hash-index, with --verify: CSV of mismatches"
    )
    demo.add_argument(
        "--since", metavar="ISO-8601", help="hash-index: only objects modified at or after"
    )
    demo.add_argument(
        "--limit-objects",
        type=int,
        metavar="N",
        help="hash-index: objects of this run (default: all)",
    )
    demo.add_argument("--emit-sql", metavar="F", help="hash-index: also write the upserts as SQL")
    demo.add_argument(
        "--files", type=int, metavar="N", help="publish: photos in the demo's store (default: 300)"
    )
    return parser


DEMOS = ("images", "hash-index", "publish", "servers")
DEMO_HASH_ONLY = (
    "dry_run",
    "verify",
    "repair",
    "mismatch_file",
    "since",
    "limit_objects",
    "emit_sql",
)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.which == "servers":
        for name in (*DEMO_HASH_ONLY, "limit_skus", "files", "no_ui", "fresh"):
            if getattr(args, name) not in (None, False):
                raise ConfigError("--" + name.replace("_", "-"), "not an option of `demo servers`")
        from tui_backfill.frontends.demo_servers import run_demo_servers

        return run_demo_servers()
    if args.which == "publish":
        for name in (*DEMO_HASH_ONLY, "limit_skus"):
            if getattr(args, name) not in (None, False):
                raise ConfigError("--" + name.replace("_", "-"), "not an option of `demo publish`")
        from tui_backfill.frontends.demo_publish import DEMO_FILES, run_demo_publish

        files = DEMO_FILES if args.files is None else args.files
        if not 1 <= files <= 10_000:
            raise ConfigError("--files", f"{files}: accepted 1 to 10000")
        return run_demo_publish(no_ui=args.no_ui, fresh=args.fresh, files=files)
    if args.files is not None:
        raise ConfigError("--files", "only for `demo publish`")
    if args.which == "hash-index":
        if args.limit_skus is not None:
            raise ConfigError(
                "--limit-skus", "only for the image demo; hash-index: --limit-objects"
            )
        from tui_backfill.frontends.demo_hash import run_demo_hash

        return run_demo_hash(
            no_ui=args.no_ui,
            fresh=args.fresh,
            dry_run=args.dry_run,
            verify=args.verify,
            repair=args.repair,
            mismatch_file=args.mismatch_file,
            since=args.since,
            limit_objects=args.limit_objects,
            emit_sql=args.emit_sql,
        )
    for name in DEMO_HASH_ONLY:
        if getattr(args, name) not in (None, False):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(flag, "only for `demo hash-index`, not the image demo")
    from tui_backfill.frontends.demo import run_demo

    return int(run_demo(no_ui=args.no_ui, limit_skus=args.limit_skus, fresh=args.fresh))


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    flags = {option.name: getattr(args, option.name, None) for option in OPTIONS}
    if args.command == "hash-index":
        if flags.get("pipeline") not in (None, "hash-index"):
            raise ConfigError("--pipeline", "the hash-index command runs pipeline hash-index")
        flags["pipeline"] = "hash-index"
    pipeline = flags.get("pipeline") or os.environ.get("TUI_BACKFILL_PIPELINE")
    if pipeline == "hash-index" and not flags.get("job") and not os.environ.get("TUI_BACKFILL_JOB"):
        # a hash-index job's default name, for `run` and `serve --pipeline hash-index` too
        flags["job"] = "hash-index"
    return flags


def _resolve(args: argparse.Namespace) -> Resolved:
    resolved = resolve(_flags(args), config=getattr(args, "config", None))
    if args.command == "hash-index":
        resolved.explicit["pipeline"] = "--job"  # given by the command: a clash is the job's
    return resolved


def console() -> NoReturn:
    """The `tui-backfill` command (and `python -m tui_backfill`): `main`, then the exit.

    When nothing but this program is left to clean up, the process ends at once with its
    output flushed and its log shut, as mypy's `hard_exit` does: freeing the interpreter's
    objects one by one (botocore's service model and the rest) costs about 0.1 s at every
    exit. Anything else gets a normal exit: a thread still running, an exit hook besides
    logging's (a sitecustomize's, coverage's, one a command registered), a profiler or tracer
    (`python -m cProfile -m tui_backfill`). Callers of `main` (the tests) exit normally.
    """
    code = main()
    if not _nothing_else_to_end():
        raise SystemExit(code)
    logging.shutdown()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: started with that stream closed
                stream.flush()
    except (OSError, ValueError):  # a closed pipe or stream: the normal exit's handling
        raise SystemExit(code) from None
    os._exit(code)


def _nothing_else_to_end() -> bool:
    """No thread but this one, no profiler or tracer, and no exit hook but logging's (which
    `import logging` registers, and console() runs itself)."""
    count = getattr(atexit, "_ncallbacks", None)  # CPython's; elsewhere: a normal exit
    return (
        callable(count)
        and count() == 1
        and threading.active_count() == 1
        and sys.gettrace() is None
        and sys.getprofile() is None
    )


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(only=words[0] if words else None).parse_args(words)
    try:
        if args.command == "publish" or _publish_job(args):
            from tui_backfill.frontends.publish import generic_command, main_publish

            return main_publish(args) if args.command == "publish" else generic_command(args)
        if getattr(args, "worker", None):
            raise ConfigError("--worker", "only for a publish job's instances (--job publish)")
        if args.command in ("run", "hash-index"):
            return _cmd_run(args)
        if args.command == "resume":
            return _cmd_resume(args)
        if args.command == "attach":
            return _cmd_attach(args)
        if args.command == "serve":
            return _cmd_serve(args)
        if args.command == "status":
            return asyncio.run(_cmd_status(args))
        if args.command == "runs":
            return asyncio.run(_cmd_runs(args))
        if args.command == "failed":
            return asyncio.run(_cmd_failed(args))
        if args.command == "pause":
            return asyncio.run(_cmd_pause(args))
        if args.command == "coverage":
            return asyncio.run(_cmd_coverage(args))
        if args.command == "demo":
            return _cmd_demo(args)
    except ConfigError as exc:
        print(f"tui-backfill: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_PAUSED
    except BrokenPipeError:
        # `failed | head`: the listing's reader has all it wanted (a run's own exit code is
        # kept by running.py, which catches it around its final output)
        quiet_stdout()
        if args.command in LISTINGS:
            return EXIT_OK
        raise
    raise AssertionError(args.command)


def _publish_job(args: argparse.Namespace) -> bool:
    """`status|pause|resume|runs --job publish`: the publish job lives in its queue database."""
    if args.command not in ("status", "pause", "resume", "runs"):
        return False
    from tui_backfill.frontends.publish import PUBLISH_JOB

    return (args.job or os.environ.get("TUI_BACKFILL_JOB")) == PUBLISH_JOB


# -- run / resume ---------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from tui_backfill.pipelines.prepare import RunRequest

    resolved = _resolve(args)
    if args.plan_file is not None:
        from tui_backfill.pipelines.plan_file import check_plan_file, run_inputs

        if not args.dry_run:  # a plan is what a run would do: a real run has none to write
            raise ConfigError("--plan-file", "only with --dry-run (it lists what a run would do)")
        inputs = run_inputs(resolved.settings, resolved.explicit, getattr(args, "config", None))
        check_plan_file(args.plan_file, inputs)  # before the state is even opened
    request = RunRequest(
        resolved,
        dry_run=args.dry_run,
        fresh=args.fresh,
        from_start=args.from_start,
        plan_file=args.plan_file,
    )
    serve = _serve_port(args)
    if serve is None and not args.dry_run and wants_console(args.no_ui):
        return asyncio.run(run_console(request))
    return asyncio.run(run_headless(request, serve=serve))


def _serve_port(args: argparse.Namespace) -> int | None:
    """`--serve PORT`: the API for this headless run (the token rules of `serve` apply)."""
    if args.serve is None:
        return None
    if getattr(args, "dry_run", False):
        raise ConfigError("--serve", "a dry run is not served; drop --serve or --dry-run")
    return port_number(args.serve, "--serve")


def _cmd_attach(args: argparse.Namespace) -> int:
    if not has_terminal():
        raise ConfigError(
            "attach", "needs a terminal (use `status` or `status --json` without one)"
        )
    if args.url:
        return asyncio.run(attach_url(args.url, job=args.job))
    state, job = _job_state(args)
    return asyncio.run(attach_console(state, job))


async def attach_url(url: str, job: str | None = None) -> int:

    from tui_backfill.frontends.api import TOKEN_ENV
    from tui_backfill.frontends.ui.app import BackfillApp
    from tui_backfill.frontends.ui.controller import HttpController

    if not url.startswith(("http://", "https://")):
        raise ConfigError("--url", f"{url!r}: expected http(s)://host:port")
    controller = HttpController(url, token=os.environ.get(TOKEN_ENV, ""), job=job)
    try:
        await controller.check()
        await BackfillApp(controller).run_async()
    finally:
        await controller.close()
    return EXIT_OK


async def attach_console(state: str, job: str) -> int:
    from tui_backfill.frontends.ui.app import BackfillApp
    from tui_backfill.frontends.ui.controller import AttachedController
    from tui_backfill.state.sqlite import open_state

    async with open_state(state, check=True) as store:
        if await store.latest_run(job, include_dry=False) is None:
            raise await _no_runs(store, state, job)
        app = BackfillApp(AttachedController(store, state, job))
        await app.run_async()
    return EXIT_OK


def _cmd_resume(args: argparse.Namespace) -> int:
    from tui_backfill.pipelines.prepare import RunRequest
    from tui_backfill.state.lock import JobLock

    resolved = _resolve(args)
    holder = JobLock(resolved.settings.state, resolved.settings.job).holder()
    if holder is not None:
        # A live process holds the run (paused in place by a console): release it.
        asyncio.run(_send(resolved.settings.state, resolved.settings.job, Command.RESUME))
        print(
            f"resume sent to job {resolved.settings.job!r} running in process {holder}",
            file=sys.stderr,
        )
        return EXIT_OK
    request = RunRequest(resolved, resume_only=True)
    serve = _serve_port(args)
    if serve is None and wants_console(args.no_ui):
        return asyncio.run(run_console(request))
    return asyncio.run(run_headless(request, serve=serve))


# -- serve ----------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:

    from tui_backfill.frontends.api import check_bind
    from tui_backfill.pipelines.config import validate_for_run
    from tui_backfill.seams.sources import check_source

    port = port_number(args.port, "--port")
    token = check_bind(args.host, os.environ)
    resolved = _resolve(args)
    validate_for_run(resolved.settings, resolved.explicit)  # by the job's pipeline
    if resolved.settings.pipeline == "mirror":  # the image job's catalog (the hash index lists)
        check_source(resolved.settings)
    return asyncio.run(serve_api(resolved, host=args.host, port=port, token=token))


async def serve_api(resolved: Resolved, *, host: str, port: int, token: str) -> int:
    """The control API until SIGINT/SIGTERM; a run it started then pauses at its checkpoint."""
    from tui_backfill.frontends.api import ApiServer
    from tui_backfill.frontends.service import JobService

    log_to_stderr()
    service = JobService(resolved)
    server = await ApiServer(service, host=host, port=port, token=token).start()
    job = resolved.settings.job
    from tui_backfill.core.textfit import pack, stream_columns

    said = [
        f"tui-backfill: serving job {job!r} on {server.url}",
        f"(OpenAPI at {server.url}/api/openapi.json)",
    ]
    print("\n".join(pack(said, stream_columns(), sep=" ")), file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        if service.live:
            print("tui-backfill: stopping; the run pauses at its checkpoint", file=sys.stderr)
        await service.close()
        await server.stop()
    return EXIT_OK


# -- status / pause -------------------------------------------------------------------------


def _job_state(args: argparse.Namespace) -> tuple[str, str]:
    settings = _resolve(args).settings
    return settings.state, settings.job


async def status_snapshot(state: str, job: str) -> JobStatus:
    """The status of the job's latest run, marked live or not."""
    from tui_backfill.frontends.status import job_status
    from tui_backfill.state.sqlite import open_state

    async with open_state(state, check=True) as store:
        status = await job_status(store, state, job)
        if status is None:
            raise await _no_runs(store, state, job)
    return status


async def _no_runs(store: Any, state: str, job: str) -> ConfigError:
    """`job` has no runs in `state`: the error, naming the jobs that do (the default job is
    `default`, and a hash-index run's is `hash-index`: an operator may not know it)."""
    others = [name for name in await store.jobs() if name != job]
    hint = f"; jobs there: {', '.join(others[:10])} (give --job)" if others else ""
    return ConfigError("--job", f"job {job!r} has no runs in {state}{hint}")


async def _cmd_status(args: argparse.Namespace) -> int:
    from tui_backfill.frontends.headless import status_text

    state, job = _job_state(args)
    status = await status_snapshot(state, job)
    print(json.dumps(status.to_json(), indent=2) if args.json else status_text(status))
    return EXIT_OK


async def _cmd_runs(args: argparse.Namespace) -> int:
    from tui_backfill.frontends.history import history_text, run_history
    from tui_backfill.state.sqlite import open_state

    if args.limit < 1:
        raise ConfigError("--limit", f"{args.limit}: accepted a positive number of runs")
    state, job = _job_state(args)
    async with open_state(state, check=True) as store:
        entries = await run_history(store, job, limit=args.limit, state_path=state)
        if not entries:
            raise await _no_runs(store, state, job)
    if args.json:
        print(json.dumps({"job": job, "runs": entries}, indent=2))
    else:
        print(history_text(entries))
    return EXIT_OK


# -- failed items ---------------------------------------------------------------------------


async def _cmd_failed(args: argparse.Namespace) -> int:
    """List the job's failed items, or forget some: a failed item is retried first by every
    later run until it succeeds, which a `bad_sku` never does; the operator decides."""
    from tui_backfill.state.sqlite import open_state

    state, job = _job_state(args)
    async with open_state(state, check=True) as store:
        if args.forget is not None or args.forget_all:
            return await _forget_failed(store, state, job, args)
        items = await store.failed_items(job)
        if not items and await store.latest_run(job) is None:
            raise await _no_runs(store, state, job)
    _print_failed(job, items, as_json=args.json)
    return EXIT_OK


def _print_failed(job: str, items: list[FailedItem], *, as_json: bool) -> None:
    from tui_backfill.core.textfit import terminal_columns
    from tui_backfill.frontends.status import failed_items_json

    if as_json:
        print(json.dumps({"job": job, "items": failed_items_json(items)}, indent=2))
        return
    if not items:
        print(f"job {job!r} has no failed items")
        return
    print(failed_text(items, terminal_columns()))


def failed_text(items: list[FailedItem], width: int) -> str:
    """A table within `width`: key, code, attempts, run; each message below its item,
    indented and wrapped (a key too long for its column gets a line of its own)."""
    from tui_backfill.core.textfit import pack
    from tui_backfill.seams.keys import visible

    code = max(len("code"), *(len(item.code) for item in items))
    run = max(len("run"), *(len(str(item.run_id)) for item in items))
    rest = 2 + code + 2 + len("attempts") + 2 + run
    key = max(len("key"), min(max(len(visible(item.key)) for item in items), width - rest))

    def row(first: str, *others: object) -> str:
        return f"{first:<{key}}  {others[0]!s:<{code}}  {others[1]!s:>8}  {others[2]!s:>{run}}"

    lines = [row("key", "code", "attempts", "run").rstrip()]
    for item in items:
        shown = visible(item.key)
        if len(shown) > key:
            lines += pack([shown], width)
            shown = ""
        lines.append(row(shown, item.code, item.attempts, item.run_id))
        words = visible(item.message).split(" ")
        lines += ["    " + line for line in pack(words, width - 4, sep=" ", indent="")]
    return "\n".join(lines)


async def _forget_failed(store: JobStore, state: str, job: str, args: argparse.Namespace) -> int:
    """Forget under the job lock: a run starting meanwhile would read the items as carryover
    and write them back; the lock makes that exit 2 instead (and refuses while one runs)."""
    from tui_backfill.state.lock import JobLock

    lock = JobLock(state, job)
    lock.acquire(job)  # JobBusy (exit 2, naming the pid) while a process runs the job
    try:
        if args.forget_all:
            count = await store.forget_all_failed(job)
        else:
            count = await store.forget_failed(job, args.forget)
            if count == 0:
                raise ConfigError(
                    "--forget",
                    f"no failed item of job {job!r} has the key {args.forget!r}; "
                    "`tui-backfill failed` lists their keys",
                )
    finally:
        lock.release()
    if args.json:
        print(json.dumps({"job": job, "forgotten": count}))
    else:
        print(f"forgot {count} failed item(s) of job {job!r}")
    return EXIT_OK


async def _send(state: str, job: str, command: Command, arg: str | None = None) -> None:
    from tui_backfill.state.sqlite import open_state

    async with open_state(state) as store:
        await store.send_command(job, command, arg)


async def _cmd_pause(args: argparse.Namespace) -> int:
    from tui_backfill.state.lock import JobLock

    state, job = _job_state(args)
    lock = JobLock(state, job)
    holder = lock.holder()
    if holder is None:
        raise ConfigError("--job", f"job {job!r} is not running (nothing to pause)")
    await _send(state, job, Command.STOP)
    print(f"pause sent to job {job!r} (process {holder})", file=sys.stderr)
    if args.no_wait:
        return EXIT_OK
    deadline = time.monotonic() + 120
    while lock.holder() is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if lock.holder() is not None:
        print(f"job {job!r} is still finishing in-flight items", file=sys.stderr)
        return EXIT_PAUSED
    from tui_backfill.pipelines.hash_index.checkpoint import KeyCheckpoint
    from tui_backfill.seams.keys import visible

    snapshot = (await status_snapshot(state, job)).snapshot
    if snapshot.state not in ("paused", "interrupted"):  # it ended before it read the pause
        print(f"job {job!r} ended {snapshot.state} before the pause took effect", file=sys.stderr)
        return EXIT_OK
    checkpoint = snapshot.checkpoint
    if isinstance(checkpoint, KeyCheckpoint):
        position, past = f"lastKey {visible(str(checkpoint.last_key))}", len(checkpoint.done_after)
        beyond = f", {past:,} keys after it done"
    else:
        position = f"lastSku {visible(str(checkpoint.last_sku))}"
        past = len(checkpoint.completed_angles)
        beyond = f", {past:,} SKUs after it partly done"
    print(f"paused at checkpoint {position}" + (beyond if past else ""), file=sys.stderr)
    return EXIT_OK


# -- coverage -------------------------------------------------------------------------------


async def _cmd_coverage(args: argparse.Namespace) -> int:
    from tui_backfill.core.textfit import terminal_columns
    from tui_backfill.pipelines.mirror.coverage import coverage_report, coverage_text

    resolved = _resolve(args)
    run = await _latest_hash_run(resolved.settings.state, resolved.settings.job)
    if run is not None:
        from tui_backfill.pipelines.hash_index.coverage import hash_coverage, hash_coverage_text

        for name in ("gap_file", "fillable_file"):
            if getattr(args, name):
                flag = "--" + name.replace("_", "-")
                raise ConfigError(flag, "only for an image job; a hash-index job has none")
        report = await hash_coverage(run)
        width = terminal_columns()
        print(json.dumps(report, indent=2) if args.json else hash_coverage_text(report, width))
        return EXIT_OK
    report = await coverage_report(
        resolved, gap_file=args.gap_file, fillable_file=args.fillable_file
    )
    print(json.dumps(report, indent=2) if args.json else coverage_text(report, terminal_columns()))
    return EXIT_OK


async def _latest_hash_run(state: str, job: str) -> Any:
    """The job's latest run when the job is a hash-index one (None otherwise)."""
    from pathlib import Path

    if not Path(state).exists():
        return None
    from tui_backfill.state.sqlite import open_state

    async with open_state(state, check=True) as store:
        run = await store.latest_run(job, include_dry=False)
    return run if run is not None and run.pipeline == "hash-index" else None


if __name__ == "__main__":
    raise SystemExit(main())
