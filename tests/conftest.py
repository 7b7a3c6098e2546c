"""Shared fixtures: buckets to test against (in memory, and on a fake-gcs-server emulator).

* ``emulator`` (session): one fake-gcs-server for the whole run, behind a strict proxy
  (``tests/faultproxy.py`` with ``strict=True``, in a process of its own: GCS's preconditions on patch, copy, delete and
  compose, and a metageneration that moves on a patch, which fake-gcs-server leaves out), with
  ``STORAGE_EMULATOR_HOST`` naming the proxy in ``os.environ`` while it runs (restored
  afterwards). Its ``url`` is the proxy's, ``server_url`` the server's own. The server is always
  stopped, by PID, and the proxy closed, when the session ends, whatever the tests did.
  ``OCTUEFS_TEST_LAX=1`` leaves the proxy out (to compare, or to see fake-gcs-server as it is).
* ``gcs_bucket``: a fresh, uniquely named bucket on that emulator, as a ``GCSBucket``.
* ``fake_bucket``: a fresh ``FakeBucket``.
* ``bucket``: parametrized over ``fake`` and ``emulator``; the contract suite uses it.

Marker ``real_gcs_only``: a test of real-GCS behaviour that fake-gcs-server does not reproduce,
even behind the strict proxy. On the ``emulator`` parameter such a test is an expected failure (strict: if the emulator ever
starts behaving like GCS, the run says so); on the fake it runs normally.
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, settings

from octuefs.storage.base import RetryPolicy
from octuefs.storage.fake import FakeBucket

# Property tests judge behaviour, not speed: on two busy cores an example may take longer than
# hypothesis's default 200 ms deadline, which would fail a run for nothing.
settings.register_profile("octuefs", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("octuefs")

# Retries against a local emulator: quick, and bounded well inside a test's patience.
EMULATOR_RETRY = RetryPolicy(initial_delay=0.01, max_delay=0.2, deadline=5.0)


@pytest.fixture(scope="session")
def emulator():
    from octuefs.local.emulator import Emulator, emulator_binary

    try:
        emulator_binary()
    except Exception as exc:  # no bundled binary for this platform
        pytest.skip(f"fake-gcs-server not available: {exc}")
    # Memory backend: the filesystem backend cannot hold both "a" and "a/x" (it maps names to
    # nested directories); tests/contract/test_emulator.py covers the filesystem backend.
    from tests.faultproxy import ProxyProcess

    server = Emulator(data_dir=None, kill_with_parent=True)
    proxy = None
    try:
        server.start()
        front = server
        if os.environ.get("OCTUEFS_TEST_LAX") != "1":
            proxy = ProxyProcess(server.url, strict=True).start()
            front = StrictEmulator(server, proxy)
        with pytest.MonkeyPatch.context() as mp:
            for key, value in front.env().items():
                mp.setenv(key, value)
            yield front
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()


class StrictEmulator:
    """An emulator as its clients see it through the strict proxy: ``url`` and ``env()`` name
    the proxy; everything else is the emulator's own."""

    def __init__(self, server, proxy):
        self.server = server
        self.proxy = proxy

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def server_url(self) -> str:
        return self.server.url

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.proxy.url}

    def __getattr__(self, attr: str):
        return getattr(self.server, attr)


@pytest.fixture(scope="session")
def _gcs_client(emulator):
    """One storage client for every emulator bucket, so tests share its connection pool."""
    from octuefs.storage.gcs import GCSBucket

    return GCSBucket("octuefs-client-holder", retry=EMULATOR_RETRY).client


@pytest.fixture
def gcs_bucket(emulator, _gcs_client):
    from octuefs.storage.gcs import GCSBucket

    name = f"octuefs-test-{uuid.uuid4().hex[:12]}"
    emulator.create_bucket(name)
    return GCSBucket(name, client=_gcs_client, retry=EMULATOR_RETRY)


@pytest.fixture
def fake_bucket():
    return FakeBucket("fake-test-bucket")


@pytest.fixture(params=["fake", pytest.param("emulator", marks=pytest.mark.emulator)])
def bucket(request):
    return request.getfixturevalue("fake_bucket" if request.param == "fake" else "gcs_bucket")


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = item.get_closest_marker("real_gcs_only")
        if marker is None:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("bucket") == "emulator" or "gcs_bucket" in getattr(item, "fixturenames", ()):
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "real GCS behaviour")
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"fake-gcs-server differs: {reason}"))
