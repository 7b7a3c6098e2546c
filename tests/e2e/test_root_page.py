"""The mount keeps the first page of its root that checking the bucket listed (issue 15): right
after ``octuefs mount``, ``stat`` and ``cat`` of a file at the root send no listing, only the
read (fake-gcs-server, counted by a fault proxy with no faults); and that page is as fresh as
any listing (docs/semantics.md, "Freshness"): an object uploaded elsewhere after the mount opens
by name once --negative-ttl has passed, one deleted elsewhere is gone once --list-ttl has."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from tests.faultproxy import FaultProxy

from .conftest import wait_until

pytestmark = pytest.mark.fuse


@pytest.fixture
def counted(emulator, monkeypatch):
    """A proxy that counts the requests of the mounts made now, by kind."""
    with FaultProxy(emulator.url, seed=1) as p:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.url)
        yield p


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
    assert not os.path.exists(m / "no-such-file")
    assert (m / "top.csv").read_bytes() == data
    after = counted.counts
    assert after.get("requests_list", 0) == before.get("requests_list", 0), (before, after)
    assert after.get("requests_download", 0) > before.get("requests_download", 0)  # the read's GET
    root = ["sub", "top.csv"] if prefix else ["elsewhere.txt", "sub", "top.csv"]
    assert sorted(os.listdir(m.path)) == root  # and ls of the root: the same page
    assert counted.counts.get("requests_list", 0) == before.get("requests_list", 0)


def test_the_checks_page_is_as_fresh_as_any_listing(emulator, mount_factory):
    negative_ttl, list_ttl = 2.0, 3.0
    name, direct = _bucket_holding(emulator, {"old.txt": b"old", "gone.txt": b"deleted elsewhere"})
    started = time.monotonic()  # the check asks after this: absence holds at least until started + ttl
    m = mount_factory("--negative-ttl", str(negative_ttl), "--list-ttl", str(list_ttl), bucket=name)
    direct.upload_bytes("new.txt", b"uploaded by another program after the mount")
    direct.delete("gone.txt")
    within = not os.path.exists(m / "new.txt")  # the check's page says "not there" ...
    if time.monotonic() - started < negative_ttl:  # ... for --negative-ttl from when it asked
        assert within
    assert (m / "old.txt").read_bytes() == b"old"
    time.sleep(max(0.0, started + negative_ttl + 0.2 - time.monotonic()))
    assert wait_until(lambda: os.path.exists(m / "new.txt"), timeout=1)  # (the kernel's entry cache: 1 s)
    assert (m / "new.txt").read_bytes() == b"uploaded by another program after the mount"
    time.sleep(max(0.0, started + list_ttl + 0.2 - time.monotonic()))  # (never looked up: the kernel holds no entry)
    assert not os.path.exists(m / "gone.txt")
    assert sorted(os.listdir(m.path)) == ["new.txt", "old.txt"]
