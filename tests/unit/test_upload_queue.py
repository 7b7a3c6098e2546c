"""A deep upload queue (thousands of closes while the bucket does not answer) drains to exactly
the newest version of every file, chained versions included."""

from __future__ import annotations

import os
import threading
import time

import pytest

from octuefs.assembly import build_filesystem
from octuefs.config import MountConfig
from octuefs.errors import FileNotFound, PreconditionFailed, TransientError
from octuefs.fs.core import FileSystem
from octuefs.storage.fake import FakeBucket
from octuefs.writeback.scheduler import SMALL_IN_FLIGHT


class _HeldUploads(FakeBucket):
    """Uploads wait until ``gate`` is set (a bucket that does not answer, without the retries)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.gate = threading.Event()

    def upload_file(self, *args, **kwargs):
        assert self.gate.wait(60), "test gate never opened"
        return super().upload_file(*args, **kwargs)


def _save(fs: FileSystem, path: str, data: bytes) -> None:
    fh = fs.create(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    fs.write(fh, data, 0)
    fs.flush(fh)
    fs.release(fh)


def test_thousands_of_queued_uploads_drain_to_the_newest_version_of_each(tmp_path):
    bucket = _HeldUploads("deep")
    fs = build_filesystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
                                        cache_dir=str(tmp_path / "c"), upload_workers=4))
    for i in range(3000):
        _save(fs, f"/f{i:04d}", b"v1-%d" % i)
    for i in range(0, 3000, 10):  # a second version of every tenth file, queued behind the first
        _save(fs, f"/f{i:04d}", b"v2-%d" % i)
    # the first four uploads hold the workers; a second version queued behind a running first
    # one waits for it (chained), the others replaced their queued first version
    assert len(fs.uploader.snapshot()) >= 3000
    bucket.gate.set()
    assert fs.uploader.sync(timeout=120) == 0
    objects = bucket.objects()
    assert len(objects) == 3000
    for i in range(3000):
        want = b"v2-%d" % i if i % 10 == 0 else b"v1-%d" % i
        assert bucket.read_range(f"f{i:04d}", 0, 100) == want, i
    fs.shutdown()


class _ConflictThenFlakyStat(FakeBucket):
    """The first upload fails its precondition, and the stat that checks whose object it is
    fails once (the bucket blinked): the upload must stay queued, and its worker alive."""

    def __init__(self, name: str):
        super().__init__(name)
        self.refuse_upload, self.fail_stat = True, False

    def upload_file(self, *args, **kwargs):
        if self.refuse_upload:
            self.refuse_upload, self.fail_stat = False, True
            raise PreconditionFailed("gs://x: precondition failed (the object changed)")
        return super().upload_file(*args, **kwargs)

    def stat(self, name):
        if self.fail_stat:
            self.fail_stat = False
            raise TransientError("gs://x: HTTP 503: try again")
        return super().stat(name)


def test_a_failure_while_settling_a_conflict_leaves_the_upload_queued_and_the_worker_alive(tmp_path):
    bucket = _ConflictThenFlakyStat("wedge")
    fs = build_filesystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
                                        cache_dir=str(tmp_path / "c"), upload_workers=1))
    _save(fs, "/a.txt", b"mine")
    assert fs.uploader.sync(timeout=30) == 0  # retried (after its backoff) by the one worker
    assert bucket.read_range("a.txt", 0, 10) == b"mine"
    fs.shutdown()


# --- bursts: closes first, uploads right after ------------------------------------------------


class _Starts(FakeBucket):
    """Records when each upload starts."""

    def __init__(self, name: str):
        super().__init__(name)
        self.starts: list[float] = []

    def upload_file(self, *args, **kwargs):
        self.starts.append(time.monotonic())
        return super().upload_file(*args, **kwargs)


def _burst_fs(tmp_path, quiet: float, hold: float):
    bucket = _Starts("burst")
    fs = build_filesystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"), cache_dir=str(tmp_path / "c")))
    fs.uploader.burst_quiet, fs.uploader.burst_hold = quiet, hold
    _measured(bucket, wall=0.001, cpu=0.001)  # a bucket on loopback: uploads are CPU
    return bucket, fs


def _measured(bucket: FakeBucket, wall: float, cpu: float) -> None:
    """As a GCSBucket does: its small requests timed at ``wall`` seconds, ``cpu`` of them CPU."""
    bucket.round_trip = lambda: (wall, cpu, 32)


def test_uploads_wait_for_a_burst_of_closes_to_pause_then_all_go(tmp_path):
    bucket, fs = _burst_fs(tmp_path, quiet=0.5, hold=30)
    for i in range(20):
        _save(fs, f"/f{i:02d}", b"x%d" % i)
    last_close = time.monotonic()
    deadline = time.monotonic() + 20
    while len(bucket.objects()) < 20 and time.monotonic() < deadline:  # no sync: it would hasten them
        time.sleep(0.02)
    assert len(bucket.objects()) == 20
    assert min(bucket.starts) >= last_close  # none started while the closes kept coming
    fs.shutdown()


def test_a_long_burst_holds_an_upload_no_longer_than_burst_hold(tmp_path):
    bucket, fs = _burst_fs(tmp_path, quiet=60, hold=0.3)  # the burst "never" pauses
    started = time.monotonic()
    _save(fs, "/a", b"a")
    deadline = time.monotonic() + 20
    while "a" not in bucket.objects() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "a" in bucket.objects() and bucket.starts[0] - started >= 0.3
    fs.shutdown()


def test_an_upload_someone_waits_for_is_not_held(tmp_path):
    bucket, fs = _burst_fs(tmp_path, quiet=60, hold=60)
    _save(fs, "/a", b"a")
    (entry,) = fs.uploader.pending_for("a")
    fs.uploader.wait(entry, timeout=10)  # what fsync does: it must not wait out the burst hold
    assert bucket.read_range("a", 0, 1) == b"a"
    fs.shutdown()


def test_a_file_closed_again_and_again_is_held_no_longer_than_burst_hold(tmp_path):
    """Each close replaces the queued version, which must not restart its hold: a log file
    rewritten every 20 ms still goes up within burst_hold of its first close."""
    bucket, fs = _burst_fs(tmp_path, quiet=60, hold=0.3)
    started = time.monotonic()
    deadline = started + 20
    i = 0
    while "log" not in bucket.objects() and time.monotonic() < deadline:
        _save(fs, "/log", b"line %d" % i)
        i += 1
        time.sleep(0.02)
    assert "log" in bucket.objects() and bucket.starts[0] - started < 0.3 + 0.5  # (some slack: busy cores)
    fs.shutdown()


# --- at a distance: enough small uploads in flight to cover the round trip ------------------------


class _InFlight(FakeBucket):
    """Counts uploads in flight (and their peak); while ``gate`` is clear they wait for it. Each
    upload takes ``latency`` seconds more, as one round trip to a distant bucket would."""

    def __init__(self, name: str, latency: float = 0.0):
        super().__init__(name)
        self.latency_of_uploads = latency
        self.gate = threading.Event()
        self.gate.set()
        self._count = threading.Lock()
        self.in_flight = self.peak = 0

    def upload_file(self, *args, **kwargs):
        with self._count:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            assert self.gate.wait(60), "test gate never opened"
            time.sleep(self.latency_of_uploads)
            return super().upload_file(*args, **kwargs)
        finally:
            with self._count:
                self.in_flight -= 1


def _wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def test_far_from_the_bucket_a_burst_of_small_closes_is_not_held_and_keeps_32_uploads_in_flight(tmp_path):
    """Each request waits 50 ms for its answer and uses far less CPU (the bucket timed them): the
    uploader holds nothing back and runs SMALL_IN_FLIGHT small uploads at once, while
    ``upload_workers`` is 8."""
    bucket = _InFlight("far", latency=0.05)
    _measured(bucket, wall=0.05, cpu=0.0005)
    fs = build_filesystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
                                        cache_dir=str(tmp_path / "c"), upload_workers=8))
    fs.uploader.burst_quiet = fs.uploader.burst_hold = 60  # a burst that never pauses
    bucket.gate.clear()
    for i in range(100):
        _save(fs, f"/f{i:03d}", b"x%d" % i)
    _wait_for(lambda: bucket.in_flight == SMALL_IN_FLIGHT, f"{SMALL_IN_FLIGHT} uploads in flight")
    bucket.gate.set()
    _wait_for(lambda: len(bucket.objects()) == 100, "every file in the bucket")  # no sync: it hastens
    assert fs.uploader.hold_yields and bucket.peak == SMALL_IN_FLIGHT
    for i in range(100):
        assert bucket.read_range(f"f{i:03d}", 0, 10) == b"x%d" % i
    fs.shutdown()


def test_large_uploads_keep_to_upload_workers_while_small_ones_fill_the_rest(tmp_path):
    bucket = _InFlight("far-large")
    fs = build_filesystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
                                        cache_dir=str(tmp_path / "c"), upload_workers=2, upload_hold=0))
    _measured(bucket, wall=0.05, cpu=0.001)
    bucket.gate.clear()
    big = b"b" * (1024 * 1024 + 1)  # just over SMALL_UPLOAD_MAX
    for i in range(4):
        _save(fs, f"/big{i}", big)
    _wait_for(lambda: bucket.in_flight == 2, "two large uploads in flight")
    for i in range(40):
        _save(fs, f"/small{i:02d}", b"s%d" % i)
    _wait_for(lambda: bucket.in_flight == SMALL_IN_FLIGHT, "every upload thread busy")
    assert sum(e.state == "running" and e.size > 1024 * 1024 for e in fs.uploader.snapshot()) == 2
    bucket.gate.set()
    assert fs.uploader.sync(timeout=60) == 0
    assert bucket.peak == SMALL_IN_FLIGHT and len(bucket.objects()) == 44
    assert bucket.read_range("big3", 0, len(big)) == big
    fs.shutdown()


def test_near_the_bucket_uploads_keep_to_upload_workers_and_bursts_are_held(tmp_path):
    """On loopback an upload is CPU: as before, ``upload_workers`` at once, after the burst."""
    bucket = _InFlight("near")
    fs = build_filesystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
                                        cache_dir=str(tmp_path / "c"), upload_workers=4))
    fs.uploader.burst_quiet = fs.uploader.burst_hold = 60  # a burst that never pauses
    _measured(bucket, wall=0.001, cpu=0.001)
    bucket.gate.clear()
    for i in range(40):
        _save(fs, f"/f{i:02d}", b"x%d" % i)
    assert bucket.peak == 0 and not fs.uploader.hold_yields  # held while the closes come
    fs.uploader.hasten(fs.uploader.snapshot())  # (what sync does)
    _wait_for(lambda: bucket.in_flight == 4, "four uploads in flight")
    bucket.gate.set()
    assert fs.uploader.sync(timeout=60) == 0
    assert bucket.peak == 4 and len(bucket.objects()) == 40
    fs.shutdown()


# --- a conflict copy whose answer was lost, then its version dropped or superseded -----------

COPY_MARK = ".octuefs-conflict-"


class _CopyAnswerLost(FakeBucket):
    """The first conflict copy lands and its answer is lost; stats of copies fail while
    ``copies_unreachable`` (a check that cannot finish before the daemon dies)."""

    armed = True
    copies_unreachable = False

    def upload_bytes(self, name, data, metadata=None, if_generation_match=None, content_type=None, **kw):
        info = super().upload_bytes(name, data, metadata, if_generation_match, content_type, **kw)
        if self.armed and COPY_MARK in name:
            self.armed = False
            raise TransientError("the answer was lost")
        return info

    def stat(self, name):
        if self.copies_unreachable and COPY_MARK in name:
            raise TransientError("503: the bucket is away")
        return super().stat(name)


def _copy_landed_unanswered(tmp_path, bucket: _CopyAnswerLost, cache: str = "c") -> FileSystem:
    """f.txt changed here (content and a label) while its label changed elsewhere: the upload goes
    beside, that copy lands with its answer lost, and the entry waits to retry (held off, so that
    what the test does next meets it queued)."""
    bucket.upload_bytes("f.txt", b"v1")
    bucket.upload_bytes("g.txt", b"other")
    fs = build_filesystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
                                        cache_dir=str(tmp_path / cache), upload_hold=0, op_timeout=3.0))
    fh = fs.open("/f.txt", os.O_RDWR)
    fs.write(fh, b"mine", 0)
    fs.setxattr("/f.txt", "user.octue.labels", b"ours")
    bucket.patch_metadata("f.txt", {"octue__labels": '{"items": ["theirs"]}'})  # the same key, elsewhere
    fs.flush(fh)
    fs.release(fh)
    end = time.monotonic() + 10
    while True:
        with fs.uploader._cond:
            [entry] = fs.uploader._entries.of("f.txt")
            if entry.last_error and entry.state == "queued":
                entry.next_try = time.monotonic() + 3600  # its retry would find the copy and report it
                break
        assert time.monotonic() < end, "the conflict copy was never tried"
        time.sleep(0.01)
    [copy] = [n for n in bucket.objects() if COPY_MARK in n]
    assert entry.conflict_name == copy
    assert fs.uploader.status()["conflicts"] == []  # not reported yet: its answer was lost
    return fs


def _reported(fs: FileSystem) -> list[str]:
    return sorted(c["saved_as"] for c in fs.uploader.status()["conflicts"])


def _copies(bucket: FakeBucket) -> dict[str, bytes]:
    return {n: data for n, data in bucket.objects().items() if COPY_MARK in n}





@pytest.mark.parametrize("how", ["unlink", "rename over"])
def test_a_copy_that_landed_unanswered_is_reported_when_its_version_is_dropped(tmp_path, how):
    bucket = _CopyAnswerLost("orphans")
    fs = _copy_landed_unanswered(tmp_path, bucket)
    try:
        if how == "unlink":
            fs.unlink("/f.txt")
        else:
            fs.rename("/g.txt", "/f.txt")
        assert fs.uploader.sync(timeout=10) == 0
        copies = _copies(bucket)
        assert list(copies.values()) == [b"mine"]  # kept, never deleted: the only copy of that version
        assert _reported(fs) == sorted(copies)
        assert fs.uploader.status()["uploads"] == []
        assert bucket.objects().get("f.txt") == (None if how == "unlink" else b"other")
    finally:
        fs.shutdown(drain=False)


def test_a_copy_that_landed_unanswered_is_reported_when_a_newer_close_supersedes_it(tmp_path):
    bucket = _CopyAnswerLost("orphans")
    fs = _copy_landed_unanswered(tmp_path, bucket)
    try:
        fh = fs.open("/f.txt", os.O_RDWR)
        fs.write(fh, b"newer", 0)
        fs.flush(fh)
        fs.release(fh)
        assert fs.uploader.sync(timeout=10) == 0
        copies = _copies(bucket)
        assert sorted(copies.values()) == [b"mine", b"newer"]  # the newer one went beside too
        assert _reported(fs) == sorted(copies)
        assert fs.uploader.status()["uploads"] == []
    finally:
        fs.shutdown(drain=False)


def test_the_check_of_a_dropped_versions_copy_survives_a_crash(tmp_path):
    bucket = _CopyAnswerLost("orphans")
    fs = _copy_landed_unanswered(tmp_path, bucket)
    bucket.copies_unreachable = True
    fs.unlink("/f.txt")  # returns at once: the check is the workers' (it retries meanwhile)
    rows = fs.uploader.status()["uploads"]
    [copy] = _copies(bucket)
    assert [(r["kind"], r["copy"]) for r in rows] == [("copy check", copy)]
    assert fs.uploader.pending_for(copy) == [] and fs.uploader.withhold(copy).entries == []  # no version of it
    fs.uploader.shutdown(drain=False)  # the daemon dies with the check journaled
    bucket.copies_unreachable = False
    again = build_filesystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
                                           cache_dir=str(tmp_path / "c"), upload_hold=0))
    try:
        with pytest.raises(FileNotFound):
            again.getattr("/f.txt")  # a copy check is no version of the file
        assert again.uploader.sync(timeout=10) == 0
        copies = _copies(bucket)
        assert list(copies.values()) == [b"mine"]
        assert _reported(again) == sorted(copies)
        assert "f.txt" not in bucket.objects()
    finally:
        again.shutdown(drain=False)


def test_a_new_files_upload_whose_412_finds_nothing_goes_up_at_its_name(tmp_path):
    """A new file's upload answered 412 (something was there, or a spurious answer) while nothing
    is there when it looks: it is tried again at its name, not put beside nothing."""
    bucket = FakeBucket("spurious")
    fs = build_filesystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
                                        cache_dir=str(tmp_path / "c"), upload_hold=0))
    try:
        bucket.fail_next("upload", PreconditionFailed("412: spurious"))
        _save(fs, "/new.txt", b"fresh")
        assert fs.uploader.sync(timeout=10) == 0
        assert bucket.objects() == {"new.txt": b"fresh"}
        assert fs.uploader.status()["conflicts"] == []
    finally:
        fs.shutdown(drain=False)
