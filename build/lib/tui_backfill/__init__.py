"""tui-backfill: fill an S3-compatible bucket from an origin, resumably and idempotently."""

__version__ = "0.1.0"
