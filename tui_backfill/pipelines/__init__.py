"""Pipelines: what a job does with each item (mirror: fetch -> put; later hash-index, publish)."""
