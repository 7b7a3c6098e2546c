"""Fixtures shared by the unit tests' modules."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def closed_port():
    """A loopback port nothing listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return port  # nothing listens here now


@pytest.fixture(autouse=True)
def _close_idle_descriptors():
    """After each test, close the descriptors its FileSystems keep open for reuse (the cache stays
    usable: a test's background thread still reading opens them again)."""
    from .corekit import made

    yield
    while made:
        made.pop().cache.close()
