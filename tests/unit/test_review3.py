"""Review 3 of issue 15 (distance): adversarial cases of setfattr write-back, lookups from
listings and the prefetcher, on the fake bucket."""

from __future__ import annotations

import json
import os
import time

import pytest

from octuefs.errors import FileNotFound
from octuefs.storage.fake import FakeBucket

from .corekit import close_write, make_fs, read


@pytest.fixture
def saved(tmp_path):
    """``saved(name, data, **options)``: a bucket holding one saved file, and a FileSystem on it
    (its uploader shut down after the test)."""
    made = []

    def make(name: str, data: bytes, **options):
        bucket = FakeBucket("b")
        bucket.upload_bytes(name, data)
        fs = make_fs(bucket, tmp_path, **options)
        made.append(fs)
        return bucket, fs

    yield make
    for fs in made:
        fs.uploader.shutdown()


def tags(bucket, name):
    return json.loads(bucket.stat(name).metadata.get("octue__tags", "{}"))


def test_setfattr_then_partial_write_keeps_the_rest_and_the_tag(saved):
    bucket, fs = saved("f.csv", b"0123456789", patch_pace=5.0)
    fs.setxattr("/f.csv", "user.octue.tags.t", b"1")
    fh = fs.open("/f.csv", os.O_WRONLY)
    fs.write(fh, b"AB", 4)
    fs.flush(fh)
    fs.release(fh)
    assert read(fs, "/f.csv") == b"0123AB6789"
    assert fs.uploader.sync(timeout=30) == 0
    assert bucket.objects()["f.csv"] == b"0123AB6789" and tags(bucket, "f.csv") == {"t": 1}


def test_setfattr_then_truncate_by_path(saved):
    bucket, fs = saved("f.csv", b"0123456789", patch_pace=5.0)
    fs.setxattr("/f.csv", "user.octue.tags.t", b"1")
    fs.truncate("/f.csv", 3)
    assert read(fs, "/f.csv") == b"012"
    assert fs.uploader.sync(timeout=30) == 0
    assert bucket.objects()["f.csv"] == b"012" and tags(bucket, "f.csv") == {"t": 1}


def test_setfattr_then_rename_then_setfattr_on_target(saved):
    bucket, fs = saved("a.csv", b"data", patch_pace=0.3)
    fs.setxattr("/a.csv", "user.octue.tags.t", b"1")
    fs.rename("/a.csv", "/b.csv")
    fs.setxattr("/b.csv", "user.octue.tags.u", b"2")
    assert fs.uploader.sync(timeout=30) == 0
    assert "a.csv" not in bucket.objects()
    assert bucket.objects()["b.csv"] == b"data" and tags(bucket, "b.csv") == {"t": 1, "u": 2}


def test_setfattr_then_unlink_then_recreate(saved):
    bucket, fs = saved("a.csv", b"data", patch_pace=5.0)
    fs.setxattr("/a.csv", "user.octue.tags.t", b"1")
    fs.unlink("/a.csv")
    with pytest.raises(FileNotFound):
        fs.getattr("/a.csv")
    close_write(fs, "/a.csv", b"new")
    assert fs.uploader.sync(timeout=30) == 0
    assert bucket.objects()["a.csv"] == b"new" and tags(bucket, "a.csv") == {}


def test_setfattr_kill_then_remount_with_a_prefix(tmp_path):
    bucket = FakeBucket("b")
    bucket.upload_bytes("c.csv", b"content")
    first = make_fs(bucket, tmp_path, patch_pace=5.0)
    first.setxattr("/c.csv", "user.octue.tags.run", b"7")
    first.uploader.shutdown(drain=False)
    second = make_fs(bucket, tmp_path, patch_pace=0.01, prefix="sub/")
    assert second.uploader.sync(timeout=10) == 0
    assert tags(bucket, "c.csv") == {"run": 7}
    second.uploader.shutdown()


def test_touch_after_setfattr_keeps_the_tag(saved):
    bucket, fs = saved("a.csv", b"data", patch_pace=0.3)
    fs.setxattr("/a.csv", "user.octue.tags.t", b"1")
    fs.utimens("/a.csv", 1_000_000.0)
    assert fs.uploader.sync(timeout=30) == 0
    assert tags(bucket, "a.csv") == {"t": 1}
    assert fs.getattr("/a.csv").mtime == 1_000_000.0 if hasattr(fs.getattr("/a.csv"), "mtime") else True


def test_an_editors_save_over_a_file_with_a_pending_setfattr_keeps_it(saved):
    bucket, fs = saved("f.csv", b"old", patch_pace=5.0)
    fs.setxattr("/f.csv", "user.octue.tags.t", b"1")
    close_write(fs, "/.f.csv.tmp", b"new")
    fs.rename("/.f.csv.tmp", "/f.csv")
    assert fs.getxattr("/f.csv", "user.octue.tags.t") == b"1"
    assert fs.uploader.sync(timeout=30) == 0
    assert bucket.objects()["f.csv"] == b"new" and tags(bucket, "f.csv") == {"t": 1}


def test_mv_over_a_file_with_a_pending_setfattr_does_not_give_its_tags_to_the_new_file(tmp_path):
    bucket = FakeBucket("b")
    bucket.upload_bytes("a.csv", b"A", {"octue__tags": json.dumps({"a": 1})})
    bucket.upload_bytes("b.csv", b"B")
    fs = make_fs(bucket, tmp_path, patch_pace=5.0)
    fs.setxattr("/b.csv", "user.octue.tags.b", b"2")
    fs.rename("/a.csv", "/b.csv")
    assert fs.uploader.sync(timeout=30) == 0
    assert bucket.objects()["b.csv"] == b"A" and tags(bucket, "b.csv") == {"a": 1}
    assert "a.csv" not in bucket.objects()
    fs.uploader.shutdown()


def test_setfattr_pending_while_the_object_is_replaced_elsewhere_then_read(saved):
    bucket, fs = saved("f.csv", b"old", patch_pace=0.5)
    assert read(fs, "/f.csv") == b"old"
    fs.setxattr("/f.csv", "user.octue.tags.t", b"1")
    bucket.upload_bytes("f.csv", b"newer content")
    assert fs.uploader.sync(timeout=30) == 0
    assert tags(bucket, "f.csv") == {"t": 1}
    assert read(fs, "/f.csv") == b"newer content"
    assert fs.getattr("/f.csv").size == len(b"newer content")


@pytest.mark.parametrize("elsewhere", ["patch", "replace"])
def test_a_setfattr_does_not_put_back_a_content_type_changed_elsewhere(tmp_path, elsewhere):
    """The setfattr changed a tag, not the content type: re-applied to the version the other
    machine made, it must leave that version's content type alone."""
    bucket = FakeBucket("b")
    bucket.upload_bytes("f.dat", b"a,b\n", content_type="text/csv")
    fs = make_fs(bucket, tmp_path, patch_pace=0.5)
    assert fs.getattr("/f.dat").size == 4
    fs.setxattr("/f.dat", "user.octue.tags.t", b"1")
    if elsewhere == "patch":
        bucket.patch_metadata("f.dat", {}, content_type="application/json")
    else:
        bucket.upload_bytes("f.dat", b'{"a": 1}', content_type="application/json")
    assert fs.uploader.sync(timeout=30) == 0
    assert tags(bucket, "f.dat") == {"t": 1}
    assert bucket.stat("f.dat").content_type == "application/json"
    assert fs.getxattr("/f.dat", "user.gcs.content_type") == b"application/json"
    fs.uploader.shutdown()


class _TinyPages(FakeBucket):
    """Pages of two entries: every horizon falls between odd names."""

    def list_page(self, prefix="", delimiter="/", page_token=None, max_results=1000):
        return super().list_page(prefix, delimiter, page_token, min(max_results, 2))


ODD = ["a", "a b", "a!x", "a-x", "a.csv", "a/inner", "a0", "b", "b/", "c\u00e9", "z", "\u4e2d.txt", "~t"]


@pytest.mark.parametrize("pages,wait", [(10, 2), (2, 1), (1, 0)])
@pytest.mark.parametrize("prefix", ["", "p/"])
def test_odd_names_across_tiny_pages_are_looked_up_as_listed(tmp_path, monkeypatch, pages, wait, prefix):
    from octuefs.cache import listings
    from octuefs.cache.metacache import DIR, MISSING

    monkeypatch.setattr(listings, "LOOKUP_PAGES", pages)
    monkeypatch.setattr(listings, "LOOKUP_WAIT", wait)
    bucket = _TinyPages("tiny")
    for n in ODD:
        bucket.upload_bytes(prefix + "d/" + n, n.encode())
    truth = {"a": DIR, "b": DIR, "nope": MISSING, "a/inner": b"a/inner", "a.": MISSING}
    truth.update({n: n.encode() for n in ODD if n not in ("a", "b", "b/", "a/inner")})
    for order in (sorted(truth), sorted(truth, reverse=True)):
        fs = make_fs(bucket, tmp_path, cache=f"c{len(order)}{order[0]}", prefix=prefix)
        for n in order:
            got = fs.lookup(prefix + "d/" + n)
            want = truth[n]
            if isinstance(want, bytes):
                assert getattr(got, "size", None) == len(want), n
                assert read(fs, "/d/" + n) == want
            else:
                assert got is want, n
        names = sorted(e for e, _ in fs.readdir("/d"))
        assert names == sorted({"a", "b", *[n for n in ODD if "/" not in n and n not in ("a", "b")]})
        fs.uploader.shutdown()


def test_a_setfattr_made_as_the_previous_one_lands_is_neither_hidden_nor_lost(saved):
    """setfattr A; setfattr B finds the file's node just as A's patch lands (and the node, idle
    then, is dropped); setfattr C. B must show at once and reach the bucket with A and C."""
    bucket, fs = saved("f.csv", b"data", patch_pace=5.0)
    fs.setxattr("/f.csv", "user.octue.tags.a", b"1")
    real = fs.xattrs._target
    calls = []

    def target_then_land(path):
        found = real(path)
        if not calls:
            calls.append(path)
            assert fs.uploader.sync(timeout=30) == 0  # A lands now: its node, idle, goes
        return found
    fs.xattrs._target = target_then_land
    fs.setxattr("/f.csv", "user.octue.tags.b", b"2")
    fs.xattrs._target = real
    assert fs.getxattr("/f.csv", "user.octue.tags.b") == b"2"  # shown at once
    fs.setxattr("/f.csv", "user.octue.tags.c", b"3")
    assert fs.uploader.sync(timeout=30) == 0
    assert tags(bucket, "f.csv") == {"a": 1, "b": 2, "c": 3}


def test_a_touch_made_as_the_files_upload_lands_is_not_lost_to_the_next_setfattr(tmp_path):
    """cp -p: close, then utimens; the upload lands between utimens' lookup and its change."""
    bucket = FakeBucket("b")
    fs = make_fs(bucket, tmp_path, patch_pace=5.0, upload_hold=30.0)
    close_write(fs, "/f.csv", b"data")
    # utimens looks the path up through the core's Lookups (fs.lookups, shared by every part of
    # the core), not through fs.resolve: replacing fs.resolve would never run this hook.
    real = fs.lookups.resolve
    calls = []

    def resolve_then_land(path, *args, **kwargs):
        found = real(path, *args, **kwargs)
        if not calls:
            calls.append(path)
            assert fs.uploader.sync(timeout=30) == 0  # the upload lands now: its node, idle, goes
        return found
    fs.lookups.resolve = resolve_then_land
    fs.utimens("/f.csv", 1_000_000.0)
    fs.lookups.resolve = real
    assert calls == ["/f.csv"]  # the upload did land between the lookup and the change
    fs.setxattr("/f.csv", "user.octue.tags.c", b"3")
    assert fs.uploader.sync(timeout=30) == 0
    assert tags(bucket, "f.csv") == {"c": 3}
    assert bucket.stat("f.csv").metadata.get("goog-reserved-file-mtime") == "1000000"
    fs.uploader.shutdown()


def test_files_read_in_order_while_the_mount_rewrites_one_ahead_read_the_new_bytes(tmp_path):
    bucket = FakeBucket("b")
    for i in range(12):
        bucket.upload_bytes(f"d/f{i:02d}", b"old %d" % i)
    fs = make_fs(bucket, tmp_path)
    assert read(fs, "/d/f00") == b"old 0"
    assert read(fs, "/d/f01") == b"old 1"
    assert read(fs, "/d/f02") == b"old 2"  # in order: the next ones are fetched ahead
    close_write(fs, "/d/f05", b"mine, longer")
    fs.unlink("/d/f06")
    for i in range(3, 12):
        if i == 6:
            with pytest.raises(FileNotFound):
                read(fs, "/d/f06")
            continue
        assert read(fs, f"/d/f{i:02d}") == (b"mine, longer" if i == 5 else b"old %d" % i)
    assert fs.uploader.sync(timeout=30) == 0
    assert read(fs, "/d/f05") == b"mine, longer"
    fs.uploader.shutdown()


def test_a_pending_setfattr_waits_through_a_mount_of_another_bucket_then_lands(tmp_path):
    a, b = FakeBucket("a"), FakeBucket("b")
    a.upload_bytes("c.csv", b"in a")
    b.upload_bytes("c.csv", b"in b")
    first = make_fs(a, tmp_path, patch_pace=5.0)
    first.setxattr("/c.csv", "user.octue.tags.run", b"7")
    first.uploader.shutdown(drain=False)  # killed
    other = make_fs(b, tmp_path, patch_pace=0.01)  # the same cache directory, another bucket
    with pytest.raises(Exception):
        other.getxattr("/c.csv", "user.octue.tags.run")  # a's change is not b's file's
    assert other.uploader.sync(timeout=10) == 0
    assert tags(b, "c.csv") == {} and tags(a, "c.csv") == {}
    other.uploader.shutdown()
    again = make_fs(a, tmp_path, patch_pace=0.01)
    assert again.uploader.sync(timeout=10) == 0
    assert tags(a, "c.csv") == {"run": 7}
    again.uploader.shutdown()


@pytest.mark.parametrize("then", ["unlink", "rename", "write"])
def test_after_a_crash_a_restored_setfattr_meets_unlink_rename_or_write(tmp_path, then):
    bucket = FakeBucket("b")
    bucket.upload_bytes("c.csv", b"content")
    first = make_fs(bucket, tmp_path, patch_pace=5.0)
    first.setxattr("/c.csv", "user.octue.tags.run", b"7")
    first.uploader.shutdown(drain=False)  # killed
    fs = make_fs(bucket, tmp_path, patch_pace=5.0)
    if then == "unlink":
        fs.unlink("/c.csv")
        assert fs.uploader.sync(timeout=30) == 0
        assert "c.csv" not in bucket.objects()
    elif then == "rename":
        fs.rename("/c.csv", "/d.csv")
        assert fs.uploader.sync(timeout=30) == 0
        assert "c.csv" not in bucket.objects() and tags(bucket, "d.csv") == {"run": 7}
        assert bucket.objects()["d.csv"] == b"content"
    else:
        fh = fs.open("/c.csv", os.O_WRONLY)
        fs.write(fh, b"C", 0)
        fs.flush(fh)
        fs.release(fh)
        assert fs.uploader.sync(timeout=30) == 0
        assert bucket.objects()["c.csv"] == b"Content" and tags(bucket, "c.csv") == {"run": 7}
    fs.uploader.shutdown()


def test_a_second_setfattr_of_an_open_file_does_not_put_back_a_content_type_changed_elsewhere(saved):
    bucket, fs = saved("f.dat", b"a,b\n", patch_pace=0.2)
    bucket.upload_bytes("f.dat", b"a,b\n", content_type="text/csv")  # (before the mount reads it)
    fh = fs.open("/f.dat", os.O_RDONLY)  # a reader keeps the file's node
    fs.setxattr("/f.dat", "user.octue.tags.t", b"1")
    bucket.patch_metadata("f.dat", {}, content_type="application/json")
    assert fs.uploader.sync(timeout=30) == 0
    fs.setxattr("/f.dat", "user.octue.tags.u", b"2")
    assert fs.uploader.sync(timeout=30) == 0
    fs.release(fh)
    assert tags(bucket, "f.dat") == {"t": 1, "u": 2}
    assert bucket.stat("f.dat").content_type == "application/json"


def test_a_touch_whose_file_lands_just_before_its_change_is_not_lost_to_the_next_setfattr(tmp_path):
    """utimens found the file's upload pending; it lands (the node, idle, goes) before the touch
    is applied: the new mtime must still reach the bucket with the next setfattr's change."""
    bucket = FakeBucket("b")
    fs = make_fs(bucket, tmp_path, patch_pace=5.0, upload_hold=30.0)
    close_write(fs, "/f.csv", b"data")
    real, real_held = fs.files.touch, fs.files.node_to_change
    calls = []

    def land_first():  # once, at the first of the two steps the touch takes after its lookup
        if not calls:
            calls.append(True)
            assert fs.uploader.sync(timeout=30) == 0

    def land_then_touch(node, mtime):
        land_first()
        return real(node, mtime)

    def land_then_hold(*args, **kwargs):
        land_first()
        return real_held(*args, **kwargs)
    fs.files.touch, fs.files.node_to_change = land_then_touch, land_then_hold
    fs.utimens("/f.csv", 1_000_000.0)
    fs.files.touch, fs.files.node_to_change = real, real_held
    assert fs.getattr("/f.csv").mtime == 1_000_000.0
    fs.setxattr("/f.csv", "user.octue.tags.c", b"3")
    assert fs.uploader.sync(timeout=30) == 0
    assert tags(bucket, "f.csv") == {"c": 3}
    assert bucket.stat("f.csv").metadata.get("goog-reserved-file-mtime") == "1000000"
    fs.uploader.shutdown()
