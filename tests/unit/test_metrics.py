"""octuefs.metrics on the fake bucket: every request counted once, by kind and outcome, with the
bytes it moved; the state collector reports what `octuefs status --json` says."""

from __future__ import annotations

import pytest

from octuefs.errors import NotFound, PreconditionFailed
from octuefs.metrics import Metrics
from octuefs.storage.fake import FakeBucket


def _value(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_each_request_is_counted_once_by_kind_and_outcome_with_its_bytes():
    m = Metrics()
    bucket = m.bucket(FakeBucket("b"))
    info = bucket.upload_bytes("a.csv", b"12345")  # upload_bytes goes through upload_file: one request
    assert _value(m, "octuefs_bucket_requests_total", kind="upload", outcome="ok") == 1
    assert _value(m, "octuefs_bucket_written_bytes_total") == 5
    assert bucket.read_range("a.csv", 0, 3) == b"123"
    assert _value(m, "octuefs_bucket_read_bytes_total") == 3
    with pytest.raises(NotFound):
        bucket.stat("absent")
    with pytest.raises(PreconditionFailed):
        bucket.upload_bytes("a.csv", b"x", if_generation_match=0)
    bucket.patch_metadata("a.csv", {"k": "v"}, if_generation_match=info.generation)
    list(bucket.iter_pages_ahead(""))
    assert _value(m, "octuefs_bucket_requests_total", kind="stat", outcome="not_found") == 1
    assert _value(m, "octuefs_bucket_requests_total", kind="upload", outcome="precondition_failed") == 1
    assert _value(m, "octuefs_bucket_requests_total", kind="patch", outcome="ok") == 1
    assert _value(m, "octuefs_bucket_requests_total", kind="list", outcome="ok") == 1
    assert _value(m, "octuefs_bucket_request_seconds_count", kind="upload") == 2
    bounded = bucket.bounded(5.0)  # the view FUSE calls use: still counted
    bounded.stat("a.csv")
    assert _value(m, "octuefs_bucket_requests_total", kind="stat", outcome="ok") == 1


def test_the_state_is_read_at_each_scrape_and_a_failing_read_reports_nothing():
    m = Metrics()
    state = {"totals": {"queued": 2, "running": 1, "failed": 0, "withheld": 0, "kept": 0},
             "uploads": [{"attempts": 3}, {"attempts": 1}, {"attempts": 0}], "conflicts": [{}],
             "cache": {"clean_bytes": 10, "unsaved_bytes": 4, "limit": 100, "evicted_bytes": 7, "cached_files": 2}}
    m.watch(lambda: state)
    assert _value(m, "octuefs_uploads", state="queued") == 2
    assert _value(m, "octuefs_uploads_retrying") == 1
    assert _value(m, "octuefs_cache_unsaved_bytes") == 4 and _value(m, "octuefs_cache_limit_bytes") == 100
    assert _value(m, "octuefs_cache_evicted_bytes_total") == 7
    state["totals"]["queued"] = 0
    assert _value(m, "octuefs_uploads", state="queued") == 0
    m2 = Metrics()
    m2.watch(lambda: 1 / 0)
    assert m2.registry.get_sample_value("octuefs_uploads", {"state": "queued"}) is None
