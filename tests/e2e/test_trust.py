"""Never lose what was closed, never overwrite elsewhere's change: issue 12's findings on a real
mount, driven by ordinary tools and Python's os calls, against fake-gcs-server (behind
tests/faultproxy.py where the network must fail)."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from tests.e2e.conftest import run_octuefs, wait_until
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.fuse


@pytest.fixture
def proxy(emulator, monkeypatch):
    """A fault proxy in front of the session's emulator; mounts made now go through it."""
    with FaultProxy(emulator.url, seed=12) as p:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.url)
        yield p
        p.heal()


def direct(m, emulator):
    from octuefs.storage.gcs import GCSBucket

    return GCSBucket(m.bucket.name, endpoint=emulator.url)


def errno_of(call) -> int:
    with pytest.raises(OSError) as caught:
        call()
    return caught.value.errno


def test_a_failed_mv_onto_a_pending_file_keeps_its_newest_version(proxy, mount_factory, emulator):
    m = mount_factory("--op-timeout", "2")
    bucket = direct(m, emulator)
    (m / "A").write_bytes(b"a")
    m.sync()
    assert os.listdir(m.path) == ["A"]  # a fresh listing answers that "B" is free meanwhile
    proxy.set_faults({"stall": 1.0})  # the bucket stops answering
    uploads_before = proxy.counts.get("requests_upload", 0)
    (m / "B").write_bytes(b"v1")
    (m / "B").write_bytes(b"version two")  # both closes succeed: write-back
    # B's upload is on its way (stalled): the bucket may have its version, so neither a rename
    # over B nor its unlink can finish without the bucket. (Before the first attempt starts, a
    # busy machine's case, the unlink of a file never sent is rightly done at once, locally.)
    assert wait_until(lambda: proxy.counts.get("requests_upload", 0) > uploads_before), "B's upload never started"
    assert errno_of(lambda: os.rename(m / "A", m / "B")) == errno.ETIMEDOUT
    assert errno_of(lambda: os.unlink(m / "B")) == errno.ETIMEDOUT
    proxy.heal()
    m.sync()
    assert (m / "B").read_bytes() == b"version two"
    assert bucket.read_range("B", 0, 100) == b"version two"
    assert bucket.read_range("A", 0, 100) == b"a"


def test_a_cache_dir_reused_for_another_bucket_keeps_the_first_buckets_uploads(proxy, mount_factory, emulator,
                                                                                 tmp_path):
    first = mount_factory()
    proxy.set_faults({"503": 1.0}, only=("upload",))  # uploads fail; everything else answers
    (first / "for-a.csv").write_bytes(b"a's data")
    run_octuefs("unmount", "--leave-pending", str(first.path), timeout=60)
    proxy.heal()

    # The same cache directory, another bucket.
    other_name = f"e2e-other-{os.getpid()}"
    emulator.create_bucket(other_name)
    mp = tmp_path / "other"
    mp.mkdir()
    log = tmp_path / "other.log"
    run_octuefs("mount", other_name, str(mp), "--cache-dir", str(first.cache), "--log-file", str(log))
    try:
        run_octuefs("sync", str(mp))
        assert os.listdir(mp) == []
        status = run_octuefs("status", str(mp)).stdout
        assert "for-a.csv" in status and first.bucket.name in status
    finally:
        run_octuefs("unmount", str(mp), timeout=60)
    from octuefs.storage.gcs import GCSBucket

    assert GCSBucket(other_name, endpoint=emulator.url).list_all("")[0] == []

    # The first bucket again, with that cache directory: its upload lands there.
    run_octuefs("mount", first.bucket.name, str(mp), "--cache-dir", str(first.cache), "--log-file", str(log))
    try:
        run_octuefs("sync", str(mp))
    finally:
        run_octuefs("unmount", str(mp), timeout=60)
    assert direct(first, emulator).read_range("for-a.csv", 0, 100) == b"a's data"
    assert "Traceback" not in log.read_text()


def test_names_gcs_refuses_are_refused_at_create(mount):
    for name in ("line\nfeed.txt", "carriage\rreturn.txt"):
        assert errno_of(lambda: (mount / name).write_bytes(b"x")) == errno.EINVAL
        assert errno_of(lambda: os.mkdir(mount / name)) == errno.EINVAL
    deep = mount.path
    for _ in range(4):
        deep = deep / ("d" * 200)
        os.mkdir(deep)
    assert errno_of(lambda: (deep / ("f" * 200)).write_bytes(b"x")) == errno.ENAMETOOLONG
    touch = subprocess.run(["touch", str(deep / ("f" * 200))], capture_output=True, text=True)
    assert touch.returncode != 0 and "too long" in touch.stderr
    mount.sync()
    assert os.listdir(deep) == []


def test_a_close_after_setfattr_on_another_machine_keeps_their_labels(mount_factory):
    """Finding 3: on GCS a setfattr moves only the metageneration; the upload of a close that
    started from the older metadata must not overwrite it (the session's emulator is behind
    tests/faultproxy.py's strict layer, which moves it as GCS does)."""
    import json
    import time

    caches = ("--stat-ttl", "1", "--list-ttl", "1", "--negative-ttl", "1", "--attr-timeout", "1",
              "--entry-timeout", "1")
    one = mount_factory(*caches)
    two = mount_factory(*caches, bucket=one.bucket.name)
    (one / "f.csv").write_bytes(b"v1")
    one.sync()
    with open(one / "f.csv", "r+b") as f:  # mount 1 opens f
        time.sleep(1.5)  # mount 2's caches expire: it sees f
        os.setxattr(two / "f.csv", "user.octue.labels", b"from-two")  # mount 2 labels it
        two.sync()  # (its patch lands before mount 1's close)
        f.write(b"v2 from one")  # mount 1 writes and closes
    one.sync()
    info = one.bucket.stat("f.csv")
    assert one.bucket.read_range("f.csv", 0, 100) == b"v2 from one"
    assert json.loads(info.metadata["octue__labels"])["items"] == ["from-two"]
