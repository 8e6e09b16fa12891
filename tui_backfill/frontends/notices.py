"""Run-end notices (`--notify-url`): the body a run's end sends, and its delivery from a
front end (the headless run, the console, the API service), bounded and never changing the
exit code. The sending itself is tui_backfill.seams.notify."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

ENDED_STATES = ("completed", "failed", "paused")


def notice_of(prepared: Any, exit_code: int, status: dict[str, Any]) -> dict[str, Any]:
    """The body `--notify-url` gets: `status` is the final status JSON (stdout's)."""
    from tui_backfill.seams.notify import run_ended

    plan = prepared.engine.plan
    return run_ended(
        job=plan.job, run_id=plan.run_id, exit_code=exit_code, dry_run=plan.dry_run, snapshot=status
    )


async def run_end_notice(prepared: Any, exit_code: int) -> dict[str, Any] | None:
    """The console's run, once its engine has ended (completed, failed, paused); None while it
    has not (the app left early) or without a notify URL."""
    if not prepared.settings.notify_url:
        return None
    snapshot = prepared.engine.snapshot()
    if snapshot.state not in ENDED_STATES:
        return None
    from tui_backfill.frontends.status import final_status

    status = (await final_status(prepared.store, snapshot, prepared.settings.state)).to_json()
    return notice_of(prepared, exit_code, status)


async def notify_run_end(url: str | None, body: dict[str, Any], *, signals: bool = True) -> None:
    """POST a run's end to `url` (bounded: seams.notify.BUDGET); a failure is one line on
    stderr without the URL, and nothing here changes the exit code. With `signals`, SIGINT,
    SIGTERM or SIGHUP during the delivery abandon it (the process then exits at once)."""
    if not url:
        return
    from tui_backfill.seams.notify import post_json

    loop = asyncio.get_running_loop()
    task = asyncio.create_task(post_json(url, body))
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if signals else ()
    for signum in handled:
        loop.add_signal_handler(signum, task.cancel)
    try:
        delivery = await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # this caller itself is cancelled, not only the delivery
        print("tui-backfill: notify: not delivered: interrupted by a signal", file=sys.stderr)
        return
    except Exception as exc:  # never the exit code's business; the text may quote the URL
        print(f"tui-backfill: notify: not delivered: {exc.__class__.__name__}", file=sys.stderr)
        return
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
    if not delivery.delivered:
        print(f"tui-backfill: notify: {delivery.describe()}", file=sys.stderr, flush=True)
