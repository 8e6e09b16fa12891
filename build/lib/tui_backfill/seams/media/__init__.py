"""The publishing worker's media seam: download a source image, make its WebP variants.

`source.download_source` (the RAID endpoint, streamed with a cap) and `variants.make_variants`
(Pillow: orientation, sRGB, alpha, first frame, pixel limit, resize, WebP, no metadata). Their
permanent failures are `MediaError`s (`errors`), read by the worker through `permanent`.
"""

from tui_backfill.seams.media.errors import MediaError, MediaErrorCode
from tui_backfill.seams.media.source import DEFAULT_MAX_SOURCE_BYTES, download_source, source_url
from tui_backfill.seams.media.variants import DEFAULT_SPECS, Variant, VariantSpec, make_variants

__all__ = [
    "DEFAULT_MAX_SOURCE_BYTES",
    "DEFAULT_SPECS",
    "MediaError",
    "MediaErrorCode",
    "Variant",
    "VariantSpec",
    "download_source",
    "make_variants",
    "source_url",
]
