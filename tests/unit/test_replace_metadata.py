"""A rename that replaces a file: the replaced file's Octue metadata stays with the name when the
incoming file was just created through the mount and never given any (``sed -i``, editors that
save by writing a temporary file and renaming it over, ``os.replace``). Core only, fake bucket."""

from __future__ import annotations

import json
import os

import pytest

from octuefs.errors import Conflict
from octuefs.storage.fake import FakeBucket

from .test_core import make_fs, read_file, settle

OCTUE_KEYS = ("octue__id", "octue__tags", "octue__labels", "octue__timestamp", "octue__cluster", "octue__sequence")


@pytest.fixture
def bucket():
    return FakeBucket("replace-test")


@pytest.fixture
def fs(bucket, tmp_path):
    return make_fs(bucket, tmp_path)


def write(fs, path: str, data: bytes) -> None:
    """Create (or truncate) and write ``path``, closed, not waiting for the upload."""
    fh = fs.create(path, os.O_WRONLY | os.O_CREAT)
    fs.write(fh, data, 0)
    fs.flush(fh)
    fs.release(fh)


def tag_it(fs, path: str) -> None:
    fs.setxattr(path, "user.octue.tags", json.dumps({"instrument": "anemometer", "height_m": 80.5}).encode())
    fs.setxattr(path, "user.octue.labels", b"raw qc-passed")
    fs.setxattr(path, "user.octue.sequence", b"3")
    fs.setxattr(path, "user.octue.timestamp", b"1704067200")


def octue_of(bucket, name: str) -> dict[str, str]:
    return {k: v for k, v in bucket.stat(name).metadata.items() if k in OCTUE_KEYS}


def shown(fs, path: str) -> dict[str, bytes]:
    return {name: fs.getxattr(path, name) for name in fs.listxattr(path) if name.startswith("user.octue.")}


def test_a_new_file_renamed_over_keeps_the_replaced_files_metadata(fs, bucket):
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    settle(fs)
    before, kept = shown(fs, "/data.csv"), octue_of(bucket, "data.csv")
    write(fs, "/.data.csv.tmp", b"new")
    fs.rename("/.data.csv.tmp", "/data.csv")
    assert shown(fs, "/data.csv") == before
    settle(fs)
    assert octue_of(bucket, "data.csv") == kept
    assert bucket.read_range("data.csv", 0, 100) == b"new"
    assert read_file(fs, "/data.csv") == b"new"
    assert ".data.csv.tmp" not in [n for n, _ in fs.readdir("/")]


def test_an_incoming_file_with_metadata_of_its_own_keeps_it(fs, bucket):
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    write(fs, "/new.csv", b"new")
    fs.setxattr("/new.csv", "user.octue.labels", b"mine")
    settle(fs)
    theirs = shown(fs, "/new.csv")
    fs.rename("/new.csv", "/data.csv")
    assert shown(fs, "/data.csv") == theirs
    settle(fs)
    assert json.loads(bucket.stat("data.csv").metadata["octue__id"]) == theirs["user.octue.id"].decode()


def test_the_replaced_files_unsaved_metadata_is_kept_and_its_queued_versions_dropped(fs, bucket):
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")  # joins the upload still queued (or patches, if it landed)
    write(fs, "/data.csv", b"older, never to land")
    fs.setxattr("/data.csv", "user.octue.labels", b"edited")
    before = shown(fs, "/data.csv")
    write(fs, "/tmp1", b"new")
    fs.rename("/tmp1", "/data.csv")
    assert shown(fs, "/data.csv") == before
    settle(fs)
    assert bucket.read_range("data.csv", 0, 100) == b"new"
    stored = bucket.stat("data.csv").metadata
    assert json.loads(stored["octue__id"]) == before["user.octue.id"].decode()
    assert json.loads(stored["octue__labels"])["items"] == ["edited"]


def test_a_replaced_file_only_in_the_bucket_keeps_its_metadata_and_its_other_keys_go(fs, bucket):
    sdk = {"octue__id": '"02464c6f-0070-50ca-8a9b-ba1af5456601"', "octue__tags": '{"a": 1}',
           "octue__labels": '{"_type": "set", "items": ["raw"]}', "octue__timestamp": "null",
           "octue__sdk_version": '"0.69.1"', "someone-else": "theirs"}
    bucket.upload_bytes("data.csv", b"old", sdk)
    write(fs, "/tmp1", b"new")
    settle(fs)  # the incoming file is in the bucket and no longer open: still just created here
    fs.rename("/tmp1", "/data.csv")
    stored = bucket.stat("data.csv").metadata
    assert {k: stored.get(k) for k in ("octue__id", "octue__tags", "octue__labels")} == \
        {k: sdk[k] for k in ("octue__id", "octue__tags", "octue__labels")}
    assert "someone-else" not in stored  # not Octue metadata: it belonged to the replaced content
    assert fs.getxattr("/data.csv", "user.octue.id") == b"02464c6f-0070-50ca-8a9b-ba1af5456601"


def test_a_metadata_change_made_elsewhere_since_is_kept_not_overwritten(fs, bucket):
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    settle(fs)
    fs.getxattr("/data.csv", "user.octue.id")  # this mount has now seen it (cached)
    info = bucket.stat("data.csv")
    bucket.patch_metadata("data.csv", {"octue__labels": '{"_type": "set", "items": ["from-elsewhere"]}'},
                          if_metageneration_match=info.metageneration)
    write(fs, "/tmp1", b"new")
    try:
        fs.rename("/tmp1", "/data.csv")
    except Conflict:  # refusing is honest too: then nothing changed
        assert bucket.read_range("data.csv", 0, 100) == b"old"
    else:
        assert json.loads(bucket.stat("data.csv").metadata["octue__labels"])["items"] == ["from-elsewhere"]
    assert json.loads(bucket.stat("data.csv").metadata["octue__labels"])["items"] == ["from-elsewhere"]


def test_a_rename_onto_a_free_name_changes_nothing_and_the_file_stays_new(fs, bucket):
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    settle(fs)
    kept = octue_of(bucket, "data.csv")
    write(fs, "/a", b"new")
    fs.rename("/a", "/b")
    fs.rename("/b", "/data.csv")
    assert octue_of(bucket, "data.csv") == kept


def test_a_new_file_written_where_the_original_was_renamed_to_its_backup_takes_its_metadata(fs, bucket):
    """vim's and emacs's other way to save: the original becomes the backup ``data.csv~``, a new
    file is written under the name (and vim then deletes the backup)."""
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    settle(fs)
    kept = octue_of(bucket, "data.csv")
    before = shown(fs, "/data.csv")
    fs.rename("/data.csv", "/data.csv~")
    write(fs, "/data.csv", b"new")
    assert shown(fs, "/data.csv") == before
    fs.unlink("/data.csv~")
    settle(fs)
    assert octue_of(bucket, "data.csv") == kept
    assert bucket.read_range("data.csv", 0, 100) == b"new"


def test_only_a_backup_name_and_an_unchanged_backup_pass_the_metadata_on(fs, bucket):
    write(fs, "/a.csv", b"old")
    tag_it(fs, "/a.csv")
    write(fs, "/b.csv", b"old")
    tag_it(fs, "/b.csv")
    settle(fs)
    fs.rename("/a.csv", "/a.csv.orig")  # a move, not an editor's backup
    write(fs, "/a.csv", b"new")
    fs.rename("/b.csv", "/b.csv~")
    fs.setxattr("/b.csv~", "user.octue.labels", b"changed")  # the backup is a file of its own now
    write(fs, "/b.csv", b"new")
    settle(fs)
    for name in ("a.csv", "b.csv"):
        assert json.loads(bucket.stat(name).metadata["octue__tags"]) == {}
        assert fs.getxattr("/" + name, "user.octue.labels") == b""


def test_a_new_file_given_metadata_once_in_the_bucket_and_closed_keeps_its_own(fs, bucket):
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    write(fs, "/tmp1", b"new")
    settle(fs)  # uploaded and closed: no node left to say it was given metadata
    fs.setxattr("/tmp1", "user.octue.labels", b"mine")
    theirs = fs.getxattr("/tmp1", "user.octue.id")
    fs.rename("/tmp1", "/data.csv")
    assert fs.getxattr("/data.csv", "user.octue.id") == theirs
    assert json.loads(bucket.stat("data.csv").metadata["octue__labels"])["items"] == ["mine"]


def test_a_rename_refused_after_taking_over_gives_the_source_its_own_metadata_back(fs, bucket):
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    write(fs, "/tmp1", b"new")
    settle(fs)
    own = octue_of(bucket, "tmp1")
    real_copy = bucket.copy

    def copy_after_another_machine(*args, **kwargs):
        bucket.upload_bytes("data.csv", b"made elsewhere")  # after the mount read it
        return real_copy(*args, **kwargs)

    bucket.copy = copy_after_another_machine
    with pytest.raises(Conflict):
        fs.rename("/tmp1", "/data.csv")
    assert bucket.read_range("data.csv", 0, 100) == b"made elsewhere"
    assert bucket.read_range("tmp1", 0, 100) == b"new"
    assert octue_of(bucket, "tmp1") == own


def test_emacs_renaming_the_original_over_an_older_backup_passes_the_metadata_on_too(fs, bucket):
    write(fs, "/data.csv~", b"older backup")
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    settle(fs)
    kept = octue_of(bucket, "data.csv")
    fs.rename("/data.csv", "/data.csv~")
    write(fs, "/data.csv", b"new")
    settle(fs)
    assert octue_of(bucket, "data.csv") == kept == octue_of(bucket, "data.csv~")


def test_a_give_back_the_bucket_refuses_is_queued_said_and_lands_once_it_answers(bucket, tmp_path):
    """The copy fails and so does every way of giving the source its own metadata back (the
    bucket is away): the error says the source still carries the replaced file's metadata (not
    "untouched"), and the give-back, queued as an upload of the source's own version, lands
    once the bucket answers again: no second live file with the replaced file's id."""
    from octuefs.errors import TransientError

    fs = make_fs(bucket, tmp_path, op_timeout=2.0)
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    write(fs, "/tmp1", b"new")
    settle(fs)
    own, kept = octue_of(bucket, "tmp1"), octue_of(bucket, "data.csv")
    real_patch = bucket.patch_metadata

    def patch_then_away(name, *args, **kwargs):
        result = real_patch(name, *args, **kwargs)
        bucket.set_fault_rate(1.0, lambda: TransientError("503: away"))
        return result

    bucket.patch_metadata = patch_then_away
    try:
        with pytest.raises(Exception) as raised:
            fs.rename("/tmp1", "/data.csv")
    finally:
        bucket.patch_metadata = real_patch
    message = str(raised.value)
    assert "untouched" not in message and "still carries" in message and "queued" in message, message
    bucket.set_fault_rate(0.0)
    assert fs.uploader.sync(timeout=20) == 0
    assert octue_of(bucket, "tmp1") == own
    assert bucket.read_range("tmp1", 0, 100) == b"new"
    assert octue_of(bucket, "data.csv") == kept and bucket.read_range("data.csv", 0, 100) == b"old"


def test_a_take_over_interrupted_by_a_crash_is_given_back_at_the_next_mount(bucket, tmp_path):
    """The daemon dies between the take-over's PATCH of the source and the copy: nothing of the
    rename settles, and the source carries the replaced file's id. The give-back was journaled
    before the PATCH: the next mount with the same cache gives the source its own back."""

    class Crash(BaseException):
        pass

    fs = make_fs(bucket, tmp_path)
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    write(fs, "/tmp1", b"new")
    settle(fs)
    own, kept = octue_of(bucket, "tmp1"), octue_of(bucket, "data.csv")

    def die(*args, **kwargs):
        raise Crash()

    bucket_copy, fs.bucket.copy = fs.bucket.copy, die
    fs.takeovers._give_back = die  # (killed: nothing runs after the PATCH)
    with pytest.raises(Crash):
        fs.rename("/tmp1", "/data.csv")
    assert octue_of(bucket, "tmp1") == kept  # the window the record covers
    fs.uploader.shutdown(drain=False)
    fs.bucket.copy = bucket_copy

    again = make_fs(bucket, tmp_path)
    again.givebacks_settled.join(10)
    assert octue_of(bucket, "tmp1") == own
    assert octue_of(bucket, "data.csv") == kept and bucket.read_range("data.csv", 0, 100) == b"old"
    assert os.listdir(again.givebacks.dir) == []
    again.uploader.shutdown(drain=False)


def test_a_settled_take_over_leaves_no_give_back_record(fs, bucket):
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    write(fs, "/tmp1", b"new")
    settle(fs)
    fs.rename("/tmp1", "/data.csv")
    assert os.listdir(fs.givebacks.dir) == []


def test_a_take_over_patch_whose_answer_is_lost_is_undone(fs, bucket):
    """The take-over's PATCH of the source lands but its answer is lost and the bucket then
    stops answering it: the rename fails, and the source does not keep the replaced file's
    metadata (the journaled give-back is settled at once)."""
    from octuefs.errors import TransientError

    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    write(fs, "/tmp1", b"new")
    settle(fs)
    own, kept = octue_of(bucket, "tmp1"), octue_of(bucket, "data.csv")
    real_patch = bucket.patch_metadata
    calls = []

    def lands_unanswered(name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 1:
            real_patch(name, *args, **kwargs)
            raise TransientError("503: answer lost")
        return real_patch(name, *args, **kwargs)

    fs.bucket.patch_metadata = lands_unanswered
    with pytest.raises(TransientError):
        fs.rename("/tmp1", "/data.csv")
    assert octue_of(bucket, "tmp1") == own
    assert octue_of(bucket, "data.csv") == kept and bucket.read_range("data.csv", 0, 100) == b"old"
    assert os.listdir(fs.givebacks.dir) == []


def test_a_take_over_patch_whose_answer_is_lost_and_retried_is_its_own_not_a_change_elsewhere(fs, bucket):
    """The take-over's PATCH lands, its answer is lost, and the retry meets the metageneration it
    moved itself (CI's hostile differential run, seed 461021585: `mv b.txt a` in a burst of lost
    answers). That 412 is the PATCH's own success, not a change made elsewhere: the rename goes
    on. It used to fail with EIO saying the source had changed, settle the give-back as "nothing
    was changed", and leave the source with the replaced file's Octue id for good."""
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    write(fs, "/tmp1", b"new")
    settle(fs)
    before, kept = shown(fs, "/data.csv"), octue_of(bucket, "data.csv")
    bucket.fail_next("patch", after=True)
    fs.rename("/tmp1", "/data.csv")
    assert sorted(bucket.objects()) == ["data.csv"] and bucket.read_range("data.csv", 0, 100) == b"new"
    assert octue_of(bucket, "data.csv") == kept and shown(fs, "/data.csv") == before
    assert os.listdir(fs.givebacks.dir) == []


def test_a_take_over_refused_after_its_patch_landed_unanswered_gives_the_source_its_own_back(fs, bucket):
    """The take-over's PATCH lands with its answer lost and is then refused for another reason
    (here the source's metadata was changed elsewhere on top of it): the rename fails, and the
    source must not keep the replaced file's id, neither in the bucket nor as the mount shows it:
    a failed rename has no effect."""
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    write(fs, "/tmp1", b"new")
    settle(fs)
    own, kept = octue_of(bucket, "tmp1"), octue_of(bucket, "data.csv")
    shown_before = shown(fs, "/tmp1")
    real = bucket.server.patch

    def lands_then_a_change_elsewhere(name, *args, **kwargs):
        bucket.server.patch = real
        done = real(name, *args, **kwargs)
        real(name, {"made-elsewhere": "1"}, None, None, None)
        return done

    bucket.fail_next("patch", after=True)
    bucket.server.patch = lands_then_a_change_elsewhere
    with pytest.raises(Conflict):
        fs.rename("/tmp1", "/data.csv")
    assert {k: v for k, v in octue_of(bucket, "tmp1").items()} == own
    assert bucket.stat("tmp1").metadata["made-elsewhere"] == "1"
    assert shown(fs, "/tmp1") == shown_before
    assert octue_of(bucket, "data.csv") == kept and bucket.read_range("data.csv", 0, 100) == b"old"
    assert os.listdir(fs.givebacks.dir) == []


def _take_over_lost_then_away(bucket, tmp_path):
    """A take-over whose PATCH lands, its answer lost, and then the bucket stops answering, so
    the give-back cannot even be tried: it is owed. Background tries are off (``stop``), so
    only what the test does next can settle it. Returns (fs, own Octue keys of tmp1, shown)."""
    from octuefs.errors import TransientError

    from .corekit import stall

    fs = make_fs(bucket, tmp_path, op_timeout=1.0)
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    write(fs, "/tmp1", b"new")
    settle(fs)
    own, shown_before = octue_of(bucket, "tmp1"), shown(fs, "/tmp1")
    fs.givebacks.stop()
    real_patch = bucket.patch_metadata

    def lands_then_away(name, *args, **kwargs):
        real_patch(name, *args, **kwargs)
        stall(bucket)
        raise TransientError("503: answer lost")

    fs.bucket.patch_metadata = lands_then_away
    try:
        with pytest.raises(TransientError):
            fs.rename("/tmp1", "/data.csv")
    finally:
        fs.bucket.patch_metadata = real_patch
    assert fs.givebacks.owes("tmp1")
    return fs, own, shown_before


def test_a_give_back_owed_is_settled_before_the_source_is_shown_again(bucket, tmp_path):
    """Once the bucket answers, the mount never shows the failed rename's source with the id it
    took: looking it up settles what it is owed first."""
    from .corekit import heal

    fs, own, shown_before = _take_over_lost_then_away(bucket, tmp_path)
    heal(bucket)
    assert shown(fs, "/tmp1") == shown_before
    assert octue_of(bucket, "tmp1") == own and os.listdir(fs.givebacks.dir) == []
    fs.shutdown()


def test_a_sync_counts_a_give_back_owed_as_pending_until_it_is_settled(bucket, tmp_path):
    """`octuefs sync` returning "all written" means no source still carries an id it took:
    while the bucket is away the owed give-back is pending; once it answers, the sync settles it."""
    from octuefs.control import ControlServer, request

    from .corekit import heal

    fs, own, _ = _take_over_lost_then_away(bucket, tmp_path)
    sock = str(tmp_path / "ctl.sock")
    server = ControlServer(fs, sock)
    try:
        assert request(sock, "sync", timeout=5, expect="left")["left"] == 1
        owed = request(sock, "status", timeout=5, expect="uploads")["give_backs"]  # what `octuefs status` lists
        assert [(g["name"], g["replacing"]) for g in owed] == [("tmp1", "data.csv")]
        heal(bucket)
        assert request(sock, "sync", timeout=5, expect="left")["left"] == 0
        assert request(sock, "status", timeout=5, expect="uploads")["give_backs"] == []
    finally:
        server.close()
    assert octue_of(bucket, "tmp1") == own and os.listdir(fs.givebacks.dir) == []
    fs.shutdown()


def test_a_temp_file_removed_while_its_give_back_is_queued_stays_removed(bucket, tmp_path):
    """After a failed take-over whose give-back had to be queued, the editor removes its temp
    file (as `sed -i` does on failure): the queued give-back is dropped with it, not saved
    beside later as a conflict copy of a file the user deleted."""
    from octuefs.errors import TransientError

    fs = make_fs(bucket, tmp_path, op_timeout=2.0)
    write(fs, "/data.csv", b"old")
    tag_it(fs, "/data.csv")
    write(fs, "/tmp1", b"new")
    settle(fs)
    kept = octue_of(bucket, "data.csv")
    real_patch = bucket.patch_metadata

    def patch_then_away(name, *args, **kwargs):
        result = real_patch(name, *args, **kwargs)
        bucket.set_fault_rate(1.0, lambda: TransientError("503: away"))
        return result

    bucket.patch_metadata = patch_then_away
    try:
        with pytest.raises(Exception):
            fs.rename("/tmp1", "/data.csv")
    finally:
        bucket.patch_metadata = real_patch
        bucket.set_fault_rate(0.0)
    fs.unlink("/tmp1")
    assert fs.uploader.sync(timeout=20) == 0
    assert sorted(bucket.objects()) == ["data.csv"]
    assert octue_of(bucket, "data.csv") == kept and bucket.read_range("data.csv", 0, 100) == b"old"
    fs.uploader.shutdown(drain=False)
