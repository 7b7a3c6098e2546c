"""A rename that takes over the replaced file's Octue metadata, and gives it back if it fails.

A file just created here, never given Octue metadata, renamed over another (``sed -i``, an
editor's save, ``os.replace``) takes the replaced file's Octue metadata, so the file keeps its id,
tags and labels across the edit (:meth:`TakeOvers.taking_over`). Give-backs still owed after a
crash are journaled and settled by the next mount (:mod:`octuefs.writeback.givebacks`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

from octuefs.errors import (
    Conflict,
    MetadataTooLarge,
    NotFound,
    OctuefsError,
    PreconditionFailed,
)
from octuefs.fs.files import FileNode
from octuefs.fs.parts import MountParts
from octuefs.octue import metadata as octue
from octuefs.octue.merge import merge_metadata
from octuefs.storage.base import ObjectInfo

log = logging.getLogger(__name__)


# How long a failed take-over rename waits for the queued upload giving the source its own
# metadata back before it returns its error (saying the give-back is queued).
GIVE_BACK_WAIT = 5.0


@dataclasses.dataclass
class TakeOver:
    """A rename taking over the replaced file's Octue metadata (:meth:`TakeOvers.taking_over`):
    ``taken`` the source's version carrying ``donor``'s Octue keys, ``current`` the version of the
    target they were read from (None if it is not in the bucket)."""

    src_name: str
    dst_name: str
    taken: ObjectInfo
    donor: dict[str, str]
    current: ObjectInfo | None
    record: str = ""  # its owed give-back's journal record (givebacks.py)

    def copy_preconditions(self) -> dict[str, int]:
        wanted = {"if_source_metageneration_match": self.taken.metageneration}
        if self.current is not None:
            wanted["if_metageneration_match"] = self.current.metageneration
        return wanted


class TakeOvers:
    """Take-overs of the Octue metadata of files renamed over (see the module docstring)."""

    def __init__(self, parts: MountParts):
        self.config, self.bucket, self.metacache, self.cache = parts.config, parts.bucket, parts.metacache, parts.cache
        self.uploader, self.files, self.givebacks = parts.uploader, parts.files, parts.givebacks

    @contextlib.contextmanager
    def taking_over(self, src_name: str, src_info: ObjectInfo, dst_name: str, dst_node: FileNode | None,
                    dst_info: ObjectInfo | None):
        """A file just created here, never given Octue metadata, is being renamed over ``dst_name``
        (``sed -i``, an editor's save, ``os.replace``): it takes the replaced file's Octue metadata,
        so the file keeps its id, tags and labels across the edit. The metadata goes onto the
        source first (one PATCH, preconditions on the version settled), so the copy puts content
        and metadata in place in one step. Yields the source's version to copy; puts the source's
        own metadata back if the rename then fails.

        The copy then carries two more preconditions (see :class:`TakeOver`): the target's
        metageneration, so that a metadata change made elsewhere after it was read is merged in
        (:meth:`retake`) or the rename refused, never overwritten; and the source's
        metageneration, so that a copy which timed out and lands late, after the source got its
        own metadata back, fails instead of replacing the target with the source's own
        metadata (the give-back moves the source's metageneration)."""
        donor, current = self._replaced_metadata(dst_name, dst_node, dst_info)
        take = TakeOver(src_name, dst_name, src_info, donor, current)
        # Journaled first: a daemon killed from the PATCH on must not leave the source with the
        # replaced file's id for good (the next mount gives it back: givebacks.py).
        take.record = self.givebacks.note(self.bucket.name, src_info, donor, dst_name)
        try:
            take.taken = self._take(take, src_info, donor)
        except MetadataTooLarge:
            self.givebacks.settled(take.record)  # refused before any request: nothing was changed
            raise
        except BaseException:
            # The PATCH may have landed with its answer lost (even a 412 may follow one: the
            # retry's, met by a change made elsewhere on top): undo it if it did. If the bucket
            # cannot tell now, it is owed: tried again, and waited for by `octuefs sync`.
            if not self.givebacks.settle_now(self.bucket, take.record):
                self.givebacks.owe(self.bucket, take.record)
            self.metacache.forget(src_name)
            raise
        log.info("%r replaces %r, which it takes the Octue metadata of (it had none of its own)", src_name, dst_name)
        try:
            yield take
        except BaseException as exc:
            outcome, owed = self._give_back(src_name, src_info, take.taken, dst_name)
            if owed:
                self.givebacks.owe(self.bucket, take.record)
            else:
                self.givebacks.settled(take.record)
            if outcome and isinstance(exc, OctuefsError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
                exc.args = (f"{exc.args[0]}; {outcome}",)  # (the error says what became of the source)
            raise
        self.givebacks.settled(take.record)

    def _take(self, take: TakeOver, src_info: ObjectInfo, donor: dict[str, str]) -> ObjectInfo:
        """PATCH the source (at ``src_info``, preconditions on it) with ``donor``'s Octue keys."""
        changes = octue.octue_patch_from(src_info.metadata, donor)
        octue.check_size_limits({**src_info.metadata, **changes})
        try:
            taken = self.bucket.patch_metadata(take.src_name, changes, if_generation_match=src_info.generation,
                                               if_metageneration_match=src_info.metageneration)
        except PreconditionFailed as exc:
            raise Conflict(f"{take.src_name!r} changed in the bucket before it could replace {take.dst_name!r}") \
                from exc
        self.cache.carry_over(src_info, taken)
        return taken

    def retake(self, take: TakeOver) -> None:
        """The take-over's copy met a 412: find which side changed. The target's metadata
        changed elsewhere (same content): merge that change into what the source took, key by
        key (as ``_replaced_metadata`` does), PATCH the source again, and let the copy be tried
        again; anything else (the target's content, the source, something made at the target):
        refuse, as the docs promise."""
        src_name, dst_name = take.src_name, take.dst_name
        try:
            src_now = self.bucket.stat(src_name)
        except NotFound:
            src_now = None
        if src_now is None or (src_now.generation, src_now.metageneration) != \
                (take.taken.generation, take.taken.metageneration):
            self.metacache.forget(src_name)
            raise Conflict(f"{src_name!r} changed in the bucket during its rename over {dst_name!r}; not replaced")
        try:
            dst_now = self.bucket.stat(dst_name)
        except NotFound:
            dst_now = None
        self.metacache.forget(dst_name)
        if take.current is None or dst_now is None or dst_now.generation != take.current.generation:
            raise Conflict(f"{dst_name!r} changed in the bucket since it was read; not replaced")
        if dst_now.metageneration == take.current.metageneration:
            return  # (nothing changed after all: try again)
        merged = merge_metadata(dict(take.current.metadata), take.donor, dict(dst_now.metadata))
        if merged is None:
            raise Conflict(f"the Octue metadata of {dst_name!r} changed here and elsewhere; not replaced")
        log.info("%r: its metadata changed elsewhere during a rename over it; merged in", dst_name)
        self.givebacks.retook(take.record, merged)
        take.taken = self._take(take, take.taken, merged)
        take.donor, take.current = merged, dst_now

    def _give_back(self, src_name: str, src_info: ObjectInfo, taken: ObjectInfo, dst_name: str) -> tuple[str, bool]:
        """A rename that took over ``dst_name``'s metadata failed: the source gets its own back,
        unless the copy is in place (only the delete failed: the file is then under both names,
        the same file twice, as documented).

        If the copy's fate is unknown (the bucket does not answer), the metadata is given back
        all the same: a copy that landed keeps the id at ``dst_name``, and one still in flight
        fails on its source metageneration precondition. If the PATCH fails too, the source
        must not stay a second live file with the replaced file's id: its own version (same
        content, its own metadata, replacing exactly ``taken``) goes through the upload queue,
        journaled and retried until it lands (also after a crash), merged with any change made
        elsewhere meanwhile, never over one unseen. Returns what became of the source, for the
        error, and whether the give-back is still owed (nothing could be done nor queued)."""
        same = (taken.md5, taken.crc32c, dict(taken.metadata))
        try:
            try:
                copied = self.bucket.stat(dst_name)
            except NotFound:
                copied = None
            if copied is not None and (copied.md5, copied.crc32c, dict(copied.metadata)) == same:
                return "", False
        except (OctuefsError, OSError) as exc:
            log.info("could not tell whether %r was copied to %r (%s); giving its own metadata back", src_name,
                     dst_name, exc)
        back = octue.octue_patch_from(taken.metadata, src_info.metadata)
        try:
            self.bucket.patch_metadata(src_name, back, if_generation_match=taken.generation,
                                       if_metageneration_match=taken.metageneration)
            return f"{src_name!r} has its own Octue metadata back", False
        except PreconditionFailed as exc:  # changed elsewhere since: theirs stands, unseen here
            log.warning("%r keeps the Octue metadata of %r after a failed rename over it: it changed in the bucket "
                        "meanwhile (%s)", src_name, dst_name, exc)
            return (f"{src_name!r} changed in the bucket meanwhile and may still carry the Octue metadata of "
                    f"{dst_name!r}"), False
        except (OctuefsError, OSError) as exc:
            log.warning("could not give %r its own Octue metadata back after a failed rename over %r (%s); "
                        "queueing it as an upload", src_name, dst_name, exc)
            return self._give_back_later(src_name, taken, {**{k: v for k, v in taken.metadata.items()},
                                                           **back}, dst_name)
        finally:
            self.metacache.forget(src_name)

    def _give_back_later(self, src_name: str, taken: ObjectInfo, metadata: dict[str, str | None],
                         dst_name: str) -> tuple[str, bool]:
        """Queue the source's own version (see :meth:`_give_back`) and wait for it a while."""
        own = {k: v for k, v in metadata.items() if v is not None}
        try:
            staged = self.cache.stage(taken)
            entry = self.uploader.submit(src_name, staged, own, taken.content_type, taken, taken.size)
            # The file's pending version, as after a crash: an unlink or rename of it meanwhile
            # holds it back (dropped once the object is gone) instead of meeting it later as a
            # change to keep beside.
            self.files.recover([entry])
        except (OctuefsError, OSError) as exc:
            log.error("%r carries the Octue metadata (the id) of %r after a failed rename over it, and putting its "
                      "own back could not be queued: %s", src_name, dst_name, exc)
            return (f"{src_name!r} still carries the Octue metadata (the id) of {dst_name!r}: putting its own back "
                    f"failed ({exc}); it is tried again, and `octuefs sync` waits for it"), True
        try:
            # A few seconds at most (a failing upload still "moves", so not ``idle``): the rename
            # has already spent its time on the copy; past that the error says it is queued.
            self.uploader.wait(entry, timeout=min(self.config.op_timeout, GIVE_BACK_WAIT))
            return f"{src_name!r} has its own Octue metadata back", False
        except Conflict as exc:  # changed elsewhere meanwhile: its own version went beside, reported
            return f"{src_name!r} changed in the bucket meanwhile ({exc})", False
        except (OctuefsError, OSError):
            return (f"{src_name!r} still carries the Octue metadata (the id) of {dst_name!r} until an upload "
                    f"putting its own back lands (queued; see `octuefs status`)"), False

    def _replaced_metadata(self, dst_name: str, dst_node: FileNode | None,
                           dst_info: ObjectInfo | None) -> tuple[dict[str, str], ObjectInfo | None]:
        """The custom metadata whose Octue keys the file replacing ``dst_name`` takes over: the
        replaced file's newest, with what this mount has not saved yet (``dst_node``), merged with
        any change made elsewhere since this mount read it; never one overwritten unseen. With
        the version of ``dst_name`` read for it (None if it is not in the bucket)."""
        current = None
        if dst_info is not None:
            try:
                current = self.bucket.stat(dst_name)
            except NotFound:
                current = None
            if current is None or current.generation != dst_info.generation:
                self.metacache.forget(dst_name)
                raise Conflict(f"{dst_name!r} changed in the bucket since it was read; not replaced")
        if dst_node is None:
            return dict(current.metadata), current
        prior = dict(dst_info.metadata) if dst_info is not None else {}
        ours = octue.encode_object_metadata(dst_node.meta.with_id(), prior)
        if current is None or current.metageneration == dst_info.metageneration:
            return ours, current
        merged = merge_metadata(prior, ours, dict(current.metadata))
        if merged is None:
            self.metacache.forget(dst_name)
            raise Conflict(f"the Octue metadata of {dst_name!r} changed here and elsewhere; not replaced")
        return merged, current
