"""Prometheus metrics of a mount (``--metrics-port``), through ``prometheus_client``.

Off by default: nothing here runs unless a port is given. Three sources:

- every call to the bucket, by kind (``stat``, ``list``, ``read``, ``upload``, ``patch``, ...)
  and outcome (``ok``, ``not_found``, ``precondition_failed``, ``unreachable``, ``error``), with
  its latency and the bytes it moved: :class:`MeteredBucket`, a wrapper at assembly. A call is
  one logical request as the mount sees it, its retries included;
- every FUSE operation by name and outcome (the errno's name), with its latency: counted by
  :meth:`Metrics.fuse_op`, called from the FUSE adapter's one wrapper;
- the state of the cache and the write-back queue, read when the metrics are scraped
  (:class:`_StateCollector`): clean and unsaved bytes against the limit, evictions, uploads by
  state, conflicts.

Each mount has a registry of its own (never the library's global one), so tests and several
mounts in one process do not share counters.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .errors import BucketUnreachable, NotFound, PreconditionFailed, TransientError
from .storage.base import Bucket

log = logging.getLogger(__name__)

# Seconds: from a cached answer on loopback to an op_timeout's worth of retries.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def outcome_of(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, PreconditionFailed):
        return "precondition_failed"
    if isinstance(exc, (BucketUnreachable, TransientError)):
        return "unreachable"
    return "error"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("octuefs_bucket_requests", "Calls to the bucket, retries included",
                                ["kind", "outcome"], registry=r)
        self.request_seconds = Histogram("octuefs_bucket_request_seconds", "Latency of calls to the bucket",
                                         ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.read_bytes = Counter("octuefs_bucket_read_bytes", "Bytes of content read from the bucket", registry=r)
        self.written_bytes = Counter("octuefs_bucket_written_bytes", "Bytes of content uploaded to the bucket",
                                     registry=r)
        self.fuse_ops = Counter("octuefs_fuse_operations", "FUSE operations served", ["op", "outcome"], registry=r)
        self.fuse_seconds = Histogram("octuefs_fuse_operation_seconds", "Latency of FUSE operations", ["op"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self._server = None
        self._children: dict[tuple[str, int | None], tuple] = {}  # (op, errno) -> its counter and histogram

    # --- sources ---------------------------------------------------------------------------

    def bucket(self, bucket: Bucket) -> Bucket:
        return MeteredBucket(bucket, self)

    def fuse_op(self, op: str, code: int | None, seconds: float) -> None:
        """One FUSE operation ended: ``code`` is the errno it answered, None for success. On the
        path of every call: the labelled children are looked up once (``labels()`` takes a lock)."""
        children = self._children.get((op, code))
        if children is None:
            outcome = "ok" if code is None else errno.errorcode.get(code, str(code))
            children = self._children[(op, code)] = (self.fuse_ops.labels(op, outcome), self.fuse_seconds.labels(op))
        children[0].inc()
        children[1].observe(seconds)

    def watch(self, state: Callable[[], dict]) -> None:
        """Report ``state()`` (what ``octuefs status --json`` answers) at each scrape."""
        self.registry.register(_StateCollector(state))

    # --- the endpoint ----------------------------------------------------------------------

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Serve /metrics on ``address:port`` (0: any free port) in a thread; return the port."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        self._server = server
        port = server.server_address[1]
        log.info("metrics at http://%s:%d/metrics", address, port)
        return port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _StateCollector:
    def __init__(self, state: Callable[[], dict]):
        self._state = state

    def describe(self) -> list:
        return []  # unchecked: the families are built at each scrape

    def collect(self) -> Iterator:
        try:
            report = self._state()
        except Exception:  # a scrape must not fail with the mount: say so, report nothing
            log.exception("metrics: reading the mount's state failed")
            return
        cache = report.get("cache", {})
        for name, key, text in (("octuefs_cache_clean_bytes", "clean_bytes", "Saved data held in the cache (evictable)"),
                                ("octuefs_cache_unsaved_bytes", "unsaved_bytes", "Data not yet in the bucket (never evicted)"),
                                ("octuefs_cache_files", "cached_files", "Files with cached content")):
            yield GaugeMetricFamily(name, text, value=cache.get(key, 0))
        if cache.get("limit") is not None:
            yield GaugeMetricFamily("octuefs_cache_limit_bytes", "The bound on clean cached data", value=cache["limit"])
        yield CounterMetricFamily("octuefs_cache_evicted_bytes", "Clean bytes evicted since the mount",
                                  value=cache.get("evicted_bytes", 0))
        reads = CounterMetricFamily("octuefs_cache_reads", "Reads of cached content: hit (served from the cache "
                                    "alone) or miss (waited for the bucket)", labels=["result"])
        reads.add_metric(["hit"], cache.get("read_hits", 0))
        reads.add_metric(["miss"], cache.get("read_misses", 0))
        yield reads
        yield GaugeMetricFamily("octuefs_cache_error", "1 while the cache directory cannot be written",
                                value=1 if cache.get("error") else 0)
        uploads = GaugeMetricFamily("octuefs_uploads", "Uploads not yet in the bucket, by state", labels=["state"])
        for state, count in report.get("totals", {}).items():
            uploads.add_metric([state], count)
        yield uploads
        retried = sum(1 for row in report.get("uploads", ()) if row.get("attempts", 0) > 1)
        yield GaugeMetricFamily("octuefs_uploads_retrying", "Uploads tried more than once, not yet in the bucket",
                                value=retried)
        yield CounterMetricFamily("octuefs_metadata_updates_coalesced", "Metadata changes (setfattr) that joined "
                                  "one already queued for the object instead of a request of their own",
                                  value=report.get("metadata_coalesced", 0))
        yield GaugeMetricFamily("octuefs_conflicts_recent", "Conflicts in the mount's log (the last 50)",
                                value=len(report.get("conflicts", ())))


# Bucket methods that are one request as the mount sees it, by the kind they are counted as.
_KINDS = {
    "stat": "stat", "list_page": "list", "fetch_page": "list", "read_range": "read", "read_range_into": "read",
    "download_to_file": "read", "upload_file": "upload", "upload_bytes": "upload", "patch_metadata": "patch",
    "copy": "copy", "compose": "compose", "delete": "delete",
}


class MeteredBucket(Bucket):
    """Times and counts every request method of ``inner``; everything else passes through."""

    def __init__(self, inner: Bucket, metrics: Metrics):
        self.inner = inner
        self.name = inner.name
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"MeteredBucket({self.inner!r})"

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)

    def _call(self, method: str, *args, **kwargs):
        kind = _KINDS[method]
        m = self._metrics
        started = time.perf_counter()
        error = None
        try:
            result = getattr(self.inner, method)(*args, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            m.requests.labels(kind, outcome_of(error)).inc()
            m.request_seconds.labels(kind).observe(time.perf_counter() - started)
        if kind == "read":
            moved = len(result) if isinstance(result, (bytes, bytearray)) else result if isinstance(result, int) \
                else getattr(result, "size", 0)
            m.read_bytes.inc(moved or 0)
        elif kind == "upload":
            m.written_bytes.inc(getattr(result, "size", 0) or 0)
        return result

    def stat(self, *a, **k):
        return self._call("stat", *a, **k)

    def list_page(self, *a, **k):
        return self._call("list_page", *a, **k)

    def fetch_page(self, *a, **k):
        return self._call("fetch_page", *a, **k)

    def read_range(self, *a, **k):
        return self._call("read_range", *a, **k)

    def read_range_into(self, *a, **k):
        return self._call("read_range_into", *a, **k)

    def download_to_file(self, *a, **k):
        return self._call("download_to_file", *a, **k)

    def upload_file(self, *a, **k):
        return self._call("upload_file", *a, **k)

    def upload_bytes(self, *a, **k):
        return self._call("upload_bytes", *a, **k)

    def patch_metadata(self, *a, **k):
        return self._call("patch_metadata", *a, **k)

    def copy(self, *a, **k):
        return self._call("copy", *a, **k)

    def compose(self, *a, **k):
        return self._call("compose", *a, **k)

    def delete(self, *a, **k):
        return self._call("delete", *a, **k)

    def keep_parts_in(self, directory: str) -> None:
        self.inner.keep_parts_in(directory)

    def sweep_parts(self) -> int:
        return self.inner.sweep_parts()
