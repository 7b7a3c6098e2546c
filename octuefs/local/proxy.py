"""HTTP pass-through on loopback, the plumbing under :mod:`octuefs.local.front`: a threaded
server that only its own user may reach, and a request handler that forwards a request to the
server behind it (one keep-alive upstream connection per client connection), reads bodies plain
or chunked, and sends answers whole or streamed.

One user: connections from another local user are refused (the peer's uid is read from
``/proc/net/tcp``): the server is bound to loopback, which every local user can reach.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import logging
import os
import socket
import threading
import urllib.parse

log = logging.getLogger(__name__)

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade",
        "proxy-connection", "proxy-authorization", "proxy-authenticate"}  # fmt: skip


class LoopbackServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server on ``127.0.0.1:port`` for this user, in front of the server on
    ``127.0.0.1:server_port``."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, port: int, server_port: int, handler: type[PassThroughHandler]):
        self.server_port_ = server_port
        self.uid = os.getuid()
        self.connections: set[socket.socket] = set()  # guarded by _conn_lock
        self._conn_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), handler)

    def close(self) -> None:
        """Stop serving, and end the connections still open (their threads go with them)."""
        self.shutdown()
        self.server_close()
        with self._conn_lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def verify_request(self, request, client_address) -> bool:
        uid = peer_uid(client_address[1], self.server_address[1])
        if uid is not None and uid not in (self.uid, 0):  # root may reach everything anyway
            log.warning("refused a connection from uid %d to the local emulator (only uid %d may use it)", uid, self.uid)
            return False
        return True

    def serve(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="octuefs-emulator-front", daemon=True)  # fmt: skip
        thread.start()
        return thread


def peer_uid(peer_port: int, our_port: int) -> int | None:
    """The uid owning the loopback TCP socket ``127.0.0.1:peer_port`` connected to ``our_port``."""
    want = (f"0100007F:{peer_port:04X}", f"0100007F:{our_port:04X}")
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if (fields[1], fields[2]) == want:
                    return int(fields[7])
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return None


class PassThroughHandler(http.server.BaseHTTPRequestHandler):
    """Forwards requests upstream; subclasses decide what to forward (``do_*``)."""

    protocol_version = "HTTP/1.1"
    server: LoopbackServer
    _request_body = None

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stalls
        with self.server._conn_lock:
            self.server.connections.add(self.connection)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("front: " + format, *args)

    def _upstream(self) -> _Upstream:
        upstream = getattr(self, "_conn", None)
        if upstream is None:
            upstream = self._conn = _Upstream(self.server.server_port_)
        return upstream

    def _body(self) -> bytes:
        return b"".join(self._body_stream())

    def _body_stream(self):
        """The request's body, as a generator; the same one on every call."""
        if self._request_body is None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                self._request_body = _dechunk(self.rfile)
            else:
                self._request_body = _limited(self.rfile, int(self.headers.get("Content-Length") or 0))
        return self._request_body

    def _drain(self) -> None:
        for _chunk in self._body_stream():
            pass

    def finish(self) -> None:
        with self.server._conn_lock:
            self.server.connections.discard(self.connection)
        super().finish()
        upstream = getattr(self, "_conn", None)
        if upstream is not None and upstream.conn is not None:
            upstream.conn.close()

    def _open(self, query: dict[str, str], body, content_type: str | None = None) -> http.client.HTTPResponse:
        path = urllib.parse.urlsplit(self.path).path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if content_type is not None:
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            headers["Content-Type"] = content_type
        return self._upstream().request_stream(self.command, path, headers, body)

    def _forward(self, query: dict[str, str], body, content_type: str | None = None):
        with self._open(query, body, content_type) as upstream:
            return upstream.status, upstream.getheaders(), upstream.read()

    def _pass(self, query: dict[str, str]) -> None:
        status, headers, body = self._forward(query, self._body_stream())
        self._send(status, headers, body)

    def _send(self, status: int, headers, body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in _HOP and name.lower() != "date" and name.lower() != "server":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, data: dict) -> None:
        self._send(status, [("Content-Type", "application/json; charset=utf-8")], json.dumps(data).encode())

    def _stream(self, upstream: http.client.HTTPResponse, headers) -> None:
        self.send_response(upstream.status)
        length = upstream.getheader("Content-Length")
        for name, value in headers:
            if name.lower() not in _HOP and name.lower() not in ("date", "server"):
                self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", length)
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            return
        for chunk in iter(lambda: upstream.read1(1 << 20), b""):
            self.wfile.write(chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if length is None:
            self.wfile.write(b"0\r\n\r\n")


class _Upstream:
    """One keep-alive connection to the server, for one client connection's thread."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request_stream(self, method: str, path: str, headers: dict, body=None) -> http.client.HTTPResponse:
        headers = dict(headers)
        if isinstance(body, (bytes, bytearray)):
            headers["Content-Length"] = str(len(body))
        elif body is not None:
            headers["Transfer-Encoding"] = "chunked"
        replayable = isinstance(body, (bytes, type(None)))
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                self.conn.connect()
                self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self.conn.request(method, path, body=body, headers=headers, encode_chunked=not replayable)
                return self.conn.getresponse()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt or not replayable:  # an idle connection the server closed: once more
                    raise
        raise AssertionError("unreachable")


def _limited(rfile, length: int):
    while length > 0:
        chunk = rfile.read(min(length, 1 << 20))
        if not chunk:
            raise ConnectionError("the client closed the connection in the middle of its request")
        length -= len(chunk)
        yield chunk


def _dechunk(rfile):
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return
        yield rfile.read(size)
        rfile.readline()

