"""user.octue.*, user.gcs.* and other user.* attributes through a real mount with getfattr/setfattr, cp and
os.*xattr; a directory's dataset attributes (DIR/.octue), read back by the real Octue SDK; a file's
user.octuefs.state. The bucket is checked too."""

from __future__ import annotations

import errno
import json
import os
import shlex
import subprocess
import time

import pytest

from tests.faultproxy import FaultProxy
from tests.integration.test_sdk_parity import sdk, sdk_python  # noqa: F401  (the real SDK, in its own venv)

from .conftest import run_octuefs

# Custom metadata byte-for-byte as the Octue SDK (0.69.1) writes it.
SDK_METADATA = {
    "octue__id": '"02464c6f-0070-50ca-8a9b-ba1af5456601"',
    "octue__timestamp": '{"_type": "datetime", "value": "2024-01-01T00:00:00.123456+00:00"}',
    "octue__tags": '{"instrument": "anemometer", "height_m": 80.5, "calibrated": true}',
    "octue__labels": '{"_type": "set", "items": ["qc-passed", "raw"]}',
    "octue__sdk_version": '"0.69.1"',
}


def getfattr_dump(path) -> dict[str, str]:
    out = subprocess.run(["getfattr", "-d", "--absolute-names", str(path)], capture_output=True, text=True, check=True)
    values = {}
    for line in out.stdout.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = json.loads(value) if value.startswith('"') else value
    return values


def setfattr(path, name: str, value: str | None = None, remove: bool = False) -> subprocess.CompletedProcess:
    cmd = ["setfattr", "-x", name, str(path)] if remove else ["setfattr", "-n", name, "-v", value, str(path)]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_sdk_written_objects_show_their_metadata(mount):
    mount.bucket.upload_bytes("path/to/data.csv", b"1,2\n", SDK_METADATA)
    values = getfattr_dump(mount / "path/to/data.csv")
    assert values["user.octue.id"] == "02464c6f-0070-50ca-8a9b-ba1af5456601"
    assert values["user.octue.timestamp"] == "1704067200.123456"
    assert json.loads(values["user.octue.tags"]) == {"instrument": "anemometer", "height_m": 80.5, "calibrated": True}
    assert values["user.octue.tags.instrument"] == "anemometer"
    assert values["user.octue.tags.height_m"] == "80.5"
    assert values["user.octue.labels"] == "qc-passed raw"
    assert values["user.octue.cluster"] == "0"
    assert "user.octue.sequence" not in values


def test_setfattr_is_update_cloud_metadata(mount):
    mount.bucket.upload_bytes("d.csv", b"content", {**SDK_METADATA, "someone-else": "kept"})
    before = mount.bucket.stat("d.csv")
    assert setfattr(mount / "d.csv", "user.octue.labels", "new cleaned").returncode == 0
    assert setfattr(mount / "d.csv", "user.octue.tags.site", "Dogger Bank").returncode == 0
    assert setfattr(mount / "d.csv", "user.octue.sequence", "3").returncode == 0
    assert os.getxattr(mount / "d.csv", "user.octue.labels") == b"cleaned new"  # shown at once
    mount.sync()  # in the bucket within about a second; sync waits for it
    after = mount.bucket.stat("d.csv")
    assert (after.md5, after.crc32c, after.size) == (before.md5, before.crc32c, before.size)
    assert mount.bucket.read_range("d.csv", 0, 100) == b"content"
    assert after.metadata["octue__labels"] == '{"_type": "set", "items": ["cleaned", "new"]}'
    assert json.loads(after.metadata["octue__tags"])["site"] == "Dogger Bank"
    assert after.metadata["octue__sequence"] == "3"
    assert after.metadata["octue__id"] == SDK_METADATA["octue__id"]  # an existing id is kept forever
    assert after.metadata["someone-else"] == "kept"
    # Changes show at once through the mount.
    assert os.getxattr(mount / "d.csv", "user.octue.labels") == b"cleaned new"


def test_removing_attributes(mount):
    mount.bucket.upload_bytes("r.csv", b"x", SDK_METADATA)
    assert setfattr(mount / "r.csv", "user.octue.tags.height_m", remove=True).returncode == 0
    mount.sync()
    assert json.loads(mount.bucket.stat("r.csv").metadata["octue__tags"]) == {
        "instrument": "anemometer", "calibrated": True}
    with pytest.raises(OSError) as info:
        os.getxattr(mount / "r.csv", "user.octue.tags.height_m")
    assert info.value.errno == errno.ENODATA


def test_a_bad_value_is_einval_logged_and_changes_nothing(mount):
    mount.bucket.upload_bytes("b.csv", b"x", SDK_METADATA)
    before = mount.bucket.stat("b.csv")
    result = setfattr(mount / "b.csv", "user.octue.labels", "Bad_Label!")
    assert result.returncode != 0 and "Invalid argument" in result.stderr
    with pytest.raises(OSError) as info:
        os.setxattr(mount / "b.csv", "user.octue.tags", b"[1, 2]")
    assert info.value.errno == errno.EINVAL
    after = mount.bucket.stat("b.csv")
    assert dict(after.metadata) == dict(before.metadata)
    assert "label" in mount.log_text() and "WARNING" in mount.log_text()


def test_flags_and_errors_from_python(mount):
    p = mount / "f.csv"
    p.write_bytes(b"x")
    os.setxattr(p, "user.octue.sequence", b"1", os.XATTR_CREATE)
    with pytest.raises(OSError) as info:
        os.setxattr(p, "user.octue.sequence", b"2", os.XATTR_CREATE)
    assert info.value.errno == errno.EEXIST
    os.setxattr(p, "user.octue.sequence", b"2", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.octue.sequence") == b"2"
    with pytest.raises(OSError) as info:
        os.getxattr(p, "user.nothing")
    assert info.value.errno == errno.ENODATA
    os.setxattr(p, "user.other", b"x", os.XATTR_CREATE)  # other user.* names are kept (custom metadata)
    with pytest.raises(OSError) as info:
        os.setxattr(p, "user.other", b"y", os.XATTR_CREATE)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(OSError) as info:
        os.setxattr(p, "user.another", b"y", os.XATTR_REPLACE)
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:  # outside user.* nothing is kept
        os.setxattr(p, "security.octuefs", b"x")
    assert info.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as info:
        os.setxattr(p, "user.octue.id", b"x")
    assert info.value.errno == errno.EPERM
    assert "user.octue.sequence" in os.listxattr(p)


def test_setfattr_on_a_file_being_written_goes_up_with_its_data(mount):
    p = mount / "w.csv"
    with open(p, "wb") as f:
        f.write(b"part 1")
        f.flush()
        os.setxattr(p, "user.octue.labels", b"draft")
        f.write(b", part 2")
    mount.sync()
    info = mount.bucket.stat("w.csv")
    assert mount.bucket.read_range("w.csv", 0, 100) == b"part 1, part 2"
    assert json.loads(info.metadata["octue__labels"])["items"] == ["draft"]


def test_gcs_facts(mount):
    (mount / "g.txt").write_bytes(b"hello")
    mount.sync()
    assert os.getxattr(mount / "g.txt", "user.gcs.md5") == b"5d41402abc4b2a76b9719d911017c592"
    os.setxattr(mount / "g.txt", "user.gcs.content_type", b"text/plain")
    assert mount.bucket.stat("g.txt").content_type == "text/plain"


def test_values_over_the_gcs_limits_are_refused_with_e2big(mount):
    mount.bucket.upload_bytes("big.csv", b"x", SDK_METADATA)
    before = dict(mount.bucket.stat("big.csv").metadata)
    with pytest.raises(OSError) as info:
        os.setxattr(mount / "big.csv", "user.octue.tags.blob", ("y" * 5000).encode())
    assert info.value.errno == errno.E2BIG
    assert dict(mount.bucket.stat("big.csv").metadata) == before


# --- other user.* attributes, and copying files with their attributes (issue 13, part 7) -----

USER_KEY = "octuefs.user."  # the custom-metadata key prefix of other user.* attributes


def stored_user_keys(mount, name: str) -> dict[str, str]:
    """The object's user-attribute keys; "" is how fake-gcs-server keeps a deleted key."""
    return {k: v for k, v in mount.bucket.stat(name).metadata.items() if k.startswith(USER_KEY) and v != ""}


def test_other_user_attributes_are_custom_metadata_listed_and_removable(mount):
    mount.bucket.upload_bytes("u.csv", b"content", {**SDK_METADATA, "someone-else": "kept"})
    before = mount.bucket.stat("u.csv")
    assert setfattr(mount / "u.csv", "user.myown", "x").returncode == 0
    assert setfattr(mount / "u.csv", "user.xdg.origin.url", "https://example.org/u.csv").returncode == 0
    values = getfattr_dump(mount / "u.csv")
    assert values["user.myown"] == "x" and values["user.xdg.origin.url"] == "https://example.org/u.csv"
    assert values["user.octue.id"] == "02464c6f-0070-50ca-8a9b-ba1af5456601"
    mount.sync()
    after = mount.bucket.stat("u.csv")
    assert stored_user_keys(mount, "u.csv") == {USER_KEY + "myown": "x",
                                                 USER_KEY + "xdg.origin.url": "https://example.org/u.csv"}
    assert {k: v for k, v in after.metadata.items() if not k.startswith(USER_KEY)} == dict(before.metadata)
    assert (after.md5, after.size) == (before.md5, before.size)

    assert setfattr(mount / "u.csv", "user.myown", remove=True).returncode == 0
    mount.sync()
    assert stored_user_keys(mount, "u.csv") == {USER_KEY + "xdg.origin.url": "https://example.org/u.csv"}
    with pytest.raises(OSError) as info:
        os.getxattr(mount / "u.csv", "user.myown")
    assert info.value.errno == errno.ENODATA
    assert "user.myown" not in os.listxattr(mount / "u.csv")


def test_user_attributes_hold_any_bytes(mount):
    p = mount / "b.bin"
    p.write_bytes(b"x")
    values = {"user.binary": b"\x00\xff\xfe", "user.empty": b"", "user.lines": b"a\nb",
              "user.marker": b"base64:AAAA", "user.text": "caf\u00e9".encode()}
    for name, value in values.items():
        os.setxattr(p, name, value)
    mount.sync()
    for name, value in values.items():
        assert os.getxattr(p, name) == value
    stored = stored_user_keys(mount, "b.bin")
    assert stored[USER_KEY + "text"] == "caf\u00e9"  # printable text is kept as it is
    assert stored[USER_KEY + "binary"] == "base64:AP/+"  # anything else as base64 with a marker
    assert stored[USER_KEY + "empty"] == "base64:"
    # A name that cannot be a metadata key is EINVAL, logged, and changes nothing.
    with pytest.raises(OSError) as info:
        os.setxattr(p, "user.tab\there", b"x")
    assert info.value.errno == errno.EINVAL
    assert "printable" in mount.log_text()
    assert stored_user_keys(mount, "b.bin") == stored


def test_user_attributes_are_kept_through_writes_and_renames(mount):
    p = mount / "w.csv"
    p.write_bytes(b"one")
    os.setxattr(p, "user.myown", b"kept")
    with open(p, "ab") as f:  # a write-back upload of new content
        f.write(b", two")
        f.flush()
        os.setxattr(p, "user.during", b"write")  # joins the pending upload
        f.write(b", three")
    mount.sync()
    assert mount.bucket.read_range("w.csv", 0, 100) == b"one, two, three"
    assert stored_user_keys(mount, "w.csv") == {USER_KEY + "myown": "kept", USER_KEY + "during": "write"}
    os.rename(p, mount / "moved.csv")
    mount.sync()
    assert stored_user_keys(mount, "moved.csv") == {USER_KEY + "myown": "kept", USER_KEY + "during": "write"}
    assert os.getxattr(mount / "moved.csv", "user.myown") == b"kept"


def test_setting_a_read_only_attribute_to_its_value_is_a_no_op(mount):
    mount.bucket.upload_bytes("r.csv", b"content", SDK_METADATA)
    before = mount.bucket.stat("r.csv")
    p = mount / "r.csv"
    for name in ("user.octue.id", "user.gcs.generation", "user.gcs.md5", "user.gcs.crc32c", "user.gcs.storage_class"):
        os.setxattr(p, name, os.getxattr(p, name))
    for name, value in (("user.octue.id", b"5a1f2f3e-0000-4000-8000-000000000000"), ("user.gcs.generation", b"1"),
                        ("user.gcs.md5", b"00")):
        with pytest.raises(OSError) as info:
            os.setxattr(p, name, value)
        assert info.value.errno == errno.EPERM, name
    after = mount.bucket.stat("r.csv")
    assert (after.generation, after.metageneration, dict(after.metadata)) == \
        (before.generation, before.metageneration, dict(before.metadata))


def _cp(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["cp", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("how", [["--preserve=xattr"], ["-a"]])
def test_cp_within_the_mount_keeps_the_attributes(mount, how):
    mount.bucket.upload_bytes("src.csv", b"1,2\n", SDK_METADATA)
    os.setxattr(mount / "src.csv", "user.myown", b"mine")
    os.setxattr(mount / "src.csv", "user.gcs.content_type", b"text/csv")
    src = getfattr_dump(mount / "src.csv")
    result = _cp(*how, mount / "src.csv", mount / "dst.csv")
    assert result.returncode == 0, result.stderr
    mount.sync()
    dst = getfattr_dump(mount / "dst.csv")
    for name, value in src.items():
        if not name.startswith("user.gcs.") or name == "user.gcs.content_type":
            assert dst.get(name) == value, name  # the copy keeps the Datafile's id, as gcloud storage cp does
    info = mount.bucket.stat("dst.csv")
    assert info.metadata[USER_KEY + "myown"] == "mine"
    assert info.metadata["octue__id"] == SDK_METADATA["octue__id"]
    assert json.loads(info.metadata["octue__tags"]) == json.loads(SDK_METADATA["octue__tags"])
    assert info.content_type == "text/csv"
    assert mount.bucket.read_range("dst.csv", 0, 100) == b"1,2\n"


@pytest.mark.parametrize("how", [["--preserve=xattr"], ["-a"]])
def test_cp_from_a_local_disk_keeps_the_attributes(mount, tmp_path, how):
    local = tmp_path / "local.csv"
    local.write_bytes(b"a,b\n")
    os.setxattr(local, "user.myown", b"from disk")
    os.setxattr(local, "user.binary", b"\x00\x01\xff")
    result = _cp(*how, local, mount / "in.csv")
    assert result.returncode == 0, result.stderr
    assert os.getxattr(mount / "in.csv", "user.myown") == b"from disk"
    assert os.getxattr(mount / "in.csv", "user.binary") == b"\x00\x01\xff"
    mount.sync()
    assert stored_user_keys(mount, "in.csv") == {USER_KEY + "myown": "from disk", USER_KEY + "binary": "base64:AAH/"}
    # And back: the copy on the local disk has the same user attributes.
    back = tmp_path / "back.csv"
    assert _cp(*how, mount / "in.csv", back).returncode == 0
    assert os.getxattr(back, "user.myown") == b"from disk"


def test_user_attributes_beyond_the_gcs_limits_are_e2big_and_change_nothing(mount):
    mount.bucket.upload_bytes("big.csv", b"x", SDK_METADATA)
    p = mount / "big.csv"
    with pytest.raises(OSError) as info:  # one value over 4 KiB
        os.setxattr(p, "user.blob", b"y" * 5000)
    assert info.value.errno == errno.E2BIG
    for i in range(2):  # 2 x 3.5 KiB fit beside the Octue keys...
        os.setxattr(p, f"user.part{i}", b"z" * 3500)
    before = mount.bucket.stat("big.csv")
    with pytest.raises(OSError) as info:  # ...a third passes the 8 KiB of the whole custom metadata
        os.setxattr(p, "user.part2", b"z" * 3500)
    assert info.value.errno == errno.E2BIG
    after = mount.bucket.stat("big.csv")
    assert (after.metageneration, after.generation, dict(after.metadata)) == \
        (before.metageneration, before.generation, dict(before.metadata))
    assert "user.part2" not in os.listxattr(p)
    assert "8192 bytes of custom metadata" in mount.log_text()
    # The same on a file being written: refused at once, not when its upload is sent.
    with open(mount / "new.csv", "wb") as f:
        f.write(b"data")
        os.setxattr(mount / "new.csv", "user.part0", b"z" * 3500)
        os.setxattr(mount / "new.csv", "user.part1", b"z" * 3500)
        with pytest.raises(OSError) as info:
            os.setxattr(mount / "new.csv", "user.part2", b"z" * 3500)
        assert info.value.errno == errno.E2BIG
    mount.sync()
    assert set(stored_user_keys(mount, "new.csv")) == {USER_KEY + "part0", USER_KEY + "part1"}


def test_user_attributes_go_with_a_conflict_copy(mount):
    mount.bucket.upload_bytes("shared.csv", b"version 1", {USER_KEY + "origin": "kept"})
    with open(mount / "shared.csv", "r+b") as f:
        assert f.read() == b"version 1"
        mount.bucket.upload_bytes("shared.csv", b"their version 2")  # another machine, meanwhile
        f.seek(0)
        f.write(b"my version 2")
        f.flush()
        os.setxattr(mount / "shared.csv", "user.note", b"mine")  # goes with the unsaved data
    run_octuefs("sync", str(mount.path), check=False)  # it may say there was a conflict
    [copy] = [o.name for o in mount.bucket.list_all("")[0] if o.name.startswith("shared.octuefs-conflict-")]
    assert mount.bucket.read_range(copy, 0, 100) == b"my version 2"
    assert stored_user_keys(mount, copy) == {USER_KEY + "origin": "kept", USER_KEY + "note": "mine"}
    assert stored_user_keys(mount, "shared.csv") == {}  # theirs, untouched


# --- directories are datasets (DIR/.octue) --------------------------------------------------------


def test_a_directory_shows_the_dataset_the_sdk_uploaded(mount, sdk_python, tmp_path):
    (tmp_path / "wind").mkdir()
    *_, theirs = sdk(sdk_python, tmp_path,
                     dict(op="write", path="wind/a.csv", content="1", tags={"by": "sdk"}, labels=["raw"]),
                     dict(op="dataset_upload", path="wind", cloud_path=f"gs://{mount.bucket.name}/data/wind",
                          tags={"project": "octuefs", "version": 2}, labels=["dataset", "example"]))
    values = getfattr_dump(mount / "data/wind")
    assert values == {"user.octue.id": theirs["id"], "user.octue.name": "wind",
                      "user.octue.tags": '{"project": "octuefs", "version": 2}',
                      "user.octue.tags.project": "octuefs", "user.octue.tags.version": "2",
                      "user.octue.labels": "dataset example"}
    assert getfattr_dump(mount / "data") == {}  # no .octue: no attributes
    with pytest.raises(OSError) as info:
        os.getxattr(mount / "data", "user.octue.id")
    assert info.value.errno == errno.ENODATA


def test_setfattr_on_a_directory_is_read_back_by_the_sdk(mount, sdk_python, tmp_path):
    (mount / "runs").mkdir()
    (mount / "runs/r1.csv").write_text("1,2\n")
    assert setfattr(mount / "runs", "user.octue.labels", "Raw checked").returncode == 0
    assert setfattr(mount / "runs", "user.octue.tags.height_m", "80.5").returncode == 0
    assert setfattr(mount / "runs", "user.octue.name", "first runs").returncode == 0
    # Written at once: the bucket holds it when setfattr returns, in the SDK's very layout.
    info = mount.bucket.stat("runs/.octue")
    assert dict(info.metadata) == {} and info.content_type == "text/plain"
    record = json.loads(mount.bucket.read_range("runs/.octue", 0, info.size))
    assert list(record) == ["dataset"] and list(record["dataset"]) == ["id", "name", "tags", "labels", "path"]
    assert record["dataset"]["path"] == f"gs://{mount.bucket.name}/runs"
    mount.sync()
    (theirs,) = sdk(sdk_python, tmp_path, dict(op="dataset", path=f"gs://{mount.bucket.name}/runs"))
    shown = getfattr_dump(mount / "runs")
    assert (theirs["id"], theirs["name"], theirs["tags"], theirs["labels"]) == (
        shown["user.octue.id"], "first runs", {"height_m": 80.5}, ["checked", "raw"])
    assert list(theirs["files"]) == [f"gs://{mount.bucket.name}/runs/r1.csv"]  # the record is no file of it


def test_a_directorys_bad_values_are_einval_logged_and_change_nothing(mount):
    mount.bucket.upload_bytes("ds/a.csv", b"1")
    assert setfattr(mount / "ds", "user.octue.labels", "ok").returncode == 0
    before = mount.bucket.stat("ds/.octue")
    for name, value in (("user.octue.labels", "bad_label!"), ("user.octue.tags", "[1]"), ("user.octue.name", "")):
        with pytest.raises(OSError) as info:
            os.setxattr(mount / "ds", name, value.encode())
        assert info.value.errno == errno.EINVAL, name
    with pytest.raises(OSError) as info:
        os.setxattr(mount / "ds", "user.octue.id", b"2464c6f0-0070-50ca-8a9b-ba1af5456601")
    assert info.value.errno == errno.EPERM
    assert mount.bucket.stat("ds/.octue").generation == before.generation
    assert "invalid labels" in mount.log_text()


def test_a_rewrite_of_the_record_elsewhere_after_the_mount_read_it_is_not_overwritten(mount):
    bucket = mount.bucket
    bucket.upload_bytes("ds/a.csv", b"1")
    assert setfattr(mount / "ds", "user.octue.labels", "mine").returncode == 0
    assert getfattr_dump(mount / "ds")["user.octue.labels"] == "mine"  # read, and cached for --list-ttl
    # Another client rewrites it meanwhile (a label added, as the SDK's update_cloud_metadata would).
    record = json.loads(bucket.read_range("ds/.octue", 0, 10_000))["dataset"]
    record["labels"] = ["mine", "theirs"]
    bucket.upload_bytes("ds/.octue", json.dumps({"dataset": record}).encode(), {}, content_type="text/plain")
    assert setfattr(mount / "ds", "user.octue.tags.site", "north").returncode == 0
    after = json.loads(bucket.read_range("ds/.octue", 0, 10_000))["dataset"]
    assert after["labels"] == ["mine", "theirs"] and after["tags"] == {"site": "north"}
    assert after["id"] == record["id"]
    assert "changed in the bucket meanwhile" in mount.log_text()


def test_directories_answer_xattr_calls_as_datasets(mount):
    (mount / "d").mkdir()
    assert os.listxattr(mount / "d") == []
    with pytest.raises(OSError) as info:
        os.setxattr(mount / "d", "user.octue.timestamp", b"0")  # a dataset has no timestamp
    assert info.value.errno == errno.ENOTSUP
    assert os.listdir(mount / "d") == []  # nothing was written


# --- user.octuefs.state ------------------------------------------------------------------------------



def state_of(path) -> tuple[str, dict[str, str]]:
    word, *fields = shlex.split(os.getxattr(path, "user.octuefs.state").decode())
    return word, dict(f.split("=", 1) for f in fields)


def test_state_is_not_saved_while_uploads_fail_then_saved(emulator, monkeypatch, mount_factory):
    """(Each attempt retries 503s for 30 s before the queue counts it and notes its error: the
    unit tests check attempts and errors; here, that the state never says saved too soon.)"""
    with FaultProxy(emulator.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        m = mount_factory()
        proxy.set_faults({"503": 1.0}, only=("upload",))
        (m / "a.csv").write_bytes(b"1,2\n")
        for _ in range(10):  # answered from memory while every upload fails
            word, fields = state_of(m / "a.csv")
            assert word in ("pending", "uploading") and fields["kind"] == "upload", (word, fields)
            time.sleep(0.1)
        assert proxy.counts.get("503", 0) >= 1
        # getfattr -d does not show it (nor would cp --preserve=xattr copy it); -n does.
        assert "user.octuefs.state" not in getfattr_dump(m / "a.csv")
        shown = subprocess.run(["getfattr", "-n", "user.octuefs.state", "--only-values", str(m / "a.csv")],
                               capture_output=True, text=True)
        assert shown.stdout.startswith(("pending kind=upload", "uploading kind=upload"))
        proxy.heal()
        m.sync()
        assert state_of(m / "a.csv") == ("saved", {})
        assert m.bucket.read_range("a.csv", 0, 100) == b"1,2\n"
        for args in (["-n", "user.octuefs.state", "-v", "saved"], ["-x", "user.octuefs.state"]):
            done = subprocess.run(["setfattr", *args, str(m / "a.csv")], capture_output=True, text=True)
            assert done.returncode != 0 and "Operation not permitted" in done.stderr


def test_state_of_a_setfattr_waiting_to_be_sent_is_pending_metadata(mount):
    mount.bucket.upload_bytes("m.csv", b"x")
    assert state_of(mount / "m.csv") == ("saved", {})
    assert setfattr(mount / "m.csv", "user.octue.labels", "raw").returncode == 0
    assert state_of(mount / "m.csv")[0:1] == ("pending",) and state_of(mount / "m.csv")[1]["kind"] == "metadata"
    mount.sync()
    assert state_of(mount / "m.csv") == ("saved", {})


def test_state_of_a_conflict_names_where_the_local_version_went(mount):
    bucket = mount.bucket
    bucket.upload_bytes("sub/shared.csv", b"version 1")
    with open(mount / "sub/shared.csv", "r+b") as f:
        assert f.read() == b"version 1"
        bucket.upload_bytes("sub/shared.csv", b"their version 2")  # another machine, meanwhile
        f.seek(0)
        f.write(b"my version 2")
    mount.sync()
    word, fields = state_of(mount / "sub/shared.csv")
    assert word == "conflict"
    assert (mount / "sub" / fields["saved-as"]).read_bytes() == b"my version 2"
    assert fields["url"] == f"gs://{bucket.name}/sub/{fields['saved-as']}"
    assert (mount / "sub/shared.csv").read_bytes() == b"their version 2"


def test_cp_a_of_a_dataset_directory_within_the_mount_keeps_its_dataset(mount):
    record = {"dataset": {"id": "c59e22eb-fea9-5c80-80bb-845be985c70e", "name": "example-dataset",
                          "tags": {"project": "octuefs"}, "labels": ["dataset"], "path": f"gs://{mount.bucket.name}/ds"}}
    mount.bucket.upload_bytes("ds/.octue", json.dumps(record).encode(), {}, content_type="text/plain")
    mount.bucket.upload_bytes("ds/a.csv", b"1,2\n")
    done = _cp("-a", str(mount / "ds"), str(mount / "ds2"))
    assert done.returncode == 0, done.stderr
    mount.sync()
    assert getfattr_dump(mount / "ds2") == getfattr_dump(mount / "ds")
    assert (mount / "ds2/a.csv").read_bytes() == b"1,2\n"
    copied = json.loads(mount.bucket.read_range("ds2/.octue", 0, 10_000))["dataset"]
    assert copied["path"] == f"gs://{mount.bucket.name}/ds2"  # cp set the directory's attributes: its own path
