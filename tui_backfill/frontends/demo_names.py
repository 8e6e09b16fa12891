"""The demos' job names and state files, apart from the demos themselves: the console names a
demo's own continue command without importing the demos' servers."""

from __future__ import annotations

IMAGES_JOB, IMAGES_STATE = "demo", "state/demo.sqlite3"
HASH_JOB, HASH_STATE = "demo-hash", "state/demo-hash.sqlite3"

# A demo's run continues by its demo command, which starts new servers and re-points the run's
# stored origin and endpoint at them: a plain `resume` would reach the old, dead ports.
DEMO_COMMANDS = {
    (IMAGES_JOB, IMAGES_STATE): "tui-backfill demo (or make demo)",
    (HASH_JOB, HASH_STATE): "tui-backfill demo hash-index (or make demo-hash)",
}
