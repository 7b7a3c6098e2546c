"""``octuefs find`` and ``octuefs manifest``: Octue metadata of a whole subtree, from listings only.

A PATH is ``gs://bucket/prefix`` (no mount needed) or a path inside an octuefs mount (the mount's
state names its bucket and prefix; the mountpoint is found by walking up with ``os.path.ismount``).
Either way the subtree is listed once, recursively: one list request per page of 1,000 objects,
whose entries carry every object's custom metadata, so no object is asked about on its own.

Inside a mount, pending local changes count: the mount's daemon names the files waiting to be
uploaded, with the metadata they go up with (``pending-metadata`` on its control socket), and
that version wins over the listed one; a dataset's record is read through the mount, which shows
its local version. Files still open for writing are not seen until they are closed.

Matching (every condition must hold): ``--label L`` the file has label L (folded to lower case,
as everywhere); ``--tag NAME=VALUE`` the tag's value reads VALUE as ``getfattr
user.octue.tags.NAME`` prints it (``80.5``, ``anemometer``, ``true``); ``--tag NAME`` the tag
exists; ``--since``/``--until`` the Octue timestamp is at or after / at or before the time (POSIX
seconds or ISO 8601; a naive time is taken as UTC, as ``getfattr`` takes it); a file without a
timestamp matches neither. ``--datasets`` finds dataset directories (those holding a ``.octue``)
instead, matched on their record's labels and tags.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from octuefs.errors import InvalidMetadata, NoSuchAttribute, NotFound, OctuefsError
from octuefs.octue.dataset import Dataset, is_listed_file
from octuefs.octue.dataset_record import (
    RECORD_NAME,
    DatasetRecord,
    decode_dataset_record,
    dumps_compact,
)
from octuefs.octue.metadata import (
    XATTR_PREFIX,
    OctueMetadata,
    decode_object_metadata,
    get_xattr,
    instant_micros,
    validate_labels,
    validate_tag_name,
    validate_timestamp,
)
from octuefs.storage import Bucket, open_bucket

_log = logging.getLogger(__name__)

EXIT_FOUND, EXIT_NONE, EXIT_ERROR = 0, 1, 2
EXIT_SIGPIPE = 128 + 13

__all__ = ["Query", "Place", "place_of", "find", "run_find", "run_manifest"]


class FindError(OctuefsError):
    """A PATH or a condition that cannot be used (exit status 2)."""


# --- where PATH is ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Place:
    """A subtree: ``bucket`` and ``prefix`` (``dir/``, or an object's own name when ``is_file``);
    ``mountpoint``, ``mount_prefix`` and ``typed`` (PATH as given, which what is found is printed
    under, as find(1) prints it) when it was named by a path inside a mount."""

    bucket: str
    prefix: str
    mountpoint: str | None = None
    mount_prefix: str = ""
    is_file: bool = False
    endpoint: str | None = None  # the emulator the mount's daemon uses (a --local mount's own)
    typed: str = ""

    def open_bucket(self) -> Bucket:
        return open_bucket(self.bucket, check=False, endpoint=self.endpoint)

    def can_show(self, name: str) -> bool:
        """Whether an object is a file a path can name here (a mount shows no ``a//b``, ``a/./b``)."""
        if name.endswith("/"):
            return False
        segments = name[len(self.mount_prefix) :].split("/")
        return self.mountpoint is None or all(s not in ("", ".", "..") for s in segments)

    def shown(self, name: str) -> str:
        """How an object (or a dataset directory, without its ``/``) is printed."""
        if self.mountpoint is None:
            return f"gs://{self.bucket}/{name}".rstrip("/")
        rest = "" if self.is_file else (name + "/")[len(self.prefix) :].rstrip("/")
        return os.path.join(self.typed, rest) if rest else self.typed


def _mountpoint_of(path: str) -> str | None:
    here = path
    while True:
        if os.path.ismount(here):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def place_of(path: str) -> Place:
    """Where ``path`` (``gs://bucket/prefix`` or a path in an octuefs mount) is in a bucket."""
    if path.startswith("gs://"):
        bucket, _, prefix = path[len("gs://") :].partition("/")
        if not bucket:
            raise FindError(f"{path!r} names no bucket; give gs://bucket/prefix or a path in a mount")
        prefix = prefix.strip("/")
        return Place(bucket, prefix + "/" if prefix else "")
    from octuefs.mount import read_state

    local = os.path.abspath(path)
    if not os.path.lexists(local):
        raise FindError(f"{path}: no such file or directory")
    mountpoint = _mountpoint_of(local)
    state = (read_state(mountpoint) or read_state(os.path.realpath(mountpoint))) if mountpoint else None
    if not state or "bucket" not in state:
        raise FindError(f"{path} is not inside an octuefs mount (and not a gs://bucket/prefix)")
    rel = os.path.relpath(local, mountpoint)
    rel = "" if rel == "." else rel.replace(os.sep, "/")
    is_file = not os.path.isdir(local)
    prefix = state.get("prefix") or ""
    return Place(state["bucket"], prefix + rel + ("" if is_file or not rel else "/"), mountpoint, prefix, is_file,
                 state.get("endpoint"), path.rstrip("/") or "/")


# --- what to match ------------------------------------------------------------------------------


def _parse_time(text: str, option: str) -> int:
    try:
        return instant_micros(validate_timestamp(text))
    except (InvalidMetadata, ValueError) as exc:
        raise FindError(f"{option} {text!r}: give POSIX seconds or an ISO 8601 date-time ({exc})") from None


@dataclasses.dataclass(frozen=True)
class Query:
    """The conditions, all of which must hold (see the module docstring)."""

    labels: frozenset[str] = frozenset()
    tag_values: tuple[tuple[str, str], ...] = ()
    tags_present: frozenset[str] = frozenset()
    since: int | None = None  # microseconds since the epoch
    until: int | None = None

    @classmethod
    def parse(cls, labels: Iterable[str] = (), tags: Iterable[str] = (), since: str | None = None,
              until: str | None = None) -> Query:
        """From the command line's words; ``FindError`` saying what is wrong with one."""
        try:
            folded = validate_labels(list(labels))
        except InvalidMetadata as exc:
            raise FindError(f"--label: {exc}") from None
        values, present = [], set()
        for tag in tags:
            name, eq, value = tag.partition("=")
            try:
                validate_tag_name(name)
            except InvalidMetadata as exc:
                raise FindError(f"--tag {tag!r}: {exc}") from None
            if eq:
                values.append((name, value))
            else:
                present.add(name)
        return cls(folded, tuple(values), frozenset(present), since and _parse_time(since, "--since"),
                   until and _parse_time(until, "--until"))

    @property
    def asks_about_time(self) -> bool:
        return self.since is not None or self.until is not None

    def matches(self, meta: OctueMetadata) -> bool:
        if not self.labels <= meta.labels or not self.tags_present <= meta.tags.keys():
            return False
        for name, value in self.tag_values:
            try:
                if get_xattr(meta, f"{XATTR_PREFIX}tags.{name}").decode("utf-8", "surrogateescape") != value:
                    return False
            except NoSuchAttribute:
                return False
        if self.asks_about_time:
            if meta.timestamp is None:
                return False
            at = instant_micros(meta.timestamp)
            if (self.since is not None and at < self.since) or (self.until is not None and at > self.until):
                return False
        return True


# --- the subtree, from listings ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Found:
    """A file (or dataset) that matched, with what ``--json`` prints of it."""

    name: str
    size: int | None
    meta: OctueMetadata
    dataset_name: str | None = None


def _listed(bucket: Bucket, place: Place) -> Iterator[Any]:
    """Every object of the subtree (or the one object PATH names), one request per page."""
    if place.is_file:
        page = bucket.list_page(place.prefix, "/", None, 1)
        yield from (info for info in page.objects if info.name == place.prefix)
        return
    for page in bucket.iter_pages_ahead(place.prefix, None):
        yield from page.objects


def pending_of(place: Place) -> dict[str, dict]:
    """The files of the subtree waiting in the mount to be uploaded: name -> {"metadata", "size"}."""
    if place.mountpoint is None:
        return {}
    from octuefs.control import ControlError, request
    from octuefs.mount import socket_path

    try:
        reply = request(socket_path(place.mountpoint), "pending-metadata", timeout=30, expect="pending",
                        fields={"prefix": place.prefix})
    except ControlError as exc:
        print(f"octuefs: warning: changes pending in {place.mountpoint} are not included: {exc}", file=sys.stderr)
        return {}
    pending = reply["pending"]
    if place.is_file:
        return {name: p for name, p in pending.items() if name == place.prefix}
    return pending


def find(bucket: Bucket, place: Place, query: Query, datasets: bool = False) -> list[Found]:
    """What matches ``query`` under ``place``, sorted by name (see the module docstring)."""
    pending = pending_of(place)
    sizes: dict[str, int | None] = {}
    metas: dict[str, Any] = {}
    listed = list(_listed(bucket, place))
    if not listed and place.mountpoint is None and place.prefix and not place.is_file:
        # gs://bucket/name may name one object rather than a directory
        place = dataclasses.replace(place, prefix=place.prefix[:-1], is_file=True)
        listed = list(_listed(bucket, place))
    for info in listed:
        if info.name not in pending:
            sizes[info.name], metas[info.name] = info.size, info
    for name, entry in pending.items():
        sizes[name], metas[name] = entry.get("size"), entry.get("metadata") or {}
    if datasets:
        return _find_datasets(bucket, place, query, sorted(n for n in metas if _is_record(n)), metas)
    found = []
    for name in sorted(metas):
        if not is_listed_file(name) or not place.can_show(name):
            continue
        raw = metas[name]
        meta = decode_object_metadata(raw.metadata if hasattr(raw, "metadata") else raw)
        if query.matches(meta):
            found.append(Found(name, sizes[name], meta))
    return found


def _is_record(name: str) -> bool:
    return posixpath.basename(name) == RECORD_NAME and ".signed_metadata_files" not in name


def _find_datasets(bucket: Bucket, place: Place, query: Query, records: list[str], listed: dict) -> list[Found]:
    if query.asks_about_time:
        raise FindError("--since/--until: datasets have no timestamp (their files do)")
    found = []
    for name in records:
        record = _read_record(bucket, place, name, listed[name])
        meta = OctueMetadata(id=record.id, tags=record.tags, labels=record.labels)
        if query.matches(meta):
            directory = name[: -len(RECORD_NAME)].rstrip("/")
            found.append(Found(directory, None, meta, record.name or posixpath.basename(directory) or place.bucket))
    return found


def _read_record(bucket: Bucket, place: Place, name: str, info: Any) -> DatasetRecord:
    """A dataset's record: through the mount (its local version) or from the bucket."""
    try:
        if place.mountpoint is not None:
            with open(place.shown(name), "rb") as f:
                data = f.read()
        else:
            data = bucket.read_range(name, 0, info.size, generation=info.generation)
        return decode_dataset_record(data)
    except (OSError, NotFound, ValueError) as exc:
        print(f"octuefs: warning: {place.shown(name)}: read as a dataset without metadata: {exc}", file=sys.stderr)
        return DatasetRecord()


# --- the commands ------------------------------------------------------------------------------


def _json_line(place: Place, item: Found) -> str:
    meta = item.meta
    fields: dict[str, Any] = {"path": place.shown(item.name), "id": meta.id}
    if item.dataset_name is not None:
        fields["name"] = item.dataset_name
    else:
        fields["size"] = item.size
    fields["tags"], fields["labels"] = dict(meta.tags), sorted(meta.labels)
    if item.dataset_name is None:
        at = meta.timestamp and instant_micros(meta.timestamp)
        fields["timestamp"] = None if at is None else at / 1_000_000
    return dumps_compact(fields)


def _write(text: str) -> int:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: end quietly, as any command-line tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_SIGPIPE
    return 0


def run_find(path: str, labels=(), tags=(), since=None, until=None, datasets=False, as_json=False,
             print0=False) -> int:
    """``octuefs find``: print what matches; 0 something matched, 1 nothing, 2 an error (one line)."""
    try:
        query = Query.parse(labels, tags, since, until)
        place = place_of(path)
        found = find(place.open_bucket(), place, query, datasets)
    except (OctuefsError, InvalidMetadata) as exc:
        print(f"octuefs find: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if as_json:
        text = "".join(_json_line(place, item) + "\n" for item in found)
    else:
        end = "\0" if print0 else "\n"
        text = "".join(place.shown(item.name) + end for item in found)
    return _write(text) or (EXIT_FOUND if found else EXIT_NONE)


def run_manifest(paths: list[str], output: str | None = None) -> int:
    """``octuefs manifest``: a manifest of the datasets at ``paths`` on stdout or in ``output``."""
    from octuefs.octue.manifest import build_manifest, dumps_manifest

    try:
        loaded = []
        for path in paths:
            place = place_of(path)
            if place.is_file:
                raise FindError(f"{path} is a file; a dataset is a directory")
            loaded.append(Dataset(f"gs://{place.bucket}/{place.prefix}", bucket=place.open_bucket()))
        text = dumps_manifest(build_manifest(loaded))
    except (OctuefsError, ValueError) as exc:
        print(f"octuefs manifest: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if output is None:
        return _write(text)
    with open(output, "w") as f:
        f.write(text)
    return 0
