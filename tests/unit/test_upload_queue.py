"""A deep upload queue (thousands of closes while the bucket does not answer) drains to exactly
the newest version of every file, chained versions included."""

from __future__ import annotations

import os
import threading
import time

from octuefs.config import MountConfig
from octuefs.core import FileSystem
from octuefs.errors import PreconditionFailed, TransientError
from octuefs.storage.fake import FakeBucket
from octuefs.uploads import SMALL_IN_FLIGHT


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
    fs = FileSystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
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
    fs = FileSystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
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
    fs = FileSystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"), cache_dir=str(tmp_path / "c")))
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
    fs = FileSystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
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
    fs = FileSystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
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
    fs = FileSystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
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
