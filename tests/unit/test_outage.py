"""Calls someone waits on are bounded; background uploads are not (octuefs/storage/base.py, BoundedBucket,
retry.py, uploads.py): the in-memory bucket's fault hooks play the outage, a fake clock the time."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from octuefs.assembly import build_filesystem
from octuefs.config import MountConfig
from octuefs.errors import (
    BucketUnreachable,
    TransientError,
    UploadStillPending,
    errno_for,
)
from octuefs.fs.core import FileSystem
from octuefs.storage.base import RetryPolicy
from octuefs.storage.fake import FakeBucket
from octuefs.storage.retry import (
    Retrier,
    attempt_timeout,
    bounded,
    current_bound,
    cut_to,
)

from .test_retry import FakeTime

QUICK = RetryPolicy(initial_delay=0.001, max_delay=0.01, deadline=0.05)  # each failed upload: 50 ms
STALL = 10_000.0  # seconds of latency: a server that accepted the request and never answers


@pytest.fixture
def t():
    return FakeTime()


@pytest.fixture
def bucket(t):
    policy = RetryPolicy(initial_delay=0.1, max_delay=5.0, deadline=30.0)  # GCSBucket's default shape
    return FakeBucket("outage", retry=policy, sleep=t.sleep, monotonic=t.clock)


def make_fs(bucket, tmp_path, **overrides) -> FileSystem:
    config = MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "mnt"), cache_dir=str(tmp_path / "cache"),
                         block_size=64 * 1024, **overrides)
    return build_filesystem(bucket, config)


# --- the bound on one call ----------------------------------------------------------------------


def test_attempt_timeouts_are_a_third_of_the_deadline_within_limits():
    assert attempt_timeout(30) == 10 and attempt_timeout(3) == 1 and attempt_timeout(0.3) == 0.5
    assert attempt_timeout(600) == 10
    assert cut_to(10, 2.5) == 2.5 and cut_to(10, 0) == 0.5 and cut_to(0.2, 0) == 0.2


def test_a_stalled_bucket_fails_a_bounded_call_within_its_deadline_saying_why(bucket, t):
    bucket.upload_bytes("d/a.csv", b"a")
    bucket.set_latency(STALL)
    view = bucket.bounded(3.0)
    with pytest.raises(BucketUnreachable) as info:
        view.stat("d/a.csv")
    assert 3.0 <= t.now <= 3.0 + 0.5  # the last attempt is cut to the time left
    message = str(info.value)
    assert message.startswith("bucket unreachable: stat: no answer within ")
    assert message.endswith("s while looking up fake://outage") and "attempts in 3." in message
    assert errno_for(info.value)[0] == errno.ETIMEDOUT
    assert bucket.calls["stat"] >= 3  # each attempt waited a third of the deadline at most


def test_while_the_bucket_is_known_unreachable_each_call_makes_one_attempt(bucket, t):
    bucket.upload_bytes("a", b"a")
    view = bucket.bounded(3.0)
    bucket.set_latency(STALL)
    with pytest.raises(BucketUnreachable):
        view.stat("a")  # the whole deadline: 3 attempts of 1 s
    start = t.now
    with pytest.raises(BucketUnreachable, match=r"unreachable for \d+s, so one attempt per call until it answers"):
        view.list_page("")
    assert t.now - start == 1.0  # one attempt, waiting a third of the deadline
    bucket.set_latency(0)
    assert view.stat("a").size == 1  # an answer: full deadlines again
    bucket.fail_next("stat", times=4)
    assert view.stat("a").size == 1  # a burst of errors is ridden out as before


def test_the_bucket_itself_is_not_bounded(bucket, t):
    bucket.upload_bytes("a", b"a")
    bucket.set_latency(100.0)  # slow, not dead: unbounded callers wait for it
    assert bucket.stat("a").size == 1 and t.now == 100.0


def test_a_burst_of_503s_shorter_than_the_deadline_is_ridden_out(bucket, t):
    bucket.upload_bytes("a", b"abc")
    bucket.fail_next("read", times=5)
    assert bucket.bounded(30.0).read_range("a", 0, 3) == b"abc"
    assert bucket.calls["read"] == 6 and t.now < 5


def test_calls_made_inside_a_bounded_call_share_its_budget(t):
    retrier = Retrier(RetryPolicy(initial_delay=0.1, max_delay=5.0, deadline=30.0), sleep=t.sleep, clock=t.clock)

    def down():
        t.now += 0.5  # each attempt takes half a second to fail
        raise TransientError("down")

    with bounded(4.0):
        with pytest.raises(BucketUnreachable):
            retrier.call(down, "looking up x")
        with pytest.raises(BucketUnreachable):
            retrier.call(down, "listing x/")  # only what is left of the 4 s
    assert t.now <= 4.0 + 2 * 0.5  # not 4 s each: at most one attempt past the budget per call


def test_a_budget_belongs_to_its_own_thread(t):
    seen = []
    with bounded(1.0):
        worker = threading.Thread(target=lambda: seen.append(current_bound()))
        worker.start()
        worker.join()
        assert current_bound() is not None
    assert seen == [None]


def test_retry_after_is_honoured(t):
    retrier = Retrier(RetryPolicy(initial_delay=0.1, max_delay=5.0, deadline=30.0), sleep=t.sleep, clock=t.clock)
    calls = []

    def busy():
        calls.append(1)
        if len(calls) == 1:
            raise TransientError("HTTP 503", retry_after=2.0)
        return "ok"

    assert retrier.call(busy) == "ok" and t.sleeps == [2.0]


def test_a_copy_whose_answer_was_lost_is_recognised_on_its_retry(bucket):
    bucket.upload_bytes("src", b"content", {"k": "v"})
    source = bucket.stat("src")
    bucket.fail_next("copy", after=True)  # copied, then the response is lost
    info = bucket.bounded(30.0).copy("src", "dst", if_source_generation_match=source.generation, if_generation_match=0)
    assert bucket.objects()["dst"] == b"content" and info.name == "dst"
    assert bucket.calls["copy"] == 2


# --- the filesystem during an outage -------------------------------------------------------------


def test_lookups_listings_and_xattrs_fail_with_etimedout_within_op_timeout(bucket, t, tmp_path):
    bucket.upload_bytes("d/a.csv", b"a")
    fs = make_fs(bucket, tmp_path, op_timeout=3.0)
    bucket.set_latency(STALL)
    for call in (lambda: fs.getattr("/d/a.csv"), lambda: fs.readdir("/d"),
                 lambda: fs.getxattr("/d/a.csv", "user.octue.id")):
        start = t.now
        with pytest.raises(BucketUnreachable) as info:
            call()
        # A lookup lists the directory and probes ``name/`` side by side; this clock adds up
        # the waits of both threads, so two requests in parallel count twice here.
        assert t.now - start <= 2 * 3.5
        assert errno_for(info.value)[0] == errno.ETIMEDOUT and "bucket unreachable" in str(info.value)


def test_cached_content_and_local_files_still_read_while_the_bucket_is_down(bucket, t, tmp_path):
    bucket.upload_bytes("d/a.csv", b"A" * 200_000)
    fs = make_fs(bucket, tmp_path, op_timeout=3.0)
    assert [n for n, _ in fs.readdir("/d")] == ["a.csv"]
    fh = fs.open("/d/a.csv", os.O_RDONLY)
    assert fs.read(fh, 300_000, 0) == b"A" * 200_000
    fs.release(fh)
    new = fs.create("/d/new.csv", os.O_WRONLY)
    fs.write(new, b"local", 0)
    # The lookup of /d listed the root beside its probe of d/; on a busy machine that listing may
    # not have gone out yet. The outage starts once it has landed (a listing cut by an outage is
    # rightly asked for again): nothing is on its way when the bucket goes down.
    assert "d" in [n for n, _ in fs.readdir("/")]

    bucket.set_latency(STALL)
    bucket.set_fault_rate(1.0, operations=("upload",))  # and every upload fails meanwhile
    bucket.reset_calls()
    fs.flush(new)  # write-back close: nothing on the network
    fs.release(new)
    fh = fs.open("/d/a.csv", os.O_RDONLY)  # metadata still cached (stat TTL)
    assert fs.read(fh, 300_000, 0) == b"A" * 200_000  # every block is cached
    fs.release(fh)
    assert sorted(n for n, _ in fs.readdir("/d")) == ["a.csv", "new.csv"]  # the cached listing
    fh = fs.open("/d/new.csv", os.O_RDONLY)
    assert fs.read(fh, 100, 0) == b"local"  # pending: served from the journal
    fs.release(fh)
    assert not {op: n for op, n in bucket.calls.items() if op != "upload"}  # none of it asked the bucket

    bucket.set_latency(0)
    bucket.set_fault_rate(0)
    assert fs.uploader.sync(timeout=30) == 0
    assert bucket.objects()["d/new.csv"] == b"local"


def test_rename_of_a_file_whose_upload_cannot_move_gives_up_after_op_timeout(tmp_path):
    bucket = FakeBucket("stuck", retry=QUICK)
    fs = make_fs(bucket, tmp_path, op_timeout=0.5)
    bucket.set_fault_rate(1.0, operations=("upload",))
    fh = fs.create("/a.csv", os.O_WRONLY)
    fs.write(fh, b"data", 0)
    fs.flush(fh)
    fs.release(fh)
    start = time.monotonic()
    with pytest.raises(UploadStillPending) as info:
        fs.rename("/a.csv", "/b.csv")
    assert time.monotonic() - start < 10
    assert errno_for(info.value)[0] == errno.ETIMEDOUT and "no upload has moved" in str(info.value)
    bucket.set_fault_rate(0)
    assert fs.uploader.sync(timeout=30) == 0
    fs.rename("/a.csv", "/b.csv")
    assert bucket.objects() == {"b.csv": b"data"}


def test_unlink_while_an_upload_hangs_gives_up_after_op_timeout_and_keeps_the_data(tmp_path):
    bucket = FakeBucket("hung")
    fs = make_fs(bucket, tmp_path, op_timeout=0.5)
    gate = threading.Event()
    started = threading.Event()
    real_upload = bucket.upload_file

    def hung_upload(*args, **kwargs):
        started.set()
        gate.wait(30)
        return real_upload(*args, **kwargs)

    bucket.upload_file = hung_upload
    fh = fs.create("/a.csv", os.O_WRONLY)
    fs.write(fh, b"data", 0)
    fs.flush(fh)
    fs.release(fh)
    assert started.wait(10)
    with pytest.raises(UploadStillPending):
        fs.unlink("/a.csv")  # its upload is running and does not move
    gate.set()
    assert fs.uploader.sync(timeout=30) == 0
    fs.unlink("/a.csv")
    assert bucket.objects() == {}


def test_uploads_waiting_for_the_bucket_are_retried_as_soon_as_one_lands(tmp_path):
    bucket = FakeBucket("back", retry=QUICK)
    fs = make_fs(bucket, tmp_path)
    bucket.set_fault_rate(1.0, operations=("upload",))
    for i in range(3):
        fh = fs.create(f"/f{i}", os.O_WRONLY)
        fs.write(fh, b"x", 0)
        fs.flush(fh)
        fs.release(fh)
    deadline = time.monotonic() + 10
    while min(e.attempts for e in fs.uploader.snapshot()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # until their backoff has grown to seconds
    bucket.set_fault_rate(0)
    waiting = {e.id: e.next_try for e in fs.uploader.snapshot()}
    fh = fs.create("/trigger", os.O_WRONLY)
    fs.flush(fh)
    fs.release(fh)
    deadline = time.monotonic() + 20
    while ("trigger" not in bucket.objects() or fs.uploader.pending_for("trigger")) and time.monotonic() < deadline:
        time.sleep(0.01)
    # Every upload still waiting was moved up to now (it had been due seconds later).
    assert all(e.state != "queued" or e.next_try < waiting[e.id] for e in fs.uploader.snapshot())
    assert fs.uploader.sync(timeout=30) == 0
    assert sorted(bucket.objects()) == ["f0", "f1", "f2", "trigger"]


def test_a_read_retried_right_after_the_bucket_was_unreachable_fails_at_once(bucket, t, tmp_path, monkeypatch):
    import octuefs.cache.fetching

    monkeypatch.setattr(octuefs.cache.fetching, "RECENT_FAILURE", 0.2)
    bucket.upload_bytes("a.bin", b"A" * 100_000)
    fs = make_fs(bucket, tmp_path, op_timeout=3.0)
    fh = fs.open("/a.bin", os.O_RDONLY)
    bucket.set_latency(STALL)
    with pytest.raises(BucketUnreachable):
        fs.read(fh, 4096, 0)
    asked, waited = bucket.calls["read"], t.now
    with pytest.raises(BucketUnreachable):  # as the kernel does: the same page again, at once
        fs.read(fh, 4096, 0)
    assert bucket.calls["read"] == asked and t.now == waited  # the bucket was not asked again
    bucket.set_latency(0)
    time.sleep(0.3)
    assert fs.read(fh, 4096, 0) == b"A" * 4096  # later readers try again
    fs.release(fh)


def test_a_rename_cut_short_after_its_copy_says_the_file_is_under_both_names(bucket, t, tmp_path):
    bucket.upload_bytes("a.csv", b"data")
    fs = make_fs(bucket, tmp_path, op_timeout=3.0)
    assert [n for n, _ in fs.readdir("/")] == ["a.csv"]
    bucket.set_fault_rate(1.0, operations=("delete",))  # the copy lands, then the bucket stops answering
    with pytest.raises(BucketUnreachable, match="copied to 'b.csv' first, so it is under both names"):
        fs.rename("/a.csv", "/b.csv")
    assert sorted(bucket.objects()) == ["a.csv", "b.csv"]
    assert sorted(n for n, _ in fs.readdir("/")) == ["a.csv", "b.csv"]  # the mount shows what is there


def test_unlink_deletes_a_dropped_upload_that_had_landed_with_its_answer_lost(tmp_path):
    bucket = FakeBucket("lost", retry=QUICK)
    fs = make_fs(bucket, tmp_path, op_timeout=5.0)
    gate, started = threading.Event(), threading.Event()
    real_upload = bucket.upload_file

    def lands_but_fails(*args, **kwargs):
        started.set()
        gate.wait(30)
        real_upload(*args, **kwargs)  # in the bucket ...
        raise BucketUnreachable("bucket unreachable: the answer was lost")  # ... but nobody heard

    bucket.upload_file = lands_but_fails
    fh = fs.create("/new.csv", os.O_WRONLY)
    fs.write(fh, b"data", 0)
    fs.flush(fh)
    fs.release(fh)
    assert started.wait(10)
    threading.Timer(0.3, gate.set).start()
    fs.unlink("/new.csv")  # waits for the running attempt, drops the upload, deletes what landed
    assert bucket.objects() == {}
    assert fs.uploader.sync(timeout=5) == 0 and bucket.objects() == {}


def test_a_rename_whose_copy_timed_out_says_the_copy_may_exist(bucket, t, tmp_path):
    bucket.upload_bytes("a.csv", b"data")
    fs = make_fs(bucket, tmp_path, op_timeout=3.0)
    assert [n for n, _ in fs.readdir("/")] == ["a.csv"]
    bucket.fail_next("copy", after=True)  # the copy is made, its answer lost ...
    bucket.fail_next("copy", times=1000)  # ... and then the bucket stops answering
    with pytest.raises(BucketUnreachable, match="'b.csv' may exist now.*'a.csv' is untouched"):
        fs.rename("/a.csv", "/b.csv")
    assert sorted(bucket.objects()) == ["a.csv", "b.csv"]
    assert sorted(n for n, _ in fs.readdir("/")) == ["a.csv", "b.csv"]  # not hidden by a stale listing
