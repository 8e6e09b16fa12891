"""Running a job in this process: under the console, or headless (progress on stderr, the
final status as JSON on stdout, optionally with the HTTP control API beside it). The command
line and the demo both start runs through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from tui_backfill.core.textfit import stream_columns
from tui_backfill.frontends.logs import log_to_file, log_to_stderr
from tui_backfill.frontends.notices import notice_of, notify_run_end, run_end_notice
from tui_backfill.frontends.signals import handle_stop_signals, tell
from tui_backfill.outcomes import ConfigError

if TYPE_CHECKING:
    from tui_backfill.pipelines.plan_file import PlanFile

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_USAGE, EXIT_FATAL, EXIT_PAUSED = 0, 1, 2, 3, 75


def port_number(text: str, field: str) -> int:
    """A TCP port given on the command line (0: a free one), or ConfigError naming `field`."""
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ConfigError(field, f"{text!r}: accepted a port number from 0 to 65535")
    return int(text)


def quiet_stdout() -> None:
    """The reader of stdout went away (`| head`): what is left to print goes nowhere, and
    Python's flush at exit raises no second BrokenPipeError."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def has_terminal() -> bool:
    return sys.stdout.isatty() and sys.stdin.isatty()


def wants_console(no_ui: bool) -> bool:
    """The console when stdout is a terminal; otherwise headless, with a one-line note."""
    if no_ui:
        return False
    if not has_terminal():
        print("tui-backfill: no terminal, running headless (as with --no-ui)", file=sys.stderr)
        return False
    return True


async def run_console(request: Any) -> int:
    """Prepare the run (errors stay one line, before any screen), then the console over it."""
    from tui_backfill.frontends.ui.app import BackfillApp
    from tui_backfill.frontends.ui.controller import LocalController
    from tui_backfill.pipelines.prepare import prepare_run

    prepared = await prepare_run(request)
    log_to_file(prepared.settings.state)
    notice: dict[str, Any] | None = None
    try:
        app = BackfillApp(LocalController(prepared))
        code = await app.run_async()
        if code is None:
            code = app.exit_code if app.exit_code is not None else EXIT_PAUSED
        if app.snapshot is not None:
            from tui_backfill.frontends.headless import progress_line

            print(progress_line(app.snapshot, stream_columns()), file=sys.stderr)
        with contextlib.suppress(Exception):  # a notice never changes the exit code
            notice = await run_end_notice(prepared, int(code))
        return int(code)
    finally:
        await prepared.close()
        if notice is not None:  # after the job's lock is let go: a resume need not wait
            await notify_run_end(prepared.settings.notify_url, notice)


def plan_file_line(plan_file: PlanFile) -> str:
    """What became of a dry run's --plan-file, as its close() left it."""
    if plan_file.written:
        return f"tui-backfill: plan written to {plan_file.path}"
    if plan_file.failure is not None:
        return f"tui-backfill: error: --plan-file {plan_file.path} not written: {plan_file.failure}"
    return f"tui-backfill: the dry run did not finish; {plan_file.path} not written"


async def run_headless(request: Any, serve: int | None = None) -> int:
    """Prepare and run a job without the console; final snapshot as JSON on stdout. With
    `serve`, the HTTP control API on 127.0.0.1:serve for as long as the run goes on."""
    log_to_stderr()
    import os

    from tui_backfill.frontends.headless import progress_line
    from tui_backfill.frontends.status import final_status
    from tui_backfill.pipelines.prepare import prepare_run

    server = None
    if serve is not None:
        # Listen first: a port in use is exit 2 before any run is created or continued.
        from tui_backfill.frontends.api import ApiServer, check_bind
        from tui_backfill.frontends.service import JobService

        token = check_bind("127.0.0.1", os.environ)
        service = JobService(request.resolved)
        service.expect_adoption()
        server = await ApiServer(
            service, host="127.0.0.1", port=serve, token=token, field="--serve"
        ).start()
    try:
        prepared = await prepare_run(request)
    except BaseException:
        if server is not None:
            await server.stop()
        raise
    engine = prepared.engine
    if server is not None:
        server.service.adopt(engine)
        print(f"tui-backfill: control API on {server.url}", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    interrupts = 0

    def on_signal(signum: int) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            engine.stop()
            tell(f"tui-backfill: {signal.Signals(signum).name}: stopping after in-flight items")
        elif main_task is not None:
            main_task.cancel()  # second signal: abandon in-flight items now (checkpoint still saved)

    handled = handle_stop_signals(loop, on_signal)

    async def report() -> None:
        while True:
            await asyncio.sleep(prepared.settings.progress_interval)
            print(progress_line(engine.snapshot(), stream_columns()), file=sys.stderr, flush=True)

    reporter = asyncio.create_task(report())
    notice: dict[str, Any] | None = None  # what --notify-url gets once the run has ended
    try:
        try:
            result = await engine.run()
        except asyncio.CancelledError:
            return EXIT_PAUSED
        finally:
            reporter.cancel()
            if server is not None:
                server.service.finished()
                await asyncio.sleep(0)  # a waiting POST .../pause answers before the server stops
                await server.service.let_watchers_see_the_end()
                await server.stop()
            for signum in handled:
                loop.remove_signal_handler(signum)
        output = (
            await final_status(prepared.store, result.snapshot, prepared.settings.state)
        ).to_json()
        code = result.exit_code
        if request.dry_run:
            output["plan"] = result.snapshot.plan_json()
            if prepared.plan_file is not None:  # what close() did, whatever the exit code
                print(plan_file_line(prepared.plan_file), file=sys.stderr)
                if prepared.plan_file.failure is not None and code in (EXIT_OK, EXIT_FAILED_ITEMS):
                    # asked for and not delivered: a script's `&& use F` must not read an old F
                    code = EXIT_FATAL
        if prepared.settings.notify_url:
            notice = notice_of(prepared, code, output)
        try:
            print(progress_line(result.snapshot, stream_columns()), file=sys.stderr)
            if result.exit_code == EXIT_FATAL and result.snapshot.message:
                # what stopped the run, one line (the checkpoint that last landed is kept)
                print(f"tui-backfill: error: {result.snapshot.message}", file=sys.stderr)
            print(json.dumps(output, indent=2), flush=True)
        except BrokenPipeError:  # `run ... | head`: the run's own exit code still tells
            quiet_stdout()
        return code
    finally:
        if request.dry_run:  # a dry run leaves no run behind, however it ended
            await asyncio.shield(prepared.store.delete_run(engine.plan.run_id))
        await prepared.close()
        if notice is not None:  # after the job's lock is let go: a resume need not wait
            await notify_run_end(prepared.settings.notify_url, notice)


# -- --notify-url ----------------------------------------------------------------------------
