"""One seam per outside system: the bucket, the origins, the item sources.

Each classifies its failures into the error codes of `tui_backfill.outcomes`."""
