"""What the filesystem-core tests share: a FileSystem on an in-memory bucket, a close in one
call, a bucket that stalls and heals, an upload held until released.

The bucket is a :class:`octuefs.storage.fake.FakeBucket`, which keeps GCS's generation and
metageneration preconditions, so these tests see what a mount would on GCS."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from octuefs.assembly import build_filesystem
from octuefs.config import MountConfig
from octuefs.errors import TransientError
from octuefs.fs.core import FileSystem
from octuefs.storage.fake import FakeBucket

MiB = 1024 * 1024

# Every FileSystem make_fs built in the running test: tests/unit/conftest.py closes the cached
# copies' descriptors each holds open for reuse (up to 256) once the test ends, so a worker that
# runs hundreds of tests does not pile up thousands of descriptors (past 1024, select() fails).
made: list[FileSystem] = []


# Fixtures a module takes by importing ``bucket`` and ``fs`` from here: a FileSystem on an
# in-memory bucket named "bk" (the name dataset records' gs:// paths use), shut down after the test.
@pytest.fixture
def bucket():
    return FakeBucket("bk")


@pytest.fixture
def fs(bucket, tmp_path):
    fs = make_fs(bucket, tmp_path)
    yield fs
    fs.shutdown()


def make_fs(bucket, tmp_path, cache="cache", **overrides) -> FileSystem:
    """A FileSystem on ``bucket`` with its cache in ``tmp_path / cache``; uploads start at once."""
    overrides.setdefault("upload_hold", 0.0)
    config = MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "mnt"), cache_dir=str(tmp_path / cache),
                         block_size=MiB, **overrides)
    fs = build_filesystem(bucket, config)
    made.append(fs)
    return fs


def close_write(fs: FileSystem, path: str, data: bytes) -> None:
    """Create (or truncate) ``path``, write ``data``, close: what `echo data > path` does."""
    fh = fs.create(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    fs.write(fh, data, 0)
    fs.flush(fh)
    fs.release(fh)


def read(fs: FileSystem, path: str) -> bytes:
    fh = fs.open(path, os.O_RDONLY)
    try:
        return fs.read(fh, 1 << 30, 0)
    finally:
        fs.release(fh)


def labels(info) -> list[str]:
    return json.loads(info.metadata["octue__labels"])["items"]


def stall(bucket: FakeBucket, *operations: str) -> None:
    """Every attempt at ``operations`` (default all) fails with a 503 until :func:`heal`."""
    bucket.set_fault_rate(1.0, lambda: TransientError("503: the bucket is away"), operations=operations)


def heal(bucket: FakeBucket) -> None:
    bucket.set_fault_rate(0.0)


def wait_until(predicate, timeout=10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


class HeldUpload:
    """The bucket's next uploads wait (``started`` is set) until :meth:`release`, which also
    puts the bucket's own upload back."""

    def __init__(self, bucket: FakeBucket):
        self.bucket, self.real = bucket, bucket.upload_file
        self.started, self._go = threading.Event(), threading.Event()
        bucket.upload_file = self._held

    def _held(self, *args, **kwargs):
        self.started.set()
        assert self._go.wait(10), "a held upload was never released"
        return self.real(*args, **kwargs)

    def release(self) -> None:
        self.bucket.upload_file = self.real
        self._go.set()
