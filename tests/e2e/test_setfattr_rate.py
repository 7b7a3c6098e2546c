"""setfattr at GCS's pace: a real mount behind a proxy that answers 429 to a second change of an
object within a second (GCS's limit), as docs/semantics.md "setfattr: when a change is durable"
promises. The bucket is read with a direct client, not through the mount."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from octuefs.errors import NotFound
from octuefs.mount import read_state
from octuefs.storage.gcs import GCSBucket
from tests.conftest import EMULATOR_RETRY
from tests.faultproxy import ProxyProcess

from .conftest import force_unmount, run_octuefs

pytestmark = [pytest.mark.fuse, pytest.mark.emulator]

# The script of the issue: labels, two tags, cluster, timestamp, one file, in a row.
FIVE = [
    ("user.octue.labels", "raw qc-passed"),
    ("user.octue.tags.instrument", '"anemometer"'),
    ("user.octue.tags.height_m", "80.5"),
    ("user.octue.cluster", "3"),
    ("user.octue.timestamp", "1704067200.5"),
]


@pytest.fixture
def limited(emulator, monkeypatch):
    """A strict proxy keeping GCS's one change per object per second, in front of the session's
    emulator; mounts made after it (``rmount``) go through it."""
    upstream = getattr(emulator, "server_url", emulator.url)
    with ProxyProcess(upstream, strict=True, mutations_per_second=1.0) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        yield proxy


@pytest.fixture
def rmount(limited, mount_factory):
    return mount_factory()


@pytest.fixture
def direct(rmount, _gcs_client):
    """The mount's bucket through the session's own proxy: another machine's view and writes,
    which the rate-limiting proxy does not see."""
    return GCSBucket(rmount.bucket.name, client=_gcs_client, retry=EMULATOR_RETRY)


def saved(mount, name: str, data: bytes = b"1,2\n"):
    (mount / name).write_bytes(data)
    mount.sync()


def expect_five(metadata) -> None:
    assert json.loads(metadata["octue__labels"])["items"] == ["qc-passed", "raw"]
    assert json.loads(metadata["octue__tags"]) == {"instrument": "anemometer", "height_m": 80.5}
    assert metadata["octue__cluster"] == "3"
    assert json.loads(metadata["octue__timestamp"])["value"].startswith("2024-01-01T00:00:00.5")


def test_five_setfattrs_in_a_row_are_at_most_two_patches_none_refused_none_lost(rmount, limited, direct):
    saved(rmount, "d.csv")
    before = limited.counts
    path = rmount / "d.csv"
    script = "\n".join(f"setfattr -n {n} -v '{v}' {path} && getfattr --only-values -n {n} {path} && echo"
                       for n, v in FIVE)
    out = subprocess.run(["sh", "-ec", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shown = out.stdout.splitlines()  # each read right after its setfattr, through the mount
    assert shown[0] == "qc-passed raw" and shown[1] == "anemometer" and shown[2] == "80.5" and shown[3] == "3"
    rmount.sync()  # returns once the bucket has them
    expect_five(direct.stat("d.csv").metadata)
    after = limited.counts
    assert after.get("mutation_patch", 0) - before.get("mutation_patch", 0) <= 2
    assert after.get("429_rate", 0) == 0
    assert after.get("mutation_upload", 0) == before.get("mutation_upload", 0)  # content untouched
    assert direct.read_range("d.csv", 0, 100) == b"1,2\n"
    status = run_octuefs("status", str(rmount.path))
    assert "0 upload(s) pending" in status.stdout


def test_a_pending_setfattr_shows_in_status_and_survives_kill_9(rmount, limited, direct):
    saved(rmount, "k.csv")
    proxy_pid = limited._proc.pid
    os.kill(proxy_pid, signal.SIGSTOP)  # the bucket stops answering: the patch cannot land
    try:
        for name, value in FIVE:
            os.setxattr(rmount / "k.csv", name, value.encode())
        report = json.loads(run_octuefs("status", "--json", str(rmount.path)).stdout)
        assert [(u["name"], u["kind"]) for u in report["uploads"]] == [("k.csv", "metadata")]
        pid = int(read_state(str(rmount.path))["pid"])
        os.kill(pid, signal.SIGKILL)
        force_unmount(rmount.path)
    finally:
        os.kill(proxy_pid, signal.SIGCONT)
    run_octuefs("mount", rmount.spec, str(rmount.path), "--cache-dir", str(rmount.cache),
                "--log-file", str(rmount.log), "-vv")
    assert os.getxattr(rmount / "k.csv", "user.octue.cluster") == b"3"  # shown again at once
    rmount.sync()
    expect_five(direct.stat("k.csv").metadata)


def test_a_change_elsewhere_to_another_key_meanwhile_is_kept(rmount, direct):
    saved(rmount, "r.csv")
    os.setxattr(rmount / "r.csv", "user.octue.labels", b"mine")
    direct.patch_metadata("r.csv", {"theirs": "kept"})  # another machine, before the patch goes
    rmount.sync()
    metadata = direct.stat("r.csv").metadata
    assert metadata["theirs"] == "kept" and json.loads(metadata["octue__labels"])["items"] == ["mine"]


def test_a_setfattr_then_a_close_go_up_as_one_upload(rmount, limited, direct):
    saved(rmount, "w.csv")
    before = limited.counts
    os.setxattr(rmount / "w.csv", "user.octue.labels", b"written")
    with open(rmount / "w.csv", "ab") as f:
        f.write(b"3,4\n")
    rmount.sync()
    info = direct.stat("w.csv")
    assert direct.read_range("w.csv", 0, 100) == b"1,2\n3,4\n"
    assert json.loads(info.metadata["octue__labels"])["items"] == ["written"]
    after = limited.counts
    # One upload carries both (unless the close came after the patch had gone: then one each).
    uploads = after.get("mutation_upload", 0) - before.get("mutation_upload", 0)
    patches = after.get("mutation_patch", 0) - before.get("mutation_patch", 0)
    assert uploads == 1 and patches <= 1


def test_a_rename_right_after_a_setfattr_carries_it(rmount, limited, direct):
    saved(rmount, "old.csv")
    refused = limited.counts.get("429_rate", 0)
    os.setxattr(rmount / "old.csv", "user.octue.labels", b"moved")
    os.rename(rmount / "old.csv", rmount / "new.csv")
    assert os.getxattr(rmount / "new.csv", "user.octue.labels") == b"moved"
    rmount.sync()
    with pytest.raises(NotFound):
        direct.stat("old.csv")
    assert json.loads(direct.stat("new.csv").metadata["octue__labels"])["items"] == ["moved"]
    assert limited.counts.get("429_rate", 0) == refused  # the delete waited for GCS's pace after the patch


def test_unlink_right_after_a_setfattr_drops_it(rmount, limited, direct):
    saved(rmount, "gone.csv")
    before = limited.counts
    os.setxattr(rmount / "gone.csv", "user.octue.labels", b"never")
    os.unlink(rmount / "gone.csv")
    rmount.sync()
    assert not (rmount / "gone.csv").exists()
    after = limited.counts
    assert after.get("mutation_patch", 0) == before.get("mutation_patch", 0)  # not sent: moot
    with pytest.raises(NotFound):
        direct.stat("gone.csv")
