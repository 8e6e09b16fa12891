"""The engine and what it is made of: items, stages, slots, retries, watermark, snapshot.

Nothing here knows SKUs, angles, keys, a front end or a particular pipeline."""
