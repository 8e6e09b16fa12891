"""Small truths in what the tool says: words that are not repeated, nor doubled by the data."""

from __future__ import annotations

import dataclasses

from test_console import fixed_snapshot
from test_console_hash import fixed_hash_snapshot

from tui_backfill.frontends.ui.events import notable_events


def test_checkpoint_saved_names_the_position_once_whatever_the_skus_look_like() -> None:
    before = fixed_snapshot()
    after = dataclasses.replace(
        before, checkpoint_saved_at="2026-11-26T12:00:03.000Z", checkpoint_saved_sku="SKU11262"
    )
    assert "checkpoint saved: lastSku SKU11262" in notable_events(before, after)
    assert not any("SKU SKU" in event for event in notable_events(before, after))

    keys = fixed_hash_snapshot()
    later = dataclasses.replace(
        keys, checkpoint_saved_at="2026-11-26T12:00:03.000Z", checkpoint_saved_sku="assets/k.jpg"
    )
    assert "checkpoint saved: lastKey assets/k.jpg" in notable_events(keys, later)
