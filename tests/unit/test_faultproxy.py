"""The fault-injecting proxy (tests/faultproxy.py) on the wire, in front of a tiny local server."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import threading
import time

import pytest

from tests.faultproxy import FaultProxy, kind_of


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Answers every request with JSON saying what it received; ``/big`` is 200 KB, chunked."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, bytes]] = []

    def log_message(self, *args):
        pass

    def _answer(self):
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            body = b""
            while size := int(self.rfile.readline().strip(), 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, body))
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(200):
                piece = bytes([i % 256]) * 1000
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        reply = json.dumps({"method": self.command, "path": self.path, "body": body.decode(),
                            "host": self.headers["Host"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("Location", f"http://{self.headers['Host']}/upload/next?upload_id=1")
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer


@pytest.fixture
def upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    _Upstream.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream):
    with FaultProxy(upstream, seed=7, slow_seconds=(0.05, 0.1), stall_seconds=30) as p:
        yield p


def request(proxy, method="GET", path="/storage/v1/b/x/o/a", body=None, headers=None, timeout=10.0):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)
    headers = headers or {}
    try:
        conn.request(method, path, body=body, headers=headers, encode_chunked="Transfer-Encoding" in headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_requests_pass_through_with_their_bodies(proxy, upstream):
    status, headers, body = request(proxy, "POST", "/upload/storage/v1/b/x/o?uploadType=resumable", body=b"abc")
    assert status == 200 and json.loads(body)["body"] == "abc"
    assert json.loads(body)["host"] == upstream.split("//")[1]  # the server sees itself as the host
    assert headers["Location"] == f"{proxy.url}/upload/next?upload_id=1"  # chunks come back through us

    chunks = iter([b"first,", b"second"])  # a generator body goes chunked
    status, _, body = request(proxy, "PUT", "/upload/next?upload_id=1", body=chunks,
                              headers={"Transfer-Encoding": "chunked"})
    assert status == 200 and json.loads(body)["body"] == "first,second"

    status, headers, body = request(proxy, "GET", "/big")
    assert status == 200 and body == b"".join(bytes([i % 256]) * 1000 for i in range(200))
    assert proxy.counts["forwarded"] == 3 and proxy.injected == 0


@pytest.mark.parametrize("fault,status", [("503", 503), ("503_retry", 503), ("429", 429)])
def test_error_answers_are_not_forwarded(proxy, fault, status):
    proxy.set_faults({fault: 1.0})
    got, headers, body = request(proxy, "POST", "/upload/storage/v1/b/x/o?uploadType=multipart", body=b"data")
    assert got == status and json.loads(body)["error"]["code"] == status
    assert headers.get("Retry-After") == ("1" if fault == "503_retry" else None)
    assert _Upstream.seen == [] and proxy.counts[fault] == 1


def test_reset_before_never_reaches_the_server(proxy):
    proxy.set_faults({"reset_before": 1.0})
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        request(proxy, "DELETE", "/storage/v1/b/x/o/a")
    assert _Upstream.seen == []


def test_reset_after_reaches_the_server_and_truncates_the_answer(proxy):
    proxy.set_faults({"reset_after": 1.0})
    with pytest.raises((ConnectionError, http.client.IncompleteRead, http.client.RemoteDisconnected)):
        request(proxy, "GET", "/big")
    with pytest.raises((ConnectionError, http.client.IncompleteRead, http.client.RemoteDisconnected)):
        request(proxy, "POST", "/storage/v1/b/x/o/a/rewriteTo/b/x/o/b", body=b"{}")
    assert [m for m, _, _ in _Upstream.seen] == ["GET", "POST"]  # the server acted on both


def test_a_stall_outlasts_the_client_until_healed(proxy):
    proxy.set_faults({"stall": 1.0})
    with pytest.raises(socket.timeout):
        request(proxy, timeout=0.5)
    failed = []

    def wait_for_an_answer():
        try:
            request(proxy, timeout=20)
        except (ConnectionError, http.client.RemoteDisconnected) as exc:
            failed.append(exc)

    stalled = threading.Thread(target=wait_for_an_answer)
    stalled.start()
    while proxy.counts.get("stall", 0) < 2:
        time.sleep(0.01)
    proxy.heal()  # the network is back: the stalled connection is reset, new requests pass
    stalled.join(10)
    assert not stalled.is_alive() and failed
    assert request(proxy)[0] == 200
    assert proxy.counts["stall"] == 2


def test_slow_answers_arrive_whole(proxy):
    proxy.set_faults({"slow": 1.0})
    assert request(proxy, "GET", "/big")[2] == b"".join(bytes([i % 256]) * 1000 for i in range(200))
    assert proxy.counts["slow"] == 1 and proxy.counts["forwarded"] == 1


def test_the_same_seed_injects_the_same_faults(upstream):
    runs = []
    for _ in range(2):
        with FaultProxy(upstream, seed=42, faults={"503": 0.3, "429": 0.2}) as p:
            runs.append([request(p)[0] for _ in range(30)])
    assert runs[0] == runs[1] and {200, 503, 429} == set(runs[0])


def test_only_some_kinds_of_request_can_be_faulted(proxy):
    proxy.set_faults({"503": 1.0}, only=("upload",))
    assert request(proxy, "GET", "/storage/v1/b/x/o/a?alt=media")[0] == 200
    assert request(proxy, "POST", "/upload/storage/v1/b/x/o", body=b"x")[0] == 503


def test_fractions_are_checked():
    with pytest.raises(ValueError, match="unknown faults"):
        FaultProxy("http://127.0.0.1:1", faults={"boom": 0.1})
    with pytest.raises(ValueError, match="add up to at most 1"):
        FaultProxy("http://127.0.0.1:1", faults={"503": 0.7, "stall": 0.7})


def test_request_kinds():
    assert kind_of("POST", "/upload/storage/v1/b/x/o?uploadType=multipart") == "upload"
    assert kind_of("GET", "/storage/v1/b/x/o/a%2Fb?alt=media") == "download"
    assert kind_of("GET", "/download/storage/v1/b/x/o/a") == "download"
    assert kind_of("GET", "/storage/v1/b/x/o?prefix=d%2F&delimiter=%2F") == "list"
    assert kind_of("GET", "/storage/v1/b/x/o/a") == "json"
    assert kind_of("PATCH", "/storage/v1/b/x/o/a") == "json"


def _multipart(name: str) -> tuple[bytes, dict]:
    body = (b'--b\r\nContent-Type: application/json\r\n\r\n' + json.dumps({"name": name}).encode()
            + b'\r\n--b\r\nContent-Type: text/plain\r\n\r\ndata\r\n--b--\r\n')
    return body, {"Content-Type": "multipart/related; boundary=b"}


def test_a_second_mutation_of_an_object_within_a_second_is_answered_429(upstream):
    """GCS's limit of about one change of an object per second: the proxy keeps it when asked,
    whatever the change (a patch, a delete, an upload, a copy to it), object by object."""
    with FaultProxy(upstream, mutations_per_second=1.0) as p:
        assert request(p, "PATCH", "/storage/v1/b/x/o/a", body=b"{}")[0] == 200
        got, _, body = request(p, "PATCH", "/storage/v1/b/x/o/a", body=b"{}")
        error = json.loads(body)["error"]
        assert got == 429 and error["code"] == 429 and error["errors"][0]["reason"] == "rateLimitExceeded"
        assert request(p, "DELETE", "/storage/v1/b/x/o/a")[0] == 429
        upload, headers = _multipart("a")
        assert request(p, "POST", "/upload/storage/v1/b/x/o?uploadType=multipart", upload, headers)[0] == 429
        assert request(p, "POST", "/storage/v1/b/x/o/other/copyTo/b/x/o/a", b"{}")[0] == 429
        # Other objects, and reads of this one, pass.
        assert request(p, "POST", "/upload/storage/v1/b/x/o?uploadType=multipart", *_multipart("b"))[0] == 200
        assert request(p, "GET", "/storage/v1/b/x/o/a")[0] == 200
        assert p.counts["429_rate"] == 4 and p.counts["mutations"] == 2
        forwarded = [(m, path) for m, path, _ in _Upstream.seen]
        assert forwarded.count(("PATCH", "/storage/v1/b/x/o/a")) == 1
        assert ("DELETE", "/storage/v1/b/x/o/a") not in forwarded
        seen_bodies = [b for m, path, b in _Upstream.seen if path.startswith("/upload/")]
        assert seen_bodies == [_multipart("b")[0]]  # a body read to find its name is forwarded whole
        time.sleep(1.05)  # (the limit is in time: a second later the object may change again)
        assert request(p, "PATCH", "/storage/v1/b/x/o/a", body=b"{}")[0] == 200


def test_a_proxy_in_its_own_process_keeps_the_limit_and_reports_counts(upstream):
    from tests.faultproxy import ProxyProcess

    with ProxyProcess(upstream, mutations_per_second=1.0) as p:
        p.port = int(p.url.rsplit(":", 1)[1])
        assert request(p, "PATCH", "/storage/v1/b/x/o/a", body=b"{}")[0] == 200
        assert request(p, "PATCH", "/storage/v1/b/x/o/a", body=b"{}")[0] == 429
        assert p.counts["429_rate"] == 1 and p.counts["mutation_patch"] == 1
