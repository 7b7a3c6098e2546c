"""The world the model-based state machine (tests/unit/test_model.py) runs in.

* :class:`World`: one FakeBucket shared by every actor, a ledger of every version and metadata
  token written, and the online checks made at each request that changes the bucket.
* :class:`MountView`: one mount's own view of the bucket. It delegates to the shared FakeBucket
  and adds, for that mount only: gates (hold the next background upload before or after it
  reaches the bucket, release it later), injected failures (before or after the server acts),
  armed crash points, and death (a crashed mount's threads raise :class:`Crash` at their next
  request and never reach the bucket again).

Nothing here changes octuefs; FakeBucket is used as it is (its private ``_lock`` and ``_objects``
are only read, to see the state a request replaces).

Tokens. Every content written is unique (its first bytes name it), and every metadata change is
a tag or label whose value is unique and names its owner (``o`` for the outside writer, ``m0``,
``m1`` for the mounts). So the bucket's state at a name is a set of tokens, and each request that
changes it drops some: the world checks each drop for a reason.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Mapping

from octuefs.errors import (
    BucketUnreachable,
    PermissionDenied,
    PreconditionFailed,
    TransientError,
)
from octuefs.octue import metadata as octue
from octuefs.storage.base import Bucket, ListPage, ObjectInfo
from octuefs.storage.fake import FakeBucket

CONFLICT_MARK = ".octuefs-conflict-"
OUTSIDE = "o"


class Crash(BaseException):
    """A mount's process dies here. A BaseException, so no ``except Exception`` in octuefs can
    catch it and carry on: the thread that meets it unwinds and ends."""


def content_for(vid: int, size: int) -> bytes:
    head = b"<v%06d>" % vid
    body = (b"%06d" % vid) * (size // 6 + 1)
    return (head + body)[: max(size, len(head))]


def tokens_of(metadata: Mapping[str, str]) -> set[tuple[str, str, str]]:
    """(owner, kind, value) of the model's tags and labels in an object's custom metadata."""
    meta = octue.decode_object_metadata(metadata)
    out = {(k, "tag", str(v)) for k, v in meta.tags.items()}
    out |= {(label.split("-")[0], "label", label) for label in meta.labels}
    return out


def _original_name(name: str) -> str:
    """The name a conflict copy was saved beside (``name`` itself if it is none)."""
    return re.sub(r"\.octuefs-conflict-\d{8}T\d{6}Z-[0-9a-z]+", "", name)


@dataclasses.dataclass
class Version:
    vid: int
    owner: str  # "o", "m0", "m1"
    name: str
    content: bytes
    must_land: bool = True  # False: a close a crash cut short (it may or may not count)
    moot: bool = False  # its writer replaced it (newer close, unlink, rename onto its name)
    landed: bool = False


@dataclasses.dataclass
class Gate:
    """Holds one background upload of a mount: ``before`` it reaches the bucket, or after it
    acted there but ``before`` its answer goes back (an answer in flight)."""

    after: bool
    many: bool = False  # a stall: holds every upload until released, not just the next one
    open: threading.Event = dataclasses.field(default_factory=threading.Event)
    caught: threading.Event = dataclasses.field(default_factory=threading.Event)
    name: str | None = None


class World:
    def __init__(self, flags: Mapping[str, bool]):
        self.flags = dict(flags)
        self.bucket = FakeBucket("model")
        self.lock = threading.RLock()  # every change to the bucket, and the ledger
        self.next_vid = 1
        self.versions: dict[bytes, Version] = {}
        self.tokens_set: dict[tuple, dict] = {}  # token -> {"owner", "name", "accounted"}
        self.violations: list[str] = []
        self.conflict_copies: dict[str, str] = {}  # conflict object name -> owner that wrote it
        self.injected_412: dict[str, int] = {}  # owner -> 412s injected into its uploads (justify conflicts)
        self.ambiguous: set[str] = set()  # mounts that lost an upload's answer or died (N1)
        self.base_tokens: dict[tuple[str, int], set] = {}  # (name, generation) -> tokens it was written with
        self.placed_by: dict[str, str] = {}  # name -> the actor whose request made its live generation

    # --- the ledger -----------------------------------------------------------------------

    def new_content(self, owner: str, name: str, size: int, must_land: bool = True) -> bytes:
        with self.lock:
            vid = self.next_vid
            self.next_vid += 1
            data = content_for(vid, size)
            self.versions[data] = Version(vid, owner, name, data, must_land)
            return data

    def register(self, owner: str, name: str, data: bytes) -> Version:
        """A content the model computed (an append): known from now on."""
        with self.lock:
            v = self.versions.get(data)
            if v is None:
                v = self.versions[data] = Version(self.next_vid, owner, name, data)
                self.next_vid += 1
            return v

    def moot(self, owner: str, name: str, tokens: bool = True) -> None:
        """``owner`` replaced what it had at ``name``: its versions there (and, unless a new close
        carries them on, its metadata tokens) need not land."""
        with self.lock:
            for v in self.versions.values():
                if v.owner == owner and v.name == name:
                    v.moot = True
            for t, rec in self.tokens_set.items():
                if not tokens:
                    break
                if rec["owner"] == owner and rec["name"] == name:
                    rec["accounted"] = True

    def set_token(self, owner: str, name: str, token: tuple) -> None:
        with self.lock:
            for t, rec in self.tokens_set.items():  # the same tag (or the labels) set again
                if rec["owner"] == owner and t[1] == token[1] and (t[1] == "label" or t[0] == token[0]):
                    rec["accounted"] = True
            self.tokens_set[token] = {"owner": owner, "name": name, "accounted": False}

    def explain(self, data: bytes, where: str) -> None:
        if data not in self.versions:
            self.violations.append(f"{where}: {len(data)} bytes no one wrote: {data[:40]!r}...")

    # --- the online check: each change of the bucket ----------------------------------------

    def peek(self, bucket: FakeBucket, name: str):
        with bucket._lock:
            obj = bucket._objects.get(name)
            return None if obj is None else (obj.generation, obj.metageneration, obj.data, dict(obj.metadata))

    def changed(self, actor: str, op: str, name: str, before, after, req: dict, bucket: FakeBucket) -> None:
        """``actor``'s request ``op`` turned ``before`` into ``after`` at ``name`` (under self.lock)."""
        if bucket is not self.bucket:
            if actor != OUTSIDE:
                self.violations.append(f"{actor} wrote {name!r} into another bucket ({bucket.name})")
            return
        if after is not None:
            if before is None or after[0] != before[0]:
                self.base_tokens[(name, after[0])] = tokens_of(after[3])
                self.placed_by[name] = actor  # (a rename places another writer's content)
            self.explain(after[2], f"{actor} {op} {name!r}")
            v = self.versions.get(after[2])
            if v is not None:
                v.landed = True
                if v.owner != OUTSIDE:
                    # A newer version of its writer landed under that name, or beside it as a
                    # conflict copy: the older ones it closed there are replaced (a close a crash
                    # cut short that landed after all counts too: recovery sends the newest
                    # version of each file, not each one, and that one goes beside when the
                    # file changed elsewhere meanwhile).
                    replaced = _original_name(name)
                    for older in self.versions.values():
                        if older.owner == v.owner and older.name == replaced and older.vid < v.vid and not older.landed:
                            older.moot = True
            if CONFLICT_MARK in name and op == "upload":
                self.conflict_copies[name] = actor
                base = _original_name(name)
                self._check_conflict_justified(actor, base, req)
        if before is None or actor == OUTSIDE:
            if actor == OUTSIDE and before is not None:
                for t in tokens_of(before[3]) - (tokens_of(after[3]) if after else set()):
                    self._account(t)
            return
        gen, metagen, data, meta = before
        saw_content = req.get("if_generation_match") == gen
        saw_meta = saw_content and req.get("if_metageneration_match") == metagen
        if not saw_content and (after is None or after[2] != data):
            self.violations.append(f"{actor} {op} replaced the content of {name!r} (generation {gen}) "
                                   f"without a precondition naming it: {req}")
        new_tokens = tokens_of(after[3]) if after else set()
        dropped = tokens_of(meta) - new_tokens
        for t in dropped:
            owner = t[0]
            if t[1] == "label" or op in ("delete", "copy") or saw_meta:
                # labels are one field that a writer sets whole; an unlink or a rename onto the
                # name replaces the file deliberately; a request naming the metageneration saw it
                self._account(t)
            elif owner == actor and t[1] == "tag" and any(n[0] == t[0] and n[1] == "tag" for n in new_tokens):
                self._account(t)  # its owner set a newer value of that tag
            elif saw_content and t in self.base_tokens.get((name, gen), ()):
                self.violations.append(f"{actor} {op} of {name!r} dropped {owner}'s metadata {t}, which generation "
                                       f"{gen} (named in its precondition) was written with: {req}")
            elif owner == actor:
                pass  # its own: it must still be somewhere at quiescence, unless it set a newer value
            elif self.flags.get("F3"):
                self.violations.append(f"{actor} {op} of {name!r} dropped {owner}'s metadata {t} (it had "
                                       f"generation {gen} metageneration {metagen}; request {req}) [finding 3]")
            else:
                self._account(t)

    def _account(self, t) -> None:
        rec = self.tokens_set.get(t)
        if rec is not None:
            rec["accounted"] = True

    def _check_conflict_justified(self, actor: str, base: str, req: dict) -> None:
        """A mount keeps its version beside the original only if someone else changed it."""
        if self.injected_412.get(actor) or not self.flags.get("F9"):
            return
        cur = self.peek(self.bucket, base)
        if cur is None:
            return
        v = self.versions.get(cur[2])
        other_meta = any(t[0] != actor for t in tokens_of(cur[3]) if t[1] == "tag")
        if v is not None and v.owner == actor and self.placed_by.get(base) == actor and not other_meta and cur[1] == 1:
            self.violations.append(f"{actor} kept a version of {base!r} beside the original as a conflict, but "
                                   f"the original is its own (v{v.vid}) [finding 9]")


class MountView(Bucket):
    """One mount's door to the shared bucket: gates, faults, crash points and death."""

    def __init__(self, world: World, actor: str, bucket: FakeBucket):
        self.world = world
        self.actor = actor
        self.inner = bucket
        self.name = bucket.name
        self.dead = False
        self.gates: list[Gate] = []
        self.op_gates: dict[str, Gate] = {}  # op -> a gate for the next such request, whoever makes it
        self.faults: list[tuple[str, BaseException, bool]] = []  # (operation, error, after)
        self.crash_at: dict[str, int] = {}  # point -> requests of that kind to let through first
        self.crashed = threading.Event()  # a crash point was met
        self.blocked = 0  # threads waiting at a gate
        self._mutex = threading.Lock()

    # --- test controls ----------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self.dead:
            raise Crash(f"{self.actor} is dead")

    def _point(self, point: str) -> None:
        with self._mutex:
            left = self.crash_at.get(point)
            if left is None:
                return
            if left > 0:
                self.crash_at[point] = left - 1
                return
            del self.crash_at[point]
        self.crashed.set()
        self.dead = True
        raise Crash(f"{self.actor} crashed at {point}")

    def _fault(self, op: str, after: bool) -> BaseException | None:
        with self._mutex:
            for i, (fop, err, fafter) in enumerate(self.faults):
                if fop == op and fafter == after:
                    del self.faults[i]
                    return err
        return None

    def _gate(self, background: bool, after: bool, name: str) -> None:
        if not background:
            return
        with self._mutex:
            gate = next((g for g in self.gates if g.after == after and not g.open.is_set()
                         and (g.many or not g.caught.is_set())), None)
            if gate is None:
                return
            gate.caught.set()
            gate.name = name
            self.blocked += 1
        try:
            gate.open.wait()
        finally:
            with self._mutex:
                self.blocked -= 1
        self._check_alive()

    def _write(self, op: str, name: str, act, req: dict, dst: str | None = None):
        background = threading.current_thread().name.startswith("octuefs-upload")
        self._check_alive()
        self._gate(background and op == "upload", False, name)
        held = self.op_gates.pop(op, None)  # a request of the mount's own calls, held once
        if held is not None:
            held.caught.set()
            held.open.wait()
            self._check_alive()
        self._point(f"{op}_before")
        err = self._fault(op, False)
        if err is not None:
            if isinstance(err, PreconditionFailed) and op == "upload":
                self.world.injected_412[self.actor] = self.world.injected_412.get(self.actor, 0) + 1
            raise err
        target = dst or name
        with self.world.lock:
            self._check_alive()
            before = self.world.peek(self.inner, target)
            result = act()
            after = self.world.peek(self.inner, target)
            self.world.changed(self.actor, op, target, before, after, req, self.inner)
            if op == "copy":  # copying reads the source: nothing changes there
                pass
        self._point(f"{op}_after")
        self._gate(background and op == "upload", True, name)
        err = self._fault(op, True)
        if err is not None:
            self.world.ambiguous.add(self.actor)
            raise err
        return result

    def _read(self, op: str, fn):
        self._check_alive()
        err = self._fault(op, False)
        if err is not None:
            raise err
        return fn()

    # --- the Bucket protocol -----------------------------------------------------------------

    def list_page(self, prefix: str = "", delimiter: str | None = "/", page_token: str | None = None,
                  max_results: int = 1000) -> ListPage:
        return self._read("list", lambda: self.inner.list_page(prefix, delimiter, page_token, max_results))

    def stat(self, name: str) -> ObjectInfo:
        return self._read("stat", lambda: self.inner.stat(name))

    def read_range(self, name: str, start: int, end: int, generation: int | None = None) -> bytes:
        return self._read("read", lambda: self.inner.read_range(name, start, end, generation))

    def download_to_file(self, name: str, path: str, generation: int | None = None) -> ObjectInfo:
        return self._read("read", lambda: self.inner.download_to_file(name, path, generation))

    def upload_file(self, name: str, path: str, metadata: Mapping[str, str], if_generation_match: int | None = None,
                    content_type: str | None = None, *, progress=None,
                    if_metageneration_match: int | None = None) -> ObjectInfo:
        with open(path, "rb") as f:
            data = f.read()
        if progress is not None:
            progress()
        return self.upload_bytes(name, data, metadata, if_generation_match, content_type,
                                 if_metageneration_match=if_metageneration_match)

    def upload_bytes(self, name: str, data: bytes, metadata: Mapping[str, str] | None = None,
                     if_generation_match: int | None = None, content_type: str | None = None, *,
                     if_metageneration_match: int | None = None) -> ObjectInfo:
        if name.endswith("/"):  # directory markers are not part of the model's ledger
            self._check_alive()
            return self.inner.upload_bytes(name, data, metadata, if_generation_match, content_type)
        req = {"if_generation_match": if_generation_match, "if_metageneration_match": if_metageneration_match}
        return self._write("upload", name, lambda: self.inner.upload_bytes(
            name, data, metadata, if_generation_match, content_type,
            if_metageneration_match=if_metageneration_match), req)

    def patch_metadata(self, name: str, changes: Mapping[str, str | None], if_metageneration_match: int | None = None,
                       if_generation_match: int | None = None, content_type: str | None = None) -> ObjectInfo:
        req = {"if_generation_match": if_generation_match, "if_metageneration_match": if_metageneration_match}
        return self._write("patch", name, lambda: self.inner.patch_metadata(
            name, changes, if_metageneration_match, if_generation_match, content_type), req)

    def copy(self, source: str, destination: str, if_source_generation_match: int | None = None,
             if_generation_match: int | None = None, *, if_metageneration_match: int | None = None,
             if_source_metageneration_match: int | None = None) -> ObjectInfo:
        req = {"if_generation_match": if_generation_match, "if_metageneration_match": if_metageneration_match}
        return self._write("copy", source, lambda: self.inner.copy(
            source, destination, if_source_generation_match, if_generation_match,
            if_metageneration_match=if_metageneration_match,
            if_source_metageneration_match=if_source_metageneration_match), req, dst=destination)

    def compose(self, sources, destination, metadata=None, content_type=None, if_generation_match=None,
                if_metageneration_match=None):
        """The model's files are small: octuefs never composes them (no gate, no ledger)."""
        raise AssertionError("the model never composes")

    def delete(self, name: str, if_generation_match: int | None = None, **kwargs) -> None:
        if name.endswith("/"):
            self._check_alive()
            return self.inner.delete(name, if_generation_match, **kwargs)
        req = {"if_generation_match": if_generation_match}
        return self._write("delete", name, lambda: self.inner.delete(name, if_generation_match, **kwargs), req)


# --- the outside writer: straight on the bucket, no mount ------------------------------------


def outside_upload(world: World, name: str, size: int) -> None:
    data = world.new_content(OUTSIDE, name, size)
    token = f"o{world.next_vid}"
    world.next_vid += 1
    meta = octue.encode_object_metadata(octue.OctueMetadata().with_id().replace(tags={"o": token}), {})
    with world.lock:
        before = world.peek(world.bucket, name)
        world.bucket.upload_bytes(name, data, meta)
        world.changed(OUTSIDE, "upload", name, before, world.peek(world.bucket, name), {}, world.bucket)
        world.tokens_set[("o", "tag", token)] = {"owner": OUTSIDE, "name": name, "accounted": False}
        world.moot(OUTSIDE, name)  # its own earlier changes there
        world.tokens_set[("o", "tag", token)]["accounted"] = False


def outside_patch(world: World, name: str) -> bool:
    """Set the outside writer's tag to a new value, as the Octue SDK's update_cloud_metadata would:
    read, change, write with both preconditions."""
    with world.lock:
        before = world.peek(world.bucket, name)
        if before is None:
            return False
        token = f"o{world.next_vid}"
        world.next_vid += 1
        meta = octue.decode_object_metadata(before[3]).with_id()
        meta = meta.replace(tags={**meta.tags, "o": token})
        changes = octue.metadata_patch(before[3], meta)
        world.bucket.patch_metadata(name, changes, if_metageneration_match=before[1], if_generation_match=before[0])
        world.changed(OUTSIDE, "patch", name, before, world.peek(world.bucket, name), {}, world.bucket)
        for t, rec in world.tokens_set.items():
            if t[0] == OUTSIDE and rec["name"] == name:
                rec["accounted"] = True
        world.tokens_set[("o", "tag", token)] = {"owner": OUTSIDE, "name": name, "accounted": False}
        return True


def outside_delete(world: World, name: str) -> bool:
    with world.lock:
        before = world.peek(world.bucket, name)
        if before is None:
            return False
        world.bucket.delete(name)
        world.changed(OUTSIDE, "delete", name, before, None, {}, world.bucket)
        world.moot(OUTSIDE, name)
        return True


ERRORS = {
    "403": lambda: PermissionDenied("injected 403"),
    "412": lambda: PreconditionFailed("injected 412"),
    "503": lambda: TransientError("injected 503"),
    "timeout": lambda: BucketUnreachable("injected timeout"),
}


def conflicts_reported(status: dict) -> set[str]:
    return {c.get("saved_as") for c in status.get("conflicts", [])}


def dump(obj) -> str:
    return json.dumps(obj, default=str)
