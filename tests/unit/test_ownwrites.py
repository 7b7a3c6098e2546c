"""The metadata caches learn of every change made through the mount's bucket, in one place
(octuefs/cache/ownwrites.py), against the in-memory bucket with GCS's preconditions."""

from __future__ import annotations

import pytest

from octuefs.cache.metacache import MISSING, MetadataCache
from octuefs.cache.ownwrites import CachingBucket
from octuefs.errors import (
    BucketUnreachable,
    NotFound,
    PreconditionFailed,
    TransientError,
)
from octuefs.storage.base import RetryPolicy
from octuefs.storage.fake import FakeBucket
from tests.unit.corekit import close_write, make_fs


@pytest.fixture
def fake():
    return FakeBucket("ownwrites")


@pytest.fixture
def metacache():
    return MetadataCache(stat_ttl=60, list_ttl=60, negative_ttl=60)


@pytest.fixture
def bucket(fake, metacache):
    return CachingBucket(fake, metacache)


def listed(metacache, prefix=""):
    """What the whole listing of ``prefix`` kept in the cache shows: {entry: generation}, dirs."""
    listing = metacache.listing(prefix)
    return {e: i.generation for e, i in listing.files.items()}, listing.dirs


def keep_listing(metacache, fake, prefix=""):
    page = fake.list_page(prefix, "/")
    entries = [(o.name[len(prefix):], o) for o in page.objects if o.name != prefix]
    dirs = [p[len(prefix):].rstrip("/") for p in page.prefixes]
    assert metacache.put_page(prefix, object(), True, metacache.now(), dirs, entries, None, metacache.epoch(prefix))


def test_an_upload_a_patch_a_copy_and_a_compose_are_known_as_they_answer(bucket, fake, metacache):
    fake.upload_bytes("old.csv", b"x")
    keep_listing(metacache, fake)
    up = bucket.upload_bytes("a.csv", b"1,2\n", {"k": "v"}, if_generation_match=0)
    assert metacache.lookup("a.csv") == up
    patched = bucket.patch_metadata("a.csv", {"k": "w"}, if_metageneration_match=up.metageneration)
    assert metacache.lookup("a.csv").metadata["k"] == "w" == fake.stat("a.csv").metadata["k"]
    copied = bucket.copy("a.csv", "b.csv", if_source_generation_match=patched.generation, if_generation_match=0)
    composed = bucket.compose(["a.csv", "b.csv"], "ab.csv", if_generation_match=0)
    files, _ = listed(metacache)
    assert files == {"old.csv": fake.stat("old.csv").generation, "a.csv": patched.generation,
                     "b.csv": copied.generation, "ab.csv": composed.generation}
    assert fake.calls["list"] == 1  # (keep_listing's): nothing was asked again


def test_a_delete_is_known_as_missing(bucket, fake, metacache):
    info = fake.upload_bytes("gone.csv", b"x")
    keep_listing(metacache, fake)
    bucket.delete("gone.csv", if_generation_match=info.generation)
    assert metacache.lookup("gone.csv") is MISSING
    assert "gone.csv" not in listed(metacache)[0]


@pytest.mark.parametrize("change", [
    lambda b, info: b.upload_bytes("f.csv", b"new", if_generation_match=info.generation - 1 or 12345),
    lambda b, info: b.patch_metadata("f.csv", {"k": "v"}, if_metageneration_match=info.metageneration + 7),
    lambda b, info: b.delete("f.csv", if_generation_match=info.generation + 7),
    lambda b, info: b.copy("nothing-there", "f.csv"),
], ids=["upload", "patch", "delete", "copy"])
def test_a_refused_change_forgets_what_was_believed(bucket, fake, metacache, change):
    """A 412 or 404 means the caches believed what the bucket does not hold: forgotten, asked again."""
    info = fake.upload_bytes("f.csv", b"x")
    keep_listing(metacache, fake)
    assert metacache.lookup("f.csv") == info
    with pytest.raises((PreconditionFailed, NotFound)):
        change(bucket, info)
    assert metacache.lookup("f.csv") is None  # unknown: the next lookup asks the bucket
    assert metacache.listing("") is None


def test_an_unanswered_change_leaves_the_caches_as_they_were(bucket, fake, metacache):
    """No answer says nothing of what happened: the caller decides, and lookups during an outage
    are still answered from what is known."""
    info = fake.upload_bytes("f.csv", b"x")
    keep_listing(metacache, fake)
    fake.fail_next("upload", TransientError("503"), times=100)
    with pytest.raises((TransientError, BucketUnreachable)):
        bucket.with_retry(RetryPolicy(deadline=0.0)).upload_bytes("f.csv", b"y", if_generation_match=info.generation)
    assert metacache.lookup("f.csv") == info
    assert listed(metacache)[0] == {"f.csv": info.generation}


def test_markers_are_left_to_the_directory_code(bucket, fake, metacache):
    keep_listing(metacache, fake)
    bucket.upload_bytes("d/", b"", if_generation_match=0)
    assert listed(metacache) == ({}, set())  # mkdir says that a directory was made (made_dir)
    bucket.delete("d/")  # (rmdir says that one: removed(is_dir=True))
    assert listed(metacache) == ({}, set()) and metacache.epoch("") == (0, 0)  # nothing told, nothing logged


def test_its_bounded_and_retrying_views_keep_the_caches_too(bucket, fake, metacache):
    bounded = bucket.bounded(5.0)
    info = bounded.upload_bytes("x/f.csv", b"1")
    assert metacache.lookup("x/f.csv") == info
    once = bucket.with_retry(RetryPolicy(deadline=0.0))
    assert isinstance(once, CachingBucket)
    once.delete("x/f.csv")
    assert metacache.lookup("x/f.csv") is MISSING
    assert bounded.name == fake.name and bounded.calls is fake.calls  # test hooks are the wrapped bucket's


def test_a_mount_shows_what_write_back_uploaded_without_asking_the_bucket(tmp_path, fake):
    """The filesystem's own uploads reach the caches through the wrapper: a listing kept before a
    close shows the closed file, at the generation that landed, once nothing of it is open or
    pending, and nothing is asked of the bucket to show it."""
    fs = make_fs(fake, tmp_path)
    try:
        fake.upload_bytes("d/old.csv", b"x")
        assert [n for n, _ in fs.readdir("/d") if n not in (".", "..")] == ["old.csv"]
        close_write(fs, "/d/new.csv", b"1,2\n")
        assert fs.uploader.sync(timeout=10) == 0
        assert fs.files.node("d/new.csv") is None  # (the mount answers from its caches alone now)
        fake.reset_calls()
        landed = fake.stat("d/new.csv")
        assert fs.metacache.lookup("d/new.csv") == landed
        assert fs.getattr("/d/new.csv").size == 4
        assert sorted(n for n, _ in fs.readdir("/d") if n not in (".", "..")) == ["new.csv", "old.csv"]
        assert set(fake.calls) == {"stat"}  # the test's own stat above, and nothing else
    finally:
        fs.uploader.shutdown(drain=False)


def test_whoever_must_know_of_a_change_is_told_once_it_answered(bucket, fake):
    told = []
    bucket.on_change.append(told.append)
    info = bucket.upload_bytes("d/", b"")
    bucket.bounded(5.0).upload_bytes("d/f", b"1")
    bucket.with_retry(RetryPolicy(deadline=0.0)).copy("d/f", "d/g")
    with pytest.raises(PreconditionFailed):
        bucket.delete("d/", if_generation_match=info.generation + 1)
    bucket.delete("d/f")
    assert told == ["d/", "d/f", "d/g", "d/f"]  # markers too (a pace is per object); not the refused delete
