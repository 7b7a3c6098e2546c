"""Concurrency in the core, without FUSE: many threads on one mount, and two mounts ("machines")
sharing one in-memory bucket, which enforces generation and metageneration preconditions as GCS
does (fake-gcs-server ignores them on metadata patches, so only these tests can hold the
two-machine metadata rules)."""

from __future__ import annotations

import json
import os
import threading

import pytest

from octuefs.errors import Conflict
from octuefs.storage.fake import FakeBucket

from .test_core import make_fs, read_file, settle, write_file


def run_together(target, args_list) -> list[BaseException]:
    """Run ``target(*args)`` for each args in threads released at once; return their errors."""
    start = threading.Barrier(len(args_list))
    errors: list[BaseException] = []

    def run(*args):
        start.wait()
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=args) for args in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


def test_many_threads_setting_tags_on_one_file_lose_none(tmp_path):
    bucket = FakeBucket("threads")
    fs = make_fs(bucket, tmp_path)
    write_file(fs, "/m.csv", b"content")
    bucket.set_latency(0.005)  # a slow bucket widens every race
    errors = run_together(lambda i: fs.setxattr("/m.csv", f"user.octue.tags.t{i}", str(i).encode()),
                          [(i,) for i in range(12)])
    assert errors == []
    bucket.reset_calls()
    assert fs.uploader.sync(timeout=30) == 0
    assert bucket.calls["patch"] <= 2  # coalesced: GCS takes about one change of an object a second
    assert json.loads(bucket.stat("m.csv").metadata["octue__tags"]) == {f"t{i}": i for i in range(12)}
    assert bucket.objects()["m.csv"] == b"content"


def test_two_machines_setting_tags_at_once_lose_none(tmp_path):
    bucket = FakeBucket("machines")
    a, b = make_fs(bucket, tmp_path / "a"), make_fs(bucket, tmp_path / "b")
    write_file(a, "/m.csv", b"content")
    assert b.listxattr("/m.csv")  # B's cached view, about to go stale
    bucket.set_latency(0.005)
    errors = run_together(lambda fs, i: fs.setxattr("/m.csv", f"user.octue.tags.t{i}", str(i).encode()),
                          [(a if i % 2 else b, i) for i in range(6)])
    assert errors == []
    assert a.uploader.sync(timeout=30) == 0 and b.uploader.sync(timeout=30) == 0
    assert json.loads(bucket.stat("m.csv").metadata["octue__tags"]) == {f"t{i}": i for i in range(6)}


def test_writes_after_the_last_close_are_saved_when_the_file_is_released(tmp_path):
    """A shared mapping written after its descriptor was closed reaches the daemon as writes
    after the flush and before the release (munmap); they must not wait for the unmount."""
    bucket = FakeBucket("mapped")
    fs = make_fs(bucket, tmp_path)
    write_file(fs, "/mapped.bin", b"a" * 100)
    fh = fs.open("/mapped.bin", os.O_RDWR)
    fs.flush(fh)  # close(fd): the mapping lives on
    fs.write(fh, b"HELLO", 0)  # the kernel writing back the mapping's dirty page
    fs.release(fh)  # munmap
    settle(fs)
    assert bucket.objects()["mapped.bin"] == b"HELLO" + b"a" * 95
    assert read_file(fs, "/mapped.bin") == b"HELLO" + b"a" * 95


def two_machines(tmp_path):
    """Mounts A and B of one bucket; B has looked at ``shared.csv`` (version 1), then A changed it."""
    bucket = FakeBucket("machines")
    a, b = make_fs(bucket, tmp_path / "a"), make_fs(bucket, tmp_path / "b")
    write_file(a, "/shared.csv", b"version 1")
    assert read_file(b, "/shared.csv") == b"version 1"
    write_file(a, "/shared.csv", b"version 2 from A")
    return bucket, a, b


def test_a_delete_from_a_stale_view_is_refused_and_loses_nothing(tmp_path):
    bucket, a, b = two_machines(tmp_path)
    with pytest.raises(Conflict):
        b.unlink("/shared.csv")
    assert bucket.objects() == {"shared.csv": b"version 2 from A"}
    assert read_file(b, "/shared.csv") == b"version 2 from A"  # B looks again after the refusal


def test_a_rename_from_a_stale_view_is_refused_and_loses_nothing(tmp_path):
    bucket, a, b = two_machines(tmp_path)
    with pytest.raises(Conflict):
        b.rename("/shared.csv", "/moved.csv")
    assert bucket.objects() == {"shared.csv": b"version 2 from A"}


def test_a_write_from_a_stale_view_goes_beside_the_newer_version(tmp_path):
    bucket, a, b = two_machines(tmp_path)
    fh = b.open("/shared.csv", os.O_WRONLY)
    b.write(fh, b"B's edit", 0)
    b.flush(fh)
    b.release(fh)
    settle(b)
    objects = bucket.objects()
    assert objects.pop("shared.csv") == b"version 2 from A"
    [(name, data)] = objects.items()
    assert name.startswith("shared.octuefs-conflict-") and name.endswith(".csv") and data == b"B's edit1"
    assert [c["saved_as"] for c in b.uploader.status()["conflicts"]] == [name]
