"""GCSBucket through a faulty network (tests/faultproxy.py in front of fake-gcs-server): every
call either does exactly what it promises or raises one of our errors; never wrong bytes."""

from __future__ import annotations

import errno
import os
import time
import uuid

import pytest

from octuefs.errors import BucketUnreachable, errno_for
from octuefs.storage.base import RetryPolicy
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.emulator

MIX = {"503": 0.08, "503_retry": 0.02, "429": 0.04, "reset_before": 0.04, "reset_after": 0.06, "slow": 0.06}


@pytest.fixture
def faulty(emulator):
    """``(bucket through the proxy, the same bucket direct, proxy)``."""
    from octuefs.storage.gcs import GCSBucket

    name = f"faults-{uuid.uuid4().hex[:10]}"
    emulator.create_bucket(name)
    with FaultProxy(emulator.url, seed=11, slow_seconds=(0.05, 0.3)) as proxy:
        through = GCSBucket(name, endpoint=proxy.url, retry=RetryPolicy(initial_delay=0.01, max_delay=0.2, deadline=20))
        yield through, GCSBucket(name, endpoint=emulator.url), proxy


def test_every_call_does_what_it_promises_through_a_faulty_network(faulty, tmp_path):
    bucket, direct, proxy = faulty
    proxy.set_faults(MIX)
    big = os.urandom(9 * 1024 * 1024 + 17)  # over 8 MiB: a resumable upload, in chunks
    bucket.upload_bytes("big.bin", big, {"k": "big"}, if_generation_match=0)
    for i in range(12):
        data = os.urandom(1000 + i)
        info = bucket.upload_bytes(f"d/f{i}", data, {"i": str(i)}, if_generation_match=0)
        assert bucket.read_range(f"d/f{i}", 10, 500, generation=info.generation) == data[10:500]
        bucket.patch_metadata(f"d/f{i}", {"x": "y"})
        bucket.copy(f"d/f{i}", f"e/f{i}", if_source_generation_match=info.generation, if_generation_match=0)
        bucket.delete(f"d/f{i}", if_generation_match=info.generation)
    objects, prefixes = bucket.list_all("")
    assert prefixes == ["e/"] and [o.name for o in objects] == ["big.bin"]
    assert bucket.read_range("big.bin", 1 << 20, 5 << 20) == big[1 << 20 : 5 << 20]
    fd = os.open(tmp_path / "copy", os.O_RDWR | os.O_CREAT)  # streamed: a broken body is read again
    try:
        for _ in range(3):
            os.ftruncate(fd, 0)  # each pass from nothing: a skipped or misplaced piece shows
            assert bucket.read_range_into("big.bin", 2 << 20, len(big), fd) == len(big) - (2 << 20)
            assert os.pread(fd, len(big), 2 << 20) == big[2 << 20 :]
        generation = direct.stat("big.bin").generation
        for _ in range(3):  # pinned: a broken body is read on from where it broke
            os.ftruncate(fd, 0)
            assert bucket.read_range_into("big.bin", 1 << 20, len(big), fd, generation=generation) == len(big) - (1 << 20)
            assert os.pread(fd, len(big), 1 << 20) == big[1 << 20 :]
    finally:
        os.close(fd)

    assert direct.read_range("big.bin", 0, len(big)) == big  # what the server holds
    assert direct.stat("big.bin").metadata == {"k": "big"}
    names = sorted(o.name for o in direct.list_all("e/")[0])
    assert names == sorted(f"e/f{i}" for i in range(12))
    assert all(direct.stat(f"e/f{i}").metadata == {"i": str(i), "x": "y"} for i in range(12))
    counts = proxy.counts
    assert all(counts.get(f, 0) > 0 for f in MIX), counts  # every kind of fault was met


def test_a_guarded_patch_whose_answer_is_lost_is_its_own_success_not_a_412(faulty):
    """GCSBucket's half of confirm_patch: the PATCH reaches the server (the strict emulator moves
    the metageneration), its answer is lost, and the retry's 412 is recognised as its own."""
    bucket, direct, proxy = faulty
    info = direct.upload_bytes("p", b"x", {"own": "1"}, if_generation_match=0)
    real, shots = proxy._choose, ["reset_after"]
    proxy._choose = lambda kind: shots.pop() if shots and kind == "json" else real(kind)
    got = bucket.patch_metadata("p", {"k": "v", "own": None}, if_generation_match=info.generation,
                                if_metageneration_match=info.metageneration)
    now = direct.stat("p")
    assert not shots and proxy.counts.get("requests_json", 0) >= 2
    assert got.metageneration == now.metageneration == info.metageneration + 1
    assert dict(got.metadata) == dict(now.metadata) and now.metadata["k"] == "v"
    assert not now.metadata.get("own")  # (fake-gcs-server keeps a key patched away as "")


def test_every_bounded_call_on_a_stalled_network_ends_with_etimedout(faulty, tmp_path):
    bucket, direct, proxy = faulty
    direct.upload_bytes("a", b"a")
    proxy.set_faults({"stall": 1.0})
    view = bucket.bounded(1.0)
    calls = [
        ("looking up", lambda: view.stat("a")),
        ("listing", lambda: view.list_page("")),
        ("reading", lambda: view.read_range("a", 0, 1)),
        ("looking up", lambda: view.download_to_file("a", str(tmp_path / "a"))),  # a stat comes first
        ("uploading", lambda: view.upload_bytes("b", b"b")),
        ("changing the metadata of", lambda: view.patch_metadata("a", {"k": "v"})),
        ("copying", lambda: view.copy("a", "c")),
        ("deleting", lambda: view.delete("a")),
    ]
    for doing, call in calls:
        start = time.monotonic()
        with pytest.raises(BucketUnreachable) as info:
            call()
        assert time.monotonic() - start < 1.0 * 2 + 5, doing  # generous: only that it does end
        assert errno_for(info.value)[0] == errno.ETIMEDOUT
        assert "timed out" in str(info.value) and f"while {doing} gs://" in str(info.value)
    proxy.heal()
    assert view.stat("a").size == 1
