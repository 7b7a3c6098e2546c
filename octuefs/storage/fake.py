"""An in-memory bucket with real GCS semantics, for fast tests: the client half.

:class:`FakeBucket` is a :class:`~octuefs.storage.base.Bucket` whose "network" is a method call
on a :class:`~octuefs.storage.fakeserver.FakeServer` (the server half: state, GCS's rules,
faults, late landings; read its docstring). Like :class:`~octuefs.storage.gcs.GCSBucket`, the
client runs every call under the production :class:`~octuefs.storage.retry.Retrier`, and
recovers from a lost answer with the production ``confirm_*`` functions: a test that loses an
answer here exercises the same recovery code as on GCS, not a copy of it.

Each method builds its request (a closure over the server's operation, judged when the server
applies it) and sends it; every attempt is one request, counted in ``calls`` by operation
(``list``, ``stat``, ``read``, ``download``, ``upload``, ``patch``, ``copy``, ``delete``,
``compose``). Inside a bounded call (:class:`~octuefs.storage.base.BoundedBucket`) an attempt waits for the
server at most its attempt timeout, as a client with a socket timeout would.

Test hooks (the server's, reachable from the client for convenience): ``calls``,
:meth:`fail_next` (before, after, or ``late=``), :meth:`set_fault_rate`, :meth:`set_latency`,
:meth:`reset_calls`, :meth:`objects`, :meth:`wait_landed`, ``clock``. Two clients given the
same ``server`` see one bucket (two mounts, or a mount and another writer).

Transient failures are retried with a fast default policy so retries do not slow tests.

Locking: the server's ``lock`` (also ``_lock`` here) guards the bucket's state; the client
keeps none of its own.
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

from octuefs.errors import TransientError
from octuefs.storage import checksums
from octuefs.storage.base import Bucket, read_file_range
from octuefs.storage.checksums import crc32c, crc32c_b64, md5_b64
from octuefs.storage.fakeserver import OPERATIONS, ErrorSpec, FakeServer, Gate, Landing
from octuefs.storage.objects import (
    DEFAULT_CONTENT_TYPE,
    ListPage,
    ObjectInfo,
    RetryPolicy,
    check_sources,
    guess_content_type,
)
from octuefs.storage.retry import (
    Retrier,
    composed_fingerprint,
    confirm_copy,
    confirm_delete,
    confirm_patch,
    confirm_upload,
    current_bound,
    cut_to,
)

# The server half's names, and the checksums, are importable from here too (tests do).
__all__ = ["FAST_RETRY", "OPERATIONS", "ErrorSpec", "FakeBucket", "FakeServer", "Gate", "Landing", "crc32c",
           "crc32c_b64", "md5_b64"]

_DOING = {"list": "listing", "stat": "looking up", "read": "reading", "download": "downloading",
          "upload": "uploading", "patch": "changing the metadata in", "copy": "copying in", "delete": "deleting in",
          "compose": "composing in"}

FAST_RETRY = RetryPolicy(initial_delay=0.001, max_delay=0.01, multiplier=2.0, deadline=2.0)


def _encode_token(resume_at: str) -> str:
    return base64.urlsafe_b64encode(resume_at.encode("utf-8", "surrogatepass")).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode("utf-8", "surrogatepass")
    except ValueError as exc:
        raise ValueError(f"invalid page token {token!r}") from exc


class FakeBucket(Bucket):
    """A client of a fake bucket. See the module docstring for semantics, hooks and locking."""

    def __init__(
        self,
        name: str = "fake-bucket",
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy = FAST_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        server: FakeServer | None = None,
    ):
        """``clock``: POSIX seconds for ``updated`` and generations. ``retry``: the policy for
        transient faults. ``sleep`` and ``monotonic``: what the retry loop and the server's
        latency sleep with and time with (inject both to test timing without waiting).
        ``seed``: for :meth:`set_fault_rate`. ``server``: the bucket to be a client of (by
        default a new one; ``clock``, ``sleep`` and ``seed`` then go to it)."""
        self.server = server if server is not None else FakeServer(name, clock, sleep, seed)
        self.name = self.server.name
        self._retrier = Retrier(retry, sleep=sleep, clock=monotonic)

    def with_retry(self, retry: RetryPolicy) -> FakeBucket:
        """Another client of the same server, retrying by ``retry`` (sleeping and timing as this one)."""
        return FakeBucket(retry=retry, sleep=self._retrier.sleep, monotonic=self._retrier.clock, server=self.server)

    def __repr__(self) -> str:
        return f"FakeBucket({self.name!r}, {len(self.server.objects)} objects)"

    # --- the server's hooks, for convenience ---------------------------------------------

    @property
    def calls(self):
        return self.server.calls

    @property
    def clock(self) -> Callable[[], float]:
        return self.server.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.server.clock = clock

    @property
    def latency(self) -> float:
        return self.server.latency

    @property
    def _lock(self):
        return self.server.lock

    @property
    def _objects(self):  # LOCKS_REQUIRED(_lock)
        return self.server.objects

    def fail_next(self, operation: str | None, error: ErrorSpec | None = None, times: int = 1, after: bool = False,
                  late: Gate | None = None) -> None:
        """See :meth:`FakeServer.fail_next`: before, ``after`` (a lost answer) or ``late``."""
        self.server.fail_next(operation, error, times, after, late)

    def set_fault_rate(self, rate: float, error: Callable[[], BaseException] | None = None,
                       operations: tuple[str, ...] | None = None) -> None:
        """Fail a random ``rate`` of attempts (of ``operations``, default all) before they act."""
        self.server.set_fault_rate(rate, error, operations)

    def set_latency(self, seconds: float) -> None:
        """Sleep this long before every attempt, as a slow bucket would."""
        self.server.set_latency(seconds)

    def reset_calls(self) -> None:
        self.server.reset_calls()

    def objects(self) -> dict[str, bytes]:
        """A snapshot of every object's bytes, by name (for assertions on the bucket's state)."""
        return self.server.contents()

    def wait_landed(self, timeout: float = 10.0) -> list[Landing]:
        """See :meth:`FakeServer.wait_landed`."""
        return self.server.wait_landed(timeout)

    # --- the client ----------------------------------------------------------------------

    def _run(self, operation: str, act: Callable[[], object], after_ambiguous=None):
        """One logical call: requests to the server under the production retrier."""

        def attempt(left: float):
            bound = current_bound()
            limit = cut_to(bound.attempt_timeout, left) if bound is not None else None
            return self.server.request(operation, act, limit)

        return self._retrier.call_within(attempt, f"{_DOING[operation]} fake://{self.name}", after_ambiguous)

    # --- reading -------------------------------------------------------------------------

    def list_page(self, prefix: str = "", delimiter: str | None = "/", page_token: str | None = None,
                  max_results: int = 1000) -> ListPage:
        limit = max(1, min(max_results, 1000))
        start = max(prefix, _decode_token(page_token)) if page_token else prefix
        return self._run("list", lambda: self.server.list(prefix, delimiter, start, limit, _encode_token))

    def stat(self, name: str) -> ObjectInfo:
        return self._run("stat", lambda: self.server.get(name).info())

    def read_range(self, name: str, start: int, end: int, generation: int | None = None) -> bytes:
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        if end == start:
            return b""
        return self._run("read", lambda: self.server.read(name, start, end, generation))

    def download_to_file(self, name: str, path: str, generation: int | None = None) -> ObjectInfo:
        def act() -> tuple[bytes, ObjectInfo]:
            obj = self.server.get(name, generation)
            return obj.data, obj.info()

        data, info = self._run("download", act)
        fd, tmp = tempfile.mkstemp(prefix=".octuefs-download-", dir=os.path.dirname(os.path.abspath(path)))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # like GCSBucket: never a partly written file at ``path``
        except BaseException:
            os.unlink(tmp)
            raise
        return info

    # --- writing -------------------------------------------------------------------------

    def upload_file(self, name: str, path: str, metadata: Mapping[str, str], if_generation_match: int | None = None,
                    content_type: str | None = None, *, progress: Callable[[], None] | None = None,
                    if_metageneration_match: int | None = None) -> ObjectInfo:
        with open(path, "rb") as f:
            data = f.read()
        if progress is not None:
            progress()
        return self.upload_bytes(name, data, metadata, if_generation_match, content_type,
                                 if_metageneration_match=if_metageneration_match)

    def upload_range(self, name: str, path: str, start: int, length: int, *, crc32c: str | None = None,
                     progress: Callable[[], None] | None = None) -> ObjectInfo:
        """Counted as one "upload"; the bytes are read from the file once, before the first attempt."""
        data = read_file_range(path, start, length)
        if progress is not None:
            progress()

        def act() -> ObjectInfo:
            info = self.server.insert(name, data, {}, DEFAULT_CONTENT_TYPE, None, None, crc32c)
            if crc32c is not None and info.crc32c != crc32c:  # (an on_store hook changed the bytes)
                raise TransientError(f"fake://{self.name}/{name}: stored with CRC32C {info.crc32c}, sent with {crc32c}")
            return info

        return self._run("upload", act)

    def upload_bytes(self, name: str, data: bytes, metadata: Mapping[str, str] | None = None,
                     if_generation_match: int | None = None, content_type: str | None = None, *,
                     if_metageneration_match: int | None = None) -> ObjectInfo:
        """Counted as one "upload", like upload_file, without a temporary file."""
        metadata = dict(metadata or {})
        content_type = content_type or guess_content_type(name)
        crc = checksums.crc32c_b64(data)  # sent with the bytes, as GCSBucket does: the server checks it

        def act() -> ObjectInfo:
            return self.server.insert(name, data, metadata, content_type, if_generation_match,
                                      if_metageneration_match, crc)

        resolve = confirm_upload(self.stat, name, data, metadata, if_generation_match, if_metageneration_match)
        return self._run("upload", act, after_ambiguous=resolve)

    def patch_metadata(self, name: str, changes: Mapping[str, str | None], if_metageneration_match: int | None = None,
                       if_generation_match: int | None = None, content_type: str | None = None) -> ObjectInfo:
        changes = dict(changes)
        resolve = confirm_patch(self.stat, name, changes, content_type, if_generation_match, if_metageneration_match)
        return self._run("patch", lambda: self.server.patch(name, changes, content_type, if_generation_match,
                                                            if_metageneration_match), after_ambiguous=resolve)

    def copy(self, source: str, destination: str, if_source_generation_match: int | None = None,
             if_generation_match: int | None = None, *, if_metageneration_match: int | None = None,
             if_source_metageneration_match: int | None = None) -> ObjectInfo:
        resolve = confirm_copy(self.stat, source, destination, if_source_generation_match, if_generation_match,
                               if_source_metageneration_match=if_source_metageneration_match)
        return self._run("copy", lambda: self.server.rewrite(
            source, destination, if_source_generation_match, if_generation_match,
            if_metageneration_match=if_metageneration_match,
            if_source_metageneration_match=if_source_metageneration_match), after_ambiguous=resolve)

    def compose(self, sources: Sequence[str], destination: str, metadata: Mapping[str, str] | None = None,
                content_type: str | None = None, if_generation_match: int | None = None,
                if_metageneration_match: int | None = None) -> ObjectInfo:
        sources = check_sources(sources)
        metadata = dict(metadata or {})
        content_type = content_type or guess_content_type(destination)

        def act() -> ObjectInfo:
            return self.server.compose(sources, destination, metadata, content_type, if_generation_match,
                                       if_metageneration_match)

        resolve = confirm_upload(self.stat, destination, composed_fingerprint(self.stat, sources), metadata,
                                 if_generation_match, if_metageneration_match)
        return self._run("compose", act, after_ambiguous=resolve)

    def delete(self, name: str, if_generation_match: int | None = None, *,
               if_metageneration_match: int | None = None) -> None:
        self._run("delete", lambda: self.server.delete(name, if_generation_match, if_metageneration_match),
                  after_ambiguous=confirm_delete)
