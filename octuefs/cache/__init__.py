"""Caches: content blocks on local disk with their space and eviction, read-ahead within and
across files, and the metadata caches (what each path is, what each directory holds)."""
