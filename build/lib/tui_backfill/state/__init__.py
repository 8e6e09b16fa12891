"""The state store: runs, checkpoints, counters, failed items, commands (SQLite today)."""
