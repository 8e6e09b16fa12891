"""The image backfill (seed 1): SKUs x angles fetched from an origin and written to a bucket."""
