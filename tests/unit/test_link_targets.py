"""The targets of a directory's symbolic links are read ahead once a program reads one of them
(``ls -l``, ``cp -a``): each target exactly once, the right one for each link, and nothing more
for a directory whose links nobody reads (octuefs.fs.linktargets)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from octuefs.errors import BucketUnreachable, TransientError
from octuefs.fs.linktargets import AHEAD, INITIAL
from octuefs.octue import posixmeta
from octuefs.storage.fake import FakeBucket
from octuefs.storage.retry import current_bound, cut_to

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


class StallingBucket(FakeBucket):
    """Reads of the names in ``stalled`` get no answer: each attempt waits out its timeout (as a
    connection that never answers does), retried until the call's deadline. ``reads`` counts the
    reads of each name; ``stalling`` how many are waiting now."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stalled: set[str] = set()
        self.reads: dict[str, int] = {}
        self.stalling = 0
        self._rec = threading.Lock()

    def read_range(self, name, start, end, generation=None):
        with self._rec:
            self.reads[name] = self.reads.get(name, 0) + 1
        if name not in self.stalled:
            return super().read_range(name, start, end, generation)

        def attempt(left):
            bound = current_bound()
            time.sleep(cut_to(bound.attempt_timeout, left) if bound is not None else 30.0)
            raise TransientError(f"fake://{self.name}/{name}: no answer")

        with self._rec:
            self.stalling += 1
        try:
            return self._retrier.call_within(attempt, f"reading fake://{self.name}/{name}")
        finally:
            with self._rec:
                self.stalling -= 1


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
        # The first was read by its reader, as is, now and then, one asked for before its worker
        # took it up (taken back: a worker starting late on a busy machine); the rest came ahead.
        assert stats["read"] + stats["ahead_used"] == 150 and stats["read"] - stats["taken_back"] == 1
        assert stats["ahead_used"] >= 140, stats
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
        assert len(bucket.gets) == 1 + INITIAL  # (a `current` link in each of many directories)
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
    fs.posix.links.initial = AHEAD  # (a window grown as far as it goes)
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


def stalled_after_the_first(tmp_path, n: int, op_timeout: float, answering: tuple[str, ...] = ()):
    """A program read the first of ``n`` listed links; the bucket then stops answering for the
    others (but ``answering``), and the 16 workers all stall on reads ahead of a window grown as
    far as it goes. The bucket, the links, and the FileSystem (the caller shuts it down)."""
    bucket = StallingBucket("lt")
    made = links(bucket, n)
    fs = make_fs(bucket, tmp_path, op_timeout=op_timeout)
    fs.posix.links.initial = AHEAD
    fs.readdir("/d")
    bucket.stalled.update(name for name in made if name != "d/l0000" and name not in answering)
    assert fs.readlink("/d/l0000") == made["d/l0000"]
    assert wait_until(lambda: bucket.stalling == 16)
    return bucket, made, fs


def test_a_reader_does_not_wait_behind_reads_ahead_that_stall(tmp_path):
    # The bucket stops answering for most links just after a program read the first one: the 16
    # workers all stall on reads ahead, and the link the program asks for next is still queued
    # behind them. It must not wait for them (1.5 s and more): reading it itself takes no time.
    bucket, made, fs = stalled_after_the_first(tmp_path, 100, op_timeout=1.5, answering=("d/l0040",))
    try:
        start = time.monotonic()
        assert fs.readlink("/d/l0040") == made["d/l0040"]
        assert time.monotonic() - start < 0.75
        assert bucket.reads["d/l0040"] == 1  # (its queued read ahead does not run as well)
    finally:
        fs.shutdown()


def test_a_reader_that_joined_a_read_ahead_which_found_the_bucket_unreachable_is_told_so(tmp_path):
    # Its read began before the reader asked and had the same deadline: reading again would keep
    # the reader waiting longer than reading it itself would have, for the same answer.
    bucket, made, fs = stalled_after_the_first(tmp_path, 20, op_timeout=2.0)
    try:
        with pytest.raises(BucketUnreachable):
            fs.readlink("/d/l0005")  # joins its read ahead, 2 s from its end
        assert bucket.reads["d/l0005"] == 1
    finally:
        fs.shutdown()


def test_a_read_ahead_stalled_at_unmount_does_not_keep_the_daemon_from_exiting(tmp_path):
    # Before this, no thread of the daemon's outlived an unmount: the process exits once the
    # filesystem is shut down, whatever its reads ahead are waiting for.
    script = textwrap.dedent(f"""
        import time
        from octuefs.assembly import build_filesystem
        from octuefs.config import MountConfig
        from octuefs.octue import posixmeta
        from octuefs.storage.fake import FakeBucket

        class Stalling(FakeBucket):
            def read_range(self, name, start, end, generation=None):
                if name != "d/l0":
                    time.sleep(60)  # a read that hangs (longer than the test waits)
                return super().read_range(name, start, end, generation)

        bucket = Stalling("lt")
        for i in range(40):
            bucket.upload_bytes(f"d/l{{i}}", b"target", posixmeta.symlink_metadata())
        fs = build_filesystem(bucket, MountConfig(bucket="lt", mountpoint={str(tmp_path / "m")!r},
                                                  cache_dir={str(tmp_path / "c")!r}, upload_hold=0.0))
        fs.readdir("/d")
        assert fs.readlink("/d/l0") == "target"  # reads ahead start, and hang
        fs.shutdown()
        print("shut down", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=15,
                          env={"PYTHONPATH": str(pathlib.Path(__file__).parents[2]), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and "shut down" in done.stdout, done.stderr


def test_links_noted_are_bounded_across_directories(monkeypatch):
    # Each noted link keeps its ObjectInfo alive after the listing expires: 256 directories of
    # 10,000 links each would have kept 2.5 million. The bound is on links, over all directories.
    import datetime as dt

    from octuefs.fs import linktargets
    from octuefs.storage.base import ObjectInfo

    monkeypatch.setattr(linktargets, "NOTED_KEPT", 100)
    monkeypatch.setattr(linktargets, "LINKS_NOTED", 40)
    links_ = linktargets.LinkTargets(FakeBucket("lt"))
    now = dt.datetime.now(dt.timezone.utc)
    for d in range(30):
        links_.listed([ObjectInfo(f"d{d}/l{i}", 5, 1, 1, now) for i in range(60)])
    noted = links_._noted
    assert sum(len(v) for v in noted.values()) <= 100
    assert len(noted["d29/"]) == 40  # the latest listing is kept, up to its own bound
