"""Composite uploads (octuefs/writeback/composite.py) over the in-memory bucket: a large file goes up
as parts composed into the object, the parts are deleted, and what a crash or an outage left is
swept by the next mount through the parts ledger. The contract tests run the same strategy
against fake-gcs-server (tests/contract/test_composite_upload.py)."""

from __future__ import annotations

import os

import pytest

from octuefs.errors import PreconditionFailed, StorageError
from octuefs.storage.base import PART_SUFFIX, PARTS_PREFIX, ChecksumMismatch
from octuefs.storage.checksums import crc32c_b64
from octuefs.storage.fake import FakeBucket
from octuefs.writeback import composite
from octuefs.writeback.composite import ComposingBucket, part_ranges

MiB = 1024 * 1024
DATA = os.urandom(3 * MiB + 12345)  # 7 parts of 512 KiB (compose_min 1 MiB)


@pytest.fixture
def fake():
    return FakeBucket()


@pytest.fixture
def ledger(tmp_path):
    return tmp_path / "parts"


@pytest.fixture
def composing(fake, ledger):
    return ComposingBucket(fake, parts_dir=str(ledger), compose_min=MiB)


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(DATA)
    return str(path)


def stored_parts(fake) -> list[str]:
    return sorted(name for name in fake.objects() if PARTS_PREFIX in "/" + name)


def test_a_large_file_goes_up_in_parts_composed_into_the_object_then_deleted(fake, composing, src, ledger):
    uploaded = []
    fake.server.on_store = lambda operation, name, data: (uploaded.append((operation, name)), data)[1]
    meta = {"octue__labels": '["raw"]', "octue__id": '"abc"'}
    info = composing.upload_file("runs/big.csv", src, meta, if_generation_match=0)
    parts = len(part_ranges(len(DATA), MiB))
    assert parts == 7 and fake.calls["upload"] == parts and fake.calls["compose"] == 1
    assert fake.calls["delete"] == parts and stored_parts(fake) == [] and os.listdir(ledger) == []
    names = [name for operation, name in uploaded if operation == "upload"]
    assert all(n.startswith(f"runs/{PARTS_PREFIX}") and n.endswith(PART_SUFFIX) for n in names)  # beside the object
    # the composed object is the file: its bytes, its metadata, its content type, its CRC32C
    assert fake.objects() == {"runs/big.csv": DATA}
    assert dict(info.metadata) == meta and info.content_type == "text/csv" and info.size == len(DATA)
    assert info.crc32c == crc32c_b64(DATA) and info.md5 is None and fake.stat("runs/big.csv") == info


def test_a_small_file_is_the_wrapped_buckets_own_upload(fake, composing, tmp_path):
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * (MiB - 1))
    info = composing.upload_file("small.bin", str(small), {"k": "v"})
    assert dict(fake.calls) == {"upload": 1} and info.md5 is not None
    assert composing.upload_bytes("b.bin", b"y" * 10).size == 10 and fake.calls["upload"] == 2


def test_large_bytes_go_up_in_parts_too(fake, composing):
    composing.upload_bytes("b.bin", DATA, {"k": "v"})
    assert fake.calls["compose"] == 1 and fake.objects() == {"b.bin": DATA}


def test_without_compose_min_nothing_is_composed(fake, src):
    ComposingBucket(fake, compose_min=0).upload_file("big", src, {})
    assert dict(fake.calls) == {"upload": 1}


def test_the_precondition_is_checked_before_any_part_goes_up(fake, composing, src):
    first = composing.upload_file("obj", src, {"v": "1"}, if_generation_match=0)
    fake.reset_calls()
    with pytest.raises(PreconditionFailed):
        composing.upload_file("obj", src, {"v": "2"}, if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        composing.upload_file("obj", src, {"v": "2"}, if_metageneration_match=first.metageneration + 1)
    assert fake.calls["upload"] == 0 and fake.calls["compose"] == 0
    second = composing.upload_file("obj", src, {"v": "2"}, if_generation_match=first.generation,
                                   if_metageneration_match=first.metageneration)
    assert second.generation != first.generation and dict(fake.stat("obj").metadata) == {"v": "2"}
    assert stored_parts(fake) == []


def test_a_part_stored_with_other_bytes_is_sent_again(fake, composing, src):
    corrupted = []

    def corrupt_once(operation, name, data):
        if operation == "upload" and not corrupted:
            corrupted.append(name)
            return bytes(b ^ 0xFF for b in data)
        return data

    fake.server.on_store = corrupt_once
    info = composing.upload_file("big.bin", src, {}, if_generation_match=0)
    assert corrupted and fake.calls["upload"] == 8  # 7 parts, one of them twice
    assert fake.objects() == {"big.bin": DATA} and info.crc32c == crc32c_b64(DATA)


def test_a_composed_object_whose_crc32c_is_not_the_files_is_never_a_success(fake, composing, src, monkeypatch):
    real = fake.compose

    def compose_after_a_part_changed(sources, *args, **kwargs):
        fake.upload_bytes(sources[0], os.urandom(MiB // 2))  # a part: same size, other bytes
        return real(sources, *args, **kwargs)

    monkeypatch.setattr(fake, "compose", compose_after_a_part_changed)
    with pytest.raises(ChecksumMismatch) as caught:
        composing.upload_file("big.bin", src, {}, if_generation_match=0)
    assert caught.value.generation == fake.stat("big.bin").generation
    assert fake.objects()["big.bin"] != DATA and stored_parts(fake) == []


# --- the parts ledger ---------------------------------------------------------------------------


def test_parts_an_outage_left_stay_noted_and_the_next_mount_sweeps_them(fake, composing, src, ledger):
    # each part's delete (one attempt) fails, and so does the sweep right after the upload
    fake.fail_next("delete", StorageError("fake: HTTP 503: away"), times=8)
    info = composing.upload_file("d/big", src, {"k": "v"}, if_generation_match=0)
    assert fake.calls["delete"] == 8  # no retry: one attempt per part, then the sweep's first
    assert len(stored_parts(fake)) == 7 and len(os.listdir(ledger)) == 1
    assert composite._IN_FLIGHT == set()  # no longer running: the sweep may take them
    # the next mount: a new client of the same bucket, the same cache directory
    again = ComposingBucket(FakeBucket(server=fake.server), parts_dir=str(ledger), compose_min=MiB)
    assert again.sweep_parts() == 7
    assert stored_parts(fake) == [] and os.listdir(ledger) == []
    assert fake.objects() == {"d/big": DATA} and fake.stat("d/big") == info


def test_a_crashed_uploads_parts_are_swept_but_never_a_running_ones(fake, composing, ledger):
    crashed, running = f"x/{PARTS_PREFIX}aaaa/", f"x/{PARTS_PREFIX}bbbb/"
    for prefix in (crashed, running):
        fake.upload_bytes(prefix + "00" + PART_SUFFIX, b"part")
        (ledger / prefix.rstrip("/").rpartition("/")[2]).write_text(prefix)
    (ledger / "junk").write_text("not/a/parts/prefix")
    composite._IN_FLIGHT.add(running)  # an upload in this process still using its parts
    try:
        assert composing.sweep_parts() == 1
        assert stored_parts(fake) == [running + "00" + PART_SUFFIX]
        assert sorted(os.listdir(ledger)) == ["bbbb", "junk"]  # what is no parts prefix is left alone
    finally:
        composite._IN_FLIGHT.discard(running)
    composing.sweep_in_background().join(5)
    assert stored_parts(fake) == [] and sorted(os.listdir(ledger)) == ["junk"]


def test_without_a_ledger_nothing_is_noted_or_swept(fake, src, tmp_path):
    bucket = ComposingBucket(fake, compose_min=MiB)
    bucket.upload_file("big", src, {})
    assert bucket.sweep_parts() == 0 and stored_parts(fake) == [] and fake.calls["compose"] == 1


def test_a_ledger_that_cannot_be_written_stops_the_upload_before_any_part(fake, composing, src, ledger, monkeypatch):
    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(composite, "fsync_dir", full)
    with pytest.raises(OSError):
        composing.upload_file("big", src, {})
    assert fake.calls["upload"] == 0 and os.listdir(ledger) == [] and composite._IN_FLIGHT == set()


# --- a bucket like any other ------------------------------------------------------------------------


def test_everything_else_is_the_wrapped_buckets(fake, composing, src):
    composing.upload_bytes("a.txt", b"abc", {"k": "v"})
    assert composing.stat("a.txt") == fake.stat("a.txt") and composing.read_range("a.txt", 0, 3) == b"abc"
    assert composing.calls is fake.calls and composing.name == fake.name
    composing.copy("a.txt", "b.txt")
    composing.patch_metadata("b.txt", {"k": None})
    composing.delete("a.txt")
    assert composing.list_all("")[0] == [fake.stat("b.txt")]
    view = composing.bounded(5.0)  # the view FUSE calls use: still composing
    view.upload_file("big", src, {})
    assert fake.calls["compose"] == 1 and fake.objects()["big"] == DATA
