"""The mount keeps the first page of its root that checking the bucket listed (issue 15): right
after ``octuefs mount``, ``stat`` and ``cat`` of a file at the root send no listing, only the
read (fake-gcs-server, counted by a fault proxy with no faults). What the page shows is believed
as a listing's names are (docs/semantics.md, "Freshness"): an object deleted elsewhere is gone
once --list-ttl has passed; what it does not show is asked for: an object uploaded elsewhere
right after the mount opens at once, and ``ls`` lists."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from .conftest import force_unmount, run_octuefs, wait_until

pytestmark = pytest.mark.fuse


def _bucket_holding(emulator, objects: dict[str, bytes]) -> tuple[str, object]:
    from octuefs.storage.gcs import GCSBucket

    name = f"e2e-root-{uuid.uuid4().hex[:10]}"
    emulator.create_bucket(name)
    direct = GCSBucket(name, endpoint=emulator.url)  # (past the proxy: not counted)
    for key, data in objects.items():
        direct.upload_bytes(key, data)
    return name, direct


def _settled(proxy) -> dict[str, int]:
    """The proxy's counts once the mount's start-up requests (the check's connections) are in."""
    last: list[dict[str, int]] = [{}]

    def still() -> bool:
        now = dict(proxy.counts)
        same, last[0] = now == last[0], now
        return same

    wait_until(still, timeout=5, interval=0.2)
    return last[0]


@pytest.mark.parametrize("prefix", ["", "some/prefix"])
def test_right_after_mounting_stat_and_cat_of_a_root_file_send_no_listing(counted, emulator, mount_factory, prefix):
    at = prefix + "/" if prefix else ""
    data = b"a,b\n1,2\n" * 100
    name, _direct = _bucket_holding(emulator, {f"{at}top.csv": data, f"{at}sub/inner.txt": b"x",
                                               "elsewhere.txt": b"in the mount of the whole bucket only"})
    m = mount_factory(bucket=name, prefix=prefix)
    before = _settled(counted)
    assert os.stat(m / "top.csv").st_size == len(data)
    assert os.path.isdir(m / "sub")
    assert (m / "top.csv").read_bytes() == data
    after = counted.counts
    assert after.get("requests_list", 0) == before.get("requests_list", 0), (before, after)
    assert after.get("requests_download", 0) > before.get("requests_download", 0)  # the read's GET
    assert (m / "sub/inner.txt").read_bytes() == b"x"
    root = ["sub", "top.csv"] if prefix else ["elsewhere.txt", "sub", "top.csv"]
    assert sorted(os.listdir(m.path)) == root


def test_an_object_uploaded_elsewhere_right_after_the_mount_opens_by_name_at_once(emulator, mount_factory):
    """A name the check's page does not show is asked for, as on a mount without it: the page
    is no "does not exist"."""
    name, direct = _bucket_holding(emulator, {"old.txt": b"old"})
    m = mount_factory(bucket=name)
    direct.upload_bytes("new.txt", b"uploaded by another program after the mount")
    direct.upload_bytes("newdir/f", b"and a directory")
    assert (m / "new.txt").read_bytes() == b"uploaded by another program after the mount"
    assert (m / "newdir/f").read_bytes() == b"and a directory"
    assert sorted(os.listdir(m.path)) == ["new.txt", "newdir", "old.txt"]


def test_a_root_object_deleted_elsewhere_right_after_the_mount_is_gone_once_list_ttl_has_passed(emulator,
                                                                                               mount_factory):
    """What the check's page shows is believed as a listing's names are, --list-ttl, no longer."""
    list_ttl = 1.0
    name, direct = _bucket_holding(emulator, {"gone.txt": b"deleted elsewhere", "d/gone": b"and a directory"})
    m = mount_factory("--list-ttl", str(list_ttl), bucket=name)
    started = time.monotonic()  # (the check asked before this)
    direct.delete("gone.txt")
    direct.delete("d/gone")
    time.sleep(max(0.0, started + list_ttl + 0.1 - time.monotonic()))
    assert not os.path.exists(m / "gone.txt")  # (never looked up before: the kernel holds no entry)
    assert not os.path.exists(m / "d")



def test_mounting_checks_the_bucket_once(counted, emulator, tmp_path):
    """The command leaves the bucket's check to the daemon, whose one-line error it shows
    (tests/e2e/test_cli.py): a mount lists the bucket once (the root's first page), besides the
    one-object listings that open its connections, not once more from the command. (A verbose
    command, as the other tests' mounts are, checks it itself too, for its terminal.)"""
    from octuefs.mount import WARM_CONNECTIONS

    name, _direct = _bucket_holding(emulator, {"a.txt": b"a"})
    mp = tmp_path / "mp"
    mp.mkdir()
    try:
        run_octuefs("mount", name, str(mp), "--cache-dir", str(tmp_path / "cache"), "--log-file",
                    str(tmp_path / "octuefs.log"))
        counts = _settled(counted)
        assert counts.get("requests_list", 0) == 1 + WARM_CONNECTIONS, counts
        assert (mp / "a.txt").read_bytes() == b"a"
    finally:
        run_octuefs("unmount", str(mp), check=False, timeout=60)
        force_unmount(mp)
