"""Data integrity with established tools: fsx-style random runs (scripts/fsx.py) and fio --verify.

Short, seeded runs here; ``scripts/integrity.py`` runs long ones. Each run ends with the bucket
itself compared: fsx compares the object with its shadow copy after every ``octuefs sync``;
fio's own checksums are verified again through a fresh mount of the bucket (new cache, new
kernel caches), so what is checked is what reached the bucket.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import json
import mmap
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from octuefs.errors import NotFound

pytestmark = pytest.mark.fuse

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_fsx():
    spec = importlib.util.spec_from_file_location("octuefs_fsx", SCRIPTS / "fsx.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fsx = load_fsx()


def object_reader(bucket):
    def read(name: str) -> bytes | None:
        try:
            info = bucket.stat(name)
        except NotFound:
            return None
        return bucket.read_range(name, 0, info.size) if info.size else b""

    return read


# --- fsx -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fsx_short_seeded_run(mount, seed):
    opts = fsx.Options(ops=300, seed=seed, maxlen=300_000, check_every=60, name=f"fsx-{seed}.bin")
    counts = fsx.Fsx(str(mount.path), opts, object_reader(mount.bucket)).run()
    assert counts["check"] >= 5 and counts["map_write_after_close"] > 0


def test_fsx_across_cache_blocks(mount):
    """A file of up to 9 MiB: reads and writes straddle the 4 MiB blocks of the local cache."""
    opts = fsx.Options(ops=120, seed=11, maxlen=9 * 1024 * 1024, maxop=1024 * 1024, check_every=40)
    fsx.Fsx(str(mount.path), opts, object_reader(mount.bucket)).run()


def test_fsx_reports_the_first_difference_and_the_operations(tmp_path):
    """The tool itself: on a local directory it agrees with its shadow, and a bucket holding
    different bytes is reported with the offset and the operations that led there."""
    opts = fsx.Options(ops=500, seed=5, maxlen=200_000, check_every=100, sync=False)
    fsx.Fsx(str(tmp_path), opts).run()

    def one_byte_off(name):
        data = bytearray((tmp_path / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        return bytes(data)

    with pytest.raises(fsx.Mismatch) as info:
        fsx.Fsx(str(tmp_path), fsx.Options(ops=50, seed=6, maxlen=200_000, sync=False), one_byte_off).run()
    text = str(info.value)
    assert "the bucket's object after sync" in text and "first difference at file offset" in text
    assert "seed 6" in text and "     1 " in text  # the operations, numbered


# --- mmap ------------------------------------------------------------------------------------------


def test_a_mapping_written_after_its_file_was_closed_reaches_the_bucket(mount):
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    mount.bucket.upload_bytes("mapped.bin", b"a" * 10_000)
    fd = os.open(mount / "mapped.bin", os.O_RDWR)
    addr = libc.mmap(None, 10_000, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    os.close(fd)  # the last close: its flush saw nothing to save
    assert addr not in (None, ctypes.c_void_p(-1).value)
    ctypes.memmove(addr + 5000, b"HELLO", 5)
    assert libc.munmap(addr, 10_000) == 0  # the page is written back now, after the close
    want = b"a" * 5000 + b"HELLO" + b"a" * 4995
    assert (mount / "mapped.bin").read_bytes() == want
    for _ in range(25):  # the daemon saves it on RELEASE, which munmap sends asynchronously
        mount.sync()
        if mount.bucket.read_range("mapped.bin", 0, 1 << 20) == want:
            break
        time.sleep(0.2)
    assert mount.bucket.read_range("mapped.bin", 0, 1 << 20) == want


# --- fio -------------------------------------------------------------------------------------------

FIO_JOBS = """
[global]
size=6m
verify=crc32c
verify_fatal=1
do_verify=1
randrepeat=1

[seq-psync]
rw=write
bs=64k
ioengine=psync

[rand-psync]
rw=randwrite
bsrange=4k-256k
ioengine=psync
fsync=16

[randrw-psync]
rw=randrw
bs=8k
ioengine=pvsync

[rand-mmap]
rw=randwrite
bs=16k
ioengine=mmap

[direct-psync]
rw=randwrite
bs=64k
direct=1
ioengine=psync

[shared-psync]
filename=shared.bin
numjobs=3
size=2m
offset_increment=2m
rw=randwrite
bs=8k
ioengine=psync
"""


def run_fio(directory: Path, jobfile: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    result = subprocess.run(
        ["fio", f"--directory={directory}", "--output-format=json", str(jobfile), *extra],
        capture_output=True, text=True, timeout=600, cwd=jobfile.parent,
    )  # fmt: skip
    try:
        report = json.loads(result.stdout[result.stdout.index("{"):])
    except ValueError:
        report = None
    return result, report


def test_fio_verify_workloads_and_the_bucket_holds_what_fio_wrote(mount_factory, tmp_path):
    if not shutil.which("fio"):
        pytest.skip("fio is not installed (scripts/install installs it)")
    jobfile = tmp_path / "verify.fio"
    jobfile.write_text(FIO_JOBS)
    a = mount_factory()
    result, report = run_fio(a.path, jobfile)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(job["jobname"], job["error"]) for job in report["jobs"]] == [
        ("seq-psync", 0), ("rand-psync", 0), ("randrw-psync", 0), ("rand-mmap", 0), ("direct-psync", 0),
        *[("shared-psync", 0)] * 3]  # three processes writing their own thirds of one file
    a.sync()
    names = sorted(o.name for o in a.bucket.list_all("")[0])
    assert names == ["direct-psync.0.0", "rand-mmap.0.0", "rand-psync.0.0", "randrw-psync.0.0", "seq-psync.0.0",
                     "shared.bin"]
    for name in names:  # byte for byte what the mount shows, and the size fio asked for
        assert a.bucket.read_range(name, 0, 1 << 30) == (a / name).read_bytes(), name
        assert a.bucket.stat(name).size == 6 * 1024 * 1024

    # fio's checksums once more, through a fresh mount: only the bucket's bytes can be read there.
    b = mount_factory(bucket=a.bucket.name)
    result, report = run_fio(b.path, jobfile, "--verify_only")
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(job["error"] == 0 and job["read"]["io_bytes"] > 0 for job in report["jobs"])

    # ...and the check can fail: one flipped byte in the bucket is found by a third mount.
    data = bytearray(a.bucket.read_range("seq-psync.0.0", 0, 1 << 30))
    data[3 * 1024 * 1024 + 17] ^= 0xFF
    a.bucket.upload_bytes("seq-psync.0.0", bytes(data))
    c = mount_factory(bucket=a.bucket.name)
    seq_only = tmp_path / "seq.fio"
    seq_only.write_text(FIO_JOBS.split("[rand-psync]")[0])
    result, _ = run_fio(c.path, seq_only, "--verify_only")
    assert result.returncode != 0 and "verify" in (result.stderr + result.stdout).lower()
