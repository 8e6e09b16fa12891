"""Notable events for the console's log, derived from two successive snapshots (pure)."""

from __future__ import annotations

from tui_backfill.pipelines.hash_index.snapshot import HashSnapshot
from tui_backfill.pipelines.snapshots import AnySnapshot


def error_text(code: str, message: str) -> str:
    """An error's message after its code: `connection: ClientConnectorError: ...` says
    `connection` once, in the code's column, and spends the message's width on the rest."""
    prefix = f"{code}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def notable_events(previous: AnySnapshot | None, current: AnySnapshot) -> list[str]:
    if previous is None:
        if isinstance(current, HashSnapshot):
            where = f"s3://{current.bucket}/{current.prefix}"
            return [f"run {current.run_id} of job {current.job}: {current.mode} {where}"]
        return [f"run {current.run_id} of job {current.job}: {current.planned_skus:,} SKUs planned"]
    events: list[str] = []  # what the run is doing is the console's to say (phases.py)
    if current.concurrency != previous.concurrency:
        events.append(f"concurrency {previous.concurrency} -> {current.concurrency}")
    before = previous.counters.errors_by_code
    for code, count in sorted(current.counters.errors_by_code.items()):
        added = count - before.get(code, 0)
        if added > 0:
            message = error_text(code, current.last_errors.get(code, ""))
            events.append(f"retry: {code} x{added}" + (f" ({message})" if message else ""))
    failed = current.counters.failed_items - previous.counters.failed_items
    if failed > 0:
        events.append(f"{failed} item(s) failed after all attempts (f lists them)")
    if current.checkpoint_saved_at and current.checkpoint_saved_at != previous.checkpoint_saved_at:
        # named as `status` names it: a SKU may itself read `SKU11262`
        position = "lastKey" if isinstance(current, HashSnapshot) else "lastSku"
        events.append(f"checkpoint saved: {position} {current.checkpoint_saved_sku}")
    if current.message and current.message != previous.message:
        events.append(f"error: {current.message}")
    return events
