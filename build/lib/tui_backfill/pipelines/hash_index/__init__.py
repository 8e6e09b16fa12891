"""The content-hash index: list a bucket, hash each object's bytes, upsert the index table."""
