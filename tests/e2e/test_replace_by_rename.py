"""Saving an edit by renaming a new file over the old one (``sed -i``, editors, ``os.replace``)
keeps the file's Octue metadata: its id, tags and labels, in the mount and on the object.
See docs/semantics.md, "A rename that replaces a file"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from octuefs.errors import NotFound

TAGS = {"instrument": "anemometer", "height_m": 80.5}


def a_datafile(mount, name: str = "data.csv") -> dict[str, bytes]:
    """Write ``name`` through the mount and tag it; its Octue xattrs as the mount shows them."""
    path = mount / name
    path.write_bytes(b"speed\n1\n2\nold\n")
    os.setxattr(path, "user.octue.tags", json.dumps(TAGS).encode())
    os.setxattr(path, "user.octue.labels", b"raw qc-passed")
    mount.sync()
    return xattrs_of(path)


def xattrs_of(path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name) for name in ("user.octue.id", "user.octue.tags", "user.octue.labels")}


def assert_kept(mount, name: str, before: dict[str, bytes], data: bytes) -> None:
    """The mount and, once written back, the bucket show the edited bytes under the same metadata."""
    path = mount / name
    assert xattrs_of(path) == before
    assert path.read_bytes() == data
    mount.sync()
    stored = mount.bucket.stat(name).metadata
    assert json.loads(stored["octue__id"]) == before["user.octue.id"].decode()
    assert json.loads(stored["octue__tags"]) == TAGS
    assert json.loads(stored["octue__labels"]) == {"_type": "set", "items": ["qc-passed", "raw"]}
    assert mount.bucket.read_range(name, 0, 1 << 20) == data
    assert sorted(os.listdir(mount.path)) == [name]  # no temporary file left behind


def test_sed_in_place_keeps_the_files_metadata(mount):
    before = a_datafile(mount)
    subprocess.run(["sed", "-i", "s/old/new/", str(mount / "data.csv")], check=True, timeout=60)
    assert_kept(mount, "data.csv", before, b"speed\n1\n2\nnew\n")


def test_an_editors_save_through_a_temporary_file_keeps_the_files_metadata(mount):
    """What gedit, VS Code, emacs (with some settings) and atomic-write libraries do."""
    before = a_datafile(mount)
    temp = mount / ".data.csv.swx"
    with open(temp, "wb") as f:
        f.write(b"speed\n1\n2\n3\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(temp, mount / "data.csv")
    assert_kept(mount, "data.csv", before, b"speed\n1\n2\n3\n")


def test_os_replace_keeps_the_files_metadata_even_once_the_new_file_is_in_the_bucket(mount):
    before = a_datafile(mount)
    fd, temp = tempfile.mkstemp(dir=mount.path, prefix=".data.csv.")
    with os.fdopen(fd, "wb") as f:
        f.write(b"speed\n4\n")
    mount.sync()  # the new file is uploaded (with an id of its own) and closed before the rename
    os.replace(temp, mount / "data.csv")
    assert_kept(mount, "data.csv", before, b"speed\n4\n")


def test_a_new_file_given_metadata_of_its_own_keeps_its_own(mount):
    a_datafile(mount)
    temp = mount / "incoming.csv"
    temp.write_bytes(b"speed\n5\n")
    os.setxattr(temp, "user.octue.labels", b"mine")
    theirs = os.getxattr(temp, "user.octue.id")
    os.replace(temp, mount / "data.csv")
    assert os.getxattr(mount / "data.csv", "user.octue.id") == theirs
    mount.sync()
    stored = mount.bucket.stat("data.csv").metadata
    assert json.loads(stored["octue__id"]) == theirs.decode()
    assert json.loads(stored["octue__labels"])["items"] == ["mine"]
    with pytest.raises(NotFound):
        mount.bucket.stat("incoming.csv")


@pytest.mark.skipif(shutil.which("vim") is None, reason="no vim")
def test_vims_own_save_keeps_the_files_metadata(mount):
    """vim's default save on this mount ('backupcopy' "auto" picks "no" here): it renames the
    original to ``data.csv~``, writes a new ``data.csv``, then deletes the backup. (Its default
    'backupskip' leaves out /tmp/*, where the test mounts: cleared so vim saves as elsewhere.)"""
    before = a_datafile(mount)
    subprocess.run(["vim", "-X", "--not-a-term", "-u", "NONE", "-i", "NONE", "-N", "-n", "-c", "set backupskip=",
                    "-c", "%s/old/new/", "-c", "wq", str(mount / "data.csv")], check=True, timeout=60,
                   stdin=subprocess.DEVNULL, capture_output=True)
    assert_kept(mount, "data.csv", before, b"speed\n1\n2\nnew\n")
