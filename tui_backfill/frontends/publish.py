"""The publishing worker's commands: `publish worker | enqueue | init-db | status | pause |
resume | runs`.

A publish job lives in its queue database, not in the state file: `status`, `pause`, `resume`
and `runs` read and write the database (`publish_workers`, `publish_commands`), so they work
from any machine that can reach it. `tui-backfill status --job publish` (and pause, resume,
runs) come here too.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
from typing import Any

from tui_backfill.frontends.helptext import aside, example, with_default
from tui_backfill.frontends.running import EXIT_OK, has_terminal, port_number
from tui_backfill.frontends.signals import handle_stop_signals, tell
from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.publish.settings import OPTS, PublishSettings, resolve_publish

PROGRESS_EVERY = 5.0
PUBLISH_JOB = "publish"  # the pipeline's default job name: `status --job publish` routes here


def add_publish_parser(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    publish = commands.add_parser(
        "publish",
        help="the media publishing worker: WebP variants of a jobs table's files",
        description="Workers share one job queue (PostgreSQL or SQLite): each claims jobs, "
        "downloads the source from the private store, makes the thumb and display WebP variants, "
        "uploads them and records the CDN URLs. Settings: flags, environment (the seed's names "
        "or TUI_BACKFILL_*), .env, TOML.",
        epilog=example("tui-backfill publish worker --env-file .env"),
    )
    verbs = publish.add_subparsers(dest="verb", required=True, parser_class=parser_class)
    worker = _verb(
        verbs,
        "worker",
        "claim and process jobs until stopped",
        "tui-backfill publish worker --env-file .env --no-ui",
        description="Claim jobs from the queue and publish their files until stopped (SIGTERM: "
        "in-flight jobs finish, unstarted claims go back). Secrets (RAID_PUBLISHER_SECRET, "
        "B2_APP_KEY, the database password) come from the environment or the .env file only.",
    )
    _common(worker)
    for opt in OPTS:
        if opt.secret:
            continue
        text = with_default(
            aside(opt.help, f"env {opt.seed}") if opt.seed else opt.help, opt.default
        )
        if opt.kind is bool:
            worker.add_argument(
                opt.flag, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            worker.add_argument(opt.flag, default=None, metavar=_metavar(opt), help=text)
    worker.add_argument(
        "--burst", action="store_true", help="exit when nothing is claimable now and none in flight"
    )
    worker.add_argument(
        "--no-ui", action="store_true", help="headless: progress on stderr, final JSON on stdout"
    )
    worker.add_argument("--worker-id", metavar="ID", help="this instance's id (default: host:pid)")
    worker.add_argument(
        "--serve",
        metavar="PORT",
        help="serve /metrics and /api/publish/{status,pause,resume} on 127.0.0.1:PORT (0: free)",
    )

    enqueue = _verb(
        verbs,
        "enqueue",
        "a job for every unpublished file without one (idempotent)",
        "tui-backfill publish enqueue --env-file .env",
    )
    _common(enqueue)
    enqueue.add_argument("--file-id", type=int, metavar="N", help="only this auction_files id")
    _database_url(enqueue)
    enqueue.add_argument(
        "--max-retries",
        metavar="N",
        help=with_default("max_retries of the new jobs (env MAX_RETRIES)", 5),
    )

    init_db = _verb(
        verbs,
        "init-db",
        "create the tables, or add the worker's columns and the NOTIFY trigger",
        "tui-backfill publish init-db --database-url postgresql://publisher@db/media",
    )
    _common(init_db)
    _database_url(init_db)

    for verb, text, command in (
        (
            "status",
            "queue figures and live instances, read from the database",
            "tui-backfill publish status --json",
        ),
        (
            "pause",
            "every instance (or --worker) stops claiming; in-flight jobs finish",
            "tui-backfill publish pause --worker host1:4242",
        ),
        ("resume", "instances claim again", "tui-backfill publish resume"),
        ("runs", "instance sessions of the job", "tui-backfill publish runs --json"),
    ):
        sub = _verb(verbs, verb, text, command)
        _common(sub)
        _database_url(sub)
        if verb == "status":
            sub.add_argument("--json", action="store_true", help="the status as JSON")
        if verb == "runs":
            sub.add_argument("--json", action="store_true", help="the sessions as JSON")
        if verb in ("pause", "resume"):
            sub.add_argument(
                "--worker", metavar="ID", help="one instance's id (default: all of the job)"
            )


def _verb(
    verbs: Any, name: str, text: str, command: str, description: str = ""
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = verbs.add_parser(
        name,
        help=text,
        description=description or text[:1].upper() + text[1:] + ".",
        epilog=example(command),
    )
    return parser


METAVARS = {
    "database_url": "URL", "raid_endpoint": "URL", "bucket": "NAME", "endpoint_url": "URL",
    "region": "NAME", "key_id": "ID", "cdn_base_url": "URL", "log_level": "LEVEL",
    "thumb_size": "WxH", "display_size": "WxH", "variant_key_template": "TEMPLATE",
}  # fmt: skip


def _metavar(opt: Any) -> str:
    return {int: "N", float: "SECONDS"}.get(opt.kind) or METAVARS.get(opt.name, opt.name.upper())


def _database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help=with_default("the queue (env DATABASE_URL)", OPTS[0].default),
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", metavar="NAME", help=with_default("job name", PUBLISH_JOB))
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--env-file", metavar="FILE", help=with_default("a .env file", "./.env when present")
    )


def _settings(args: argparse.Namespace) -> PublishSettings:
    flags = {opt.name: getattr(args, opt.name, None) for opt in OPTS if not opt.secret}
    return resolve_publish(flags, env_file=args.env_file, config=args.config, job=args.job)


def main_publish(args: argparse.Namespace) -> int:
    if args.verb == "worker":
        return _cmd_worker(args)
    return asyncio.run(_QUEUE_COMMANDS[args.verb](args))


# -- worker ---------------------------------------------------------------------------------


def _cmd_worker(args: argparse.Namespace) -> int:
    from tui_backfill.frontends.logs import log_to_stderr
    from tui_backfill.pipelines.publish.settings import validate_worker

    settings = _settings(args)
    validate_worker(settings)
    serve = None if args.serve is None else port_number(args.serve, "--serve")
    if not args.no_ui and has_terminal():
        return asyncio.run(run_worker_console(settings, burst=args.burst, worker_id=args.worker_id))
    log_to_stderr()
    _log_level(settings)
    return asyncio.run(
        run_worker_headless(settings, burst=args.burst, worker_id=args.worker_id, serve=serve)
    )


def _log_level(settings: PublishSettings) -> None:
    """LOG_LEVEL (the seed's: debug, info, warn, error) for the tool's own log lines."""
    import logging

    from tui_backfill.frontends.logs import LOGGER

    level = settings.log_level.upper()
    logging.getLogger(LOGGER).setLevel("WARNING" if level == "WARN" else level)


async def run_worker_headless(
    settings: PublishSettings,
    *,
    burst: bool,
    worker_id: str | None = None,
    serve: int | None = None,
) -> int:
    """The worker headless: a progress line on stderr, the final snapshot as JSON on stdout;
    `serve`: its /metrics and status on 127.0.0.1:PORT."""
    from tui_backfill.pipelines.publish.prepare import prepared_worker

    async with prepared_worker(settings, burst=burst, worker=worker_id) as worker:
        loop = asyncio.get_running_loop()

        def stopping(signum: int) -> None:
            worker.stop()
            tell(
                f"tui-backfill: {signal.Signals(signum).name}: stopping; in-flight jobs finish,"
                " unstarted claims go back to the queue"
            )

        handle_stop_signals(loop, stopping)
        print(
            f"tui-backfill: publish worker {worker.id} on {_where(settings)}, "
            f"concurrency {settings.concurrency}" + (" (burst)" if burst else ""),
            file=sys.stderr,
            flush=True,
        )
        runner = None
        if serve is not None:
            from tui_backfill.frontends.publish_api import serve_worker

            runner, url = await serve_worker(worker, serve)
            print(f"tui-backfill: metrics and status on {url}", file=sys.stderr, flush=True)
        reporter = asyncio.create_task(_progress(worker))
        try:
            code = await worker.run()
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
            if runner is not None:
                await runner.cleanup()
        print(json.dumps(worker.snapshot().to_json(), indent=2), flush=True)
        return code


def _where(settings: PublishSettings) -> str:
    from tui_backfill.seams.queue import redact_url

    return redact_url(settings.database_url)


async def _progress(worker: Any) -> None:
    from tui_backfill.core.textfit import pack, stream_columns

    while True:
        await asyncio.sleep(PROGRESS_EVERY)
        snap = worker.snapshot()
        c, q = snap.counters, snap.queue
        fields = [
            f"tui-backfill: {snap.state}: {c.published:,} published, {c.skipped:,} skipped, "
            f"{c.failed_attempts:,} retrying, {c.failed_permanent:,} failed",
            f"downloads {snap.downloading}/{snap.concurrency}, {snap.in_flight} in flight",
            f"queue {q.pending:,} pending, {q.needing_attention:,} need attention",
            f"{snap.per_second * 60:,.1f} jobs/min",
        ]
        print("\n".join(pack(fields, stream_columns(), sep="; ")), file=sys.stderr, flush=True)


async def run_worker_console(
    settings: PublishSettings, *, burst: bool, worker_id: str | None = None
) -> int:
    """The worker under its console; SIGTERM and SIGHUP stop it as `q` does."""
    from tui_backfill.frontends.logs import log_to_file
    from tui_backfill.frontends.ui.publish import PublishApp
    from tui_backfill.pipelines.publish.prepare import prepared_worker

    log_to_file(f"state/{settings.job}.publish")
    _log_level(settings)
    async with prepared_worker(settings, burst=burst, worker=worker_id) as worker:
        app = PublishApp(worker)
        loop = asyncio.get_running_loop()
        # As `q`: finish in flight, hand back; a lost terminal then ends the process too.
        loop.add_signal_handler(signal.SIGTERM, worker.stop)
        loop.add_signal_handler(signal.SIGHUP, app.terminal_lost)
        run = asyncio.create_task(worker.run())
        app.worker_task = run
        await app.run_async()
        worker.stop()
        return await run


# -- the queue's commands -------------------------------------------------------------------


async def _cmd_init_db(args: argparse.Namespace) -> int:
    from tui_backfill.seams.queue import open_queue

    settings = _settings(args)
    from tui_backfill.pipelines.publish.settings import validate_queue

    validate_queue(settings)
    queue = await open_queue(settings.database_url)
    try:
        await queue.init_db()
    finally:
        await queue.close()
    print(f"publish tables ready in {_where(settings)}", file=sys.stderr)
    return EXIT_OK


async def _cmd_enqueue(args: argparse.Namespace) -> int:
    from tui_backfill.pipelines.publish.prepare import opened_queue

    settings = _settings(args)
    if args.file_id is not None and not 1 <= args.file_id < 2**63:
        raise ConfigError("--file-id", f"{args.file_id}: accepted an auction_files id, 1 or more")
    if not 1 <= settings.max_retries <= 100:
        where = settings.where("max_retries")
        raise ConfigError(where, f"{settings.max_retries}: accepted 1-100")
    async with opened_queue(settings, create=True) as queue:
        created = await queue.enqueue(file_id=args.file_id, max_retries=settings.max_retries)
    print(json.dumps({"job": settings.job, "enqueued": created}))
    return EXIT_OK


async def job_snapshot(settings: PublishSettings) -> Any:
    """The job's status from the database alone (no instance of ours): `status` anywhere."""
    from tui_backfill.core.snapshot import utc_now_iso
    from tui_backfill.pipelines.publish.prepare import opened_queue
    from tui_backfill.pipelines.publish.snapshot import InstanceCounters, PublishSnapshot

    async with opened_queue(settings) as queue:
        figures = await queue.figures()
        workers = await queue.workers(settings.job, live_within=settings.lease)
        attention = await queue.attention(20)
    live = [w for w in workers if w.stopped_at is None and w.state != "lost"]
    state = "idle" if not live else ("held" if all(w.state == "held" for w in live) else "running")
    # The live instances' heartbeat stats, summed: their sessions' counters and recent rate.
    counters, per_minute = InstanceCounters(), 0.0
    for row in live:
        stats = _stats_of(row)
        one = InstanceCounters.from_json(stats)
        for f in dataclasses.fields(one):
            if f.name != "errors_by_code":
                setattr(counters, f.name, getattr(counters, f.name) + getattr(one, f.name))
        for code, n in one.errors_by_code.items():
            counters.errors_by_code[code] = counters.errors_by_code.get(code, 0) + n
        per_minute += float(stats.get("perMinute", 0.0))
    failed = counters.failed_attempts + counters.failed_permanent
    return PublishSnapshot(
        job=settings.job,
        worker=None,
        state=state,
        started_at=min((w.started_at for w in live), default=""),
        last_update_at=utc_now_iso(),
        concurrency=settings.concurrency,
        in_flight=figures.processing,
        counters=counters,
        per_second=per_minute / 60,
        error_rate=failed / counters.finished if counters.finished else 0.0,
        queue=figures,
        workers=tuple(workers),
        attention=tuple(attention),
    )


def _stats_of(row: Any) -> dict[str, Any]:
    try:
        stats = json.loads(row.stats) if row.stats else {}
    except ValueError:
        return {}
    return stats if isinstance(stats, dict) else {}


async def _cmd_status(args: argparse.Namespace) -> int:
    snap = await job_snapshot(_settings(args))
    from tui_backfill.core.textfit import terminal_columns

    print(
        json.dumps(snap.to_json(), indent=2) if args.json else snap.status_text(terminal_columns())
    )
    return EXIT_OK


async def _cmd_runs(args: argparse.Namespace) -> int:
    from tui_backfill.pipelines.publish.prepare import opened_queue

    settings = _settings(args)
    async with opened_queue(settings) as queue:
        rows = await queue.workers(settings.job, live_within=settings.lease)
    if not rows:
        raise ConfigError(
            "--job", f"job {settings.job!r} has no worker sessions in {_where(settings)}"
        )
    if getattr(args, "json", False):
        from tui_backfill.pipelines.publish.snapshot import _worker_json

        print(json.dumps({"job": settings.job, "runs": [_worker_json(r) for r in rows]}, indent=2))
        return EXIT_OK
    from tui_backfill.core.textfit import table, terminal_columns

    header = ("worker", "state", "started", "stopped", "published", "failed")
    cells = [
        (
            row.id,
            row.state,
            row.started_at,
            row.stopped_at or "-",
            _stats_of(row).get("published", 0),
            _stats_of(row).get("failedPermanent", 0),
        )
        for row in rows
    ]
    print("\n".join(table(header, cells, terminal_columns())))
    return EXIT_OK


async def _command(args: argparse.Namespace, command: str) -> int:
    from tui_backfill.pipelines.publish.prepare import opened_queue

    settings = _settings(args)
    async with opened_queue(settings) as queue:
        live = [
            w
            for w in await queue.workers(settings.job, live_within=settings.lease)
            if w.stopped_at is None and w.state != "lost"
        ]
        if args.worker and args.worker not in {w.id for w in live}:
            raise ConfigError(
                "--worker", f"{args.worker!r} is not a live worker of job {settings.job!r}"
            )
        if not live:
            raise ConfigError("--job", f"job {settings.job!r} has no live worker")
        await queue.post_command(settings.job, command, args.worker)
    target = args.worker or f"{len(live)} live worker(s) of job {settings.job!r}"
    print(f"{command} sent to {target}", file=sys.stderr)
    return EXIT_OK


async def _cmd_pause(args: argparse.Namespace) -> int:
    return await _command(args, "pause")


async def _cmd_resume(args: argparse.Namespace) -> int:
    return await _command(args, "resume")


_QUEUE_COMMANDS = {
    "init-db": _cmd_init_db,
    "enqueue": _cmd_enqueue,
    "status": _cmd_status,
    "runs": _cmd_runs,
    "pause": _cmd_pause,
    "resume": _cmd_resume,
}


def generic_command(args: argparse.Namespace) -> int:
    """`status|pause|resume|runs --job publish`: the same as `publish <verb>`."""
    args.verb = args.command
    for name in ("env_file", "database_url", "worker"):
        if not hasattr(args, name):
            setattr(args, name, None)
    if not hasattr(args, "json"):
        args.json = False
    return asyncio.run(_QUEUE_COMMANDS[args.verb](args))
