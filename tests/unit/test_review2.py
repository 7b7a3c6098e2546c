"""Second fresh-eyes review (rename take-over, user.* xattrs, Datafile, LateLandings, sync).

Each test asserts the correct behaviour, so it fails on the code as reviewed; the docstring
gives the scenario and its impact."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from octuefs.errors import TransientError
from octuefs.storage.fake import FakeBucket
from tests.unit.test_review_findings import close_write, make_fs, read, wait_until


@pytest.fixture
def bucket():
    return FakeBucket("review2")


@pytest.fixture
def fs(bucket, tmp_path):
    fs = make_fs(bucket, tmp_path)
    yield fs
    fs.uploader.shutdown(drain=False)


def block_uploads_of(bucket: FakeBucket, name: str) -> threading.Event:
    """Uploads of ``name`` fail (503, as if the answer were lost) until the returned event is set."""
    real = bucket.upload_file
    healed = threading.Event()

    def flaky(object_name, *args, **kwargs):
        if object_name == name and not healed.is_set():
            raise TransientError("503: the bucket is away")
        return real(object_name, *args, **kwargs)

    bucket.upload_file = flaky
    return healed


# --- LateLandings -------------------------------------------------------------------------


def test_an_atomic_save_of_unchanged_content_over_a_pending_new_file_is_not_deleted_later(fs, bucket):
    """A new file x.csv is written while its uploads fail (the bucket is flaky, its attempt may have
    landed). Then an editor / `sed -i` with no match / an atomic writer saves the SAME content via a
    temporary file renamed over x.csv. The rename takes x.csv's Octue metadata (take-over), so the
    copy at x.csv has exactly the content and metadata of the dropped pending version, which
    Withheld.drop put under LateLandings watch. The next sweep (a sync, or the 5 s timer) takes the
    saved file for a late landing of the "removed" version and deletes it.
    Impact: data loss - a closed, saved file vanishes from the bucket with no error."""
    healed = block_uploads_of(bucket, "x.csv")
    close_write(fs, "/x.csv", b"unchanged content\n")
    assert wait_until(lambda: any(e.attempts for e in fs.uploader.snapshot() if e.name == "x.csv"))
    close_write(fs, "/x.csv.tmp", b"unchanged content\n")
    assert wait_until(lambda: "x.csv.tmp" in bucket.objects())
    fs.rename("/x.csv.tmp", "/x.csv")
    assert bucket.objects().get("x.csv") == b"unchanged content\n"
    healed.set()
    fs.uploader.sync(timeout=10)  # sweeps the watched names
    assert bucket.objects().get("x.csv") == b"unchanged content\n", "the saved file was deleted as a late landing"


def test_a_file_restored_with_cp_a_after_rm_is_not_deleted_as_a_late_landing(fs, bucket):
    """x.csv is written while its upload fails (503: its attempt may have landed), copied out with
    `cp -a` (content and user.* xattrs), removed (rm: its pending version is dropped and watched by
    LateLandings), then restored with `cp -a` back to x.csv: the same content and the same
    user.octue.* attributes, which a new file takes (i13-xattr). Once the bucket heals, the
    restored file lands and the sweep takes it for the removed version landing late: deleted.
    Impact: data loss - the restored, closed file disappears without any error."""
    healed = block_uploads_of(bucket, "x.csv")
    close_write(fs, "/x.csv", b"precious\n")
    assert wait_until(lambda: any(e.attempts for e in fs.uploader.snapshot() if e.name == "x.csv"))
    content = read(fs, "/x.csv")
    attrs = {n: fs.getxattr("/x.csv", n) for n in fs.listxattr("/x.csv") if n.startswith("user.octue.")}
    fs.unlink("/x.csv")
    healed.set()
    fh = fs.create("/x.csv", os.O_WRONLY | os.O_CREAT | os.O_EXCL)  # cp -a back
    fs.write(fh, content, 0)
    for n, v in attrs.items():
        try:
            fs.setxattr("/x.csv", n, v)
        except Exception:
            pass  # read-only attributes cp -a cannot copy
    fs.flush(fh)
    fs.release(fh)
    fs.uploader.sync(timeout=10)
    assert bucket.objects().get("x.csv") == b"precious\n", "the restored file was deleted as a late landing"


# --- rename take-over ------------------------------------------------------------------------


def test_a_label_added_elsewhere_during_a_take_over_rename_is_not_lost(fs, bucket):
    """`sed -i` on d.csv: a new temporary file renamed over d.csv takes d.csv's Octue metadata.
    _replaced_metadata reads d.csv (stat), the source is PATCHed with it, then the copy replaces
    d.csv with only a *generation* precondition. Another machine labelling d.csv between the stat
    and the copy (a metadata-only change: same generation, new metageneration) is overwritten, and
    the rename reports success. The docs promise a change elsewhere is merged or the rename refused.
    Impact: silent overwrite of a change made elsewhere."""
    other = FakeBucket(server=bucket.server)
    other.upload_bytes("d.csv", b"v1\n", {"octue__id": json.dumps("11111111-1111-1111-1111-111111111111")})
    assert read(fs, "/d.csv") == b"v1\n"
    close_write(fs, "/d.csv.tmp", b"v2\n")
    assert fs.uploader.sync(timeout=10) == 0
    real_patch = bucket.patch_metadata

    def patch_then_they_label(name, *args, **kwargs):
        result = real_patch(name, *args, **kwargs)
        if name == "d.csv.tmp":  # the take-over's PATCH of the source: meanwhile, elsewhere ...
            other.patch_metadata("d.csv", {"octue__labels": json.dumps({"items": ["theirs"]})})
        return result

    bucket.patch_metadata = patch_then_they_label
    try:
        fs.rename("/d.csv.tmp", "/d.csv")
    except Exception:
        pass  # refusing the rename would be fine: then d.csv still has their label
    info = bucket.stat("d.csv")
    assert "theirs" in info.metadata.get("octue__labels", ""), info.metadata


def test_a_take_over_copy_that_lands_late_keeps_the_replaced_files_metadata(fs, bucket):
    """`os.replace(tmp, d.csv)` while the bucket is slow: the take-over PATCHes the source with
    d.csv's metadata, the copy times out (its request still in flight) and the retries fail, so the
    rename fails (EIO, "d.csv may exist now") and _give_back restores the source's own metadata.
    Then the in-flight copy lands: its only source precondition is the generation, which a metadata
    PATCH does not change, so it copies the source with its *given-back* metadata over d.csv.
    Impact: d.csv is replaced by the temporary file's content with a fresh id: the Datafile's id,
    tags and labels are gone, which the take-over exists to prevent (silent metadata loss)."""
    other = FakeBucket(server=bucket.server)
    the_id = json.dumps("11111111-1111-1111-1111-111111111111")
    other.upload_bytes("d.csv", b"v1\n", {"octue__id": the_id,
                                          "octue__labels": json.dumps({"_type": "set", "items": ["keep"]})})
    assert read(fs, "/d.csv") == b"v1\n"
    close_write(fs, "/d.csv.tmp", b"v2\n")
    assert fs.uploader.sync(timeout=10) == 0
    gate = threading.Event()
    bucket.fail_next("copy", late=gate)
    bucket.set_fault_rate(1.0, lambda: TransientError("503: away"), operations=("copy",))
    try:
        with pytest.raises(Exception):
            fs.rename("/d.csv.tmp", "/d.csv")
    finally:
        bucket.set_fault_rate(0.0)
        gate.set()
    bucket.wait_landed()
    info = bucket.stat("d.csv")
    assert info.metadata.get("octue__id") == the_id, (bucket.objects(), dict(info.metadata))


def test_a_failed_take_over_rename_does_not_leave_two_live_files_with_one_id(fs, bucket):
    """`os.replace(tmp, d.csv)` as the bucket goes away: the take-over PATCHes d.csv's metadata
    (its id, tags, labels) onto tmp, then the copy fails (503 until op_timeout: EIO, "d.csv.tmp is
    untouched"), and the give-back PATCH fails the same way, only logged. d.csv.tmp now carries
    d.csv's octue__id for good (the same happens if the daemon dies between the PATCH and the
    copy: nothing records that a give-back is owed). The error message even says the source is
    untouched. Impact: two live Datafiles with one id (and a left-over temp file claiming the
    original's identity, tags and labels); wrong error text."""
    other = FakeBucket(server=bucket.server)
    the_id = json.dumps("11111111-1111-1111-1111-111111111111")
    other.upload_bytes("d.csv", b"v1\n", {"octue__id": the_id})
    assert read(fs, "/d.csv") == b"v1\n"
    close_write(fs, "/d.csv.tmp", b"v2\n")
    assert fs.uploader.sync(timeout=10) == 0
    real_patch = bucket.patch_metadata

    def patch_then_away(name, *args, **kwargs):
        result = real_patch(name, *args, **kwargs)
        bucket.set_fault_rate(1.0, lambda: TransientError("503: away"), operations=("copy", "patch", "stat"))
        return result

    bucket.patch_metadata = patch_then_away
    try:
        with pytest.raises(Exception):
            fs.rename("/d.csv.tmp", "/d.csv")
    finally:
        bucket.set_fault_rate(0.0)
        bucket.patch_metadata = real_patch
    ids = {n: bucket.stat(n).metadata.get("octue__id") for n in bucket.objects()}
    assert ids["d.csv"] == the_id
    assert ids["d.csv.tmp"] != the_id, ids


# --- directory renames ------------------------------------------------------------------------


def test_a_directory_rename_over_a_directory_holding_a_file_not_yet_uploaded_is_refused(fs, bucket):
    """`mv a b` where b is empty in the bucket but holds b/f.csv, a file written here whose upload
    has not landed (the bucket is slow for it). rmdir(b) says ENOTEMPTY (it counts the mount's
    new files), but _rename_dir checks only the bucket's listing: the rename succeeds and merges a
    into b. When a also holds f.csv, a/f.csv is copied to b/f.csv first and the user's pending
    b/f.csv then goes beside it as a conflict copy.
    Impact: wrong result/error (POSIX requires ENOTEMPTY); the written b/f.csv is displaced."""
    from octuefs.errors import DirectoryNotEmpty

    block_uploads_of(bucket, "b/f.csv")
    fs.mkdir("/a")
    fs.mkdir("/b")
    close_write(fs, "/b/f.csv", b"mine, written in b\n")
    close_write(fs, "/a/f.csv", b"from a\n")
    assert wait_until(lambda: "a/f.csv" in bucket.objects())
    with pytest.raises(DirectoryNotEmpty):
        fs.rename("/a", "/b")


# --- CLI: bad input ---------------------------------------------------------------------------


def test_a_cache_dir_inside_the_mountpoint_is_refused(tmp_path):
    """`octuefs mount BUCKET ~/mnt --cache-dir ~/mnt/.cache` is accepted: the cache directory is
    made on the underlying directory, then hidden by the mount, and the daemon's own cache
    accesses go through its own FUSE mount. Reproduced by hand with `--local -f`: the first
    `echo hi > mnt/a.txt` hangs in D state (request_wait_answer), the daemon deadlocks on itself,
    SIGKILL leaves it a zombie, and only aborting the FUSE connection
    (/sys/fs/fuse/connections/N/abort) clears it. Impact: wrong error - bad input gives an
    unkillable hang instead of a clear error at mount time."""
    from octuefs.cli import build_parser, config_from_args

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = build_parser().parse_args(["mount", "b", str(mnt), "--cache-dir", str(mnt / ".cache")])
    with pytest.raises(ValueError):
        config_from_args(args)


# --- Datafile API -----------------------------------------------------------------------------


def test_a_datafile_sent_to_a_gs_url_ending_in_a_slash_is_refused(monkeypatch, tmp_path):
    """`Datafile("data.csv").to_cloud("gs://bucket/results/")` (a directory-style URL) is accepted:
    the content and metadata go to the object "results/", which is a directory marker to the mount
    (and to gcsfuse, the console...). Through the mount the data is invisible: `results` is an
    empty directory, and `rmdir results` deletes the object "results/" (with no generation
    precondition) - the uploaded data with it.
    Impact: bad input gets no error; the data is hidden, then lost by an ordinary rmdir."""
    import octuefs.octue.datafile as datafile_module
    from octuefs import Datafile

    bucket = FakeBucket("my-bucket")
    monkeypatch.setattr(datafile_module, "bucket_factory", lambda name, project: bucket)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_bytes(b"a,b\n1,2\n")
    with pytest.raises(ValueError):
        Datafile("data.csv").to_cloud("gs://my-bucket/results/")
    assert bucket.objects() == {}
    # Another tool can still put data there: rmdir must not delete it (refusing is right).
    from octuefs.errors import DirectoryNotEmpty

    bucket.upload_bytes("results/", b"a,b\n1,2\n", {})
    fs = make_fs(bucket, tmp_path)
    try:
        try:
            fs.rmdir("/results")
        except DirectoryNotEmpty:
            pass
        assert "results/" in bucket.objects(), "rmdir deleted the uploaded data"
    finally:
        fs.uploader.shutdown(drain=False)


# --- sync / status: the conflict log ----------------------------------------------------------


def test_a_torn_line_in_the_conflict_log_does_not_break_sync_and_status(fs):
    """conflicts.jsonl is appended without fsync; a crash (or a full disk) mid-append leaves a
    partial last line, and the next conflict is appended to that same line. From then on
    Journal.unreported_conflicts() and Journal.conflicts() raise JSONDecodeError: the control
    server swallows it (debug log), so `octuefs sync` gets no final reply (exit 1, never 3) and
    `octuefs status` fails, on every later call; _keep_beside's "noted before the crash?" check
    raises too, so an upload going beside after a crash retries for ever.
    Impact: wrong error - a conflict is never reported and sync/status stay broken for this cache."""
    journal = fs.uploader.journal
    with open(journal.conflicts_path, "a") as f:
        f.write('{"time": 1, "object": "a.csv", "the')  # the crash
    journal.note_conflict({"time": 2.0, "object": "b.csv", "theirs": "generation 5", "expected_generation": 4,
                           "saved_as": "b.octuefs-conflict-x.csv", "generation": 6})
    _, unreported = journal.unreported_conflicts()
    assert any(c.get("object") == "b.csv" for c in unreported)
    assert any(c.get("object") == "b.csv" for c in fs.uploader.status()["conflicts"])


def test_sync_never_says_all_uploaded_when_its_answer_is_lost(fs, bucket, tmp_path, monkeypatch):
    """The same torn conflict log, with an upload still pending (the bucket refuses it) and
    `octuefs sync --timeout 1`: the daemon's final reply (left/conflicts) fails to build, the
    control server swallows the error and closes the connection, and control.request() returns the
    last *progress* line it got. mount.sync() reads `left` from it with a default of 0: the CLI
    prints nothing and exits 0 - "everything is in the bucket" - while an upload is still pending.
    (Any error building the final reply does this, not only a torn log.)
    Impact: wrong answer that invites data loss (a script deletes the VM / cache after a
    "successful" sync; `octuefs unmount --leave-pending` then looks safe)."""
    from octuefs import mount as mount_module
    from octuefs.control import ControlError, ControlServer

    block_uploads_of(bucket, "p.csv")
    close_write(fs, "/p.csv", b"not in the bucket yet\n")
    with open(fs.uploader.journal.conflicts_path, "a") as f:
        f.write('{"time": 1, "object": "a.csv", "the\n')
    sock = str(tmp_path / "ctl.sock")
    server = ControlServer(fs, sock)
    monkeypatch.setattr(mount_module, "_require_mounted", lambda mountpoint: None)
    monkeypatch.setattr(mount_module, "socket_path", lambda mountpoint: sock)
    try:
        try:
            left, _conflicts = mount_module.sync(str(tmp_path / "mnt"), timeout=1.0)
        except (ControlError, OSError, ValueError):
            return  # an error is a right answer
        assert left == 1, "sync reported nothing pending while p.csv is not in the bucket"
    finally:
        server.close()


# --- other user.* attributes -----------------------------------------------------------------


def gcs_size_limits(bucket: FakeBucket) -> None:
    """Make the fake refuse custom metadata over GCS's limits (8 KiB in all) with a 400, as GCS does."""
    from octuefs.errors import MetadataTooLarge, StorageError
    from octuefs.octue import metadata as octue

    real_upload = bucket.upload_file

    def upload(name, path, metadata, *args, **kwargs):
        try:
            octue.check_size_limits(dict(metadata))
        except MetadataTooLarge as exc:
            raise StorageError(f"400 Bad Request: metadata too large ({exc})") from None
        return real_upload(name, path, metadata, *args, **kwargs)

    bucket.upload_file = upload


def test_a_merge_with_user_attributes_set_elsewhere_that_no_longer_fits_does_not_leave_the_file_stuck(fs, bucket):
    """d.csv is rewritten here and given `user.notes` (3 KiB); meanwhile another machine sets its
    own attributes on d.csv (5 KiB). Each side fits GCS's 8 KiB. The upload meets the metadata
    change (412), merges both key sets (_settle_precondition -> merge_metadata -> _rebase) and
    sends the merge without checking the size: GCS refuses it (400), a permanent error, retried
    every few minutes for ever. The closed file never reaches the bucket (neither in place nor
    beside as a conflict copy); `octuefs sync` reports it pending for ever.
    Impact: a closed file never saved (stuck in the cache), no clear error at close."""
    other = FakeBucket(server=bucket.server)
    close_write(fs, "/d.csv", b"v1\n")
    assert fs.uploader.sync(timeout=10) == 0
    gcs_size_limits(bucket)
    fh = fs.open("/d.csv", os.O_RDWR)
    fs.write(fh, b"v2\n", 0)
    fs.setxattr("/d.csv", "user.notes", b"n" * 3000)
    other.patch_metadata("d.csv", {"octuefs.user.theirs": "t" * 2500, "octuefs.user.more": "m" * 2500})
    fs.flush(fh)
    fs.release(fh)
    assert fs.uploader.sync(timeout=10) == 0, fs.uploader.status()
    saved = [n for n, data in bucket.objects().items() if data == b"v2\n"]
    assert saved, bucket.objects()
