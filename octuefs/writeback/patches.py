"""Metadata-only changes (a setfattr of a saved file): one PATCH each, paced to GCS's one change
of an object a second (:class:`MetadataPatches`, a part of
:class:`octuefs.writeback.uploads.Uploader`)."""

from __future__ import annotations

import logging
import time

from octuefs.errors import NotFound, OctuefsError, PreconditionFailed
from octuefs.octue.merge import reapply
from octuefs.octue.metadata import metadata_delta
from octuefs.storage.base import ObjectInfo
from octuefs.writeback.entry import BASE_UNKNOWN, DONE, QUEUED, Entry, object_fields

log = logging.getLogger(__name__)

# GCS takes about one change of an object per second (more are answered 429): a metadata patch
# waits this long after the last change this mount made to its object, and a setfattr's patch
# waits this long for more changes of the same object to join it (a script setting five
# attributes in a row sends one patch). Uploader.patch_pace; MountConfig.patch_pace.
PATCH_PACE = 1.0


class MetadataPatches:
    """Metadata patches of :class:`~octuefs.writeback.uploads.Uploader` (its bucket, journal and
    queue, under its lock)."""

    def submit_patch(self, name: str, metadata: dict[str, str], content_type: str | None,
                     base: ObjectInfo) -> Entry:
        """Journal a metadata-only change of ``base`` (the whole custom metadata it should have)
        and queue it: one PATCH, sent ``patch_pace`` after it was queued (changes made meanwhile
        join it: :meth:`resubmit`) and no sooner than ``patch_pace`` after this mount's last change
        of the object. Returns once it is durable locally."""
        entry = Entry(self._new_id(), name, base.generation, None, dict(metadata), content_type, base.size,
                      time.time(), base_metageneration=base.metageneration, base_metadata=dict(base.metadata),
                      patch=True, base_object=object_fields(base))
        entry.next_try = self._patch_not_before(name)
        return self._enqueue(entry, self._commit_patch)

    def _commit_patch(self, entry: Entry) -> None:  # under _cond (from _enqueue)
        self.journal.commit_patch(entry)
        self._retrying[entry.id] = entry  # a worker keeps a timer for its next_try

    def _patch_not_before(self, name: str) -> float:
        now = time.monotonic()
        with self._cond:
            last = self._changed_at.get(name)
        return max(now + self.patch_pace, (last or 0.0) + self.patch_pace)

    def wait_pace(self, name: str) -> None:
        """Return once GCS's pace (one change of an object a second) allows another change of
        ``name`` after an upload or metadata patch this mount just made: a delete (of rm, or of a
        rename after its copy) right after a file landed would otherwise be answered 429."""
        with self._cond:
            last = self._changed_at.get(name)
        if last is not None:
            time.sleep(max(0.0, min(self.patch_pace, last + self.patch_pace - time.monotonic())))

    def mutated(self, name: str) -> None:
        """The mount changed object ``name`` just now (a rename's copy, a touch, an upload: the
        mount's bucket wrapper, cache/ownwrites.py, calls this for every change that answered):
        a metadata patch of it keeps GCS's pace from then on too."""
        self._mutated(name)

    def _mutated(self, name: str) -> None:
        """This mount changed object ``name`` just now (its answer came)."""
        now = time.monotonic()
        with self._cond:
            if len(self._changed_at) > 1024:
                self._changed_at = {k: t for k, t in self._changed_at.items() if now - t < self.patch_pace}
            self._changed_at[name] = now

    def _run_patch(self, entry: Entry) -> None:
        """Send a metadata-only entry as one PATCH under generation and metageneration
        preconditions, no sooner than ``patch_pace`` after this mount's last change of it."""
        with self._cond:
            last = self._changed_at.get(entry.name)
            wait = 0.0 if last is None else last + self.patch_pace - time.monotonic()
            if wait > 0:  # (chained after a change that just landed)
                entry.state, entry.next_try = QUEUED, time.monotonic() + wait
                entry.attempts -= 1
                self._retrying[entry.id] = entry
                self._cond.notify_all()
                self._work_ready.notify_all()
                return
        changes = metadata_delta(entry.base_metadata or {}, entry.metadata)
        was = (entry.base_object or {}).get("content_type")
        content_type = (entry.content_type or "application/octet-stream") if entry.content_type != was else None
        try:
            if entry.base_generation == BASE_UNKNOWN:
                raise PreconditionFailed(f"{entry.name!r}: the version this change applies to is not known")
            if not changes and content_type is None:
                info = self.bucket.stat(entry.name)
                if (info.generation, info.metageneration) != (entry.base_generation, entry.base_metageneration):
                    raise PreconditionFailed(f"{entry.name!r} changed in the bucket")
            else:
                info = self.bucket.patch_metadata(
                    entry.name, changes, if_generation_match=entry.base_generation,
                    if_metageneration_match=entry.base_metageneration, content_type=content_type)
                self._mutated(entry.name)
        except PreconditionFailed:
            try:
                self._settle_patch(entry)
            except Exception as exc:  # (its stat failed, say) the worker must live on
                if not isinstance(exc, (OctuefsError, OSError)):
                    log.exception("unexpected error after a conflict patching %r; it stays queued", entry.name)
                self._retry_later(entry, exc)
            return
        except NotFound:
            self._patch_gone(entry)
            return
        except Exception as exc:  # a 429 too: retried with backoff; a bug: said, kept, retried
            if not isinstance(exc, (OctuefsError, OSError)):
                log.exception("unexpected error patching the metadata of %r; it stays queued", entry.name)
            self._retry_later(entry, exc)
            return
        log.debug("patched metadata of %r: %s", entry.name, sorted(changes))
        self._finish(entry, info, DONE)

    def _settle_patch(self, entry: Entry) -> None:
        """The object moved on since the change was made (a change elsewhere, or our own patch
        whose answer was lost): the change is applied again to what is there by the one rule
        for a race (:func:`octuefs.octue.merge.reapply`): key by key, the Octue tags tag by tag;
        a key changed here and elsewhere takes this mount's value, the later setfattr, already
        acknowledged, and the log says which key."""
        try:
            current = self.bucket.stat(entry.name)
        except NotFound:
            self._patch_gone(entry)
            return
        set_here = entry.content_type != (entry.base_object or {}).get("content_type")
        type_there = not set_here or (entry.content_type or "application/octet-stream") == current.content_type
        if dict(current.metadata) == entry.metadata and type_there:  # (else: a change elsewhere, undone)
            log.info("the metadata change of %r was already in the bucket", entry.name)
            self._finish(entry, current, DONE)
            return
        theirs = dict(current.metadata)
        merged, overwritten = reapply(entry.base_metadata or {}, entry.metadata, theirs)  # (octue/merge.py)
        if overwritten:
            log.warning("the metadata of %r changed in the bucket while a setfattr here waited to be sent; the "
                        "change made here is applied to it, and for key(s) %s, changed on both sides, this mount's "
                        "value replaces the bucket's (%s)", entry.name, sorted(overwritten),
                        {k: theirs.get(k) for k in sorted(overwritten)})
        else:
            log.info("the metadata of %r changed in the bucket while a setfattr here waited to be sent: merged",
                     entry.name)
        with self._cond:
            if entry.content_type == (entry.base_object or {}).get("content_type"):
                entry.content_type = current.content_type  # not changed here: the bucket's stands
            entry.base_object = object_fields(current)
        self._rebase(entry, current, merged)

    def _patch_gone(self, entry: Entry) -> None:
        """The object a metadata change was for is gone from the bucket: nothing to apply it to."""
        log.warning("%r was deleted in the bucket before a metadata change made here reached it: the change is "
                    "dropped with it", entry.name)
        entry.state, entry.result, entry.failed = DONE, None, None
        try:
            self.on_done(entry)
        except Exception:
            log.exception("after dropping the metadata change of %r", entry.name)
        with self._cond:
            for successor in self._entries.release_successors(entry.id):
                successor.base_generation = entry.base_generation  # it meets the same absence
                successor.base_metageneration, successor.base_metadata = (entry.base_metageneration,
                                                                          entry.base_metadata)
                self.journal.write(successor)
            self._entries.pop(entry.id, None)
            self.journal.remove(entry)
            self._cond.notify_all()
            self._work_ready.notify_all()
        entry.done.set()
