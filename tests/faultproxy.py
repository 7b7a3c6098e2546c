"""A fault-injecting HTTP proxy for tests and ``scripts/faults.py`` (standard library only).

:class:`FaultProxy` listens on 127.0.0.1 and forwards each request to an upstream server (a
fake-gcs-server), failing a chosen fraction of them on the way. Point a client at
:attr:`FaultProxy.url` instead of the server (``STORAGE_EMULATOR_HOST``). Faults, by name:

``503``, ``503_retry``, ``429``
    answered by the proxy without forwarding (``503_retry`` carries ``Retry-After: 1``).
``reset_before``
    the connection is reset (RST) after the request is read, before it is forwarded.
``reset_after``
    the request is forwarded (so the server acts on it), then the client gets the status line,
    headers and half the body at most before the connection is reset: a lost or truncated
    response.
``stall``
    the request is read and never answered, until :meth:`FaultProxy.heal` (or ``stall_seconds``)
    resets the connection: longer than any client timeout.
``slow``
    forwarded, but the response starts late and its body trickles, ``slow_seconds`` in all.

Each request draws one random number from a seeded generator: with fractions ``{"503": 0.1,
"slow": 0.2}`` a tenth of the requests get a 503 and a fifth are slow. ``only`` limits faults to
some kinds of request (``json``, ``list``, ``download``, ``upload``). Request bodies are streamed
to the server as they arrive, chunked or with a Content-Length, so resumable and multipart uploads
pass; a ``Location`` header naming the server is rewritten to name the proxy, so the chunks of a
resumable upload come back through it. :attr:`FaultProxy.counts` says what was injected.

    with FaultProxy(emulator.url, seed=1, faults={"503": 0.1, "reset_after": 0.05}) as proxy:
        os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
        ...
        proxy.set_faults({"stall": 1.0})   # the network hangs
        proxy.heal()                       # and comes back: stalled connections are reset

With ``mutations_per_second=1`` (``--rate-limit 1``) the proxy keeps GCS's limit on changes of
one object: a second mutation of an object (a metadata PATCH, a DELETE, an upload, a copy or
compose to it) within a second of the last one that passed is answered 429 with GCS's
``rateLimitExceeded`` error, not forwarded; ``counts`` says how many (``429_rate``) and how
many mutations passed, by kind (``mutation_patch``...). ``GET /_faultproxy/counts`` answers the
counts as JSON, for a proxy in another process (:class:`ProxyProcess`).

With ``strict=True`` the proxy also keeps GCS's rules that fake-gcs-server leaves out
(:mod:`tests.strictgcs`): preconditions on patch, copy, delete, compose and uploads, answered
with 412s, and a metageneration that moves on every patch. The tests' session emulator sits
behind one (``tests/conftest.py``), so every layer runs with GCS's rules.

Run as a script to put one in front of a server by hand:
``python tests/faultproxy.py http://127.0.0.1:4443 --fault 503=0.1 --fault slow=0.2 [--strict]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import http.client
import http.server
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping

try:
    from tests import strictgcs
except ImportError:  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests import strictgcs

FAULTS = ("503", "503_retry", "429", "reset_before", "reset_after", "stall", "slow")
KINDS = ("json", "list", "download", "upload")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-connection", "proxy-authenticate", "proxy-authorization"}
_PIECE = 64 * 1024


def kind_of(method: str, target: str) -> str:
    """What a request to the JSON API is: an upload, a media download, a listing, or other JSON."""
    path, _, query = target.partition("?")
    if path.startswith("/upload/"):
        return "upload"
    if path.startswith("/download/") or "alt=media" in query:
        return "download"
    parts = path.rstrip("/").split("/")  # "", storage, v1, b, BUCKET, o
    if method == "GET" and len(parts) == 6 and parts[1:4] == ["storage", "v1", "b"] and parts[5] == "o":
        return "list"
    return "json"


class FaultProxy:
    """See the module docstring. Thread-safe; ``_lock`` guards the generator, the fractions,
    the counts and the set of stalled connections."""

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        faults: Mapping[str, float] | None = None,
        only: tuple[str, ...] | None = None,
        stall_seconds: float = 600.0,
        slow_seconds: tuple[float, float] = (0.2, 1.0),
        port: int = 0,
        strict: bool = False,
        mutations_per_second: float | None = None,
    ):
        """``strict``: keep GCS's precondition and metageneration rules (:mod:`tests.strictgcs`)."""
        parsed = urllib.parse.urlsplit(upstream if "//" in upstream else "http://" + upstream)
        self.upstream = f"{parsed.scheme}://{parsed.netloc}"
        self._up_host, self._up_port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.rules = strictgcs.GCSRules(self._up_host, self._up_port) if strict else None
        self.mutation_gap = 1.0 / mutations_per_second if mutations_per_second else None
        self._mutated: dict[tuple[str, str], float] = {}  # (bucket, object) -> when a mutation last passed; _lock
        self.stall_seconds = stall_seconds
        self.slow_seconds = slow_seconds
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._fractions: dict[str, float] = {}
        self._only: frozenset[str] | None = None
        self._counts: collections.Counter[str] = collections.Counter()
        self._stalled: set[threading.Event] = set()
        self.set_faults(faults or {}, only)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._server.proxy = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    # --- control -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.heal()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def set_faults(self, faults: Mapping[str, float], only: tuple[str, ...] | None = None) -> None:
        """Replace the fractions of requests to fail, by fault name (see FAULTS); the rest pass."""
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        if only is not None and set(only) - set(KINDS):
            raise ValueError(f"unknown request kinds {sorted(set(only) - set(KINDS))}; known: {KINDS}")
        if any(f < 0 for f in faults.values()) or sum(faults.values()) > 1 + 1e-9:
            raise ValueError(f"fractions must be >= 0 and add up to at most 1: {dict(faults)}")
        with self._lock:
            self._fractions = {k: float(v) for k, v in faults.items() if v > 0}
            self._only = frozenset(only) if only is not None else None

    def heal(self) -> None:
        """No more faults; every stalled connection is reset now (so its client retries at once)."""
        with self._lock:
            self._fractions = {}
            stalled, self._stalled = self._stalled, set()
        for event in stalled:
            event.set()

    @property
    def counts(self) -> dict[str, int]:
        """How often each fault was injected; ``requests`` (also by kind: ``requests_upload``...),
        ``forwarded`` (reached the server, ``reset_after`` included) and ``upstream_errors``."""
        with self._lock:
            return dict(self._counts)

    @property
    def injected(self) -> int:
        counts = self.counts
        return sum(counts.get(f, 0) for f in FAULTS)

    # --- used by the handler -------------------------------------------------------------

    def _choose(self, kind: str) -> str | None:
        with self._lock:
            self._counts["requests"] += 1
            self._counts[f"requests_{kind}"] += 1
            draw = self._random.random()
            if self._only is not None and kind not in self._only:
                return None
            edge = 0.0
            for fault in FAULTS:
                edge += self._fractions.get(fault, 0.0)
                if draw < edge:
                    self._counts[fault] += 1
                    return fault
            return None

    def _admit(self, bucket: str, name: str, op: str) -> bool:
        """A mutation of one object: may it pass (GCS's one change per object per second)?"""
        now = time.monotonic()
        with self._lock:
            last = self._mutated.get((bucket, name))
            if last is not None and now - last < self.mutation_gap:
                self._counts["429_rate"] += 1
                return False
            self._mutated[(bucket, name)] = now
            self._counts["mutations"] += 1
            self._counts[f"mutation_{op}"] += 1
            return True

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def _uniform(self, low: float, high: float) -> float:
        with self._lock:
            return self._random.uniform(low, high)

    def _stall(self, conn: socket.socket) -> None:
        """Hold ``conn`` unanswered until healed, ``stall_seconds`` pass, or its client leaves."""
        event = threading.Event()
        with self._lock:
            self._stalled.add(event)
        end = time.monotonic() + self.stall_seconds
        poller = select.poll()  # not select.select: it cannot take a descriptor numbered 1024 or more
        poller.register(conn, select.POLLIN)
        try:
            while not event.wait(0.2) and time.monotonic() < end:
                if poller.poll(0):  # readable while waiting: the client hung up
                    try:
                        if not conn.recv(1, socket.MSG_PEEK):
                            return
                    except OSError:
                        return
        finally:
            with self._lock:
                self._stalled.discard(event)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "faultproxy"
    disable_nagle_algorithm = True  # else each answer waits on the client's delayed ACK (~40-90 ms)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        self._proxy()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    @property
    def proxy(self) -> FaultProxy:
        return self.server.proxy  # type: ignore[attr-defined]

    # --- the request -------------------------------------------------------------------------

    def _proxy(self) -> None:
        if self.path == "/_faultproxy/counts":
            self._drain()
            self._send_json(200, json.dumps(self.proxy.counts).encode())
            return
        kind = kind_of(self.command, self.path)
        fault = self.proxy._choose(kind)
        body = None
        if fault is None and self.proxy.mutation_gap is not None:
            body, limited = self._rate_limited()
            if limited:
                return
        if fault in ("503", "503_retry", "429"):
            self._drain()
            self._refuse(fault)
            return
        if fault in ("reset_before", "stall"):
            self._drain()
            if fault == "stall":
                self.proxy._stall(self.connection)
            self._reset()
            return
        if self.proxy.rules is not None and kind != "download":
            self._proxy_strict(fault, body)
            return
        try:
            upstream = self._forward(body) if body is not None else self._forward()  # (a subclass may take none)
            response = upstream.getresponse()
        except OSError as exc:  # the server itself is unreachable: say so, as a gateway would
            self.proxy._count("upstream_errors")
            self._send_error(502, f"faultproxy: upstream {self.proxy.upstream} failed: {exc}")
            return
        self.proxy._count("forwarded")
        try:
            self._respond(response, fault)
        finally:
            upstream.close()

    def _rate_limited(self) -> tuple[bytes | None, bool]:
        """Refuse a mutation of an object changed less than ``mutation_gap`` ago (GCS's 429).
        Returns the request body if it had to be read to find the object's name, and whether
        the request was answered here."""
        request = strictgcs.parse(self.command, self.path)
        if request.op not in ("patch", "delete", "copy", "compose", "upload"):
            return None, False
        body, name = None, request.name
        if request.op == "upload" and name is None:
            if self.command != "POST":
                return None, False  # a resumable upload's data: its start was the mutation
            body = b"".join(self._body())
            name = strictgcs.upload_name(self.headers.get("Content-Type", ""), body)
        if name is None or self.proxy._admit(request.bucket or "", name, request.op):
            return body, False
        if body is None:
            self._drain()
        message = ("The object exceeded the rate limit for object mutation operations (create, update, and delete). "
                   "Please reduce your request rate. See https://cloud.google.com/storage/docs/gcs429.")
        error = {"code": 429, "message": message,
                 "errors": [{"message": message, "domain": "usageLimits", "reason": "rateLimitExceeded"}]}
        self._send_json(429, json.dumps({"error": error}).encode())
        return body, True

    def _proxy_strict(self, fault: str | None, body: bytes | None = None) -> None:
        """Forward under GCS's rules: check preconditions with the object held, then note and
        rewrite what the answer says (its body read whole: JSON answers are small). ``body``:
        the request's, if it was read already."""
        rules = self.proxy.rules
        request = strictgcs.parse(self.command, self.path)
        name, hold = request.name, None
        if request.op in ("patch", "delete", "copy", "compose") or (request.op == "upload" and request.guarded):
            if request.op == "upload" and name is None and body is not None:
                name = strictgcs.upload_name(self.headers.get("Content-Type", ""), body)
            elif request.op == "upload" and name is None:
                body = b"".join(self._body())
                name = strictgcs.upload_name(self.headers.get("Content-Type", ""), body)
            elif request.op == "compose":
                body = body if body is not None else b"".join(self._body())
                request.sources = strictgcs.compose_sources(body)
            if name is not None:
                hold = rules.hold(request.bucket, name)
        with hold if hold is not None else contextlib.nullcontext():
            try:
                before = rules.check(request, name) if hold is not None else None
            except strictgcs.Refused as refused:
                if body is None:
                    self._drain()
                self._send_json(refused.status, strictgcs.error_body(refused.status, str(refused)))
                return
            upstream = None
            try:
                upstream = self._forward(body)
                response = upstream.getresponse()
                answer = b"" if self.command == "HEAD" else response.read()
            except OSError as exc:
                self.proxy._count("upstream_errors")
                self._send_error(502, f"faultproxy: upstream {self.proxy.upstream} failed: {exc}")
                return
            finally:
                if upstream is not None:
                    upstream.close()
            if "json" in (response.getheader("Content-Type") or "") or request.op == "delete":
                answer = rules.rewrite(request, response.status, answer, before)
        self.proxy._count("forwarded")
        self._respond_bytes(response, answer, fault)

    def _respond_bytes(self, response: http.client.HTTPResponse, body: bytes, fault: str | None) -> None:
        """Send an answer already read whole, with the fault chosen for it."""
        delay = self.proxy._uniform(*self.proxy.slow_seconds) if fault == "slow" else 0.0
        if delay:
            time.sleep(delay)
        no_body = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        self.send_response_only(response.status, response.reason)
        for key, value in response.getheaders():
            low = key.lower()
            if low in _HOP_BY_HOP or low == "content-length":
                continue
            if low == "location":
                value = value.replace(self.proxy.upstream, self.proxy.url)
            self.send_header(key, value)
        if not no_body:
            self.send_header("Content-Length", str(len(body)))
        if response.will_close:
            self.close_connection = True
        if fault == "reset_after":
            if len(body) >= 2:
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
            self._reset()
            return
        self.end_headers()
        if not no_body:
            self.wfile.write(body)

    def _send_json(self, status: int, body: bytes) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> Iterator[bytes]:
        """The request body as it arrives, de-chunked if it was sent chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                yield self.rfile.read(size)
                self.rfile.readline()  # the CRLF after each chunk
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            piece = self.rfile.read(min(_PIECE, left))
            if not piece:
                raise ConnectionError("client closed the connection mid-body")
            left -= len(piece)
            yield piece

    def _drain(self) -> None:
        for _ in self._body():
            pass

    def _forward(self, body: bytes | None = None) -> http.client.HTTPConnection:
        """Send the request upstream, streaming its body (or sending ``body``, read already);
        return the connection."""
        conn = http.client.HTTPConnection(self.proxy._up_host, self.proxy._up_port, timeout=300)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        chunked = body is None and "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        for key, value in self.headers.items():
            low = key.lower()
            if low == "host":
                value = f"{self.proxy._up_host}:{self.proxy._up_port}"
            elif low in _HOP_BY_HOP or (body is not None and low == "content-length"):
                continue
            conn.putheader(key, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        for piece in ([body] if body is not None else self._body()):
            if chunked:
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                conn.send(piece)
        if chunked:
            conn.send(b"0\r\n\r\n")
        return conn

    # --- the response --------------------------------------------------------------------------

    def _respond(self, response: http.client.HTTPResponse, fault: str | None) -> None:
        proxy = self.proxy
        delay = proxy._uniform(*proxy.slow_seconds) if fault == "slow" else 0.0
        if delay:
            time.sleep(delay / 2)
        length = response.getheader("Content-Length")
        no_body = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        self.send_response_only(response.status, response.reason)
        for key, value in response.getheaders():
            low = key.lower()
            if low in _HOP_BY_HOP or (low == "content-length" and length is None):
                continue
            if low == "location":
                value = value.replace(proxy.upstream, proxy.url)
            self.send_header(key, value)
        chunked = length is None and not no_body
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        if response.will_close:
            self.close_connection = True
        if fault == "reset_after":
            body = b"" if no_body else response.read()
            if len(body) >= 2:  # the head and half the body; otherwise nothing at all arrives
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
            self._reset()
            return
        self.end_headers()
        if no_body:
            return
        pieces = 0
        while piece := response.read(_PIECE):
            if delay and pieces < 4:
                time.sleep(delay / 8)  # trickle: the first pieces come slowly
            pieces += 1
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _refuse(self, fault: str) -> None:
        status = 429 if fault == "429" else 503
        reason = "Too Many Requests" if status == 429 else "Service Unavailable"
        body = json.dumps({"error": {"code": status, "message": f"{reason} (injected by faultproxy)",
                                     "errors": [{"message": reason, "reason": "backendError"}]}}).encode()
        self.send_response_only(status, reason)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        if fault == "503_retry":
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, message: str) -> None:
        body = json.dumps({"error": {"code": status, "message": message}}).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _reset(self) -> None:
        """Close the client's connection with a TCP RST (SO_LINGER 0), not a clean FIN."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # the last reference to the descriptor but the socket's own
            self.connection.close()
        except OSError:
            pass


class ProxyProcess:
    """A :class:`FaultProxy` in a process of its own (``python tests/faultproxy.py``), stopped by
    its PID. The session's strict proxy runs this way: a test process blocked in a call that holds
    the GIL (``mmap.flush`` is one) on a file of a mount whose daemon waits on the proxy would
    otherwise stall the proxy with it, until the daemon's request timed out."""

    def __init__(self, upstream: str, *, strict: bool = False, seed: int = 0,
                 mutations_per_second: float | None = None):
        self.upstream, self.strict, self.seed = upstream, strict, seed
        self.mutations_per_second = mutations_per_second
        self.url = ""
        self._proc: subprocess.Popen | None = None

    def start(self) -> ProxyProcess:
        command = [sys.executable, os.path.abspath(__file__), self.upstream, "--seed", str(self.seed)]
        if self.strict:
            command.append("--strict")
        if self.mutations_per_second:
            command += ["--rate-limit", str(self.mutations_per_second)]
        self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                      preexec_fn=_die_with_parent)
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line.startswith("faultproxy on "):
            self.stop()
            raise RuntimeError(f"faultproxy did not start: {line!r}")
        self.url = line.split()[2]
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout:
            proc.stdout.close()

    @property
    def counts(self) -> dict[str, int]:
        """The proxy's :attr:`FaultProxy.counts`, asked over HTTP."""
        parsed = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
        try:
            conn.request("GET", "/_faultproxy/counts")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _parse_fault(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    return name, float(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A fault-injecting proxy in front of fake-gcs-server.")
    p.add_argument("upstream", help="the server's URL, e.g. http://127.0.0.1:4443")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="keep GCS's precondition and metageneration rules")
    p.add_argument("--rate-limit", type=float, default=None, metavar="PER_SECOND",
                   help="mutations of one object allowed per second (GCS: 1); more are answered 429")
    p.add_argument("--fault", action="append", type=_parse_fault, default=[], metavar="NAME=FRACTION",
                   help=f"one of {', '.join(FAULTS)}; repeat for several")
    args = p.parse_args(argv)
    with FaultProxy(args.upstream, seed=args.seed, faults=dict(args.fault), port=args.port,
                    strict=args.strict, mutations_per_second=args.rate_limit) as proxy:
        print(f"faultproxy on {proxy.url} -> {proxy.upstream}; Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        print(json.dumps(proxy.counts, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
