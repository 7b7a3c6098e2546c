"""A real mount behind a faulty network: tests/faultproxy.py between the daemon and fake-gcs-server.

With a quarter of the requests failing (503s, 429s, resets before and after the server acted,
slow answers), every closed file still arrives byte for byte with its metadata, and reads give
the right bytes or an error, never wrong bytes. With every request stalled, each FUSE call that
needs the bucket fails within ``--op-timeout`` (plus slack) with ETIMEDOUT and a log line saying
why, while cached and local content stays readable and closed files wait to be uploaded.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time

import pytest

from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.fuse

MIX = {"503": 0.08, "503_retry": 0.02, "429": 0.03, "reset_before": 0.04, "reset_after": 0.04, "slow": 0.04}


@pytest.fixture
def proxy(emulator, monkeypatch):
    """A fault proxy in front of the session's emulator; mounts made now go through it."""
    with FaultProxy(emulator.url, seed=int(os.environ.get("OCTUEFS_FAULT_SEED", "5")),
                    slow_seconds=(0.05, 0.4)) as p:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.url)
        yield p


@pytest.fixture
def faulty(proxy, mount_factory, emulator):
    """``mount(*args)`` of a fresh bucket through the proxy, and ``direct(mount)``: the bucket
    without the proxy, for assertions. The proxy heals before the mounts are unmounted."""
    from octuefs.storage.gcs import GCSBucket

    class Faulty:
        @staticmethod
        def mount(*args: str):
            return mount_factory(*args)

        @staticmethod
        def direct(m):
            return GCSBucket(m.bucket.name, endpoint=emulator.url)

    yield Faulty
    proxy.heal()


def tags(info) -> dict:
    return json.loads(info.metadata["octue__tags"])


def labels(info) -> list[str]:
    return json.loads(info.metadata["octue__labels"])["items"]


def test_closed_files_arrive_whole_through_a_faulty_network(faulty, proxy):
    m = faulty.mount("--op-timeout", "15")
    direct = faulty.direct(m)
    seeded = {f"in/r{i}.bin": os.urandom(300_000 + i) for i in range(6)}
    for name, data in seeded.items():
        direct.upload_bytes(name, data)

    proxy.set_faults(MIX)
    os.mkdir(m / "out")
    written = {f"out/f{i:02d}.csv": os.urandom(5_000 + 97 * i) for i in range(40)}  # enough requests to meet faults
    written["out/big.bin"] = os.urandom(9 * 1024 * 1024)  # a resumable upload, through the faults
    for i, (name, data) in enumerate(written.items()):
        (m / name).write_bytes(data)
        os.setxattr(m / name, "user.octue.tags", json.dumps({"n": i}).encode())  # joins the pending upload
    shutil.copyfile(m / "in/r0.bin", m / "out/copy.bin")  # reads through the faults, then a write
    written["out/copy.bin"] = seeded["in/r0.bin"]
    os.rename(m / "out/f00.csv", m / "out/moved.csv")  # waits for f00's upload, then copy + delete
    written["out/moved.csv"] = written.pop("out/f00.csv")

    good = 0
    for name, data in seeded.items():
        try:
            got = (m / name).read_bytes()
        except OSError as exc:
            assert exc.errno in (errno.EIO, errno.ETIMEDOUT), exc  # an error, or ...
        else:
            assert got == data, name  # ... the right bytes, never wrong ones
            good += 1
    assert good > 0

    m.sync()
    for i in range(1, 4):  # metadata of files already in the bucket: one PATCH each, through the faults
        os.setxattr(m / f"out/f{i:02d}.csv", "user.octue.labels", b"checked faulty")
    m.sync()  # (written back: sent within about a second, through the faults)

    proxy.heal()
    objects = {o.name: o for o in direct.list_all("out/", delimiter=None)[0]}
    assert sorted(objects) == sorted(["out/"] + list(written))
    for name, data in written.items():
        assert direct.read_range(name, 0, len(data) + 1) == data, name
    assert tags(direct.stat("out/moved.csv")) == {"n": 0}
    assert all(tags(direct.stat(f"out/f{i:02d}.csv")) == {"n": i} for i in range(1, 40))
    assert all(labels(direct.stat(f"out/f{i:02d}.csv")) == ["checked", "faulty"] for i in range(1, 4))
    counts = proxy.counts
    print("faults injected:", {k: v for k, v in counts.items() if not k.startswith("requests_")})
    assert sum(counts.get(f, 0) for f in MIX) >= 20, counts


def timed_error(call) -> tuple[int, float]:
    """``(errno, seconds)`` of a call expected to fail."""
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        call()
    return info.value.errno, time.monotonic() - start


def test_a_stalled_bucket_fails_each_call_within_op_timeout_and_loses_nothing(faulty, proxy):
    op_timeout = 3
    bound = op_timeout * 2 + 10  # generous: this asserts that calls end, not how fast
    m = faulty.mount("--op-timeout", str(op_timeout))
    direct = faulty.direct(m)
    direct.upload_bytes("seen/a.bin", b"A" * 100_000)
    direct.upload_bytes("seen/b.bin", b"B" * 100_000)
    direct.upload_bytes("seen/meta.bin", b"M")
    direct.upload_bytes("unseen/c.bin", b"C")
    assert sorted(os.listdir(m / "seen")) == ["a.bin", "b.bin", "meta.bin"]  # listing and stats cached
    assert (m / "seen/a.bin").read_bytes() == b"A" * 100_000  # content cached

    proxy.set_faults({"stall": 1.0})  # every request now hangs, as on a dead network
    for i in range(3):  # write-back: close returns without the network
        (m / f"seen/w{i}.bin").write_bytes(bytes([i]) * 10_000)
        os.setxattr(m / f"seen/w{i}.bin", "user.octue.labels", b"written offline")
    os.setxattr(m / "seen/meta.bin", "user.octue.labels", b"offline")  # a saved file's setfattr is written back too
    assert os.getxattr(m / "seen/meta.bin", "user.octue.labels") == b"offline"
    assert (m / "seen/a.bin").read_bytes() == b"A" * 100_000  # cached blocks still read
    assert (m / "seen/w1.bin").read_bytes() == bytes([1]) * 10_000  # pending local content too

    failures = {
        # First, while the listing of seen/ is younger than --negative-ttl: the destination's
        # lookup is answered from it, and the rename itself waits for the upload (later, the
        # lookup would need the bucket and fail first, with the same ETIMEDOUT).
        "mv of a file waiting for its upload": lambda: os.rename(m / "seen/w0.bin", m / "seen/w0-moved.bin"),
        "cat of an uncached file": lambda: (m / "seen/b.bin").read_bytes(),
        "ls": lambda: os.listdir(m / "unseen"),
        # (a name a listing the mount holds does not show is answered for --negative-ttl: ask in
        # a directory it has not listed)
        "stat": lambda: os.stat(m / "unseen/nowhere.bin"),
        "getfattr": lambda: os.getxattr(m / "unseen/c.bin", "user.octue.id"),
    }
    for what, call in failures.items():
        code, seconds = timed_error(call)
        assert seconds < bound, f"{what} took {seconds:.1f}s"
        if what.startswith("cat"):  # the kernel may report a failed page read as EIO
            assert code in (errno.ETIMEDOUT, errno.EIO), (what, code)
        else:
            assert code == errno.ETIMEDOUT, (what, errno.errorcode.get(code))
    ls = subprocess.run(["ls", str(m / "unseen")], capture_output=True, text=True, timeout=bound)
    assert ls.returncode != 0 and "Connection timed out" in ls.stderr

    log = m.log_text()
    assert "bucket unreachable: " in log and "(ETIMEDOUT)" in log
    assert "while listing gs://" in log and "while reading gs://" in log  # (a lookup lists its directory)
    assert "no upload has moved" in log  # the mv

    proxy.heal()
    m.sync()
    for i in range(3):
        assert direct.read_range(f"seen/w{i}.bin", 0, 20_000) == bytes([i]) * 10_000
        assert labels(direct.stat(f"seen/w{i}.bin")) == ["offline", "written"]
    assert labels(direct.stat("seen/meta.bin")) == ["offline"]  # journaled, sent once the bucket answered
    assert not direct.list_all("seen/w0-moved")[0]
