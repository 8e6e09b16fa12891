"""Pipelines: what a job does with each item, on the one engine.

`mirror` (the image backfill: fetch -> put) today; the content-hash index and the publishing
worker come next. Importing this package registers every pipeline's run codec, so any run in
a state can be read back.
"""

from tui_backfill.core.records import RunCodec, register_codec
from tui_backfill.pipelines.mirror.checkpoint import Checkpoint
from tui_backfill.pipelines.mirror.snapshot import Counters

PIPELINES = ("mirror",)

register_codec(
    "mirror",
    RunCodec(
        counters=Counters,
        checkpoint=Checkpoint.from_json,
        empty_checkpoint=lambda: Checkpoint().to_json(),
    ),
)
