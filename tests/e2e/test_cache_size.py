"""--cache-size through a real mount: clean data read through the mount stays within the limit on
disk, evicted data reads back byte for byte, and unsaved files are never evicted."""

from __future__ import annotations

import json
import os
import random

import pytest

from .conftest import run_octuefs

pytestmark = pytest.mark.fuse

MiB = 1024 * 1024
LIMIT = 8 * MiB  # two blocks of the default 4 MiB
# ext4 may give a sparse file an extent block or two of its own; that is not cached data.
SLACK_PER_FILE = 16 * 1024


def clean_on_disk(cache_dir) -> tuple[int, int]:
    """What ``du`` counts for the cached copies: allocated bytes (st_blocks) of blocks/, and
    how many files."""
    used = files = 0
    for root, _, names in os.walk(os.path.join(cache_dir, "blocks")):
        for name in names:
            used += os.stat(os.path.join(root, name)).st_blocks * 512
            files += 1
    return used, files


def assert_within_limit(m) -> None:
    used, files = clean_on_disk(m.cache)
    assert used <= LIMIT + files * SLACK_PER_FILE, f"{used} bytes of clean data on disk ({files} files)"


def read_uncached(path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def status(m) -> dict:
    return json.loads(run_octuefs("status", str(m.path), "--json", timeout=60).stdout)


def test_reads_beyond_the_cache_size_stay_within_it_and_unsaved_files_are_never_evicted(private):
    m = private.mount("--cache-size", "8M")
    bucket = private.bucket()
    clean = {f"r{i}.bin": random.Random(i).randbytes(12 * MiB) for i in range(3)}  # 36 MiB through 8
    for name, data in clean.items():
        bucket.upload_bytes(name, data)
    for name, data in clean.items():
        assert (m / name).read_bytes() == data
        assert_within_limit(m)
    cache = status(m)["cache"]
    assert cache["limit"] == LIMIT and 0 < cache["clean_bytes"] <= LIMIT and cache["unsaved_bytes"] == 0

    # Unsaved files, more of them than the whole cache, while the bucket is unreachable.
    private.freeze(m)
    unsaved = {f"w{i}.bin": random.Random(100 + i).randbytes(6 * MiB) for i in range(2)}
    for name, data in unsaved.items():
        (m / name).write_bytes(data)
    cache = status(m)["cache"]
    assert cache["unsaved_bytes"] == 12 * MiB and cache["clean_bytes"] <= LIMIT
    assert "12.0 MiB unsaved" in run_octuefs("status", str(m.path), timeout=60).stdout
    for name, data in unsaved.items():
        assert (m / name).read_bytes() == data
    assert_within_limit(m)
    private.thaw()
    m.sync()
    for name, data in unsaved.items():
        assert bucket.read_range(name, 0, len(data)) == data
    assert_within_limit(m)  # their content, now clean, counts like the rest
    assert status(m)["cache"]["unsaved_bytes"] == 0

    # What was evicted is fetched again, byte for byte (the kernel's page cache is told to
    # let go of the file first, or it would answer without asking the mount).
    evicted = status(m)["cache"]["evicted_bytes"]
    for name, data in clean.items():
        assert read_uncached(m / name) == data
        assert_within_limit(m)
    assert status(m)["cache"]["evicted_bytes"] > evicted  # the reads did reach the mount's cache


def test_a_bad_cache_size_is_one_line(tmp_path):
    (tmp_path / "mnt").mkdir()
    result = run_octuefs("mount", "some-bucket", str(tmp_path / "mnt"), "--cache-size", "lots", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--cache-size: 'lots' is not a size" in result.stderr
