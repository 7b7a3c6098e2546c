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

The first two are on the path of every FUSE operation and every request, so they do not go
through ``prometheus_client``'s Counter and Histogram (a lock for the counter, the sum and the
bucket each, two locked ``labels()`` lookups per request, floats: 1.6 us a FUSE op, 4-5 us a
request, measured with ``scripts/bench.py --metrics-cost``). Each label set has a :class:`_Tally` of plain integers (nanoseconds from one
``monotonic_ns`` pair) behind one lock, found in a dict by the op's name or the request's kind
when it succeeded; :class:`_CallsCollector` turns them into the same counters and histograms at
each scrape. On this 2-core machine that is 0.6 us a successful FUSE op (1.1 us a failed
one) and 1.1 us a request.
"""

from __future__ import annotations

import errno
import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from time import monotonic_ns

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.utils import floatToGoString

from octuefs.errors import (
    BucketUnreachable,
    NotFound,
    PreconditionFailed,
    TransientError,
)
from octuefs.storage.base import Bucket, RetryPolicy

log = logging.getLogger(__name__)

# Seconds: from a cached answer on loopback to an op_timeout's worth of retries.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BOUNDS_NS = tuple(round(b * 1e9) for b in LATENCY_BUCKETS)
_LE = (*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf")


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


class _Tally:
    """Calls with one label set: how many, their latencies (total and per bucket, not cumulative,
    in ns) and the bytes they moved. Plain ints, changed under ``lock``, read at scrape."""

    __slots__ = ("lock", "count", "ns", "buckets", "moved")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = self.ns = self.moved = 0
        self.buckets = [0] * (len(_BOUNDS_NS) + 1)  # the last: over the largest bound

    def add(self, ns: int, moved: int = 0) -> None:
        i = bisect_left(_BOUNDS_NS, ns)  # the first bound >= ns: Prometheus's le
        with self.lock:
            self.count += 1
            self.ns += ns
            self.buckets[i] += 1
            self.moved += moved

    def read(self) -> tuple[int, int, list[int], int]:
        with self.lock:
            return self.count, self.ns, list(self.buckets), self.moved


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._server = None
        self._lock = threading.Lock()  # adding a label set (rare) against a scrape copying them
        self._fuse_ok: dict[str, _Tally] = {}  # op -> its successes
        self._fuse_failed: dict[tuple[str, int], _Tally] = {}  # (op, errno) -> its failures
        self._requests_ok: dict[str, _Tally] = {}  # kind -> its successes
        self._requests_failed: dict[tuple[str, str], _Tally] = {}  # (kind, outcome) -> its failures
        self.registry.register(_CallsCollector(self))

    # --- sources ---------------------------------------------------------------------------

    def bucket(self, bucket: Bucket) -> Bucket:
        return MeteredBucket(bucket, self)

    def fuse_op(self, op: str, code: int | None, ns: int) -> None:
        """One FUSE operation ended after ``ns`` nanoseconds: ``code`` is the errno it answered,
        None for success. On the path of every call."""
        tally = self._fuse_ok.get(op) if code is None else self._fuse_failed.get((op, code))
        if tally is None:
            tally = self._new(self._fuse_ok, op) if code is None else self._new(self._fuse_failed, (op, code))
        i = bisect_left(_BOUNDS_NS, ns)  # _Tally.add, inline: this runs for every FUSE call
        with tally.lock:
            tally.count += 1
            tally.ns += ns
            tally.buckets[i] += 1

    def request(self, kind: str, outcome: str, ns: int, moved: int = 0) -> None:
        """One call to the bucket ended after ``ns`` nanoseconds, having moved ``moved`` bytes."""
        tally = self._requests_ok.get(kind) if outcome == "ok" else self._requests_failed.get((kind, outcome))
        if tally is None:
            tally = self._new(self._requests_ok, kind) if outcome == "ok" \
                else self._new(self._requests_failed, (kind, outcome))  # fmt: skip
        tally.add(ns, moved)

    def _new(self, tallies: dict, key) -> _Tally:
        with self._lock:
            return tallies.setdefault(key, _Tally())

    def tallies(self) -> tuple[list, list]:
        """((op, outcome, tally), ...) and ((kind, outcome, tally), ...): a copy, for a scrape."""
        with self._lock:
            fuse = [(op, "ok", t) for op, t in self._fuse_ok.items()]
            fuse += [(op, errno.errorcode.get(code, str(code)), t) for (op, code), t in self._fuse_failed.items()]
            requests = [(kind, "ok", t) for kind, t in self._requests_ok.items()]
            requests += [(kind, outcome, t) for (kind, outcome), t in self._requests_failed.items()]
        return fuse, requests

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


class _CallsCollector:
    """FUSE operations and bucket requests, from their tallies: counters by label set and
    latency histograms by op or kind (outcomes merged), as prometheus_client's own would show."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def describe(self) -> list:
        return []  # unchecked: the families are built at each scrape

    def collect(self) -> Iterator:
        fuse, requests = self._metrics.tallies()
        yield from self._calls(fuse, "octuefs_fuse_operations", "FUSE operations served", "op",
                               "octuefs_fuse_operation_seconds", "Latency of FUSE operations")  # fmt: skip
        yield from self._calls(requests, "octuefs_bucket_requests", "Calls to the bucket, retries included", "kind",
                               "octuefs_bucket_request_seconds", "Latency of calls to the bucket")  # fmt: skip
        moved = {"read": 0, "upload": 0}
        for kind, _outcome, tally in requests:
            if kind in moved:
                moved[kind] += tally.read()[3]
        yield CounterMetricFamily("octuefs_bucket_read_bytes", "Bytes of content read from the bucket",
                                  value=moved["read"])
        yield CounterMetricFamily("octuefs_bucket_written_bytes", "Bytes of content uploaded to the bucket",
                                  value=moved["upload"])

    @staticmethod
    def _calls(rows: list, name: str, text: str, label: str, seconds_name: str, seconds_text: str) -> Iterator:
        counts = CounterMetricFamily(name, text, labels=[label, "outcome"])
        merged: dict[str, tuple[int, list[int]]] = {}  # op or kind -> total ns and buckets
        for key, outcome, tally in rows:
            count, ns, buckets, _moved = tally.read()
            counts.add_metric([key, outcome], count)
            total, sums = merged.get(key, (0, [0] * len(buckets)))
            merged[key] = (total + ns, [a + b for a, b in zip(sums, buckets)])
        yield counts
        latency = HistogramMetricFamily(seconds_name, seconds_text, labels=[label])
        for key, (ns, buckets) in merged.items():
            cumulative, running = [], 0
            for le, n in zip(_LE, buckets):
                running += n
                cumulative.append((le, running))
            latency.add_metric([key], cumulative, sum_value=ns / 1e9)
        yield latency


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


class MeteredBucket(Bucket):
    """Times and counts every request method of ``inner`` (each names the kind it is counted
    as: ``list_page`` and ``fetch_page`` are a ``list``, the three reads a ``read``, ...);
    everything else passes through."""

    def __init__(self, inner: Bucket, metrics: Metrics):
        self.inner = inner
        self.name = inner.name
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"MeteredBucket({self.inner!r})"

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)

    def _call(self, kind: str, method, args: tuple, kwargs: dict):
        started = monotonic_ns()
        try:
            result = method(*args, **kwargs)
        except BaseException as exc:
            self._metrics.request(kind, outcome_of(exc), monotonic_ns() - started)
            raise
        ns = monotonic_ns() - started
        moved = 0
        if kind == "read":
            moved = len(result) if isinstance(result, (bytes, bytearray)) else result if isinstance(result, int) \
                else getattr(result, "size", 0)  # fmt: skip
        elif kind == "upload":
            moved = getattr(result, "size", 0)
        self._metrics.request(kind, "ok", ns, moved or 0)
        return result

    def stat(self, *a, **k):
        return self._call("stat", self.inner.stat, a, k)

    def list_page(self, *a, **k):
        return self._call("list", self.inner.list_page, a, k)

    def fetch_page(self, *a, **k):
        return self._call("list", self.inner.fetch_page, a, k)

    def read_range(self, *a, **k):
        return self._call("read", self.inner.read_range, a, k)

    def read_range_into(self, *a, **k):
        return self._call("read", self.inner.read_range_into, a, k)

    def download_to_file(self, *a, **k):
        return self._call("read", self.inner.download_to_file, a, k)

    def upload_file(self, *a, **k):
        return self._call("upload", self.inner.upload_file, a, k)

    def upload_bytes(self, *a, **k):
        return self._call("upload", self.inner.upload_bytes, a, k)

    def upload_range(self, *a, **k):
        return self._call("upload", self.inner.upload_range, a, k)

    def patch_metadata(self, *a, **k):
        return self._call("patch", self.inner.patch_metadata, a, k)

    def copy(self, *a, **k):
        return self._call("copy", self.inner.copy, a, k)

    def compose(self, *a, **k):
        return self._call("compose", self.inner.compose, a, k)

    def delete(self, *a, **k):
        return self._call("delete", self.inner.delete, a, k)

    def with_retry(self, retry: RetryPolicy) -> Bucket:
        return MeteredBucket(self.inner.with_retry(retry), self._metrics)
