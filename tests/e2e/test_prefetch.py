"""Reading ahead across files through a real mount: ``cat`` of a directory's files in name order
gets exact bytes, and fake-gcs-server (counted by a fault proxy with no faults) serves the next
files' content before ``cat`` opens them, each file once; a directory read whole in a shuffled
order has the rest fetched ahead after 32 files, and 20 random files cost 20 downloads."""

from __future__ import annotations

import random
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from .conftest import wait_until

pytestmark = pytest.mark.fuse

N = 40


def put_files(mount, emulator, n: int = N) -> dict[str, bytes]:
    from octuefs.storage.gcs import GCSBucket

    direct = GCSBucket(mount.bucket.name, endpoint=emulator.url)
    files = {f"f{i:03d}.dat": random.Random(i).randbytes(4096 + i) for i in range(n)}
    for name, data in files.items():
        direct.upload_bytes(f"d/{name}", data)
    return files


def downloads(proxy) -> int:
    return proxy.counts.get("requests_download", 0)


def test_cat_of_a_directory_in_order_fetches_ahead_each_file_once(counted, mount_factory, emulator):
    m = mount_factory()
    files = put_files(m, emulator)
    names = sorted(files)
    before = downloads(counted)
    first = subprocess.run(["cat", *(str(m / "d" / n) for n in names[:3])], capture_output=True, check=True).stdout
    assert first == b"".join(files[n] for n in names[:3])
    # Three files read, by name, without a readdir: the directory was listed in the background,
    # and the files after them were fetched before anyone opened them.
    assert wait_until(lambda: downloads(counted) - before > 3), counted.counts
    got = subprocess.run(["sh", "-c", 'cd "$1" && cat *', "sh", str(m / "d")], capture_output=True,
                         check=True, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}).stdout
    assert got == b"".join(files[n] for n in names)
    assert downloads(counted) - before == N  # every file fetched once: the reads took what was fetched ahead


def test_tar_of_a_directory_gets_every_file_whole_each_fetched_once(counted, mount_factory, emulator, tmp_path):
    m = mount_factory()
    files = put_files(m, emulator)
    before = downloads(counted)
    subprocess.run(["tar", "-C", str(m.path), "-cf", str(tmp_path / "d.tar"), "d"], check=True)
    with tarfile.open(tmp_path / "d.tar") as tar:
        got = {Path(t.name).name: tar.extractfile(t).read() for t in tar.getmembers() if t.isfile()}
    assert got == files
    assert downloads(counted) - before == N


def test_no_prefetch_fetches_nothing_ahead(counted, mount_factory, emulator):
    m = mount_factory("--no-prefetch")
    files = put_files(m, emulator)
    names = sorted(files)
    before = downloads(counted)
    first = subprocess.run(["cat", *(str(m / "d" / n) for n in names[:5])], capture_output=True, check=True).stdout
    assert first == b"".join(files[n] for n in names[:5])
    assert downloads(counted) - before == 5


def test_a_directory_read_whole_in_no_order_is_fetched_ahead_each_file_once(counted, mount_factory, emulator):
    """A data loader with shuffle=True: once 32 files were read whole (and closed), the others
    are fetched before they are opened; every file is fetched once and read exact."""
    m = mount_factory()
    files = put_files(m, emulator, 150)
    order = random.Random(4).sample(sorted(files), len(files))
    before = downloads(counted)
    for name in order[:40]:
        assert (m / "d" / name).read_bytes() == files[name]
    assert wait_until(lambda: downloads(counted) - before >= 40 + 50), counted.counts
    for name in order[40:]:
        assert (m / "d" / name).read_bytes() == files[name]
    assert downloads(counted) - before == 150


def test_a_handful_of_files_read_in_no_order_fetches_nothing_more(counted, mount_factory, emulator):
    m = mount_factory()
    files = put_files(m, emulator, 150)
    before = downloads(counted)
    for name in random.Random(5).sample(sorted(files), 20):
        assert (m / "d" / name).read_bytes() == files[name]
    time.sleep(0.5)  # (anything started meanwhile would have landed)
    assert downloads(counted) - before == 20
