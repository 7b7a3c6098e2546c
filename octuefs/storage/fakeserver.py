"""The server half of the fake bucket: one bucket's state with GCS's rules, and what a test does to it.

:class:`FakeServer` plays GCS. It keeps the objects, mints generations, judges preconditions
(when a request takes effect, as GCS does) and applies each request atomically. It knows
nothing of retries or of recovering from a lost answer: that is the client's job, and the
client is :class:`octuefs.storage.fake.FakeBucket`, which runs the production
:class:`~octuefs.storage.retry.Retrier` and ``confirm_*`` recovery over it. Several clients may
share one server (two mounts of one bucket).

GCS's rules, as kept here: every write mints a new, strictly increasing generation at
metageneration 1; a metadata patch keeps the generation and bumps the metageneration (and
``updated``); ``if_generation_match=0`` means "absent"; a metageneration precondition on an
absent object fails; a compose takes 1 to 32 existing sources and makes an object with a
CRC32C and no MD5; listings are in lexicographic order with delimiter roll-up.

Test hooks, each about requests as they reach the server (:meth:`FakeServer.request` is one
request, so one attempt of a client's call):

* ``calls``: a Counter of requests by operation (see :data:`OPERATIONS`).
* :meth:`fail_next`: the next N requests of an operation fail, before they act, after they
  act (the answer is lost), or *late*: the client's attempt times out now and the request
  takes effect later, on a thread of its own, when a gate (a ``threading.Event``) is set or a
  delay has passed, its preconditions judged then. Each late request is a :class:`Landing`.
* :meth:`set_fault_rate`, :meth:`set_latency`: random failures; a slow server.
* ``on_store``: a hook ``(operation, name, data) -> data`` that may change what an upload or
  compose stores (silent corruption, for checksum tests).

Locking: ``lock`` guards every mutable attribute (objects, names, generations, calls, fault
queues and rates, latency, landings). It is never held while sleeping or waiting for a gate,
nor while calling an error factory.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import datetime as dt
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from octuefs.errors import (
    NotFound,
    PreconditionFailed,
    RangeNotSatisfiable,
    StorageError,
    TransientError,
)
from octuefs.storage.checksums import combine_b64, crc32c_b64, md5_b64
from octuefs.storage.objects import ListPage, ObjectInfo

OPERATIONS = ("list", "stat", "read", "download", "upload", "patch", "copy", "delete", "compose")
MAX_COMPOSE_SOURCES = 32

ErrorSpec = BaseException | Callable[[], BaseException]
Gate = threading.Event | float  # a late request lands when the event is set, or after so many seconds


@dataclasses.dataclass
class _Object:
    name: str
    data: bytes
    generation: int
    metageneration: int
    updated: dt.datetime
    content_type: str
    metadata: dict[str, str]
    md5: str | None  # None for a composed object, as on GCS
    crc32c: str | None = None  # computed on first use

    def info(self) -> ObjectInfo:
        if self.crc32c is None:
            self.crc32c = crc32c_b64(self.data)
        return ObjectInfo(self.name, len(self.data), self.generation, self.metageneration, self.updated,
                          self.crc32c, self.md5, self.content_type, "STANDARD", dict(self.metadata))


@dataclasses.dataclass
class _Fault:
    error: ErrorSpec
    after: bool = False
    late: Gate | None = None


@dataclasses.dataclass
class Landing:
    """A request that takes effect after its client gave up on it. ``landed`` is set once it
    has; then ``result`` is what it returned or ``error`` what it raised (a failed
    precondition, say), as GCS would have answered had anyone still listened."""

    operation: str
    landed: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None


def _make(spec: ErrorSpec) -> BaseException:
    return spec if isinstance(spec, BaseException) else spec()


class FakeServer:
    """One bucket on a fake GCS. See the module docstring."""

    def __init__(self, name: str = "fake-bucket", clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, seed: int | None = None):
        self.name = name
        self.clock = clock
        self.sleep = sleep
        self._random = random.Random(seed)
        self.lock = threading.Lock()
        # All below: GUARDED_BY(lock).
        self.objects: dict[str, _Object] = {}
        self._names: list[str] = []  # sorted keys of objects
        self._last_generation = 0
        self.calls: collections.Counter[str] = collections.Counter()
        self._faults: dict[str | None, collections.deque[_Fault]] = collections.defaultdict(collections.deque)
        self._fault_rate = 0.0
        self._fault_operations: frozenset[str] | None = None
        self._fault_factory: Callable[[], BaseException] = lambda: TransientError("injected fault")
        self.latency = 0.0
        self.landings: list[Landing] = []
        self.on_store: Callable[[str, str, bytes], bytes] | None = None

    def __repr__(self) -> str:
        return f"FakeServer({self.name!r}, {len(self.objects)} objects)"

    # --- test hooks ----------------------------------------------------------------------

    def fail_next(self, operation: str | None, error: ErrorSpec | None = None, times: int = 1, after: bool = False,
                  late: Gate | None = None) -> None:
        """The next ``times`` requests of ``operation`` (None: any) fail with ``error`` (an
        exception or a callable making one; default TransientError). ``after``: the request
        acts first (a lost answer). ``late``: the client's attempt fails now as timed out and
        the request acts when ``late`` (an Event) is set, or ``late`` seconds from now."""
        if operation is not None and operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {OPERATIONS}")
        if after and late is not None:
            raise ValueError("a request acts either before its answer is lost (after) or later (late), not both")
        if error is None:
            what = operation or "any"
            error = (lambda: TransientError(f"fake://{self.name}: {what}: no answer (timed out)")) if late is not None \
                else (lambda: TransientError(f"injected fault in {what}"))
        with self.lock:
            self._faults[operation].extend(_Fault(error, after, late) for _ in range(times))

    def set_fault_rate(self, rate: float, error: Callable[[], BaseException] | None = None,
                       operations: tuple[str, ...] | None = None) -> None:
        """Fail a random ``rate`` of requests (of ``operations``, default all) before they act."""
        with self.lock:
            self._fault_rate = rate
            self._fault_operations = frozenset(operations) if operations else None
            if error is not None:
                self._fault_factory = error

    def set_latency(self, seconds: float) -> None:
        with self.lock:
            self.latency = seconds

    def reset_calls(self) -> None:
        with self.lock:
            self.calls.clear()

    def contents(self) -> dict[str, bytes]:
        """Every object's bytes, by name."""
        with self.lock:
            return {name: obj.data for name, obj in self.objects.items()}

    def wait_landed(self, timeout: float = 10.0) -> list[Landing]:
        """Wait until every late request released so far has landed; all landings, in order."""
        end = time.monotonic() + timeout
        with self.lock:
            landings = list(self.landings)
        for landing in landings:
            if not landing.landed.wait(max(0.0, end - time.monotonic())):
                raise TimeoutError(f"a late {landing.operation} did not land within {timeout}s")
        return landings

    # --- one request ---------------------------------------------------------------------

    def request(self, operation: str, act: Callable[[], object], wait_limit: float | None = None) -> object:
        """One request: counted, delayed, perhaps failed; ``act`` runs under the lock, atomically.

        ``wait_limit``: how long the client waits for an answer; a server slower than that
        never sees the request (it fails as timed out, like a connection that never answered)."""
        with self.lock:
            self.calls[operation] += 1
            latency = self.latency
            fault = self._take_fault(operation)
        if latency:
            if wait_limit is not None and latency > wait_limit:
                self.sleep(wait_limit)
                raise TransientError(f"fake://{self.name}: {operation}: no answer within {wait_limit:.1f}s")
            self.sleep(latency)
        if fault is None:
            with self.lock:
                return act()
        if fault.late is not None:
            self._land_later(operation, act, fault.late)
            raise _make(fault.error)
        if fault.after:
            with self.lock:
                act()
        raise _make(fault.error)

    def _take_fault(self, operation: str) -> _Fault | None:  # LOCKS_REQUIRED(lock)
        for key in (operation, None):
            queue = self._faults.get(key)
            if queue:
                return queue.popleft()
        if self._fault_rate and (self._fault_operations is None or operation in self._fault_operations):
            if self._random.random() < self._fault_rate:
                return _Fault(self._fault_factory)
        return None

    def _land_later(self, operation: str, act: Callable[[], object], gate: Gate) -> None:
        landing = Landing(operation)
        with self.lock:
            self.landings.append(landing)

        def land() -> None:
            if isinstance(gate, threading.Event):
                gate.wait()
            else:
                threading.Event().wait(gate)
            try:
                with self.lock:
                    landing.result = act()
            except BaseException as exc:  # the answer nobody hears
                landing.error = exc
            finally:
                landing.landed.set()

        threading.Thread(target=land, name=f"fake-late-{operation}", daemon=True).start()

    # --- state (all LOCKS_REQUIRED(lock)) ------------------------------------------------

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), tz=dt.timezone.utc)

    def _mint_generation(self, now: dt.datetime) -> int:
        """Microseconds since the epoch, like GCS, but strictly increasing."""
        self._last_generation = max(self._last_generation + 1, int(now.timestamp() * 1_000_000))
        return self._last_generation

    def get(self, name: str, generation: int | None = None) -> _Object:
        obj = self.objects.get(name)
        if obj is None or (generation is not None and obj.generation != generation):
            shown = f" generation {generation}" if generation is not None else ""
            raise NotFound(f"fake://{self.name}/{name}{shown}: no such object")
        return obj

    def check(self, name: str, if_generation_match: int | None, if_metageneration_match: int | None = None) -> None:
        """GCS's preconditions on ``name``, as they stand now."""
        obj = self.objects.get(name)
        if if_generation_match is not None:
            actual = obj.generation if obj is not None else 0
            if actual != if_generation_match:
                raise PreconditionFailed(f"fake://{self.name}/{name}: generation is {actual}, not {if_generation_match}")
        if if_metageneration_match is not None and (obj is None or obj.metageneration != if_metageneration_match):
            actual = "absent" if obj is None else f"at metageneration {obj.metageneration}"
            raise PreconditionFailed(f"fake://{self.name}/{name}: {actual}, not at metageneration "
                                     f"{if_metageneration_match}")

    def _put(self, obj: _Object) -> ObjectInfo:
        if obj.name not in self.objects:
            bisect.insort(self._names, obj.name)
        self.objects[obj.name] = obj
        return obj.info()

    @staticmethod
    def _check_name(name: str) -> None:
        if not name or "\n" in name or "\r" in name or len(name.encode("utf-8")) > 1024:
            raise ValueError(f"invalid object name {name!r}")

    def _new(self, operation: str, name: str, data: bytes, metadata: Mapping[str, str], content_type: str,
             md5: bool = True) -> _Object:
        self._check_name(name)
        stored = self.on_store(operation, name, data) if self.on_store is not None else data
        now = self._now()
        return _Object(name, stored, self._mint_generation(now), 1, now, content_type, dict(metadata),
                       md5_b64(stored) if md5 else None)

    # --- GCS's operations (all LOCKS_REQUIRED(lock)) -------------------------------------

    def list(self, prefix: str, delimiter: str | None, start: str, limit: int,
             encode_token: Callable[[str], str]) -> ListPage:
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        markers: dict[str, ObjectInfo | None] | None = {} if delimiter else None  # (includeTrailingDelimiter)
        i = bisect.bisect_left(self._names, start)
        while i < len(self._names):
            name = self._names[i]
            if not name.startswith(prefix):
                break
            if len(objects) + len(prefixes) == limit:
                return ListPage(objects, prefixes, encode_token(name), markers)
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                rolled = name[: cut + len(delimiter)]
                prefixes.append(rolled)
                marker = self.objects.get(rolled)
                markers[rolled] = marker.info() if marker is not None else None
                i = bisect.bisect_left(self._names, _past_prefix(rolled), i)
            else:
                objects.append(self.objects[name].info())
                i += 1
        return ListPage(objects, prefixes, None, markers)

    def read(self, name: str, start: int, end: int, generation: int | None) -> bytes:
        data = self.get(name, generation).data
        if data and start >= len(data):
            raise RangeNotSatisfiable(f"fake://{self.name}/{name}: range starts at {start}, size is {len(data)}")
        return data[start:end]

    def insert(self, name: str, data: bytes, metadata: Mapping[str, str], content_type: str,
               if_generation_match: int | None, if_metageneration_match: int | None,
               crc32c: str | None = None) -> ObjectInfo:
        """An upload; with ``crc32c``, refused (as GCS answers 400) unless the bytes match it."""
        if crc32c is not None and crc32c != crc32c_b64(data):
            raise StorageError(f"fake://{self.name}/{name}: HTTP 400: the CRC32C sent, {crc32c}, "
                               "does not match the data")
        self.check(name, if_generation_match, if_metageneration_match)
        return self._put(self._new("upload", name, data, metadata, content_type))

    def patch(self, name: str, changes: Mapping[str, str | None], content_type: str | None,
              if_generation_match: int | None, if_metageneration_match: int | None) -> ObjectInfo:
        obj = self.get(name)
        self.check(name, if_generation_match, if_metageneration_match)
        if not changes and content_type is None:
            return obj.info()  # nothing to change: GCS would not bump anything either
        metadata = dict(obj.metadata)
        for key, value in changes.items():
            if value is None:
                metadata.pop(key, None)
            else:
                metadata[key] = str(value)
        return self._put(dataclasses.replace(
            obj, metadata=metadata, metageneration=obj.metageneration + 1, updated=self._now(),
            content_type=content_type if content_type is not None else obj.content_type))

    def rewrite(self, source: str, destination: str, if_source_generation_match: int | None,
                if_generation_match: int | None, if_metageneration_match: int | None = None,
                if_source_metageneration_match: int | None = None) -> ObjectInfo:
        src = self.get(source)
        if if_source_generation_match is not None and src.generation != if_source_generation_match:
            raise PreconditionFailed(f"fake://{self.name}/{source}: generation is {src.generation}, "
                                     f"not {if_source_generation_match}")
        if if_source_metageneration_match is not None and src.metageneration != if_source_metageneration_match:
            raise PreconditionFailed(f"fake://{self.name}/{source}: metageneration is {src.metageneration}, "
                                     f"not {if_source_metageneration_match}")
        self._check_name(destination)
        self.check(destination, if_generation_match, if_metageneration_match)
        now = self._now()
        copied = dataclasses.replace(src, name=destination, generation=self._mint_generation(now), metageneration=1,
                                     updated=now, metadata=dict(src.metadata))
        return self._put(copied)

    def delete(self, name: str, if_generation_match: int | None, if_metageneration_match: int | None = None) -> None:
        self.get(name)
        self.check(name, if_generation_match, if_metageneration_match)
        del self.objects[name]
        self._names.pop(bisect.bisect_left(self._names, name))

    def compose(self, sources: Sequence[str], destination: str, metadata: Mapping[str, str], content_type: str,
                if_generation_match: int | None, if_metageneration_match: int | None) -> ObjectInfo:
        if not 1 <= len(sources) <= MAX_COMPOSE_SOURCES:
            raise StorageError(f"fake://{self.name}/{destination}: HTTP 400: a compose takes 1 to "
                               f"{MAX_COMPOSE_SOURCES} sources, not {len(sources)}")
        parts = [self.get(source) for source in sources]
        self.check(destination, if_generation_match, if_metageneration_match)
        obj = self._new("compose", destination, b"".join(p.data for p in parts), metadata, content_type, md5=False)
        if obj.data == b"".join(p.data for p in parts):  # (else on_store changed it: let the CRC tell)
            obj.crc32c = combine_b64((p.info().crc32c, len(p.data)) for p in parts)
        return self._put(obj)


def _past_prefix(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    while prefix and ord(prefix[-1]) == 0x10FFFF:
        prefix = prefix[:-1]
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff" * 2
