"""Connections to the bucket are reused: as many threads as the mount runs at once (its FUSE
threads and its small uploads at a distance) each make requests, and the second round of them
opens no connection, in either pool (the direct JSON API's, and the library's requests session).

Counted where they arrive: a delay line between the client and fake-gcs-server (a new connection
there costs one more round trip, as a TCP handshake would; on GCS, TLS adds one or two more)."""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from octuefs.fuse.ops import MAX_IDLE_THREADS
from octuefs.storage.base import RetryPolicy
from octuefs.storage.gcs import POOL_SIZE, GCSBucket
from octuefs.writeback.composite import PARTS_IN_FLIGHT
from octuefs.writeback.scheduler import SMALL_IN_FLIGHT
from tests.delayline import DelayLine

pytestmark = pytest.mark.emulator

THREADS = MAX_IDLE_THREADS + SMALL_IN_FLIGHT  # FUSE threads and small uploads, all at once


def test_the_pool_holds_a_connection_for_every_thread_that_may_make_a_request():
    bucket = GCSBucket("sizes", endpoint="http://127.0.0.1:9")  # (nothing is sent)
    adapter = bucket.client._http.get_adapter("http://127.0.0.1:9")
    direct = bucket._api._http.pool.connection_pool_kw["maxsize"]
    fetch_workers = 8  # ContentCache's default
    assert min(adapter._pool_maxsize, direct) == POOL_SIZE >= THREADS + PARTS_IN_FLIGHT + fetch_workers


def test_a_second_round_of_concurrent_requests_opens_no_connection(emulator, tmp_path, caplog):
    name = f"octuefs-conn-{uuid.uuid4().hex[:12]}"
    emulator.create_bucket(name)
    upstream = urlsplit(emulator.url)
    data = tmp_path / "small"
    data.write_bytes(b"x" * 4096)
    with DelayLine((upstream.hostname, upstream.port), rtt_ms=10) as line:
        bucket = GCSBucket(name, endpoint=line.url, retry=RetryPolicy(initial_delay=0.01, max_delay=0.2, deadline=5.0))

        def round_of_requests(tag: str) -> None:
            everyone = threading.Barrier(THREADS)

            def one(i: int) -> None:
                everyone.wait(30)  # all at once: as many connections in use as threads
                bucket.upload_file(f"{tag}/{i}", str(data), {}, if_generation_match=0)  # direct JSON API
                everyone.wait(30)
                bucket.delete(f"{tag}/{i}")  # the library's session

            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(one, range(THREADS)))

        with caplog.at_level(logging.WARNING, logger="urllib3"):
            round_of_requests("first")
            opened = line.connections
            round_of_requests("second")
        assert line.connections == opened, "the second round opened connections: the pool dropped some"
        assert opened <= 2 * THREADS  # one per thread at most, in each pool
        assert not [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()]
        assert bucket.list_page("second/").objects == []


def test_checking_the_bucket_with_n_connections_leaves_them_open_for_the_first_requests(emulator):
    """A mount checks its bucket on WARM_CONNECTIONS connections at once, so that its first
    requests that go out together (a lookup's listing and probe, a read's GET and read-ahead)
    wait for no handshake."""
    from octuefs.mount import WARM_CONNECTIONS
    from octuefs.storage import open_bucket

    name = f"octuefs-warm-{uuid.uuid4().hex[:12]}"
    emulator.create_bucket(name)
    upstream = urlsplit(emulator.url)
    with DelayLine((upstream.hostname, upstream.port), rtt_ms=10) as line:
        bucket = open_bucket(name, endpoint=line.url, connections=WARM_CONNECTIONS)
        assert line.connections == WARM_CONNECTIONS
        everyone = threading.Barrier(WARM_CONNECTIONS)

        def one(_: int) -> None:
            everyone.wait(30)
            bucket.list_page(max_results=1)

        with ThreadPoolExecutor(WARM_CONNECTIONS) as pool:
            list(pool.map(one, range(WARM_CONNECTIONS)))
        assert line.connections == WARM_CONNECTIONS  # all of them found one open
