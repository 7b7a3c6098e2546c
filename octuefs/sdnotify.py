"""Tell systemd how the mount is doing, when it runs under a ``Type=notify`` unit.

The protocol is one datagram to the socket named by ``$NOTIFY_SOCKET`` (``@`` starts a name in
the abstract namespace); outside systemd the variable is unset and nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``READY=1``, ``STOPPING=1``, ``STATUS=...`` lines; whether systemd was told."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.warning("could not notify systemd through %s: %s", path, exc)
        return False
    return True
