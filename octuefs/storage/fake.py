"""An in-memory bucket with real GCS semantics, for fast tests; plus hooks to observe and break it.

Semantics follow GCS (not fake-gcs-server): every write mints a new, strictly increasing
generation; a metadata patch keeps the generation and bumps the metageneration (and ``updated``);
preconditions are enforced on every call; listings are in lexicographic (UTF-8 byte) order with
delimiter roll-up, and a page holds at most ``max_results`` objects plus prefixes; md5 and crc32c
are computed (base64, as GCS reports them; crc32c lazily, in pure Python, so a huge object costs
time only when it is first listed or stat-ed).

Test hooks:

* ``calls``: a Counter of requests by operation (``list``, ``stat``, ``read``, ``download``,
  ``upload``, ``patch``, ``copy``, ``delete``). Each attempt counts, including retried and
  failed ones, as each would be a request to GCS.
* :meth:`FakeBucket.fail_next`: make the next N attempts of an operation raise an error, before
  or after the operation takes effect (``after=True`` simulates a lost response).
* :meth:`FakeBucket.set_fault_rate`: fail a random fraction of attempts.
* :meth:`FakeBucket.set_latency`: sleep before every attempt (outside the lock). Inside a
  bounded call (:mod:`octuefs.storage.bounded`) an attempt waits at most its attempt timeout
  and then fails as timed out, like a request to a server that does not answer.
* ``clock``: a callable returning POSIX seconds, used for ``updated`` (and generations).

Transient failures go through the same :class:`~octuefs.storage.retry.Retrier` as
:class:`~octuefs.storage.gcs.GCSBucket`, with a fast default policy so retries do not slow tests.

Locking: one lock, ``_lock``, guards all mutable state (``_objects``, ``_names``,
``_last_generation``, ``calls``, the fault queues and rates, ``latency``). It is never held while
sleeping or while calling back into test-supplied factories.
"""

from __future__ import annotations

import base64
import bisect
import collections
import dataclasses
import datetime as dt
import hashlib
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Mapping

from octuefs.errors import NotFound, PreconditionFailed, RangeNotSatisfiable, TransientError
from octuefs.storage import guess_content_type
from octuefs.storage.base import Bucket, ListPage, ObjectInfo, RetryPolicy
from octuefs.storage.retry import Retrier, confirm_copy, confirm_delete, confirm_upload, current_bound, cut_to

OPERATIONS = ("list", "stat", "read", "download", "upload", "patch", "copy", "delete")
_DOING = {"list": "listing", "stat": "looking up", "read": "reading", "download": "downloading",
          "upload": "uploading", "patch": "changing the metadata in", "copy": "copying in", "delete": "deleting in"}

FAST_RETRY = RetryPolicy(initial_delay=0.001, max_delay=0.01, multiplier=2.0, deadline=2.0)

ErrorSpec = BaseException | Callable[[], BaseException]


# --- crc32c (Castagnoli), table-driven ------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c_b64(data: bytes) -> str:
    """crc32c as GCS reports it: base64 of the big-endian 4 bytes."""
    return base64.b64encode(crc32c(data).to_bytes(4, "big")).decode()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


# --- stored objects --------------------------------------------------------------------------


@dataclasses.dataclass
class _Object:
    name: str
    data: bytes
    generation: int
    metageneration: int
    updated: dt.datetime
    content_type: str
    metadata: dict[str, str]
    md5: str
    crc32c: str | None = None  # computed on first use

    def info(self) -> ObjectInfo:
        if self.crc32c is None:
            self.crc32c = crc32c_b64(self.data)
        return ObjectInfo(
            name=self.name,
            size=len(self.data),
            generation=self.generation,
            metageneration=self.metageneration,
            updated=self.updated,
            crc32c=self.crc32c,
            md5=self.md5,
            content_type=self.content_type,
            storage_class="STANDARD",
            metadata=dict(self.metadata),
        )


def _after(name: str) -> str:
    """The smallest string greater than ``name``."""
    return name + "\x00"


def _past_prefix(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    while prefix and ord(prefix[-1]) == 0x10FFFF:
        prefix = prefix[:-1]
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff" * 2


def _encode_token(resume_at: str) -> str:
    return base64.urlsafe_b64encode(resume_at.encode("utf-8", "surrogatepass")).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode("utf-8", "surrogatepass")
    except ValueError as exc:
        raise ValueError(f"invalid page token {token!r}") from exc


class FakeBucket(Bucket):
    """An in-memory bucket. See the module docstring for semantics, hooks and locking."""

    def __init__(
        self,
        name: str = "fake-bucket",
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy = FAST_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        """``clock``: POSIX seconds for ``updated`` and generations. ``retry``: the policy for
        injected transient faults. ``sleep`` and ``monotonic``: what the retry loop and
        :meth:`set_latency` sleep with and time with (inject both to test timing without
        waiting). ``seed``: for :meth:`set_fault_rate`."""
        self.name = name
        self.clock = clock
        self._sleep = sleep
        self._retrier = Retrier(retry, sleep=sleep, clock=monotonic)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        # All below: GUARDED_BY(_lock).
        self._objects: dict[str, _Object] = {}
        self._names: list[str] = []  # sorted keys of _objects
        self._last_generation = 0
        self.calls: collections.Counter[str] = collections.Counter()
        self._faults: dict[str | None, collections.deque[tuple[ErrorSpec, bool]]] = collections.defaultdict(
            collections.deque
        )
        self._fault_rate = 0.0
        self._fault_operations: frozenset[str] | None = None
        self._fault_factory: Callable[[], BaseException] = lambda: TransientError("injected fault")
        self.latency = 0.0

    def __repr__(self) -> str:
        return f"FakeBucket({self.name!r}, {len(self._objects)} objects)"

    # --- test hooks ----------------------------------------------------------------------

    def fail_next(self, operation: str | None, error: ErrorSpec = None, times: int = 1, after: bool = False) -> None:
        """Make the next ``times`` attempts of ``operation`` (None: any operation) raise ``error``
        (an exception, or a callable making one; default TransientError). With ``after``, the
        operation takes effect first and then the error is raised, like a lost response."""
        if operation is not None and operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {OPERATIONS}")
        spec = error if error is not None else (lambda: TransientError(f"injected fault in {operation or 'any'}"))
        with self._lock:
            for _ in range(times):
                self._faults[operation].append((spec, after))

    def set_fault_rate(
        self,
        rate: float,
        error: Callable[[], BaseException] | None = None,
        operations: tuple[str, ...] | None = None,
    ) -> None:
        """Fail a random ``rate`` of attempts (of ``operations``, default all) before they act."""
        with self._lock:
            self._fault_rate = rate
            self._fault_operations = frozenset(operations) if operations else None
            if error is not None:
                self._fault_factory = error

    def set_latency(self, seconds: float) -> None:
        """Sleep this long before every attempt, as a slow bucket would."""
        with self._lock:
            self.latency = seconds

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()

    def objects(self) -> dict[str, bytes]:
        """A snapshot of every object's bytes, by name (for assertions on the bucket's state)."""
        with self._lock:
            return {name: obj.data for name, obj in self._objects.items()}

    # --- machinery -----------------------------------------------------------------------

    def _run(self, operation: str, act: Callable[[], object], after_ambiguous=None):
        """One logical call: attempts (each counted, delayed, maybe failed) under the retrier."""

        def attempt(left: float):
            with self._lock:
                self.calls[operation] += 1
                latency = self.latency
                fault = self._take_fault(operation)
            if latency:
                bound = current_bound()
                limit = cut_to(bound.attempt_timeout, left) if bound is not None else None
                if limit is not None and latency > limit:  # a bounded call stops waiting
                    self._sleep(limit)
                    raise TransientError(f"fake://{self.name}: {operation}: no answer within {limit:.1f}s")
                self._sleep(latency)
            if fault is not None and not fault[1]:
                raise _make(fault[0])
            with self._lock:
                result = act()
            if fault is not None:
                raise _make(fault[0])
            return result

        return self._retrier.call_within(attempt, f"{_DOING[operation]} fake://{self.name}", after_ambiguous)

    def _take_fault(self, operation: str) -> tuple[ErrorSpec, bool] | None:  # LOCKS_REQUIRED(_lock)
        for key in (operation, None):
            queue = self._faults.get(key)
            if queue:
                return queue.popleft()
        if self._fault_rate and (self._fault_operations is None or operation in self._fault_operations):
            if self._random.random() < self._fault_rate:
                return (self._fault_factory, False)
        return None

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), tz=dt.timezone.utc)

    def _mint_generation(self, now: dt.datetime) -> int:  # LOCKS_REQUIRED(_lock)
        """Microseconds since the epoch, like GCS, but strictly increasing."""
        self._last_generation = max(self._last_generation + 1, int(now.timestamp() * 1_000_000))
        return self._last_generation

    def _get(self, name: str, generation: int | None = None) -> _Object:  # LOCKS_REQUIRED(_lock)
        obj = self._objects.get(name)
        if obj is None or (generation is not None and obj.generation != generation):
            gen = f" generation {generation}" if generation is not None else ""
            raise NotFound(f"fake://{self.name}/{name}{gen}: no such object")
        return obj

    def _check_generation(self, name: str, expected: int | None) -> None:  # LOCKS_REQUIRED(_lock)
        if expected is None:
            return
        obj = self._objects.get(name)
        actual = obj.generation if obj is not None else 0
        if actual != expected:
            raise PreconditionFailed(f"fake://{self.name}/{name}: generation is {actual}, not {expected}")

    def _check_metageneration(self, name: str, expected: int | None) -> None:  # LOCKS_REQUIRED(_lock)
        """GCS: a metageneration precondition on an absent object fails."""
        if expected is None:
            return
        obj = self._objects.get(name)
        if obj is None or obj.metageneration != expected:
            actual = "absent" if obj is None else f"at metageneration {obj.metageneration}"
            raise PreconditionFailed(f"fake://{self.name}/{name}: {actual}, not at metageneration {expected}")

    def _put(self, obj: _Object) -> None:  # LOCKS_REQUIRED(_lock)
        if obj.name not in self._objects:
            bisect.insort(self._names, obj.name)
        self._objects[obj.name] = obj

    def _new_object(self, name: str, data: bytes, metadata: Mapping[str, str], content_type: str) -> _Object:
        if not name or "\n" in name or "\r" in name or len(name.encode("utf-8")) > 1024:
            raise ValueError(f"invalid object name {name!r}")
        now = self._now()
        return _Object(
            name=name,
            data=data,
            generation=self._mint_generation(now),
            metageneration=1,
            updated=now,
            content_type=content_type,
            metadata=dict(metadata),
            md5=md5_b64(data),
        )

    # --- reading -------------------------------------------------------------------------

    def list_page(
        self,
        prefix: str = "",
        delimiter: str | None = "/",
        page_token: str | None = None,
        max_results: int = 1000,
    ) -> ListPage:
        limit = max(1, min(max_results, 1000))
        start = max(prefix, _decode_token(page_token)) if page_token else prefix
        return self._run("list", lambda: self._list_locked(prefix, delimiter, start, limit))

    def _list_locked(self, prefix: str, delimiter: str | None, start: str, limit: int) -> ListPage:
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        i = bisect.bisect_left(self._names, start)
        while i < len(self._names):
            name = self._names[i]
            if not name.startswith(prefix):
                break
            if len(objects) + len(prefixes) == limit:
                return ListPage(objects, prefixes, _encode_token(name))
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                rolled = name[: cut + len(delimiter)]
                prefixes.append(rolled)
                i = bisect.bisect_left(self._names, _past_prefix(rolled), i)
            else:
                objects.append(self._objects[name].info())
                i += 1
        return ListPage(objects, prefixes, None)

    def stat(self, name: str) -> ObjectInfo:
        return self._run("stat", lambda: self._get(name).info())

    def read_range(self, name: str, start: int, end: int, generation: int | None = None) -> bytes:
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        if end == start:
            return b""

        def act() -> bytes:
            data = self._get(name, generation).data
            if data and start >= len(data):
                raise RangeNotSatisfiable(f"fake://{self.name}/{name}: range starts at {start}, size is {len(data)}")
            return data[start:end]

        return self._run("read", act)

    def download_to_file(self, name: str, path: str, generation: int | None = None) -> ObjectInfo:
        def act() -> tuple[bytes, ObjectInfo]:
            obj = self._get(name, generation)
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

    def upload_file(
        self,
        name: str,
        path: str,
        metadata: Mapping[str, str],
        if_generation_match: int | None = None,
        content_type: str | None = None,
        *,
        progress: Callable[[], None] | None = None,
        if_metageneration_match: int | None = None,
    ) -> ObjectInfo:
        with open(path, "rb") as f:
            data = f.read()
        if progress is not None:
            progress()
        return self.upload_bytes(name, data, metadata, if_generation_match, content_type,
                                 if_metageneration_match=if_metageneration_match)

    def upload_bytes(
        self,
        name: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        if_generation_match: int | None = None,
        content_type: str | None = None,
        *,
        if_metageneration_match: int | None = None,
    ) -> ObjectInfo:
        """Counted as one "upload", like upload_file, without a temporary file."""
        metadata = dict(metadata or {})
        content_type = content_type or guess_content_type(name)

        def act() -> ObjectInfo:
            self._check_generation(name, if_generation_match)
            self._check_metageneration(name, if_metageneration_match)
            obj = self._new_object(name, data, metadata, content_type)
            self._put(obj)
            return obj.info()

        resolve = confirm_upload(self.stat, name, data, metadata, if_generation_match, if_metageneration_match)
        return self._run("upload", act, after_ambiguous=resolve)

    def patch_metadata(
        self,
        name: str,
        changes: Mapping[str, str | None],
        if_metageneration_match: int | None = None,
        if_generation_match: int | None = None,
        content_type: str | None = None,
    ) -> ObjectInfo:
        changes = dict(changes)

        def act() -> ObjectInfo:
            obj = self._get(name)
            if if_generation_match is not None and obj.generation != if_generation_match:
                raise PreconditionFailed(f"fake://{self.name}/{name}: generation is {obj.generation}, not {if_generation_match}")
            if if_metageneration_match is not None and obj.metageneration != if_metageneration_match:
                raise PreconditionFailed(
                    f"fake://{self.name}/{name}: metageneration is {obj.metageneration}, not {if_metageneration_match}"
                )
            if not changes and content_type is None:
                return obj.info()  # nothing to change: GCS would not bump anything either
            metadata = dict(obj.metadata)
            for key, value in changes.items():
                if value is None:
                    metadata.pop(key, None)
                else:
                    metadata[key] = str(value)
            updated = dataclasses.replace(
                obj,
                metadata=metadata,
                metageneration=obj.metageneration + 1,
                updated=self._now(),
                content_type=content_type if content_type is not None else obj.content_type,
            )
            self._put(updated)
            return updated.info()

        return self._run("patch", act)

    def copy(
        self,
        source: str,
        destination: str,
        if_source_generation_match: int | None = None,
        if_generation_match: int | None = None,
    ) -> ObjectInfo:
        def act() -> ObjectInfo:
            src = self._get(source)
            if if_source_generation_match is not None and src.generation != if_source_generation_match:
                raise PreconditionFailed(
                    f"fake://{self.name}/{source}: generation is {src.generation}, not {if_source_generation_match}"
                )
            self._check_generation(destination, if_generation_match)
            obj = self._new_object(destination, src.data, src.metadata, src.content_type)
            obj.crc32c = src.crc32c
            self._put(obj)
            return obj.info()

        resolve = confirm_copy(self.stat, source, destination, if_source_generation_match, if_generation_match)
        return self._run("copy", act, after_ambiguous=resolve)

    def delete(self, name: str, if_generation_match: int | None = None) -> None:
        def act() -> None:
            obj = self._get(name)
            if if_generation_match is not None and obj.generation != if_generation_match:
                raise PreconditionFailed(f"fake://{self.name}/{name}: generation is {obj.generation}, not {if_generation_match}")
            del self._objects[name]
            self._names.pop(bisect.bisect_left(self._names, name))

        self._run("delete", act, after_ambiguous=confirm_delete)


def _make(spec: ErrorSpec) -> BaseException:
    if isinstance(spec, BaseException):
        return spec
    return spec()
