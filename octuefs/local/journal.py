"""The durable state of a persistent local emulator: every bucket and object as octuefs last
acknowledged it, so that an answer the client saw survives ``kill -9`` and a power loss.

fake-gcs-server holds the objects in memory; :mod:`octuefs.local.front` answers the client
only after this journal has the mutation on disk. Layout (under ``data_dir``, beside the
snapshot that :mod:`octuefs.local.snapshots` describes)::

    journal/<seq>.jsonl   append-only, one JSON line per acknowledged mutation, fdatasync()ed
                          before the answer goes out; a torn last line (the crash came while it
                          was written, so nobody was answered) is ignored

Records: ``{"op": "put", "b": BUCKET, "e": ENTRY}`` (ENTRY is a manifest entry with its stable
``generation`` and ``metageneration``, and either ``blob``, bytes already durable in
``snapshot/blobs``, or ``data``, the bytes themselves in base64 when they are small), ``{"op":
"del", "b": BUCKET, "n": NAME}``, ``{"op": "mkb", "b": BUCKET}`` and ``{"op": "rmb", "b":
BUCKET}``. Replaying the snapshot's manifest and then every segment in order gives the state.

Compaction (:meth:`Journal.compact`, the emulator's "snapshot"): under the lock, the state is
copied and a new segment opened; then small objects' bytes become blobs, the manifest is
committed and the older segments are deleted. A crash at any point leaves either the old
manifest and all segments, or the new manifest and segments whose records it already holds
(replaying them again changes nothing).

Generations. The client sees *stable* generations: those the objects had when written, kept
here, whatever fake-gcs-server numbers them after a restart (it gives every restored object a
new one). The front translates; :attr:`Journal.objects` maps each object to its stable
generation, metageneration and the server's generation of it.

Failures: a record that cannot be written whole (a full disk) is cut off again, and a failed
fdatasync leaves the segment's state unknown; either way :attr:`Journal.failed` says why, nothing
more is appended, and the front refuses every request until a restart (the server may hold a
change the journal does not: serving it would show a version that the restart takes back).

Lock: ``_lock`` guards ``objects``, ``buckets``, ``_segment``, ``appended``, ``failed`` and
``_inflight``; it is taken
after any of the front's per-object locks, and nothing but the append and its fdatasync is done
while holding it. ``_compact_lock`` serializes compactions and is taken before ``_lock``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import errno
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from octuefs.durable import fsync_dir
from octuefs.local.snapshots import SNAPSHOT_FORMAT, SnapshotError, SnapshotStats, Store

log = logging.getLogger(__name__)

INLINE_MAX = 128 * 1024  # bytes up to this size go into the journal record itself: one fsync, not three


@dataclasses.dataclass
class Stored:
    """One live object: its manifest entry (stable ``generation`` and ``metageneration``
    included), the server's generation of it, and its bytes while they are not a blob yet."""

    entry: dict
    server_generation: int
    data: bytes | None = None

    @property
    def generation(self) -> int:
        return int(self.entry["generation"])

    @property
    def metageneration(self) -> int:
        return int(self.entry["metageneration"])


class Journal:
    """The journal of one ``data_dir``; see the module docstring."""

    def __init__(self, data_dir: Path, store: Store):
        self.dir = data_dir / "journal"
        self.store = store
        self.objects: dict[tuple[str, str], Stored] = {}  # guarded by _lock
        self.buckets: set[str] = set()  # guarded by _lock
        self._lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self._segment: int | None = None  # fd of the segment records are appended to
        self._seq = 0
        self._inflight: dict[str, int] = {}  # blobs written whose record is not appended yet
        self._writing = 0  # blobs being written (their names are not known yet)
        self._retired: list[int] = []  # fds of older segments, closed a rotation later
        self.appended = 0  # the current segment's size (read without the lock: a hint)
        self.failed: str | None = None  # why a write or flush failed; then nothing more is appended

    # --- recovery ----------------------------------------------------------------------------

    def recover(self, manifest: dict | None) -> dict[str, dict[str, dict]]:
        """The state to restore: the manifest with every segment replayed over it, as
        ``{bucket: {name: entry}}``; entries whose bytes were inline carry them as ``data``.
        Compacts it at once, so that every entry returned names a blob."""
        self.dir.mkdir(mode=0o700, exist_ok=True)
        state: dict[str, dict[str, dict]] = {}
        for bucket, entries in (manifest or {"buckets": {}})["buckets"].items():
            state[bucket] = {e["name"]: e for e in entries}
        segments = self._segments()
        for seq in segments:
            self._replay(self.dir / f"{seq}.jsonl", state)
        self._seq = (segments[-1] + 1) if segments else 0
        if segments:
            log.info("replayed %d journal segment(s) of %s", len(segments), self.dir)
        for bucket, entries in state.items():
            for entry in entries.values():
                data = entry.pop("data", None)
                if data is not None:
                    entry["blob"] = self.store.write_blob([base64.b64decode(data)], f"gs://{bucket}/{entry['name']}",
                                                          entry.get("md5Hash"))  # fmt: skip
        if segments:
            self.store.commit(_manifest(state))
            for seq in segments:
                (self.dir / f"{seq}.jsonl").unlink()
            fsync_dir(self.dir)
        self.store.collect({e["blob"] for entries in state.values() for e in entries.values()})
        return state

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.jsonl") if p.stem.isdigit())

    @staticmethod
    def _replay(path: Path, state: dict[str, dict[str, dict]]) -> None:
        lines = path.read_bytes().split(b"\n")
        for i, line in enumerate(lines):
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if i >= len(lines) - 2:  # the last record, torn by a crash: never acknowledged
                    log.warning("%s: ignoring a torn last record", path)
                    return
                raise SnapshotError(f"the journal record {path}:{i + 1} is damaged; move {path.parent} aside "
                                    "to start from the last snapshot (losing the changes since)") from None
            op, bucket = record["op"], record["b"]
            if op == "put":
                state.setdefault(bucket, {})[record["e"]["name"]] = record["e"]
            elif op == "del":
                state.get(bucket, {}).pop(record["n"], None)
            elif op == "mkb":
                state.setdefault(bucket, {})
            elif op == "rmb":
                state.pop(bucket, None)

    def restored_bucket(self, bucket: str) -> None:
        with self._lock:
            self.buckets.add(bucket)

    def restored(self, bucket: str, entry: dict, server_generation: int) -> None:
        """Record an object restored into the server (before any client is served)."""
        entry.setdefault("generation", str(server_generation))  # a snapshot from before generations were kept
        entry.setdefault("metageneration", "1")
        with self._lock:
            self.buckets.add(bucket)
            self.objects[(bucket, entry["name"])] = Stored(entry, server_generation)

    def open(self) -> None:
        """Start appending (a new segment), after :meth:`recover`."""
        with self._lock:
            self.failed = None
            self._rotate()

    def close(self) -> None:
        """Stop appending; an empty last segment (nothing since the last compaction) goes."""
        with self._lock:
            if self._segment is not None:
                empty = os.fstat(self._segment).st_size == 0
                for fd in [*self._retired, self._segment]:
                    os.close(fd)
                self._retired, self._segment = [], None
                if empty:
                    (self.dir / f"{self._seq - 1}.jsonl").unlink(missing_ok=True)

    # --- mutations (called by the front with the object's lock held) ----------------------------

    def blob(self, chunks, what: str, md5: str | None) -> str:
        """Write bytes too large to go inline into a durable blob; :meth:`put` must follow (or
        :meth:`forget_blob`), so that compaction does not collect it meanwhile."""
        with self._lock:
            self._writing += 1
        try:
            name = self.store.write_blob(chunks, what, md5)
            with self._lock:
                self._inflight[name] = self._inflight.get(name, 0) + 1
        finally:
            with self._lock:
                self._writing -= 1
        fsync_dir(self.store.blobs)
        return name

    def forget_blob(self, blob: str) -> None:
        with self._lock:
            self._release(blob)

    def _release(self, blob: str) -> None:
        left = self._inflight.get(blob, 0) - 1
        if left > 0:
            self._inflight[blob] = left
        else:
            self._inflight.pop(blob, None)

    def put(self, bucket: str, entry: dict, server_generation: int, data: bytes | None = None) -> None:
        """Make one object version durable (``entry`` names a blob, or ``data`` holds the bytes)."""
        record = {"op": "put", "b": bucket, "e": entry}
        if data is not None:
            record = {"op": "put", "b": bucket, "e": {**entry, "data": base64.b64encode(data).decode()}}
        with self._lock:
            fd = self._append(record)
            if "blob" in entry:
                self._release(entry["blob"])
            self.objects[(bucket, entry["name"])] = Stored(entry, server_generation, data)
        self._sync(fd)

    def delete(self, bucket: str, name: str) -> None:
        with self._lock:
            fd = self._append({"op": "del", "b": bucket, "n": name})
            self.objects.pop((bucket, name), None)
        self._sync(fd)

    def bucket_created(self, bucket: str) -> None:
        with self._lock:
            if bucket in self.buckets:
                return
            fd = self._append({"op": "mkb", "b": bucket})
            self.buckets.add(bucket)
        self._sync(fd)

    def bucket_deleted(self, bucket: str) -> None:
        with self._lock:
            fd = self._append({"op": "rmb", "b": bucket})
            self.buckets.discard(bucket)
            for key in [k for k in self.objects if k[0] == bucket]:
                del self.objects[key]
        self._sync(fd)

    def get(self, bucket: str, name: str) -> Stored | None:
        with self._lock:
            return self.objects.get((bucket, name))

    def _append(self, record: dict) -> int:
        """Write ``record`` and return the segment's fd, for the caller to fdatasync *after*
        letting go of ``_lock``: appends of concurrent requests then share one flush (group
        commit), and the answer still waits for its own record to be on disk."""
        if self._segment is None:
            raise RuntimeError("the emulator's journal is closed")
        if self.failed is not None:
            raise OSError(f"the emulator's journal failed earlier ({self.failed})")
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        try:
            written = os.write(self._segment, line)
            if written != len(line):  # a full disk: the line is torn
                raise OSError(errno.ENOSPC, f"short write to the journal ({written} of {len(line)} bytes)")
        except OSError as exc:
            self._fail(f"append: {exc}")
            try:  # no torn line may stay in the middle of a segment: the next start would stop there
                os.ftruncate(self._segment, self.appended)
            except OSError as again:
                log.error("cannot cut a torn record off %s: %s", self.dir, again)
            raise
        self.appended += len(line)
        return self._segment

    def _sync(self, fd: int) -> None:
        """fdatasync the segment; a failure leaves its state unknown (the kernel may have dropped
        the dirty pages), so nothing more is appended until a restart replays what is there."""
        try:
            os.fdatasync(fd)
        except OSError as exc:
            with self._lock:
                self._fail(f"fdatasync: {exc}")
            raise

    def _fail(self, why: str) -> None:
        """Holds ``_lock``. The server may hold a change the journal does not: the front refuses
        every request from now on (:attr:`failed`), and a restart restores the journal's state."""
        if self.failed is None:
            log.error("the local emulator's journal in %s failed (%s): it takes no more changes until a restart", self.dir, why)
            self.failed = why

    def _rotate(self) -> list[int]:
        """Open a new segment; return the older ones. Holds ``_lock``."""
        older = self._segments()
        for fd in self._retired[:-1]:  # a request may still be flushing the last one
            os.close(fd)
        self._retired = self._retired[-1:]
        if self._segment is not None:
            os.fdatasync(self._segment)
            self._retired.append(self._segment)
        path = self.dir / f"{self._seq}.jsonl"
        self._seq += 1
        self.appended = 0
        self._segment = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        fsync_dir(self.dir)
        return older

    # --- compaction ----------------------------------------------------------------------------

    def compact(self) -> SnapshotStats:
        """Fold the journal into the snapshot (see the module docstring)."""
        with self._compact_lock:
            with self._lock:
                state: dict[str, dict[str, dict]] = {b: {} for b in self.buckets}
                inline = []
                for (bucket, name), stored in self.objects.items():
                    state.setdefault(bucket, {})[name] = dict(stored.entry)
                    if stored.data is not None:
                        inline.append((bucket, name, stored))
                changed = os.fstat(self._segment).st_size > 0 if self._segment is not None else False
                older = self._rotate() if changed else []
            for bucket, name, stored in inline:
                entry = state[bucket][name]
                entry["blob"] = self.store.write_blob([stored.data], f"gs://{bucket}/{name}", entry.get("md5Hash"))
            objects = sum(map(len, state.values()))
            if not changed:
                return SnapshotStats(len(state), objects, 0, written=False)
            self.store.commit(_manifest(state))
            for seq in older:
                (self.dir / f"{seq}.jsonl").unlink(missing_ok=True)
            fsync_dir(self.dir)
            with self._lock:
                for bucket, name, stored in inline:  # now a blob, unless replaced meanwhile
                    current = self.objects.get((bucket, name))
                    if current is stored:
                        current.entry = {**current.entry, "blob": state[bucket][name]["blob"]}
                        current.data = None
                if self._writing == 0:  # a blob being written has no name yet: collect next time
                    keep = {e["blob"] for entries in state.values() for e in entries.values()}
                    keep |= set(self._inflight) | {s.entry["blob"] for s in self.objects.values() if "blob" in s.entry}
                    self.store.collect(keep)
            return SnapshotStats(len(state), objects, len(inline), written=True)


def _manifest(state: dict[str, dict[str, dict]]) -> dict:
    taken = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return {"format": SNAPSHOT_FORMAT, "taken": taken,
            "buckets": {b: sorted(entries.values(), key=lambda e: e["name"]) for b, entries in state.items()}}  # fmt: skip


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()
