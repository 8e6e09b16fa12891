"""Pipelines: what a job does with each item, on the one engine.

`mirror` (the image backfill: fetch -> put) and `hash-index` (the content-hash index: get ->
sha256 -> upsert); the publishing worker comes next. Importing this package registers every
pipeline's run codec, so any run in a state can be read back.
"""

from tui_backfill.core.records import RunCodec, register_codec
from tui_backfill.pipelines.hash_index.checkpoint import KeyCheckpoint
from tui_backfill.pipelines.hash_index.snapshot import HashCounters
from tui_backfill.pipelines.mirror.checkpoint import Checkpoint
from tui_backfill.pipelines.mirror.snapshot import Counters

PIPELINES = ("mirror", "hash-index")

register_codec(
    "mirror",
    RunCodec(
        counters=Counters,
        checkpoint=Checkpoint.from_json,
        empty_checkpoint=lambda: Checkpoint().to_json(),
    ),
)
register_codec(
    "hash-index",
    RunCodec(
        counters=HashCounters,
        checkpoint=KeyCheckpoint.from_json,
        empty_checkpoint=lambda: KeyCheckpoint().to_json(),
    ),
)
