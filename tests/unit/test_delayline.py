"""tests/delayline.py, the delay line scripts/bench.py --rtt-ms puts in front of the emulator.

Only lower bounds on time are asserted (a loaded machine can make anything slower, nothing
faster): a request through the line takes at least the round trip, a fresh connection at least
two (the modelled handshake). Bytes arrive intact and in order, in both directions, also with
many connections at once; stop() leaves no thread, no process and no listening port behind.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.delayline import DelayLine, DelayLineProcess

RTT_MS = 40


class EchoServer:
    """Echoes every byte back until EOF, then closes; one thread per connection."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _echo(conn):
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.accepting.join(5)
        for t in self.threads:
            t.join(5)


@pytest.fixture
def echo():
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


def roundtrip(port: int, data: bytes) -> tuple[bytes, float]:
    """Send ``data``, half-close, read everything back; the bytes and the seconds it took."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
        sender.start()
        got = bytearray()
        while chunk := s.recv(1 << 20):
            got += chunk
        sender.join()
    return bytes(got), time.perf_counter() - t0


def test_a_request_takes_at_least_the_round_trip_and_a_new_connection_one_more(echo):
    with DelayLine(("127.0.0.1", echo.port), rtt_ms=RTT_MS) as line:
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", line.port)) as s:
            s.sendall(b"ping")
            assert s.recv(16) == b"ping"
            first = time.perf_counter() - t0
            t1 = time.perf_counter()
            s.sendall(b"pong")
            assert s.recv(16) == b"pong"
            second = time.perf_counter() - t1
    assert first >= 2 * RTT_MS / 1000 * 0.98, first  # handshake + request
    assert second >= RTT_MS / 1000 * 0.98, second  # request on an open connection
    assert second < first


def test_without_the_handshake_a_fresh_connection_pays_one_round_trip(echo):
    with DelayLine(("127.0.0.1", echo.port), rtt_ms=RTT_MS, handshake=False) as line:
        got, took = roundtrip(line.port, b"x")
    assert got == b"x"
    assert took >= RTT_MS / 1000 * 0.98


def test_bytes_arrive_intact_and_in_order(echo):
    data = random.Random(1).randbytes(12 << 20) + b"end"
    with DelayLine(("127.0.0.1", echo.port), rtt_ms=10) as line:
        got, took = roundtrip(line.port, data)
    assert len(got) == len(data)
    assert got == data


def test_a_small_window_slows_but_never_loses_or_reorders(echo):
    data = os.urandom(3 << 20)
    with DelayLine(("127.0.0.1", echo.port), rtt_ms=2, window=64 << 10) as line:
        got, _ = roundtrip(line.port, data)
    assert got == data


def test_a_receiver_that_stops_reading_stops_the_sender_then_gets_every_byte():
    """Back-pressure: the line holds at most ``window`` bytes per direction, so a sender whose
    receiver does not read ends up blocked (a line that buffered without bound would take it all)."""
    data = random.Random(2).randbytes(96 << 20)
    with socket.create_server(("127.0.0.1", 0)) as sink, \
            DelayLine(("127.0.0.1", sink.getsockname()[1]), rtt_ms=2, window=1 << 20) as line, \
            socket.create_connection(("127.0.0.1", line.port)) as client:
        server, _ = sink.accept()
        sent = [0]

        def send():
            for at in range(0, len(data), 1 << 20):
                client.sendall(data[at:at + (1 << 20)])
                sent[0] = at + (1 << 20)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        last = -1
        while sent[0] != last:  # until the sender makes no progress
            last = sent[0]
            time.sleep(0.5)
        assert sent[0] < len(data) // 2, sent[0]  # the kernel's buffers and the window, no more
        with server:
            got = bytearray()
            while chunk := server.recv(1 << 20):
                got += chunk
        sender.join(10)
    assert len(got) == len(data)
    assert got == data


def test_a_reset_on_one_side_closes_the_other():
    with socket.create_server(("127.0.0.1", 0)) as sink, \
            DelayLine(("127.0.0.1", sink.getsockname()[1]), rtt_ms=RTT_MS) as line, \
            socket.create_connection(("127.0.0.1", line.port)) as client:
        client.sendall(b"hello")
        server, _ = sink.accept()
        with server:
            assert server.recv(16) == b"hello"
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # closed with a reset, and the client never half-closed: the line closes the client's
        # side too, so its reads end and its writes fail instead of waiting forever
        client.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(16) == b""
        with pytest.raises(OSError):
            for _ in range(100):
                client.sendall(b"x" * 4096)
                time.sleep(0.01)


def test_many_concurrent_connections(echo):
    n = 64
    payloads = [random.Random(i).randbytes(1000 + 997 * i) for i in range(n)]
    with DelayLine(("127.0.0.1", echo.port), rtt_ms=RTT_MS) as line:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda p: roundtrip(line.port, p), payloads))
        took = time.perf_counter() - t0
        assert line.connections == n
    assert [got for got, _ in results] == payloads
    assert all(t >= 2 * RTT_MS / 1000 * 0.98 for _, t in results)
    # Concurrent, not one after another: n connections served one at a time cannot take less
    # than n * 2 RTTs (a floor, not a speed target: a loaded machine stays far below it).
    assert took < n * 2 * RTT_MS / 1000 * 0.75, took


def test_stop_closes_open_connections_and_leaves_no_thread(echo):
    before = set(threading.enumerate())
    line = DelayLine(("127.0.0.1", echo.port), rtt_ms=RTT_MS).start()
    port = line.port
    idle = socket.create_connection(("127.0.0.1", port))
    idle.sendall(b"hello")
    assert idle.recv(16) == b"hello"
    line.stop()
    idle.settimeout(5)
    assert idle.recv(16) == b""  # closed by the line
    idle.close()
    for t in echo.threads:  # the echo server's side of the line's upstream connection ends too
        t.join(5)
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    line.stop()  # twice is fine


def test_the_upstream_can_be_given_after_the_line_listens(echo):
    with DelayLine(None, rtt_ms=5) as line:
        line.upstream = ("127.0.0.1", echo.port)
        got, _ = roundtrip(line.port, b"late")
    assert got == b"late"


def test_the_process_variant_relays_and_stops_by_pid(echo):
    line = DelayLineProcess(None, rtt_ms=RTT_MS).start()
    try:
        pid = line.pid
        line.set_upstream("127.0.0.1", echo.port)
        assert line.connections() == 0
        got, took = roundtrip(line.port, b"through a child process")
        assert got == b"through a child process"
        assert took >= 2 * RTT_MS / 1000 * 0.98
        assert line.connections() == 1
    finally:
        line.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
