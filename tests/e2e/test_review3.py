"""Review 3 of issue 15 (distance), on real mounts: GCS's one change per object per second."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .test_setfattr_rate import direct, limited, rmount  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.fuse, pytest.mark.emulator]


def test_a_setfattr_synced_right_after_a_rename_meets_no_429(rmount, limited, direct):  # noqa: F811
    """mv raw.csv data.csv && setfattr ... data.csv && octuefs sync: the rename's copy made
    data.csv a moment ago; the patch that sync hastens must still keep GCS's pace."""
    direct.upload_bytes("raw.csv", b"1,2\n")  # (by another machine: the proxy has not seen it change)
    refused = limited.counts.get("429_rate", 0)
    script = (f"mv {rmount / 'raw.csv'} {rmount / 'data.csv'} && "
              f"setfattr -n user.octue.tags.x -v 1 {rmount / 'data.csv'}")
    out = subprocess.run(["sh", "-ec", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rmount.sync()
    assert json.loads(direct.stat("data.csv").metadata["octue__tags"]) == {"x": 1}
    assert limited.counts.get("429_rate", 0) == refused


def test_mv_of_a_file_just_uploaded_meets_no_429(rmount, limited, direct):  # noqa: F811
    (rmount / "raw.csv").write_bytes(b"1,2\n")
    rmount.sync()  # in the bucket: uploaded a moment ago
    refused = limited.counts.get("429_rate", 0)
    out = subprocess.run(["mv", str(rmount / "raw.csv"), str(rmount / "data.csv")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert direct.read_range("data.csv", 0, 4) == b"1,2\n"
    assert limited.counts.get("429_rate", 0) == refused


def test_rm_of_a_file_just_uploaded_meets_no_429(rmount, limited, direct):  # noqa: F811
    (rmount / "gone.csv").write_bytes(b"1,2\n")
    rmount.sync()  # in the bucket: uploaded a moment ago
    refused = limited.counts.get("429_rate", 0)
    os.unlink(rmount / "gone.csv")
    assert not direct.list_all("gone.csv")[0]
    assert limited.counts.get("429_rate", 0) == refused


def _eventually(predicate, limit=30.0):
    import time
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_two_prefix_mounts_see_each_others_creates_and_never_resurrect_their_own_unlinks(mount_factory):
    a = mount_factory("--negative-ttl", "0.3", prefix="p q")
    b = mount_factory("--negative-ttl", "0.3", "--list-ttl", "1", prefix="p q", bucket=a.bucket.name)
    odd = "n\u00e9w f!le #1.csv"
    (a.path / "d").mkdir()
    for i in range(5):
        (a.path / "d" / f"x{i}").write_bytes(b"x")
    a.sync()
    assert sorted(p.name for p in (b.path / "d").iterdir()) == [f"x{i}" for i in range(5)]
    assert not (a.path / "d" / odd).exists()  # believed absent for a moment
    (b.path / "d" / odd).write_bytes(b"from b")
    b.sync()
    assert _eventually(lambda: (a.path / "d" / odd).exists())  # a create elsewhere shows by name
    assert (a.path / "d" / odd).read_bytes() == b"from b"
    for i in range(5):  # a's own unlinks, each followed by listings and lookups
        (a.path / "d" / f"x{i}").unlink()
        assert f"x{i}" not in [p.name for p in (a.path / "d").iterdir()]
        assert not (a.path / "d" / f"x{i}").exists()
    (a.path / "d" / "mine").write_bytes(b"mine")  # a's own create, not yet uploaded perhaps
    assert (a.path / "d" / "mine").read_bytes() == b"mine"
    assert sorted(p.name for p in (a.path / "d").iterdir()) == sorted([odd, "mine"])
    a.sync()
    assert _eventually(lambda: sorted(p.name for p in (b.path / "d").iterdir()) == sorted([odd, "mine"]))
    assert a.bucket.read_range("p q/d/mine", 0, 4) == b"mine"


def test_three_streams_through_a_small_cache_and_cut_downloads_read_exact_bytes(emulator, monkeypatch, mount_factory):
    import hashlib
    import os
    import threading

    from octuefs.storage.gcs import GCSBucket
    from tests.faultproxy import FaultProxy

    with FaultProxy(emulator.url, seed=3) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        m = mount_factory("--cache-size", "16M")
        direct = GCSBucket(m.bucket.name, endpoint=emulator.url)
        blobs = {f"s{i}.bin": os.urandom(40 * 1024 * 1024 + 12345 * i) for i in range(3)}
        for name, data in blobs.items():
            direct.upload_bytes(name, data)
        proxy.set_faults({"reset_after": 0.15, "503": 0.1}, only=("download",))
        got, errors = {}, []

        def stream(name):
            try:
                h = hashlib.sha256()
                with open(m.path / name, "rb") as f:
                    while chunk := f.read(128 * 1024):
                        h.update(chunk)
                got[name] = h.hexdigest()
            except OSError as exc:
                errors.append((name, exc))
        threads = [threading.Thread(target=stream, args=(n,)) for n in blobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        proxy.heal()
        assert not errors
        assert got == {n: hashlib.sha256(d).hexdigest() for n, d in blobs.items()}
        usage = m.status_json()["cache"] if hasattr(m, "status_json") else None
        assert usage is None or usage["clean_bytes"] <= 16 * 1024 * 1024 * 2


def test_kill_9_with_small_uploads_in_flight_at_a_distance_loses_none(emulator, monkeypatch, mount_factory):
    """Far from the bucket, small files' uploads run 32 at once with no burst hold: a kill -9
    while they are in flight, then a remount with the same cache directory, loses none."""
    import os
    import signal
    from urllib.parse import urlsplit

    from octuefs.mount import read_state
    from tests.delayline import DelayLineProcess

    from .conftest import force_unmount, run_octuefs

    upstream = urlsplit(emulator.url)
    line = DelayLineProcess((upstream.hostname, upstream.port), rtt_ms=300).start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", line.url)
        m = mount_factory()
        (m.path / "d").mkdir()
        files: dict[str, bytes] = {}
        # Files until the uploads fall behind (32 and more pending, so some are in flight): on a
        # loaded machine the closes alone may be slower than the uploads' round trips.
        for i in range(2000):
            files[name := f"d/f{i:04d}.csv"] = data = (b"%d," % i) * (i % 400 + 1)
            (m.path / name).write_bytes(data)
            if i >= 99 and i % 50 == 49:
                report = json.loads(run_octuefs("status", "--json", str(m.path)).stdout)
                if len(report["uploads"]) >= 32:
                    break
        pid = int(read_state(str(m.path))["pid"])
        os.kill(pid, signal.SIGKILL)
        force_unmount(m.path)
        assert len(report["uploads"]) >= 32, "too little was pending at the kill: the test proves nothing"
        run_octuefs("mount", m.spec, str(m.path), "--cache-dir", str(m.cache), "--log-file", str(m.log), "-vv")
        m.sync()
    finally:
        line.stop()
    from octuefs.storage.gcs import GCSBucket
    direct = GCSBucket(m.bucket.name, endpoint=emulator.url)
    assert {n: direct.read_range(n, 0, 10_000) for n in files} == files
    assert not [o for o in direct.list_all("d/")[0] if "conflict" in o.name]
