"""Large files go up as parallel parts composed into the object (writeback.composite), against
fake-gcs-server: the object is exactly the file, with its metadata, under its precondition,
and no part is left behind."""

from __future__ import annotations

import os

import pytest

from octuefs.errors import BucketUnreachable, PreconditionFailed
from octuefs.storage.base import PART_SUFFIX, PARTS_PREFIX, ChecksumMismatch, ObjectInfo
from octuefs.storage.gcs import GCSBucket
from octuefs.storage.retry import file_fingerprint
from octuefs.writeback.composite import ComposingBucket, part_ranges

pytestmark = pytest.mark.emulator
MiB = 1024 * 1024


@pytest.fixture
def composing(gcs_bucket):
    """The test bucket, composing files of 1 MiB and more (parts of 512 KiB)."""
    return ComposingBucket(GCSBucket(gcs_bucket.name, client=gcs_bucket.client, retry=gcs_bucket.retry_policy),
                           compose_min=MiB)


def leftovers(bucket) -> list[str]:
    """Parts anywhere in the bucket (they go in the object's own directory)."""
    return [o.name for page in bucket.iter_pages("", delimiter=None) for o in page.objects
            if PARTS_PREFIX in "/" + o.name]


def test_part_ranges_cover_the_file_once_in_at_most_32_parts():
    for size in (64 * MiB, 64 * MiB + 1, 300 * MiB + 7, 10 * 1024 * MiB):
        ranges = part_ranges(size)
        assert 2 <= len(ranges) <= 32
        assert ranges[0][0] == 0 and sum(length for _, length in ranges) == size
        assert all(a + la == b for (a, la), (b, _) in zip(ranges, ranges[1:]))
        assert all(length % (256 * 1024) == 0 for _, length in ranges[:-1])


def test_a_composed_upload_is_the_file_with_its_metadata(composing, tmp_path):
    data = os.urandom(3 * MiB + 12345)  # 7 parts
    src = tmp_path / "big.csv"
    src.write_bytes(data)
    meta = {"octue__labels": '["raw"]', "octue__id": '"abc"'}
    info = composing.upload_file("runs/big.csv", str(src), meta, if_generation_match=0, content_type="text/csv")
    assert info.size == len(data) and dict(info.metadata) == meta and info.content_type == "text/csv"
    assert composing.read_range("runs/big.csv", 0, len(data)) == data
    assert file_fingerprint(str(src)).matches(composing.stat("runs/big.csv"))
    assert leftovers(composing) == []


def test_a_composed_upload_honours_its_precondition_and_leaves_no_parts(composing, tmp_path):
    src = tmp_path / "big"
    src.write_bytes(os.urandom(2 * MiB))
    first = composing.upload_file("obj", str(src), {"v": "1"}, if_generation_match=0)
    src.write_bytes(os.urandom(2 * MiB))
    with pytest.raises(PreconditionFailed):
        composing.upload_file("obj", str(src), {"v": "2"}, if_generation_match=0)
    assert composing.stat("obj").generation == first.generation
    assert dict(composing.stat("obj").metadata) == {"v": "1"}
    second = composing.upload_file("obj", str(src), {"v": "2"}, if_generation_match=first.generation)
    assert composing.read_range("obj", 0, 3 * MiB) == src.read_bytes() and dict(second.metadata) == {"v": "2"}
    assert leftovers(composing) == []


def test_a_fingerprint_recognises_a_composed_object_by_crc32c():
    f = file_fingerprint(b"hello world")
    base = dict(name="x", size=11, generation=1, metageneration=1, updated=None)
    assert f.matches(ObjectInfo(**base, md5=None, crc32c=f.crc32c))
    assert f.matches(ObjectInfo(**base, md5=f.md5, crc32c=None))
    assert not f.matches(ObjectInfo(**base, md5=None, crc32c="AAAAAA=="))
    assert not f.matches(ObjectInfo(**{**base, "size": 12}, md5=None, crc32c=f.crc32c))


# --- the parts ledger: what a crash or an outage left is deleted later -------------------------


def test_parts_that_could_not_be_deleted_are_swept_later(gcs_bucket, tmp_path, monkeypatch):
    ledger = tmp_path / "parts"
    bucket = ComposingBucket(GCSBucket(gcs_bucket.name, client=gcs_bucket.client, retry=gcs_bucket.retry_policy),
                             compose_min=MiB, parts_dir=str(ledger))
    def away(*args, **kwargs):
        raise BucketUnreachable("bucket unreachable: connection refused")

    monkeypatch.setattr(ComposingBucket, "_delete_parts", lambda self, parts: False)  # the bucket went away
    monkeypatch.setattr(GCSBucket, "delete", away)  # ... for the sweep after the upload too
    src = tmp_path / "big"
    src.write_bytes(os.urandom(2 * MiB + 1))
    bucket.upload_file("d/big", str(src), {"k": "v"}, if_generation_match=0)
    monkeypatch.undo()
    assert len(leftovers(bucket)) >= 2 and len(os.listdir(ledger)) == 1
    # what a lifecycle rule on the suffix deletes, should the ledger be lost (README: "Large files")
    assert all(name.endswith(PART_SUFFIX) for name in leftovers(bucket))
    # the next mount (a new bucket object, the same cache directory) deletes them
    again = ComposingBucket(GCSBucket(gcs_bucket.name, client=gcs_bucket.client), compose_min=MiB, parts_dir=str(ledger))
    assert again.sweep_parts() >= 2
    assert leftovers(bucket) == [] and os.listdir(ledger) == []
    assert bucket.read_range("d/big", 0, 3 * MiB) == src.read_bytes()  # the object itself untouched


def test_a_crashed_uploads_parts_are_swept_but_never_a_running_ones(gcs_bucket, tmp_path):
    from octuefs.writeback import composite

    ledger = tmp_path / "parts"
    bucket = ComposingBucket(GCSBucket(gcs_bucket.name, client=gcs_bucket.client), compose_min=MiB, parts_dir=str(ledger))
    crashed, running = f"x/{PARTS_PREFIX}aaaa/", f"x/{PARTS_PREFIX}bbbb/"
    for tag in (crashed, running):
        bucket.upload_bytes(tag + "00", b"part")
        (ledger / tag.rstrip("/").rpartition("/")[2]).write_text(tag)
    composite._IN_FLIGHT.add(running)  # an upload in this process still using its parts
    try:
        assert bucket.sweep_parts() == 1
        assert leftovers(bucket) == [running + "00"]
        assert sorted(os.listdir(ledger)) == ["bbbb"]
    finally:
        composite._IN_FLIGHT.discard(running)
    assert bucket.sweep_parts() == 1 and leftovers(bucket) == [] and os.listdir(ledger) == []


# --- end-to-end checksum -------------------------------------------------------------------------


def test_a_part_stored_with_other_bytes_is_sent_again(composing, tmp_path, monkeypatch):
    """A server that does not check a part's CRC32C and stores other bytes: the part's answer
    gives it away and the part goes up again; the object is exactly the file."""
    data = os.urandom(2 * MiB)
    src, bad = tmp_path / "big.bin", tmp_path / "bad.bin"
    src.write_bytes(data)
    bad.write_bytes(bytes(b ^ 0xFF for b in data[:MiB]) + data[MiB:])
    real, corrupted = composing._api.upload_range, []

    def corrupting(name, path, start, length, *args, **kwargs):
        if not corrupted:
            corrupted.append(name)
            kwargs.pop("crc32c", None)  # (fake-gcs-server would not check it anyway)
            return real(name, str(bad), start, length, *args, **kwargs)
        return real(name, path, start, length, *args, **kwargs)

    monkeypatch.setattr(composing._api, "upload_range", corrupting)
    info = composing.upload_file("big.bin", str(src), {}, if_generation_match=0)
    assert corrupted and composing.read_range("big.bin", 0, len(data)) == data
    assert file_fingerprint(str(src)).matches(info) and leftovers(composing) == []


def test_a_composed_object_whose_crc32c_is_not_the_files_is_never_a_success(composing, tmp_path, monkeypatch):
    """A part changed after it was checked (so the composed bytes differ): the upload raises,
    so the caller keeps the file and tries again, and says which generation holds what."""
    data = os.urandom(2 * MiB)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    real = composing.compose

    def compose_after_a_part_changed(sources, *args, **kwargs):
        composing.upload_bytes(sources[0], os.urandom(MiB // 2))  # a part: same size, other bytes
        return real(sources, *args, **kwargs)

    monkeypatch.setattr(composing, "compose", compose_after_a_part_changed)
    with pytest.raises(ChecksumMismatch) as caught:
        composing.upload_file("big.bin", str(src), {}, if_generation_match=0)
    assert caught.value.generation == composing.stat("big.bin").generation
    assert composing.read_range("big.bin", 0, len(data)) != data and leftovers(composing) == []
