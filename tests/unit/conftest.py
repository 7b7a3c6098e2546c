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
