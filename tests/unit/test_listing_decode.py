"""A listing page decoded the fast way (storage.jsonapi.decode_listing: typed, only the fields
object_info reads) is the page decoded the general way (orjson, then object_info of each item),
for every answer it takes; an answer it does not take whole goes the general way, errors and all.

The pages compared are real fake-gcs-server answers (every field of every object, ACLs
included) holding what a mount meets: plain objects with Octue metadata, POSIX keys (modes,
owners, times), symbolic links (both layouts), special files, directory markers with and
without metadata, subdirectories, pages cut short with a next token; and hand-made answers for
what GCS sends and fake-gcs-server does not (partial responses, milliseconds, offsets,
nanoseconds, numbers as JSON numbers) and for malformed ones.
"""

from __future__ import annotations

import json

import orjson
import pytest

from octuefs.errors import StorageError
from octuefs.octue import posixmeta
from octuefs.storage import gcsreads, jsonapi
from octuefs.storage.gcsreads import GCSReads
from octuefs.storage.jsonapi import decode_listing, object_info
from octuefs.storage.objects import ListPage


class _Page(GCSReads):
    """GCSReads whose listing request answers ``raw``."""

    name = "b"

    def __init__(self, raw: bytes):
        self.raw = raw

    def _call(self, what, fn, shown=None):
        return self.raw


def _general(raw: bytes) -> tuple[list, list, str | None]:
    """What the page was before the fast way: orjson, then object_info of each item."""
    answer = orjson.loads(raw)
    return ([object_info(r) for r in answer.get("items", ())], list(answer.get("prefixes", ())),
            answer.get("nextPageToken") or None)


def _same(fast, general) -> None:
    """Equal, item by item, with every field of the same type (and the times in UTC)."""
    assert fast is not None
    objects, prefixes, token = fast
    assert (objects, prefixes, token) == general
    for a, b in zip(objects, general[0]):
        assert [type(x) for x in a] == [type(x) for x in b]
        assert a.updated.utcoffset().total_seconds() == 0 and a.updated.tzinfo is b.updated.tzinfo
        assert a.metadata == b.metadata and type(a.metadata) is type(b.metadata)
        assert posixmeta.decoded(a) == posixmeta.decoded(b)
        with pytest.raises(TypeError):
            a.metadata["x"] = "y"  # type: ignore[index]


def _converted_both_ways(raw: bytes, delimiter: str | None, monkeypatch) -> tuple[ListPage, ListPage]:
    fast = _Page(raw).fetch_page("d/", delimiter).convert()
    with monkeypatch.context() as m:
        m.setattr(gcsreads, "decode_listing", lambda page: None)
        general = _Page(raw).fetch_page("d/", delimiter).convert()
    return fast, general


# --- real answers ---------------------------------------------------------------------------

POSIX_FILE = {"goog-reserved-posix-mode": "640", "goog-reserved-posix-uid": "1234", "goog-reserved-posix-gid": "4321",
              "goog-reserved-file-mtime": "1600000000", "goog-reserved-file-atime": "1600000001"}
OCTUE = {"octue__tags": json.dumps({"index": 1, "instrument": "anemometer"}),
         "octue__labels": json.dumps({"_type": "set", "items": ["bench"]}), "octue__id": '"8be6"'}


def _fill(bucket) -> None:
    put = bucket.upload_bytes
    put("d/plain.csv", b"a,b\n1,2\n", OCTUE)
    put("d/empty", b"")
    put("d/posix.bin", b"x" * 700, {**POSIX_FILE, **OCTUE})
    put("d/setuid", b"x", {"goog-reserved-posix-mode": "4755"})
    put("d/link", b"plain.csv", {"goog-reserved-file-is-symlink": "true"})
    put("d/old-link", b"", {"gcsfuse_symlink_target": "../elsewhere"})
    put("d/fifo", b"", {"octuefs-file-type": "fifo", "goog-reserved-posix-mode": "600"})
    put("d/dev", b"", {"octuefs-file-type": "char", "octuefs-file-rdev": "1:3"})
    put("d/odd", b"y", {"goog-reserved-posix-mode": "banana", "goog-reserved-posix-uid": "-1", "ünïcödé": "✓"})
    put("d/", b"", {"goog-reserved-posix-mode": "750"})  # the directory's own marker
    put("d/sub/", b"", {"goog-reserved-posix-mode": "700", "goog-reserved-posix-uid": "7"})  # a subdirectory's
    put("d/sub/inner.txt", b"i")
    put("d/bare/", b"")  # a marker without metadata
    put("d/nomarker/x", b"x")  # a subdirectory without one
    put("d/name with spaces & ünïcödé.txt", b"u", {"k": "v"})


@pytest.fixture
def listed(gcs_bucket):
    _fill(gcs_bucket)
    return gcs_bucket


@pytest.mark.parametrize("delimiter", ["/", None])
@pytest.mark.parametrize("page_size", [1000, 4])
def test_real_answers_decode_the_same_both_ways(listed, delimiter, page_size, monkeypatch):
    token, pages = None, 0
    while True:
        raw = listed._api.list_objects("d/", delimiter, token, page_size, 10.0)
        assert b'"acl"' in raw or b'"selfLink"' in raw  # (fake-gcs-server sends every field)
        _same(decode_listing(raw), _general(raw))
        fast, general = _converted_both_ways(raw, delimiter, monkeypatch)
        assert fast == general
        pages += 1
        token = fast.next_token
        if not token:
            break
    assert pages == 1 if page_size == 1000 else pages > 1


def test_a_real_page_shows_the_markers_symlinks_and_posix_facts(listed):
    page = listed.list_page("d/", "/")
    by_name = {o.name: o for o in page.objects}
    assert "d/" in by_name and set(page.prefixes) == {"d/sub/", "d/bare/", "d/nomarker/"}
    assert page.markers["d/sub/"].metadata["goog-reserved-posix-mode"] == "700"
    assert page.markers["d/bare/"] is not None and page.markers["d/nomarker/"] is None
    assert posixmeta.decoded(by_name["d/link"]).is_symlink
    assert posixmeta.decoded(by_name["d/old-link"]).target == "../elsewhere"
    facts = posixmeta.decoded(by_name["d/posix.bin"])
    assert (facts.mode, facts.uid, facts.gid, facts.mtime) == (0o640, 1234, 4321, 1600000000.0)
    assert posixmeta.decoded(by_name["d/plain.csv"]) is posixmeta.NOTHING
    assert by_name["d/posix.bin"].size == 700 and by_name["d/empty"].size == 0


# --- hand-made answers ----------------------------------------------------------------------

BASE = {"name": "d/f.csv", "size": "12", "generation": "1700000000000001", "metageneration": "2",
        "updated": "2026-01-02T03:04:05.678Z"}


@pytest.mark.parametrize("entry", [
    BASE,  # GCS's partial response (fields=): nothing else
    {**BASE, "crc32c": "nYdZ1w==", "md5Hash": "A1AGk+Y22NBuB/mRtdt7xg==", "contentType": "text/csv",
     "storageClass": "STANDARD", "metadata": {"a": "1"}, "kind": "storage#object", "acl": [{"role": "OWNER"}]},
    {**BASE, "metadata": {}},
    {**BASE, "metadata": None, "crc32c": None},
    {**BASE, "updated": "2026-01-02T03:04:05Z"},
    {**BASE, "updated": "2026-01-02T03:04:05.123456789Z"},  # nanoseconds: truncated, as before
    {**BASE, "updated": "2026-01-02T03:04:05.9999999Z"},
    {**BASE, "updated": "2026-01-02T04:04:05.678+01:00"},
    {**BASE, "updated": "2026-01-02T03:04:05.678+00:00"},
    {**BASE, "updated": "2026-01-02T03:04:05.678"},  # no zone: UTC
    {**BASE, "size": 12, "generation": 1700000000000001, "metageneration": 2},  # numbers as JSON numbers
    {**BASE, "size": "0012", "generation": "-1"},  # what int() reads
    {**BASE, "size": " 12 ", "generation": "1_000"},
    {**BASE, "size": "99999999999999999999999"},
    {**BASE, "name": "d/", "metadata": POSIX_FILE},
    {**BASE, "metadata": {"goog-reserved-file-is-symlink": "true"}},
], ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items() if BASE.get(k) != v)[:60] or "bare")
@pytest.mark.parametrize("token", [None, "", "next-one"])
def test_hand_made_answers_decode_the_same_both_ways(entry, token, monkeypatch):
    answer = {"kind": "storage#objects", "items": [entry, {**BASE, "name": "d/g"}], "prefixes": ["d/sub/"]}
    if token is not None:
        answer["nextPageToken"] = token
    raw = json.dumps(answer).encode()
    _same(decode_listing(raw), _general(raw))
    for delimiter in ("/", None):
        fast, general = _converted_both_ways(raw, delimiter, monkeypatch)
        assert fast == general


@pytest.mark.parametrize("raw", [
    b'{}', b'{"items": []}', b'{"prefixes": ["d/a/", "d/b/"]}', b'{"items": [], "nextPageToken": "t"}',
])
def test_answers_without_objects(raw, monkeypatch):
    _same(decode_listing(raw), _general(raw))
    fast, general = _converted_both_ways(raw, "/", monkeypatch)
    assert fast == general


@pytest.mark.parametrize("entry", [
    {**BASE, "size": "1e2"},  # (a typed decoder would read 100 where int() refuses)
    {**BASE, "size": "12.0"},
    {**BASE, "size": 12.5},  # int() reads 12: the general way takes it
    {**BASE, "size": True},
    {**BASE, "generation": None},
    {k: v for k, v in BASE.items() if k != "updated"},
    {k: v for k, v in BASE.items() if k != "metageneration"},
    {**BASE, "updated": "yesterday"},
    {**BASE, "updated": 1700000000},
    {**BASE, "name": 7},
    {**BASE, "metadata": {"a": 1}},
    {**BASE, "metadata": ["a"]},
    {**BASE, "crc32c": 5},
], ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items() if BASE.get(k) != v)[:40] or "missing")
def test_what_the_fast_way_does_not_take_goes_the_general_way(entry, monkeypatch):
    raw = json.dumps({"items": [entry]}).encode()
    assert decode_listing(raw) is None
    try:
        general = _Page(raw).fetch_page("d/", "/").convert()
    except StorageError as exc:
        with pytest.raises(StorageError, match="incomplete entry") as caught:
            _Page(raw).fetch_page("d/", "/").convert()
        assert str(caught.value) == str(exc)
    else:
        assert general.objects == [object_info(entry)]


def _outcome(raw: bytes):
    try:
        return _Page(raw).fetch_page("d/", "/").convert()
    except Exception as exc:  # noqa: BLE001 (what it raised is the outcome)
        return type(exc), str(exc)


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'"x"', b'{"items": null}', b'{"items": [1]}',
                                 b'{"prefixes": [1]}', b'{"nextPageToken": 5, "items": []}', b'{"items": [{}]',
                                 b'{"items": [{}]}'])
def test_malformed_pages_fare_as_before(raw, monkeypatch):
    assert decode_listing(raw) is None
    with monkeypatch.context() as m:
        m.setattr(gcsreads, "decode_listing", lambda page: None)
        before = _outcome(raw)
    assert _outcome(raw) == before


def test_the_fast_way_is_the_one_taken(monkeypatch):
    calls = []
    real = jsonapi.decode_listing
    monkeypatch.setattr(gcsreads, "decode_listing", lambda raw: calls.append(raw) or real(raw))
    monkeypatch.setattr(gcsreads.orjson, "loads", lambda raw: pytest.fail("decoded the general way"))
    page = _Page(json.dumps({"items": [BASE]}).encode()).fetch_page("d/", "/").convert()
    assert calls and page.objects[0].size == 12
