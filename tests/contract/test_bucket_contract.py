"""The Bucket contract (octuefs/storage/base.py), run against FakeBucket and fake-gcs-server.

Each test states one promise. The emulator runs behind the strict proxy (tests/conftest.py),
which keeps GCS's preconditions and metageneration; where fake-gcs-server still does not behave
like GCS, the test asserts GCS's behaviour and carries ``real_gcs_only``: it is a strict xfail on
the emulator, so the code is never bent to the emulator.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from octuefs.errors import NotFound, PreconditionFailed, RangeNotSatisfiable
from octuefs.storage.base import RetryPolicy
from octuefs.storage.fake import FakeBucket, crc32c_b64


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def put_many(bucket, names, data=b"x", metadata=None):
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: bucket.upload_bytes(n, data, metadata), names))


def all_pages(bucket, prefix="", delimiter="/", max_results=1000):
    return list(bucket.iter_pages(prefix, delimiter, max_results))


# --- writing and stat -------------------------------------------------------------------------


def test_upload_returns_complete_info_and_stat_agrees(bucket):
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    data = b"hello world"
    info = bucket.upload_bytes("data/a.csv", data, {"octue__id": '"x"', "other": "kept"})
    assert info.name == "data/a.csv"
    assert info.size == len(data)
    assert info.generation > 0 and info.metageneration == 1
    assert info.updated.tzinfo is not None and info.updated.utcoffset() == dt.timedelta(0)
    assert before < info.updated < before + dt.timedelta(minutes=1)
    assert info.md5 == md5_b64(data)
    assert info.crc32c == crc32c_b64(data)
    assert info.content_type == "text/csv"  # guessed from the name when not given
    assert dict(info.metadata) == {"octue__id": '"x"', "other": "kept"}
    assert bucket.stat("data/a.csv") == info


def test_upload_explicit_content_type_and_empty_metadata(bucket):
    info = bucket.upload_bytes("blob", b"\x00\x01", {}, content_type="application/x-thing")
    assert info.content_type == "application/x-thing"
    assert dict(info.metadata) == {}
    assert bucket.stat("blob").content_type == "application/x-thing"


def test_metadata_arrives_with_the_data_in_one_request(bucket, monkeypatch):
    requests_made = []
    if isinstance(bucket, FakeBucket):
        bucket.upload_bytes("one", b"data", {"k": "v"})
        assert bucket.calls == {"upload": 1}
    else:  # count the HTTP requests really sent, by the library and by the direct path (jsonapi)
        for owner, attr in ((bucket.client._http, "request"), (bucket._api._http, "urlopen")):

            def counting(method, url, *args, _original=getattr(owner, attr), **kwargs):
                requests_made.append((method, url))
                return _original(method, url, *args, **kwargs)

            monkeypatch.setattr(owner, attr, counting)
        info = bucket.upload_bytes("one", b"data", {"k": "v"})
        monkeypatch.undo()
        assert len(requests_made) == 1, requests_made
        assert dict(info.metadata) == {"k": "v"}
    assert dict(bucket.stat("one").metadata) == {"k": "v"}


def test_upload_file_and_download_to_file(bucket, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 40)
    info = bucket.upload_file("f.bin", str(src), {"a": "1"})
    dst = tmp_path / "out" / "dst.bin"
    dst.parent.mkdir()
    dst.write_bytes(b"old content to be replaced")
    got = bucket.download_to_file("f.bin", str(dst))
    assert dst.read_bytes() == src.read_bytes()
    assert got.generation == info.generation and dict(got.metadata) == {"a": "1"}
    assert sorted(p.name for p in dst.parent.iterdir()) == ["dst.bin"]  # no temporary left behind


def test_upload_range_makes_an_object_of_a_files_bytes_without_metadata(bucket, tmp_path):
    """A part of a composite upload (octuefs/writeback/composite.py): a byte range, streamed."""
    data = os.urandom(3000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    moved = []
    info = bucket.upload_range("d/part", str(src), 1000, 1500, crc32c=crc32c_b64(data[1000:2500]),
                               progress=lambda: moved.append(1))
    assert info.size == 1500 and info.crc32c == crc32c_b64(data[1000:2500]) and dict(info.metadata) == {}
    assert bucket.read_range("d/part", 0, 3000) == data[1000:2500] and moved
    assert bucket.stat("d/part").generation == info.generation


def test_a_view_with_another_retry_policy_is_the_same_bucket(bucket):
    once = bucket.with_retry(RetryPolicy(deadline=0.0))
    info = once.upload_bytes("v", b"abc", {"k": "v"})
    assert bucket.stat("v") == info and once.name == bucket.name
    bucket.delete("v")
    with pytest.raises(NotFound):
        once.stat("v")


def test_download_pinned_generation(bucket, tmp_path):
    old = bucket.upload_bytes("g", b"v1")
    new = bucket.upload_bytes("g", b"v2")
    path = str(tmp_path / "g")
    assert bucket.download_to_file("g", path, generation=new.generation).generation == new.generation
    with pytest.raises(NotFound):
        bucket.download_to_file("g", path, generation=old.generation)


@pytest.mark.emulator
def test_large_upload_keeps_metadata(gcs_bucket, tmp_path):
    """Above 8 MiB the client uses a resumable upload; metadata still goes with it."""
    src = tmp_path / "big"
    src.write_bytes(b"0123456789abcdef" * (9 * 1024 * 1024 // 16))
    info = gcs_bucket.upload_file("big", str(src), {"octue__id": '"big"'}, if_generation_match=0)
    assert info.size == src.stat().st_size and dict(info.metadata) == {"octue__id": '"big"'}
    assert gcs_bucket.read_range("big", 9 * 1024 * 1024 - 4, 10**9) == b"cdef"


# --- preconditions ----------------------------------------------------------------------------


def test_create_only(bucket):
    first = bucket.upload_bytes("p", b"first", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.upload_bytes("p", b"second", {"x": "y"}, if_generation_match=0)
    after = bucket.stat("p")
    assert after == first
    assert bucket.read_range("p", 0, 100) == b"first"


def test_replace_with_right_and_wrong_generation(bucket):
    first = bucket.upload_bytes("p", b"first")
    second = bucket.upload_bytes("p", b"second", if_generation_match=first.generation)
    assert second.generation > first.generation
    with pytest.raises(PreconditionFailed):
        bucket.upload_bytes("p", b"third", if_generation_match=first.generation)
    assert bucket.read_range("p", 0, 100) == b"second"
    with pytest.raises(PreconditionFailed):
        bucket.upload_bytes("absent", b"x", if_generation_match=second.generation)
    with pytest.raises(NotFound):
        bucket.stat("absent")


def test_generations_strictly_increase(bucket):
    gens = [bucket.upload_bytes("same", str(i).encode()).generation for i in range(5)]
    assert gens == sorted(gens) and len(set(gens)) == 5


# --- listing ----------------------------------------------------------------------------------

NAMES = ["b", "a", "a/x", "a/y/z", "a-b", "c/", "c/d", "Z", "é", "a/y/w"]


def test_listing_with_delimiter(bucket):
    put_many(bucket, NAMES)
    objects, prefixes = bucket.list_all()
    assert [o.name for o in objects] == ["Z", "a", "a-b", "b", "é"]
    assert prefixes == ["a/", "c/"]


def test_a_listing_with_a_delimiter_brings_each_prefixs_marker_and_keeps_it_out_of_the_objects(bucket):
    """The parent's listing says each subdirectory's marker (its mode lives there): ``ls -l`` of
    a directory of subdirectories costs no request per subdirectory."""
    bucket.upload_bytes("m/", b"", metadata={"goog-reserved-posix-mode": "700"})
    bucket.upload_bytes("m/sub/", b"", metadata={"goog-reserved-posix-mode": "750"})
    bucket.upload_bytes("m/sub/x", b"x")
    bucket.upload_bytes("m/bare/y", b"y")
    bucket.upload_bytes("m/f", b"f")
    page = bucket.list_page("m/", "/")
    assert [o.name for o in page.objects] == ["m/", "m/f"] and page.prefixes == ["m/bare/", "m/sub/"]
    assert page.markers is not None and set(page.markers) == {"m/bare/", "m/sub/"}
    assert page.markers["m/bare/"] is None
    assert page.markers["m/sub/"].metadata["goog-reserved-posix-mode"] == "750"


def test_listing_without_delimiter_is_lexicographic(bucket):
    put_many(bucket, NAMES)
    objects, prefixes = bucket.list_all(delimiter=None)
    assert [o.name for o in objects] == sorted(NAMES)  # code point order == UTF-8 byte order
    assert prefixes == []


def test_listing_under_a_prefix(bucket):
    put_many(bucket, NAMES)
    objects, prefixes = bucket.list_all("a/")
    assert [o.name for o in objects] == ["a/x"]
    assert prefixes == ["a/y/"]
    objects, prefixes = bucket.list_all("a/y/")
    assert [o.name for o in objects] == ["a/y/w", "a/y/z"]
    assert bucket.list_all("nothing/") == ([], [])


def test_directory_marker(bucket):
    put_many(bucket, NAMES)
    objects, prefixes = bucket.list_all("c/")
    assert [(o.name, o.is_dir_marker, o.size) for o in objects] == [("c/", True, 1), ("c/d", False, 1)]
    marker = bucket.upload_bytes("empty-dir/", b"")
    assert marker.is_dir_marker and marker.size == 0
    objects, prefixes = bucket.list_all()
    assert "empty-dir/" in prefixes and "empty-dir/" not in [o.name for o in objects]


def test_listing_carries_metadata_and_facts(bucket):
    written = bucket.upload_bytes("m/one", b"12345", {"octue__tags": '{"a": 1}'}, content_type="text/plain")
    (listed,), _ = bucket.list_all("m/")
    assert listed == written


@pytest.mark.parametrize("delimiter", [None, "/"])
def test_pagination_across_many_pages(bucket, delimiter):
    flat = [f"f{i:03d}" for i in range(200)]
    nested = [f"d{i:02d}/{leaf}" for i in range(25) for leaf in ("x", "y")]  # 25 prefixes
    put_many(bucket, flat + nested)
    pages = all_pages(bucket, delimiter=delimiter, max_results=100)
    objects = [o.name for p in pages for o in p.objects]
    prefixes = [q for p in pages for q in p.prefixes]
    if delimiter is None:
        assert objects == sorted(flat + nested) and prefixes == []
        assert len(pages) == 3
    else:
        assert objects == flat
        assert prefixes == [f"d{i:02d}/" for i in range(25)]
    assert all(p.next_token for p in pages[:-1]) and not pages[-1].next_token


def test_pages_asked_ahead_list_every_object_once_even_when_metadata_names_a_page_token(bucket):
    # A key "nextPageToken" in objects' custom metadata is found before the page's own token
    # by a scan of the undecoded page: the listing must not follow it.
    names = [f"t{i:03d}" for i in range(250)]
    put_many(bucket, names, metadata={"nextPageToken": "bogus", "note": '"nextPageToken": "x"'})
    pages = list(bucket.iter_pages_ahead("", "/", max_results=100))
    assert [o.name for p in pages for o in p.objects] == names
    assert len(pages) == 3 and pages[0].objects[0].metadata["nextPageToken"] == "bogus"


@pytest.mark.real_gcs_only(reason="maxResults does not count prefixes")
def test_page_holds_at_most_max_results_entries_counting_prefixes(bucket):
    put_many(bucket, [f"d{i:02d}/x" for i in range(30)] + [f"f{i:02d}" for i in range(30)])
    pages = all_pages(bucket, max_results=25)
    assert all(len(p.objects) + len(p.prefixes) <= 25 for p in pages)
    assert sum(len(p.objects) + len(p.prefixes) for p in pages) == 60


def test_listing_a_page_with_explicit_tokens(bucket):
    put_many(bucket, [f"k{i}" for i in range(7)])
    first = bucket.list_page(max_results=3)
    assert [o.name for o in first.objects] == ["k0", "k1", "k2"] and first.next_token
    second = bucket.list_page(page_token=first.next_token, max_results=3)
    assert [o.name for o in second.objects] == ["k3", "k4", "k5"]
    again = bucket.list_page(page_token=first.next_token, max_results=3)  # tokens can be reused
    assert [o.name for o in again.objects] == ["k3", "k4", "k5"]


# --- reading ----------------------------------------------------------------------------------


def test_ranged_reads(bucket):
    data = bytes(range(100))
    bucket.upload_bytes("r", data)
    assert bucket.read_range("r", 0, 100) == data
    assert bucket.read_range("r", 10, 20) == data[10:20]
    assert bucket.read_range("r", 90, 1000) == data[90:]  # short read at the end
    assert bucket.read_range("r", 99, 100) == data[99:]
    assert bucket.read_range("r", 5, 5) == b""
    for start in (100, 150):
        with pytest.raises(RangeNotSatisfiable):
            bucket.read_range("r", start, start + 10)
    with pytest.raises(ValueError):
        bucket.read_range("r", 10, 5)


def test_ranged_read_into_a_file_lands_at_the_range_start(bucket, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 5)  # several of the streaming reads' pieces
    bucket.upload_bytes("r", data)
    path = tmp_path / "copy"
    path.write_bytes(b"\xff" * 10)
    fd = os.open(path, os.O_RDWR)
    try:
        assert bucket.read_range_into("r", 4, len(data), fd) == len(data) - 4
        assert bucket.read_range_into("r", 0, 4, fd) == 4
        assert bucket.read_range_into("r", len(data) - 3, len(data) + 100, fd) == 3  # short at the end
        assert bucket.read_range_into("r", 7, 7, fd) == 0
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    bucket.upload_bytes("empty", b"")
    with open(path, "r+b") as f:
        assert bucket.read_range_into("empty", 0, 10, f.fileno()) == 0
        with pytest.raises(RangeNotSatisfiable):
            bucket.read_range_into("r", len(data), len(data) + 1, f.fileno())
        with pytest.raises(NotFound):
            bucket.read_range_into("r", 0, 1, f.fileno(), generation=bucket.stat("r").generation + 1)


def test_ranged_read_into_a_file_reports_progress_as_the_bytes_land(bucket, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 5)
    generation = bucket.upload_bytes("p", data).generation
    reported: list[tuple[int, bytes]] = []
    with open(tmp_path / "copy", "w+b") as f:
        f.truncate(len(data))

        def progress(upto: int) -> None:  # what the file holds at each report
            reported.append((upto, os.pread(f.fileno(), upto - 10, 10)))

        assert bucket.read_range_into("p", 10, len(data), f.fileno(), generation=generation, progress=progress) == len(data) - 10
    assert reported and reported[-1][0] == len(data)
    assert [upto for upto, _ in reported] == sorted(upto for upto, _ in reported)
    for upto, held in reported:  # every byte before a report is already in the file
        assert held == data[10:upto]


def test_ranged_read_of_an_empty_object(bucket):
    bucket.upload_bytes("empty", b"")
    assert bucket.read_range("empty", 0, 10) == b""
    assert bucket.read_range("empty", 0, 0) == b""


def test_read_pinned_generation_after_replacement(bucket):
    old = bucket.upload_bytes("v", b"version one")
    assert bucket.read_range("v", 0, 7, generation=old.generation) == b"version"
    new = bucket.upload_bytes("v", b"VERSION TWO")
    with pytest.raises(NotFound):
        bucket.read_range("v", 0, 7, generation=old.generation)
    assert bucket.read_range("v", 8, 11, generation=new.generation) == b"TWO"


# --- metadata patch ---------------------------------------------------------------------------


def effective(metadata) -> dict[str, str]:
    """Metadata as a reader sees it: an empty value counts as absent (the emulator stores "")."""
    return {k: v for k, v in metadata.items() if v != ""}


def test_patch_sets_and_deletes_keys(bucket):
    bucket.upload_bytes("o", b"data", {"keep": "1", "change": "old", "drop": "x"})
    info = bucket.patch_metadata("o", {"change": "new", "drop": None, "add": "yes"})
    assert effective(info.metadata) == {"keep": "1", "change": "new", "add": "yes"}
    assert info.metageneration is not None and info.updated is not None
    assert info == bucket.stat("o")
    assert bucket.read_range("o", 0, 10) == b"data"


@pytest.mark.real_gcs_only(reason="a key patched to null is stored as an empty string")
def test_patch_none_removes_the_key(bucket):
    bucket.upload_bytes("o", b"data", {"drop": "x"})
    assert "drop" not in bucket.patch_metadata("o", {"drop": None}).metadata


def test_patch_moves_a_counter(bucket):
    """Which counter moves is not part of the contract; that one of them does is."""
    before = bucket.upload_bytes("o", b"data", {"a": "1"})
    after = bucket.patch_metadata("o", {"a": "2"})
    assert (after.generation, after.metageneration) != (before.generation, before.metageneration)


def test_patch_keeps_generation_and_bumps_metageneration(bucket):
    before = bucket.upload_bytes("o", b"data", {"a": "1"})
    after = bucket.patch_metadata("o", {"a": "2"})
    assert after.generation == before.generation
    assert after.metageneration == before.metageneration + 1


def test_patch_with_right_preconditions_and_content_type(bucket):
    before = bucket.upload_bytes("o.txt", b"data")
    info = bucket.patch_metadata(
        "o.txt",
        {"a": "1"},
        if_metageneration_match=before.metageneration,
        if_generation_match=before.generation,
        content_type="application/json",
    )
    assert info.content_type == "application/json" and effective(info.metadata) == {"a": "1"}


@pytest.mark.parametrize("which", ["metageneration", "generation"])
def test_patch_with_wrong_precondition_changes_nothing(bucket, which):
    before = bucket.upload_bytes("o", b"data", {"a": "1"})
    wrong = {f"if_{which}_match": (before.metageneration if which == "metageneration" else before.generation) + 7}
    with pytest.raises(PreconditionFailed):
        bucket.patch_metadata("o", {"a": "2"}, **wrong)
    assert bucket.stat("o") == before


# --- copy and delete --------------------------------------------------------------------------


def test_copy_keeps_content_type_and_metadata(bucket):
    src = bucket.upload_bytes("src.json", b'{"a": 1}', {"octue__id": '"1"', "x": "y"})
    dst = bucket.copy("src.json", "dir/dst.json")
    assert dst.name == "dir/dst.json" and dst.size == src.size
    assert dst.content_type == "application/json" and dict(dst.metadata) == dict(src.metadata)
    assert dst.md5 == src.md5 and dst.crc32c == src.crc32c
    assert bucket.read_range("dir/dst.json", 0, 100) == b'{"a": 1}'
    assert bucket.stat("src.json") == src
    assert bucket.stat("dir/dst.json") == dst


def test_copy_with_right_preconditions(bucket):
    src = bucket.upload_bytes("s", b"1")
    dst = bucket.copy("s", "d", if_source_generation_match=src.generation, if_generation_match=0)
    again = bucket.copy("s", "d", if_generation_match=dst.generation)
    assert again.generation > dst.generation


def test_copy_with_wrong_preconditions(bucket):
    src = bucket.upload_bytes("s", b"1")
    bucket.upload_bytes("d", b"existing")
    with pytest.raises(PreconditionFailed):
        bucket.copy("s", "d", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.copy("s", "new", if_source_generation_match=src.generation + 1)
    assert bucket.read_range("d", 0, 100) == b"existing"
    with pytest.raises(NotFound):
        bucket.stat("new")


def test_delete(bucket):
    info = bucket.upload_bytes("gone", b"x")
    bucket.delete("gone", if_generation_match=info.generation)
    with pytest.raises(NotFound):
        bucket.stat("gone")
    assert bucket.list_all() == ([], [])


def test_delete_with_wrong_generation_keeps_the_object(bucket):
    info = bucket.upload_bytes("kept", b"x")
    with pytest.raises(PreconditionFailed):
        bucket.delete("kept", if_generation_match=info.generation + 1)
    assert bucket.stat("kept") == info


# --- another writer got there first: stale preconditions fail and change nothing ----------------


def _state(bucket, *names):
    """What a user relies on: each object's bytes and its whole ObjectInfo (or None)."""
    result = {}
    for name in names:
        try:
            info = bucket.stat(name)
            result[name] = (bucket.read_range(name, 0, 1 << 20) if info.size else b"", info)
        except NotFound:
            result[name] = None
    return result


def test_upload_after_another_writers_patch_fails_the_metageneration_precondition(bucket):
    base = bucket.upload_bytes("f.csv", b"v1", {"owner": "me"})
    theirs = bucket.patch_metadata("f.csv", {"label": "theirs"})  # another writer, between read and write
    assert theirs.metageneration == base.metageneration + 1
    before = _state(bucket, "f.csv")
    with pytest.raises(PreconditionFailed):
        bucket.upload_bytes("f.csv", b"v2", {"owner": "me"}, if_generation_match=base.generation,
                            if_metageneration_match=base.metageneration)
    assert _state(bucket, "f.csv") == before and effective(bucket.stat("f.csv").metadata)["label"] == "theirs"
    info = bucket.upload_bytes("f.csv", b"v2", {"owner": "me"}, if_generation_match=theirs.generation,
                               if_metageneration_match=theirs.metageneration)
    assert info.metageneration == 1 and bucket.read_range("f.csv", 0, 10) == b"v2"


def test_metageneration_precondition_on_an_absent_object_fails(bucket):
    with pytest.raises(PreconditionFailed):
        bucket.upload_bytes("absent", b"x", if_metageneration_match=1)
    with pytest.raises(NotFound):
        bucket.stat("absent")


def test_compose_makes_a_new_generation_with_a_crc32c(bucket):
    bucket.upload_bytes("parts/a", b"hello ")
    bucket.upload_bytes("parts/b", b"world")
    info = bucket.compose(["parts/a", "parts/b"], "out.txt", {"k": "v"}, if_generation_match=0)
    assert bucket.read_range("out.txt", 0, 100) == b"hello world"
    assert (info.size, info.metageneration, info.crc32c) == (11, 1, crc32c_b64(b"hello world"))
    assert effective(info.metadata) == {"k": "v"} and info.content_type == "text/plain"
    assert bucket.read_range("parts/a", 0, 100) == b"hello "  # the sources stay


@pytest.mark.parametrize("stale", ["generation", "absent", "metageneration"])
def test_compose_under_a_stale_generation_fails_and_changes_nothing(bucket, stale):
    bucket.upload_bytes("parts/a", b"ours")
    base = bucket.upload_bytes("out", b"old", {"k": "old"})
    newer = bucket.upload_bytes("out", b"theirs", {"k": "theirs"})  # another writer replaced it
    theirs = bucket.patch_metadata("out", {"k": "theirs, patched"})
    preconditions = {"generation": {"if_generation_match": base.generation}, "absent": {"if_generation_match": 0},
                     "metageneration": {"if_generation_match": newer.generation,
                                        "if_metageneration_match": newer.metageneration}}[stale]
    before = _state(bucket, "out", "parts/a")
    with pytest.raises(PreconditionFailed):
        bucket.compose(["parts/a"], "out", {"k": "ours"}, **preconditions)
    assert _state(bucket, "out", "parts/a") == before and bucket.stat("out") == theirs


def test_compose_of_a_missing_source_fails(bucket):
    bucket.upload_bytes("parts/a", b"1")
    with pytest.raises(NotFound):
        bucket.compose(["parts/a", "parts/missing"], "out")
    with pytest.raises(NotFound):
        bucket.stat("out")


@pytest.mark.parametrize("stale", ["generation", "metageneration"])
def test_patch_with_a_stale_precondition_after_another_writer_fails(bucket, stale):
    base = bucket.upload_bytes("o", b"data", {"a": "1"})
    if stale == "generation":
        bucket.upload_bytes("o", b"newer", {"a": "theirs"})
    else:
        bucket.patch_metadata("o", {"a": "theirs"})
    before = _state(bucket, "o")
    with pytest.raises(PreconditionFailed):
        bucket.patch_metadata("o", {"a": "ours"}, **{f"if_{stale}_match": getattr(base, stale)})
    assert _state(bucket, "o") == before


def test_copy_with_a_stale_source_or_destination_generation_fails(bucket):
    src = bucket.upload_bytes("s", b"v1")
    bucket.upload_bytes("s", b"v2")  # the source was replaced since it was read
    dst = bucket.upload_bytes("d", b"d1")
    bucket.upload_bytes("d", b"d2")  # and so was the destination
    before = _state(bucket, "s", "d", "new")
    with pytest.raises(PreconditionFailed):
        bucket.copy("s", "new", if_source_generation_match=src.generation, if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.copy("s", "d", if_generation_match=dst.generation)
    assert _state(bucket, "s", "d", "new") == before


def test_copy_with_a_stale_source_or_destination_metageneration_fails(bucket):
    """A metadata-only change (same generation, new metageneration) on either side refuses a
    copy that names the metageneration it read; the right ones let it through."""
    src = bucket.upload_bytes("s", b"v1", {"k": "1"})
    dst = bucket.upload_bytes("d", b"d1", {"k": "1"})
    src_now = bucket.patch_metadata("s", {"k": "2"}, if_generation_match=src.generation)
    dst_now = bucket.patch_metadata("d", {"k": "2"}, if_generation_match=dst.generation)
    before = _state(bucket, "s", "d")
    with pytest.raises(PreconditionFailed):
        bucket.copy("s", "d", if_generation_match=dst.generation, if_metageneration_match=dst.metageneration)
    with pytest.raises(PreconditionFailed):
        bucket.copy("s", "d", if_generation_match=dst.generation, if_source_metageneration_match=src.metageneration)
    assert _state(bucket, "s", "d") == before
    copied = bucket.copy("s", "d", if_source_generation_match=src.generation, if_generation_match=dst.generation,
                         if_metageneration_match=dst_now.metageneration,
                         if_source_metageneration_match=src_now.metageneration)
    assert bucket.read_range("d", 0, 100) == b"v1" and copied.metadata["k"] == "2"


def test_delete_with_a_stale_generation_fails(bucket):
    base = bucket.upload_bytes("kept", b"v1")
    bucket.upload_bytes("kept", b"v2")
    before = _state(bucket, "kept")
    with pytest.raises(PreconditionFailed):
        bucket.delete("kept", if_generation_match=base.generation)
    assert _state(bucket, "kept") == before


def test_listing_and_stat_agree_on_the_metageneration(bucket):
    bucket.upload_bytes("dir/o", b"x")
    bucket.patch_metadata("dir/o", {"a": "1"})
    bucket.patch_metadata("dir/o", {"a": "2"})
    (listed,), _ = bucket.list_all("dir/")
    assert listed.metageneration == bucket.stat("dir/o").metageneration == 3


@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.stat("missing"),
        lambda b: b.read_range("missing", 0, 10),
        lambda b: b.download_to_file("missing", "/nonexistent-dir/never-written"),
        lambda b: b.patch_metadata("missing", {"a": "1"}),
        lambda b: b.copy("missing", "somewhere"),
        lambda b: b.delete("missing"),
    ],
    ids=["stat", "read", "download", "patch", "copy", "delete"],
)
def test_not_found_everywhere(bucket, call):
    with pytest.raises(NotFound):
        call(bucket)


# --- names and threads ------------------------------------------------------------------------

ODD_NAMES = ["ünïcødé/fïlé ☃.txt", "日本語/ファイル", "with space", "plus+sign", "pct%2Fslash", "q?mark#hash", "a\\b"]


def test_unicode_and_odd_names(bucket):
    for i, name in enumerate(ODD_NAMES):
        bucket.upload_bytes(name, f"data {i}".encode(), {"name": name})
    for i, name in enumerate(ODD_NAMES):
        info = bucket.stat(name)
        assert info.name == name and dict(info.metadata) == {"name": name}
        assert bucket.read_range(name, 0, 100) == f"data {i}".encode()
    objects, prefixes = bucket.list_all()
    assert [o.name for o in objects] == sorted(n for n in ODD_NAMES if "/" not in n)
    assert prefixes == ["ünïcødé/", "日本語/"]
    bucket.copy(ODD_NAMES[0], ODD_NAMES[1] + "-copy")
    for name in ODD_NAMES:
        bucket.delete(name)
    assert [o.name for o in bucket.list_all(delimiter=None)[0]] == [ODD_NAMES[1] + "-copy"]


def test_many_threads_upload_and_read(bucket):
    errors = []

    def worker(t):
        try:
            for i in range(8):
                name = f"t{t:02d}/o{i}"
                data = f"{t}:{i}".encode() * 50
                info = bucket.upload_bytes(name, data, {"t": str(t)}, if_generation_match=0)
                assert bucket.read_range(name, 0, len(data), generation=info.generation) == data
                assert bucket.stat(name).generation == info.generation
        except Exception as exc:  # collected, so a failure names its thread
            errors.append((t, exc))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    objects, prefixes = bucket.list_all(delimiter=None)
    assert len(objects) == 16 * 8 and prefixes == []
