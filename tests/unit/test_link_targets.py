"""The targets of a directory's symbolic links are read ahead once a program reads one of them
(``ls -l``, ``cp -a``): each target exactly once, the right one for each link, and nothing more
for a directory whose links nobody reads (octuefs.fs.linktargets)."""

from __future__ import annotations

import threading
import time

from octuefs.errors import TransientError
from octuefs.fs.linktargets import AHEAD
from octuefs.octue import posixmeta
from octuefs.storage.fake import FakeBucket

from .corekit import make_fs, wait_until


class SlowBucket(FakeBucket):
    """Each ranged GET takes ``delay`` seconds (a bucket 20 ms away) and is recorded."""

    def __init__(self, *args, delay: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.delay = delay
        self.gets: list[str] = []
        self.failing: set[str] = set()
        self._rec = threading.Lock()

    def read_range(self, name, start, end, generation=None):
        with self._rec:
            self.gets.append(name)
        time.sleep(self.delay)
        if name in self.failing:
            raise TransientError("503: the bucket is away")
        return super().read_range(name, start, end, generation)


def links(bucket, n: int, where: str = "d/") -> dict[str, str]:
    made = {}
    for i in range(n):
        target = f"../targets/file-{i:04d}.csv"
        bucket.upload_bytes(f"{where}l{i:04d}", target.encode(), posixmeta.symlink_metadata())
        made[f"{where}l{i:04d}"] = target
    return made


def test_ls_l_of_a_directory_of_links_reads_each_target_once_and_mostly_ahead(tmp_path):
    bucket = SlowBucket("lt", delay=0.02)
    made = links(bucket, 150)
    for i in range(50):
        bucket.upload_bytes(f"d/plain{i:03d}", b"x")
    fs = make_fs(bucket, tmp_path)
    try:
        assert sum(1 for _, attr in fs.readdir("/d") if attr.file_type is not None) == 150
        start = time.monotonic()
        for name in sorted(made):  # ls -l: lstat from the listing, then readlink, one after another
            assert fs.readlink("/" + name) == made[name]
        took = time.monotonic() - start
        assert sorted(bucket.gets) == sorted(made)  # each target once, no plain file read
        stats = fs.posix.links.stats
        assert stats["read"] == 1 and stats["ahead_used"] == 149  # only the first was read by its reader
        assert took < 150 * 0.02 / 2, took  # one after another would take 3 s; 16 at a time ~0.2 s
    finally:
        fs.shutdown()


def test_a_listing_whose_links_nobody_reads_reads_nothing(tmp_path):
    bucket = SlowBucket("lt")
    links(bucket, 100)
    fs = make_fs(bucket, tmp_path)
    try:
        fs.readdir("/d")
        time.sleep(0.2)
        assert bucket.gets == []
    finally:
        fs.shutdown()


def test_reading_one_link_reads_at_most_a_window_more(tmp_path):
    bucket = SlowBucket("lt")
    made = links(bucket, 1000)
    fs = make_fs(bucket, tmp_path)
    try:
        fs.readdir("/d")
        assert fs.readlink("/d/l0500") == made["d/l0500"]
        assert wait_until(lambda: not fs.posix.links._reading)
        time.sleep(0.1)
        assert len(bucket.gets) == 1 + AHEAD
        assert len(set(bucket.gets)) == len(bucket.gets)
    finally:
        fs.shutdown()


def test_a_link_replaced_after_the_listing_reads_its_new_target(tmp_path):
    bucket = SlowBucket("lt", delay=0.01)
    made = links(bucket, 20)
    fs = make_fs(bucket, tmp_path, stat_ttl=0.0)
    try:
        fs.readdir("/d")
        bucket.upload_bytes("d/l0010", b"elsewhere/new", posixmeta.symlink_metadata())  # replaced meanwhile
        for name in sorted(made):
            want = "elsewhere/new" if name == "d/l0010" else made[name]
            assert fs.readlink("/" + name) == want
    finally:
        fs.shutdown()


def test_a_failed_read_ahead_is_no_reader_s_error(tmp_path):
    bucket = SlowBucket("lt", delay=0.01)
    made = links(bucket, 10)
    bucket.failing.add("d/l0005")
    fs = make_fs(bucket, tmp_path)
    try:
        fs.readdir("/d")
        for name in sorted(made)[:5]:
            assert fs.readlink("/" + name) == made[name]
        assert wait_until(lambda: not fs.posix.links._reading)
        bucket.failing.clear()  # the bucket is back: its reader reads it again
        assert fs.readlink("/d/l0005") == made["d/l0005"]
        assert bucket.gets.count("d/l0005") == 2
    finally:
        fs.shutdown()


def test_unmount_while_reads_ahead_wait_neither_hangs_nor_leaves_a_reader_waiting(tmp_path):
    bucket = SlowBucket("lt", delay=0.05)
    made = links(bucket, 200)
    fs = make_fs(bucket, tmp_path)
    fs.readdir("/d")
    assert fs.readlink("/d/l0000") == made["d/l0000"]  # AHEAD more queued, 16 at a time
    got = {}
    reader = threading.Thread(target=lambda: got.update(t=fs.readlink("/d/l0060")))  # queued behind 59
    reader.start()
    start = time.monotonic()
    fs.shutdown()
    assert time.monotonic() - start < 2
    reader.join(5)
    assert not reader.is_alive() and got["t"] == made["d/l0060"]  # cancelled ahead: it read it itself
