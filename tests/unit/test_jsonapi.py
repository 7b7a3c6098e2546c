"""The direct JSON API path against a scripted HTTP server: answers fake-gcs-server never gives
(a range ignored, a wrong Content-Range, a 401 that a token refresh cures)."""

from __future__ import annotations

import http.server
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials

from octuefs.storage.jsonapi import JsonApi

DATA = bytes(range(256)) * 64  # 16 KiB


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answer):
        self.answer = answer  # (handler) -> None
        self.seen: list = []
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.seen.append((self.path, self.headers))  # (case-insensitive)
        self.server.answer(self)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.do_GET()

    def log_message(self, *args):
        pass


def _send(handler, status, body, headers=()):
    handler.send_response(status)
    for k, v in headers:
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def serve():
    servers = []

    def start(answer, credentials=None):
        server = _Server(answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        api = JsonApi(credentials or AnonymousCredentials(), f"http://127.0.0.1:{server.server_port}", "b")
        return api, server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _read(api, start, end, tmp_path):
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        n = api.read_range("o", start, end, None, 10, lambda off, chunk: os.pwrite(fd, chunk, off), 4096)
        return n, os.pread(fd, end, start)
    finally:
        os.close(fd)


def test_a_server_that_ignores_the_range_still_gives_exactly_the_range(serve, tmp_path):
    api, server = serve(lambda h: _send(h, 200, DATA))
    assert _read(api, 5000, 9000, tmp_path) == (4000, DATA[5000:9000])
    assert server.seen[0][1]["Range"] == "bytes=5000-8999"


def test_a_wrong_content_range_is_an_error_not_wrong_bytes(serve, tmp_path):
    api, _ = serve(lambda h: _send(h, 206, DATA[0:4000], [("Content-Range", f"bytes 0-3999/{len(DATA)}")]))
    with pytest.raises(api_exceptions.GoogleAPICallError):
        _read(api, 5000, 9000, tmp_path)


def test_an_error_keeps_the_servers_message_first(serve, tmp_path):
    body = b'{"error": {"code": 404, "message": "The specified bucket does not exist."}}'
    api, _ = serve(lambda h: _send(h, 404, body))
    with pytest.raises(api_exceptions.NotFound) as caught:
        api.get_object("x" * 400, None, 10)
    assert str(caught.value.message).startswith("The specified bucket does not exist.")


class _Tokens(Credentials):
    """Credentials whose first token the server refuses (expired early, say)."""

    def __init__(self):
        super().__init__()
        self.token, self.refreshes = "old", 0

    def refresh(self, request):
        self.refreshes += 1
        self.token = "new"


def test_a_401_refreshes_the_token_once_and_retries(serve, tmp_path):
    def answer(h):
        if h.headers["Authorization"] == "Bearer new":
            _send(h, 200, b'{"name": "o"}')
        else:
            _send(h, 401, b'{"error": {"code": 401, "message": "expired"}}')

    credentials = _Tokens()
    api, server = serve(answer, credentials)
    assert api.get_object("o", None, 10) == {"name": "o"}
    assert credentials.refreshes == 1 and [h["Authorization"] for _, h in server.seen] == ["Bearer old", "Bearer new"]


def test_a_streamed_upload_refused_401_is_not_sent_again_half_empty(serve, tmp_path):
    """A body read from a file cannot be sent twice: the 401 stands (the caller retries the
    whole request) but the token is refreshed for that retry."""
    src = tmp_path / "part"
    src.write_bytes(DATA)
    credentials = _Tokens()
    api, server = serve(lambda h: _send(h, 401, b'{"error": {"code": 401, "message": "expired"}}'), credentials)
    with pytest.raises(api_exceptions.Unauthorized):
        api.upload_range("p/00", str(src), 0, len(DATA), 10)
    assert credentials.refreshes == 1 and len(server.seen) == 1


def test_a_pages_next_token_is_read_without_decoding_it_escapes_included():
    from octuefs.storage.jsonapi import guess_next_token

    assert guess_next_token(b'{"kind": "storage#objects", "nextPageToken": "Q2Fy\\/bw==", "items": []}') == "Q2Fy/bw=="
    assert guess_next_token(b'{"items": [{"metadata": {"a": "\\"nextPageToken\\": \\"no\\""}}]}') is None
    assert guess_next_token(b'{"items": [], "nextPageToken": ""}') is None
    assert guess_next_token(b"not json") is None


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"[]", b"null"])
def test_a_listing_answer_that_is_no_json_object_is_a_clear_error(serve, body):
    from google.cloud import storage

    from octuefs.errors import StorageError
    from octuefs.storage.gcs import GCSBucket

    _, server = serve(lambda h: _send(h, 200, body, [("Content-Type", "application/json")]))
    url = f"http://127.0.0.1:{server.server_port}"
    client = storage.Client(project="p", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})
    bucket = GCSBucket("b", client=client)
    with pytest.raises(StorageError, match="listing 'd/' returned"):
        bucket.list_page("d/")
    with pytest.raises(StorageError, match="listing 'd/' returned"):
        list(bucket.iter_pages_ahead("d/"))


class _SlowTokenServer(Credentials):
    """Credentials whose token must be fetched from a token server that never answers."""

    def __init__(self, token_url):
        super().__init__()
        self.token_url = token_url

    def refresh(self, request):
        request(self.token_url, method="POST", body=b"grant_type=x")
        self.token = "fresh"


def test_a_token_refresh_is_bounded_by_the_callers_timeout(serve):
    """A call cut to --op-timeout must not wait the library's 60 s for a stalled token server."""
    import socket
    import time

    from google.auth import exceptions as auth_exceptions

    from octuefs.errors import TransientError
    from octuefs.storage.gcs import translate_error

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    try:
        credentials = _SlowTokenServer(f"http://127.0.0.1:{silent.getsockname()[1]}/token")
        api, server = serve(lambda h: _send(h, 200, b'{"name": "o"}'), credentials)
        started = time.monotonic()
        with pytest.raises(auth_exceptions.TransportError) as caught:
            api.get_object("o", None, (0.5, 0.5))
        assert time.monotonic() - started < 3
        assert isinstance(translate_error(caught.value, "b", "o"), TransientError)  # retried, within the deadline
        assert server.seen == []  # no request went without its token
    finally:
        silent.close()


def test_a_pinned_read_broken_mid_body_goes_on_from_the_last_byte_it_got(serve, tmp_path):
    """A read-ahead GET may be 32 MiB long: a connection lost half-way is not a reason to fetch
    what already arrived again (the generation is pinned, so the rest is of the same bytes)."""
    from octuefs.storage.base import RetryPolicy
    from octuefs.storage.gcs import GCSBucket
    from octuefs.storage.gcsreads import READ_CHUNK

    data = os.urandom(3 * READ_CHUNK)
    ranges = []

    def answer(h):
        lo, hi = map(int, h.headers["Range"].split("=")[1].split("-"))
        ranges.append((lo, hi + 1))
        assert "generation=7" in h.path
        body = data[lo : hi + 1]
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {lo}-{hi}/{len(data)}")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if len(ranges) == 1:  # two pieces of the body, then the connection drops
            h.wfile.write(body[: 2 * READ_CHUNK])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
        else:
            h.wfile.write(body)

    _, server = serve(answer)
    bucket = GCSBucket("b", endpoint=f"http://127.0.0.1:{server.server_port}",
                       retry=RetryPolicy(initial_delay=0.01, max_delay=0.05, deadline=10))
    fd = os.open(tmp_path / "copy", os.O_RDWR | os.O_CREAT)
    reported = []
    try:
        assert bucket.read_range_into("o", 5, len(data), fd, generation=7, progress=reported.append) == len(data) - 5
        assert os.pread(fd, len(data), 5) == data[5:]
    finally:
        os.close(fd)
    assert ranges[0] == (5, len(data))
    assert ranges[1][0] > 5 and ranges[1][1] == len(data)  # on from where the first one broke
    assert reported[-1] == len(data)


def test_requests_are_timed_so_the_uploader_knows_how_far_the_bucket_is(serve):
    """Small requests one after another, through a line that adds 20 ms to each round trip:
    the fastest took at least that, and a typical one's CPU far less; of requests that ran with
    many others, most are not timed (their wall time is spent waiting for the CPU too)."""
    from tests.delayline import DelayLine

    resource = b'{"name": "o", "size": "1", "generation": "1", "metageneration": "1", "updated": "2026-01-01T00:00:00Z"}'
    api, server = serve(lambda h: _send(h, 200, resource))
    assert api.round_trip() == (0.0, 0.0, 0)
    with DelayLine(("127.0.0.1", server.server_port), rtt_ms=20) as line:
        far = JsonApi(AnonymousCredentials(), line.url, "b")
        for _ in range(4):
            far.get_object("o", None, 10)
        wall, cpu, timed = far.round_trip()
        assert timed == 4 and wall >= 0.020 and cpu < wall / 4

        many = threading.Barrier(8)

        def together(_):
            many.wait(10)
            far.get_object("o", None, 10)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(together, range(8)))
        assert far.round_trip()[2] < 4 + 8  # (the first to start may have run alone a while)
