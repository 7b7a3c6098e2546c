"""Review of branch dirx through a real mount: a directory's setfattr against what else lives at
DIR/.octue (its own attributes, a directory of that name)."""

from __future__ import annotations

import json
import os
import subprocess

from .test_xattrs import setfattr

ID = "c59e22eb-fea9-5c80-80bb-845be985c70e"


def _record(bucket_name: str, labels=("dataset",)) -> bytes:
    return json.dumps({"dataset": {"id": ID, "name": "ds", "tags": {}, "labels": list(labels),
                                   "path": f"gs://{bucket_name}/ds"}}).encode()


def test_a_directory_setfattr_keeps_the_attributes_set_on_its_record_file(mount):
    """`setfattr -n user.note -v reviewed ds/.octue` (a file like any other: the attribute is kept
    as custom metadata), then `setfattr -n user.octue.labels ds`: the record is uploaded with no
    custom metadata at all, and the note set through this very mount is gone."""
    mount.bucket.upload_bytes("ds/.octue", _record(mount.bucket.name), {}, content_type="text/plain")
    mount.bucket.upload_bytes("ds/a.csv", b"1")
    assert setfattr(mount / "ds/.octue", "user.note", "reviewed").returncode == 0
    mount.sync()
    assert mount.bucket.stat("ds/.octue").metadata.get("octuefs.user.note") == "reviewed"
    done = setfattr(mount / "ds", "user.octue.labels", "dataset checked")
    assert done.returncode == 0, done.stderr
    assert json.loads(mount.bucket.read_range("ds/.octue", 0, 10_000))["dataset"]["labels"] == ["checked", "dataset"]
    assert mount.bucket.stat("ds/.octue").metadata.get("octuefs.user.note") == "reviewed"
    assert os.getxattr(mount / "ds/.octue", "user.note") == b"reviewed"


def test_a_directory_setfattr_does_not_make_a_file_beside_a_directory_named_dot_octue(mount):
    """`mkdir ds/.octue` with a file in it, then `setfattr -n user.octue.labels -v x ds`: the
    mount looks DIR/.octue up, finds a directory, takes it for 'no record' and uploads the object
    ds/.octue with ifGenerationMatch=0 (no such object: it holds). The bucket then has a file
    and a directory of one name; the SDK reads the record, the mount shows a directory."""
    (mount / "ds/.octue").mkdir(parents=True)
    (mount / "ds/.octue/inner.txt").write_text("mine")
    mount.sync()
    done = setfattr(mount / "ds", "user.octue.labels", "x")
    names = [o.name for o in mount.bucket.list_page("ds/", None).objects]
    assert "ds/.octue" not in names, f"setfattr exit {done.returncode}; objects now {names}"
    assert done.returncode != 0
    assert (mount / "ds/.octue/inner.txt").read_text() == "mine"
    subprocess.run(["ls", "-la", str(mount / "ds")], check=True, capture_output=True)


def _kill_and_remount(m):
    from .test_writeback import kill_daemon, remount

    kill_daemon(m)
    remount(m)


def _state(path) -> str:
    return os.getxattr(path, "user.octuefs.state").decode()


def test_state_after_kill_9_and_remount_is_pending_until_the_upload_lands(emulator, monkeypatch, mount_factory):
    """(Held up when written.) A file closed while every upload fails, the daemon killed, the
    mount started again: its journaled upload says pending, never saved, until it lands."""
    from tests.faultproxy import FaultProxy

    with FaultProxy(emulator.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        m = mount_factory()
        proxy.set_faults({"503": 1.0}, only=("upload",))
        (m / "a.csv").write_bytes(b"1,2\n")
        assert _state(m / "a.csv").startswith(("pending", "uploading"))
        _kill_and_remount(m)
        for _ in range(5):
            assert _state(m / "a.csv").startswith(("pending", "uploading")), _state(m / "a.csv")
        proxy.heal()
        m.sync()
        assert _state(m / "a.csv") == "saved"
        assert m.bucket.read_range("a.csv", 0, 100) == b"1,2\n"


def test_state_after_a_conflict_and_a_remount_does_not_say_saved(mount_factory):
    """The conflicts this mount made are kept in memory only: after a remount, a file whose
    version from this mount went beside (the bucket holds someone else's bytes) says "saved",
    whose documented meaning is "nothing of it is waiting here: the bucket has it". The docs
    say the conflict lasts "until ... the mount ends (`octuefs status` keeps the list across
    mounts)"; the state could take it from that same list."""
    m = mount_factory()
    m.bucket.upload_bytes("sub/shared.csv", b"version 1")
    with open(m / "sub/shared.csv", "r+b") as f:
        assert f.read() == b"version 1"
        m.bucket.upload_bytes("sub/shared.csv", b"their version 2")
        f.seek(0)
        f.write(b"my version 2")
    m.sync()
    assert _state(m / "sub/shared.csv").startswith("conflict ")
    _kill_and_remount(m)
    assert _state(m / "sub/shared.csv").startswith("conflict ")


def test_cp_a_of_a_dataset_to_a_local_disk_and_back_keeps_it(mount, tmp_path):
    """(Held up when written.) cp -a from the mount to a local disk carries the directory's
    dataset attributes (and not user.octuefs.state); cp -a back to a new name makes the same
    dataset there, its record naming its own path, the files' metadata kept."""
    from .test_xattrs import getfattr_dump

    mount.bucket.upload_bytes("ds/.octue", _record(mount.bucket.name), {}, content_type="text/plain")
    mount.bucket.upload_bytes("ds/a.csv", b"1,2\n")
    assert setfattr(mount / "ds/a.csv", "user.octue.labels", "raw").returncode == 0
    mount.sync()
    local = tmp_path / "local"
    done = subprocess.run(["cp", "-a", str(mount / "ds"), str(local)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert getfattr_dump(local) == getfattr_dump(mount / "ds")
    assert "user.octuefs.state" not in os.listxattr(local / "a.csv")
    done = subprocess.run(["cp", "-a", str(local), str(mount / "ds3")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    mount.sync()
    assert getfattr_dump(mount / "ds3") == getfattr_dump(mount / "ds")
    assert getfattr_dump(mount / "ds3/a.csv")["user.octue.labels"] == "raw"
    record = json.loads(mount.bucket.read_range("ds3/.octue", 0, 10_000))["dataset"]
    assert record["path"] == f"gs://{mount.bucket.name}/ds3" and record["id"] == ID


def test_cat_of_the_record_right_after_a_directory_setfattr_is_whole_json(mount):
    """docs/semantics.md admits a `cat DIR/.octue` within --attr-timeout of an earlier stat may
    "read the old size"; what it then reads is the *new* record cut at the old size: JSON that
    does not parse (a local SDK reading the mount, `jq`, a backup). The mount made the change
    itself, so it can tell the kernel (invalidate DIR/.octue's inode/entry after the write,
    as a write-back upload's metadata change would need too)."""
    mount.bucket.upload_bytes("ds/.octue", _record(mount.bucket.name), {}, content_type="text/plain")
    json.loads((mount / "ds/.octue").read_bytes())  # stat and read: the kernel caches its size
    assert setfattr(mount / "ds", "user.octue.labels", "dataset " + " ".join(f"l{i}" for i in range(30))).returncode == 0
    text = (mount / "ds/.octue").read_bytes()
    assert json.loads(text)["dataset"]["labels"][0] == "dataset", text[-60:]
