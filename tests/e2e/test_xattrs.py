"""user.octue.* through a real mount with getfattr/setfattr and os.*xattr; the bucket is checked too."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

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
    with pytest.raises(OSError) as info:
        os.setxattr(p, "user.other", b"x")
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


def test_directories_answer_xattr_calls(mount):
    (mount / "d").mkdir()
    assert os.listxattr(mount / "d") == []
    with pytest.raises(OSError) as info:
        os.getxattr(mount / "d", "user.octue.tags")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.setxattr(mount / "d", "user.octue.tags", b"{}")
    assert info.value.errno == errno.ENOTSUP


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
