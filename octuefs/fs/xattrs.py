"""Extended attributes of the mount: ``user.octue.*`` (Octue metadata), ``user.gcs.*`` and other ``user.*``.

``user.octue.*`` is encoded and validated by :mod:`octuefs.octue.metadata` (the one codec); other
``user.*`` names are custom-metadata keys too (:mod:`octuefs.octue.userxattrs`). A change is
validated at once, shown by the mount at once, and journaled before setxattr returns (as
durable as a close). On a file with unsaved data it joins that data's upload; on a saved file
it is ``update_cloud_metadata``, queued: one metadata PATCH with generation and metageneration
preconditions, content untouched, sent within about a second with every change of the object
made meanwhile (GCS takes about one change of an object per second; see docs/semantics.md,
"setfattr: when a change is durable"). ``user.gcs.*`` shows the object's own facts, read-only
except ``user.gcs.content_type``.

Setting a read-only attribute to the value it has is a no-op, so ``cp --preserve=xattr`` and
``cp -a`` can copy a file's attributes. A file created here and still open for its first write
(where ``cp`` sets them) has no object facts yet: setting ``user.gcs.*`` on it is accepted and
ignored (logged; the upload gives it its own), and it takes the ``user.octue.id`` given to it,
as ``gcloud storage cp`` keeps the id of the object it copies. Any other change of them is EPERM.

A name outside ``user.`` answers ENODATA on read straight from memory (the kernel asks for
``security.capability`` before every write) and ENOTSUP on write. A directory's attributes are
its dataset's, kept in ``DIR/.octue`` (:mod:`octuefs.fs.dirxattrs`); a file's read-only
``user.octuefs.state`` says where its write-back stands (:mod:`octuefs.fs.filestate`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

from octuefs.cache.metacache import DIR, MISSING
from octuefs.errors import (
    AttributeExists,
    AttributeNotSupported,
    FileNotFound,
    InvalidMetadata,
    NoSuchAttribute,
    ReadOnlyAttribute,
)
from octuefs.fs import filestate
from octuefs.fs.dirxattrs import DatasetXattrs
from octuefs.fs.lookups import Lookups
from octuefs.fs.parts import MountParts
from octuefs.octue import metadata as octue
from octuefs.storage.base import ObjectInfo

log = logging.getLogger(__name__)

GCS_PREFIX = "user.gcs."
PREFIXES = ("user.",)  # the only attribute names a file can have
CONTENT_TYPE = GCS_PREFIX + "content_type"
ID = octue.XATTR_PREFIX + "id"


def _hex(b64: str | None) -> str | None:
    return binascii.hexlify(base64.b64decode(b64)).decode() if b64 else None


_GCS_FIELDS: dict[str, Callable[[ObjectInfo], object]] = {
    "generation": lambda i: i.generation,
    "metageneration": lambda i: i.metageneration,
    "crc32c": lambda i: _hex(i.crc32c),
    "md5": lambda i: _hex(i.md5),
    "content_type": lambda i: i.content_type,
    "storage_class": lambda i: i.storage_class,
}


def _first_write(node) -> bool:
    """Whether the node is a file created here and still open for its first write: no version of
    it is in the bucket or on its way there, so it has no object facts and its id is not fixed."""
    return node.base is None and node.dirty and not node.pending


class _KeyedLocks:
    """One lock per object name while anyone holds or waits for it. ``_mutex`` guards ``_held``."""

    def __init__(self):
        self._mutex = threading.Lock()
        self._held: dict[str, list] = {}  # name -> [lock, holders and waiters]

    @contextlib.contextmanager
    def hold(self, name: str, timeout: float | None = None) -> Iterator[bool]:
        """Hold ``name``'s lock; yields True. With ``timeout``: yields False, holding nothing, if
        it was not had within that many seconds."""
        with self._mutex:
            slot = self._held.setdefault(name, [threading.Lock(), 0])
            slot[1] += 1
        try:
            got = slot[0].acquire(timeout=-1 if timeout is None else timeout)
            try:
                yield got
            finally:
                if got:
                    slot[0].release()
        finally:
            with self._mutex:
                slot[1] -= 1
                if slot[1] == 0:
                    del self._held[name]


class XattrSurface:
    """Lock order: a name's lock in ``_changing`` (one metadata change of an object at a time in
    this mount, so threads never race each other's patches), then that file's ``FileNode.lock``."""

    def __init__(self, parts: MountParts, lookups: Lookups):
        self.ns, self.files = parts.ns, parts.files
        self.lookups = lookups
        self._changing = _KeyedLocks()
        self.datasets = DatasetXattrs(parts, lookups, self._changing)
        self.states = filestate.UploadStates(parts.uploader, parts.bucket.name)

    def changing(self, name: str):
        """Held while a metadata change of object ``name`` is made (a setfattr, or a chmod,
        chown or touch: posixfs.py), so this mount's changes of one object never race."""
        return self._changing.hold(name)

    # --- the model of a file ------------------------------------------------------------

    def decoded(self, info: ObjectInfo) -> octue.OctueMetadata:
        """The Octue metadata of an object, decoded once per ObjectInfo (a memo on it).

        An ObjectInfo is immutable and every change in the bucket yields a new one, so the memo
        can never be stale, whichever counters the server moves.
        """
        meta = info.__dict__.get("_octue_memo")
        if meta is None:
            meta = octue.decode_object_metadata(info.metadata)
            object.__setattr__(info, "_octue_memo", meta)
        return meta

    def _target(self, path: str):
        """``(name, info, node)`` of a file, or ``None`` for a directory."""
        name, entry, node = self.lookups.resolve(path, gone_hides=True)
        if node is not None:
            return name, node.base, node
        if entry is DIR:
            return None
        if entry is MISSING:
            raise FileNotFound(path)
        return name, entry, None

    def _meta(self, info: ObjectInfo | None, node) -> octue.OctueMetadata:
        if node is not None:
            return node.meta
        return self.decoded(info)

    # --- reads --------------------------------------------------------------------------

    def get(self, path: str, name: str) -> bytes:
        if not name.startswith(PREFIXES):
            raise NoSuchAttribute(name)
        target = self._target(path)
        if target is None:
            return self.datasets.get(path, name)
        fname, info, node = target
        if name == filestate.NAME:
            return self.states.state(fname, node)
        if name.startswith(GCS_PREFIX):
            field = _GCS_FIELDS.get(name[len(GCS_PREFIX) :])
            value = field(info) if field and info is not None else None
            if value is None:
                raise NoSuchAttribute(name)
            return str(value).encode()
        return octue.get_xattr(self._meta(info, node), name)

    def list(self, path: str) -> list[str]:
        target = self._target(path)
        if target is None:
            return self.datasets.list(path)
        _, info, node = target
        # (user.octuefs.state is not listed: cp --preserve=xattr and rsync -X would copy it)
        names = [n for n in octue.list_xattr_names(self._meta(info, node)) if n != filestate.NAME]
        if info is not None:
            names += [GCS_PREFIX + k for k, f in _GCS_FIELDS.items() if f(info) is not None]
        return names

    # --- writes -------------------------------------------------------------------------

    def set(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        self._change(path, name, lambda meta: octue.set_xattr(meta, name, value, flags), value, flags)

    def remove(self, path: str, name: str) -> None:
        self._change(path, name, lambda meta: octue.remove_xattr(meta, name), None, 0)

    def _change(self, path: str, name: str, apply, value: bytes | None, flags: int) -> None:
        if name == filestate.NAME:
            raise ReadOnlyAttribute(f"{name} is read-only: it says where the file's upload stands")
        self.lookups.check_writable()
        if self._target(path) is None:  # a directory: its dataset's record (dirxattrs.py)
            self.datasets.change(path, name, value, flags)
            return
        # Each change reads the metadata the one before it in this mount wrote (the caches hold
        # its result), so concurrent setfattr calls neither lose each other's changes (even on a
        # server that ignores preconditions) nor use up each other's attempts.
        fname = self.ns.object_name(path)
        if octue.is_octue_xattr(name):  # even one refused: the file keeps its own over a rename
            self.files.given_metadata(fname)
        with self._changing.hold(fname):
            self._change_locked(path, name, apply, value, flags)

    def _change_locked(self, path: str, name: str, apply, value: bytes | None, flags: int) -> None:
        target = self._target(path)
        if target is None:  # (became a directory meanwhile)
            raise AttributeNotSupported(f"{path} is a directory now; {name} was not changed")
        if name == CONTENT_TYPE:
            self._set_content_type(target, value, flags)
            return
        if name.startswith(GCS_PREFIX):
            self._set_gcs_fact(target, name, value, flags)
            return
        if not octue.is_stored_xattr(name):
            raise AttributeNotSupported(name)
        fname, info, node = target
        with self._node(fname, info, node) as node, node.lock:
            if name == ID and value is not None and _first_write(node):
                apply = self._adopt_id(node, value, flags)
            new_meta = apply(node.meta)  # validates before anything changes
            self.files.check_fits(node, new_meta)
            # Merged into the pending upload or patch, else queued as a patch: journaled now.
            self.files.change_metadata(node, lambda: setattr(node, "meta", new_meta))

    def _node(self, name: str, info: ObjectInfo | None, node):
        """The file's node for a change: the live one, else one made for it (kept while it holds
        the change, so the mount shows it until it is in the bucket). Taken from the table again:
        the live node found a moment ago may have been dropped since (its upload landed), and a
        change made to it then would be shown nowhere and replaced by the next one."""
        return self.files.node_to_change(name, info, seen=node)

    def _set_gcs_fact(self, target, name: str, value: bytes | None, flags: int) -> None:
        """A read-only object fact: setting it to the value it has is a no-op, and so is setting
        it on a file not yet in the bucket (it has none yet); anything else is EPERM."""
        _, info, node = target
        field = _GCS_FIELDS.get(name[len(GCS_PREFIX) :])
        if field is None or value is None:
            raise ReadOnlyAttribute(name)
        if node is not None and _first_write(node):
            if flags & octue.XATTR_REPLACE:
                raise NoSuchAttribute(name)
            log.info("%s set on %r, which is not in the bucket yet: ignored, its upload gives it its own",
                     name, node.name)
            return
        current = field(info)
        if current is None or str(current).encode() != bytes(value):
            raise ReadOnlyAttribute(f"{name} is read-only: it is a fact of the stored object ({current})")
        if flags & octue.XATTR_CREATE:
            raise AttributeExists(name)

    def _adopt_id(self, node, value: bytes, flags: int):
        """The change that gives a file not yet in the bucket the id set on it (a copy keeps its
        source's id, as ``gcloud storage cp`` does); its id is then fixed once it is uploaded."""
        try:
            new_id = octue.validate_id(bytes(value).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ReadOnlyAttribute(f"{ID} is read-only: a file being written for the first time takes only "
                                    f"a UUID (got {bytes(value)!r:.60})") from None
        if flags & octue.XATTR_CREATE:
            raise AttributeExists(ID)
        if new_id != node.meta.id:
            log.info("%r is not in the bucket yet: it takes the id %s set on it", node.name, new_id)
        return lambda meta: meta.replace(id=new_id)

    def _set_content_type(self, target, value: bytes | None, flags: int) -> None:
        name, info, node = target
        current = node.content_type if node is not None else info.content_type
        if flags & octue.XATTR_CREATE and current:
            raise AttributeExists(CONTENT_TYPE)
        if flags & octue.XATTR_REPLACE and not current:
            raise NoSuchAttribute(CONTENT_TYPE)
        try:
            text = value.decode("utf-8").strip() if value is not None else ""
        except UnicodeDecodeError as exc:
            raise InvalidMetadata("content_type", "must be UTF-8 text") from exc
        if value is not None and ("/" not in text or any(c.isspace() for c in text)):
            raise InvalidMetadata("content_type", "must look like type/subtype", text)
        with self._node(name, info, node) as node:
            self.files.change_metadata(node, lambda: setattr(node, "content_type", text or None))
