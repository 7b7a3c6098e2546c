"""octuefs.metrics on the fake bucket: every request counted once, by kind and outcome, with the
bytes it moved; the state collector reports what `octuefs status --json` says."""

from __future__ import annotations

import errno
import threading

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


def test_fuse_operations_are_counted_by_op_and_outcome_with_cumulative_latency_buckets():
    """The tallies behind the hot path export what prometheus_client's Counter and Histogram did:
    a bucket counts latencies up to and including its bound, cumulatively; the count is +Inf's."""
    m = Metrics()
    m.fuse_op("getattr", None, 300_000)  # 0.3 ms
    m.fuse_op("getattr", None, 500_000)  # exactly the first bound, 0.5 ms: in it
    m.fuse_op("getattr", errno.ENOENT, 2_000_000)  # 2 ms, failed: its own count, the op's histogram
    m.fuse_op("read", None, 60 * 10**9)  # past the largest bound
    assert _value(m, "octuefs_fuse_operations_total", op="getattr", outcome="ok") == 2
    assert _value(m, "octuefs_fuse_operations_total", op="getattr", outcome="ENOENT") == 1
    buckets = {le: _value(m, "octuefs_fuse_operation_seconds_bucket", op="getattr", le=le)
               for le in ("0.0005", "0.001", "0.0025", "30.0", "+Inf")}
    assert buckets == {"0.0005": 2, "0.001": 2, "0.0025": 3, "30.0": 3, "+Inf": 3}
    assert _value(m, "octuefs_fuse_operation_seconds_count", op="getattr") == 3
    assert _value(m, "octuefs_fuse_operation_seconds_sum", op="getattr") == pytest.approx(0.0028)
    assert _value(m, "octuefs_fuse_operation_seconds_bucket", op="read", le="30.0") == 0
    assert _value(m, "octuefs_fuse_operation_seconds_bucket", op="read", le="+Inf") == 1


def test_counts_from_many_threads_at_once_are_exact():
    m = Metrics()
    bucket = m.bucket(FakeBucket("b"))
    bucket.upload_bytes("a.csv", b"12345")

    def work():
        for _ in range(2000):
            m.fuse_op("getxattr", None, 1000)
            bucket.read_range("a.csv", 0, 2)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _value(m, "octuefs_fuse_operations_total", op="getxattr", outcome="ok") == 16_000
    assert _value(m, "octuefs_fuse_operation_seconds_bucket", op="getxattr", le="0.0005") == 16_000
    assert _value(m, "octuefs_bucket_requests_total", kind="read", outcome="ok") == 16_000
    assert _value(m, "octuefs_bucket_read_bytes_total") == 32_000
