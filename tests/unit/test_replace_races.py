"""An unlink, or a rename over a file, while that file's own upload is landing: the mount must
delete or replace the version that landed, never take it for a change made elsewhere.

Found by `tests/e2e/test_concurrency.py::test_threads_racing_on_a_few_names_...` with the burst
hold off (``--upload-hold 0``, as at a distance from the bucket): an unlink waited for the running
upload of its file, then deleted the version it had read *before* waiting (none, for a new file:
nothing deleted, the landed version left in the bucket while the mount showed the file gone; an
older generation: 412, EIO). The next create of the name then met the mount's own version as a
conflict. Each test sequences that interleaving on the in-memory bucket: the upload is held while
the unlink or rename starts to wait for it, then released."""

from __future__ import annotations

import threading

import pytest

from octuefs.storage.fake import FakeBucket
from tests.unit.corekit import HeldUpload, close_write, make_fs, read


@pytest.fixture
def bucket():
    return FakeBucket("replace-races")


@pytest.fixture
def fs(bucket, tmp_path):
    fs = make_fs(bucket, tmp_path, op_timeout=10.0)
    yield fs
    fs.uploader.shutdown(drain=False)


def withholding(fs) -> threading.Event:
    """Set once an unlink or rename starts to hold back (and wait for) a file's uploads."""
    entered, real = threading.Event(), fs.uploader.withhold

    def withhold(*args, **kwargs):
        entered.set()
        return real(*args, **kwargs)

    fs.uploader.withhold = withhold
    return entered


def while_landing(fs, bucket, call, *args) -> list[BaseException]:
    """Run ``call(*args)`` while the upload held now is running: released once ``call`` waits for
    it. Returns what ``call`` raised."""
    held = HeldUpload(bucket)
    entered = withholding(fs)
    assert held.started.wait(10)
    errors: list[BaseException] = []

    def run():
        try:
            call(*args)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert entered.wait(10)
    held.release()
    worker.join(20)
    assert not worker.is_alive()
    return errors


def no_conflicts(fs) -> bool:
    return fs.uploader.status()["conflicts"] == []


def test_an_unlink_of_a_new_file_whose_upload_is_landing_deletes_what_landed(fs, bucket):
    close_write(fs, "/n1", b"first")
    assert while_landing(fs, bucket, fs.unlink, "/n1") == []
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects() == {}
    close_write(fs, "/n1", b"made again")  # a create-only upload: nothing of the mount's own is there
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects() == {"n1": b"made again"}
    assert no_conflicts(fs)


def test_an_unlink_of_a_saved_file_whose_new_version_is_landing_deletes_that_version(fs, bucket):
    close_write(fs, "/f", b"v0")
    assert fs.uploader.sync(timeout=10) == 0
    close_write(fs, "/f", b"v1 landing")
    assert while_landing(fs, bucket, fs.unlink, "/f") == []
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects() == {}
    assert no_conflicts(fs)


def test_a_rename_onto_a_new_file_whose_upload_is_landing_replaces_what_landed(fs, bucket):
    bucket.upload_bytes("n0", b"from elsewhere", {})
    close_write(fs, "/n1", b"landing")
    assert while_landing(fs, bucket, fs.rename, "/n0", "/n1") == []
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects() == {"n1": b"from elsewhere"}
    assert read(fs, "/n1") == b"from elsewhere"
    assert no_conflicts(fs)


def test_a_new_file_renamed_onto_a_file_whose_upload_is_landing_takes_its_place(fs, bucket):
    close_write(fs, "/n0", b"new here")  # new: it takes over the replaced file's Octue metadata
    assert fs.uploader.sync(timeout=10) == 0
    close_write(fs, "/n1", b"landing")
    assert while_landing(fs, bucket, fs.rename, "/n0", "/n1") == []
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects() == {"n1": b"new here"}
    assert no_conflicts(fs)


def test_an_unlink_waits_until_the_landed_version_is_recorded_not_only_marked_done(fs, bucket):
    """The upload's end is marked before the file layer records the version it made: an unlink
    that stopped waiting in between would delete the version it had read before."""
    close_write(fs, "/n1", b"first")
    unlinked = threading.Event()
    real_done = fs.uploader.on_done

    def on_done(entry):
        with fs.uploader._cond:
            fs.uploader._cond.notify_all()  # (what any other upload's end does meanwhile)
        unlinked.wait(1.0)  # an unlink that stopped waiting ends now; one still waiting does not
        real_done(entry)

    fs.uploader.on_done = on_done

    def unlink():
        try:
            fs.unlink("/n1")
        finally:
            unlinked.set()

    assert while_landing(fs, bucket, unlink) == []
    fs.uploader.on_done = real_done
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects() == {}
    assert no_conflicts(fs)
