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

import os
import threading

import pytest

from octuefs.errors import FileNotFound
from octuefs.storage.fake import FakeBucket
from tests.unit.corekit import HeldUpload, close_write, labels, make_fs, read


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


def started(call, *args) -> tuple[threading.Thread, list[BaseException]]:
    """``call(*args)`` in a thread of its own, and the list that gets what it raised."""
    errors: list[BaseException] = []

    def run():
        try:
            call(*args)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def while_landing(fs, bucket, call, *args) -> list[BaseException]:
    """Run ``call(*args)`` while the upload held now is running: released once ``call`` waits for
    it. Returns what ``call`` raised."""
    held = HeldUpload(bucket)
    entered = withholding(fs)
    assert held.started.wait(10)
    worker, errors = started(call, *args)
    assert entered.wait(10)
    held.release()
    worker.join(20)
    assert not worker.is_alive()
    return errors


def no_conflicts(fs) -> bool:
    return fs.uploader.status()["conflicts"] == []


def made_again_is_new(fs, bucket, name: str, **others: bytes) -> None:
    """A file made again under ``name`` goes up as new (a create-only upload), never beside as a
    conflict with what the mount itself did to the name before; ``others``: the rest of the bucket."""
    close_write(fs, "/" + name, b"made again")
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects() == {name: b"made again", **others}
    assert no_conflicts(fs)


def test_an_unlink_of_a_new_file_whose_upload_is_landing_deletes_what_landed(fs, bucket):
    close_write(fs, "/n1", b"first")
    assert while_landing(fs, bucket, fs.unlink, "/n1") == []
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects() == {}
    made_again_is_new(fs, bucket, "n1")


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


# --- a file the mount holds no node of, changed here while it is being removed -----------------


def paused(bucket, operation: str):
    """``bucket.<operation>`` waits once it is called (``called`` set) until ``go`` is set."""
    called, go, real = threading.Event(), threading.Event(), getattr(bucket, operation)

    def wait_then(*args, **kwargs):
        called.set()
        assert go.wait(10)
        return real(*args, **kwargs)

    setattr(bucket, operation, wait_then)
    return called, go


def test_a_setfattr_racing_an_unlink_is_ordered_with_it_and_the_name_made_again_is_new(fs, bucket):
    """The setfattr looked the file up before the unlink deleted it: it applies to the deleted
    file, never to the name the next create makes (which went beside as a conflict copy)."""
    bucket.upload_bytes("f", b"v0", {})
    fs.getattr("/f")
    assert during(fs, bucket, "delete", fs.unlink, ("/f",), fs.setxattr, "/f", "user.octue.labels", b"racing") == []
    made_again_is_new(fs, bucket, "f")


class _Waited(threading.Condition):
    """A node's ``moved`` condition that says when someone waits on it."""

    def __init__(self, lock):
        super().__init__(lock)
        self.waiting = threading.Event()

    def wait(self, timeout=None):
        self.waiting.set()
        return super().wait(timeout)


def during(fs, bucket, operation: str, call, args: tuple, racing, *racing_args) -> list[BaseException]:
    """Run ``racing(*racing_args)`` while ``call(*args)`` (an unlink or rename of its file) is
    held in ``bucket.<operation>``, until it waits for that to end; returns what it raised."""
    called, go = paused(bucket, operation)
    worker = threading.Thread(target=call, args=args)
    worker.start()
    assert called.wait(10)
    node = fs.files.node(fs.ns.object_name(racing_args[0]))
    assert node is not None, "the unlink or rename holds no node of the file: a call meanwhile makes its own"
    node.moved = moved = _Waited(node.lock)
    racer, errors = started(racing, *racing_args)
    assert moved.waiting.wait(10)  # it waits for the unlink or rename to end ...
    go.set()
    worker.join(10)
    racer.join(10)
    assert not worker.is_alive() and not racer.is_alive()
    return errors


def open_during(fs, bucket, operation: str, call, *args, path: str) -> list[BaseException]:
    return during(fs, bucket, operation, call, args, lambda p: fs.release(fs.open(p, os.O_WRONLY)), path)


def test_an_open_racing_an_unlink_is_ordered_after_it(fs, bucket):
    """An open that looked the file up as an unlink of it began: it finds no file, rather than a
    node of the deleted version whose close would go beside as a conflict."""
    bucket.upload_bytes("f", b"v0", {})
    fs.getattr("/f")
    errors = open_during(fs, bucket, "delete", fs.unlink, "/f", path="/f")
    assert [type(e) for e in errors] == [FileNotFound]  # ... and finds nothing
    made_again_is_new(fs, bucket, "f")


def test_a_lookup_made_before_an_unlink_opens_nothing_after_it(fs, bucket):
    bucket.upload_bytes("f", b"v0", {})
    name, info, node = fs.resolve("/f")  # an open's lookup, just before the unlink ...
    fs.unlink("/f")
    with pytest.raises(FileNotFound):  # ... its node made just after: the file is gone
        fs.files.open(name, info, writable=True, seen=node)
    made_again_is_new(fs, bucket, "f")


def test_an_open_racing_a_rename_is_ordered_after_it(fs, bucket):
    """Of the source: it finds no file; of the target: it opens the file moved there."""
    bucket.upload_bytes("a", b"v0", {})
    bucket.upload_bytes("b", b"old b", {})
    fs.getattr("/a")
    fs.getattr("/b")
    errors = open_during(fs, bucket, "copy", fs.rename, "/a", "/b", path="/a")
    assert [type(e) for e in errors] == [FileNotFound]
    bucket.upload_bytes("a", b"v0", {})
    fs.metacache.forget("a")
    assert open_during(fs, bucket, "copy", fs.rename, "/a", "/b", path="/b") == []
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects() == {"b": b"v0"}
    assert read(fs, "/b") == b"v0"
    assert no_conflicts(fs)


def test_a_setfattr_during_a_rename_whose_upload_landed_first_follows_the_file(fs, bucket):
    """The rename let the source's upload land first, after which nothing kept its node: a
    setfattr during the copy made a node of its own on the version being moved away, and the
    next file made under the old name inherited its precondition and went beside."""
    held = HeldUpload(bucket)
    close_write(fs, "/n0", b"moved")
    assert held.started.wait(10)
    real_settle = fs.files.settle

    def settle(node):  # the rename waits for the upload: it lands now
        held.release()
        real_settle(node)

    fs.files.settle = settle
    assert during(fs, bucket, "copy", fs.rename, ("/n0", "/n2"), fs.setxattr, "/n0", "user.octue.labels",
                  b"racing") == []
    made_again_is_new(fs, bucket, "n0", n2=b"moved")
    assert labels(bucket.stat("n2")) == ["racing"]
