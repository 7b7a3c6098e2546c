"""A delay line on loopback: a TCP relay that adds a round-trip time, with no bandwidth cap.

The kernel here has no netem, so ``scripts/bench.py --rtt-ms N`` puts this between the clients
(the mount, the google-cloud-storage baseline) and fake-gcs-server. Standard library only
(asyncio), independent of octuefs.

What it models, per connection:

- each chunk read from one side is written to the other ``rtt/2`` after it arrived, in both
  directions, in order: a request and its answer take at least one RTT;
- a new connection pays one RTT before its first byte may reach the server, as a TCP handshake
  would (SYN, SYN-ACK, then the data): the first request on a fresh connection takes ~2 RTTs;
- no bandwidth cap: the relay reads as fast as the sender writes and holds what is in flight
  (up to ``window`` bytes per direction, far above any bandwidth-delay product on loopback:
  only a receiver slower than its sender ever meets it);
- a half-close (EOF) is passed on ``rtt/2`` later, after the bytes before it; a reset or an
  error on one side closes both.

A real network's delay costs the hosts nothing, so the relay keeps its own CPU low: each chunk is
received (``recv_into``) into a pooled buffer and sent (``sendmsg``) from there when due, on
non-blocking sockets driven by the loop's readers, writers and timers; no copy in user space.

:class:`DelayLine` runs the relay on an asyncio loop in a thread of the calling process (tests);
:class:`DelayLineProcess` runs it as a child process (``python tests/delayline.py``), so that its
CPU does not compete for the GIL with the process being measured (the bench). Both stop cleanly:
``stop()`` closes every connection and leaves no thread or process behind.

    with DelayLine(("127.0.0.1", server_port), rtt_ms=20) as line:
        urllib.request.urlopen(f"{line.url}/storage/v1/b")   # >= 40 ms: handshake + request

The upstream may be given after the line is listening (``line.upstream = (host, port)``), so a
server that must know the line's URL before it starts (fake-gcs-server's ``-external-url``) can
be started after it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading

_BLOCK = 1024 * 1024  # receive buffers; a chunk is a slice of one, sent from where it was received
_MIN_ROOM = 64 * 1024  # a block with less room left is retired (once sent) for a fresh one
_KEEP = 32  # free blocks kept for reuse, per line
_IOV = 512  # chunks handed to one sendmsg
_WINDOW = 64 * 1024 * 1024


class _Block:
    """A receive buffer. Chunks are memoryview slices of it (never copied); it is reused once
    every chunk cut from it has been sent and no direction is still receiving into it."""

    __slots__ = ("view", "used", "pending", "live")

    def __init__(self):
        self.view = memoryview(bytearray(_BLOCK))
        self.used = 0  # bytes of it handed out as chunks
        self.pending = 0  # of those chunks, how many are not yet sent
        self.live = False  # some direction is receiving into it


class _Pipe:
    """One direction of one connection: chunks received from ``src`` are sent to ``dst`` at
    ``arrival + delay``, in order. ``recv_into`` a block, ``sendmsg`` from it: the only copies
    are the kernel's. Invariant: while ``queue`` is not empty, exactly one of a timer (the head
    is not due yet) or a writer on ``dst`` (the head is due but ``dst`` is full) is armed."""

    def __init__(self, conn: _Connection, src: socket.socket, dst: socket.socket, not_before: float):
        self.conn, self.src, self.dst = conn, src, dst
        self.loop = conn.line._loop
        self.pool = conn.line._pool
        self.delay = conn.line.rtt / 2
        self.not_before = not_before  # the end of the modelled handshake
        self.window = conn.line.window
        self.queue: collections.deque = collections.deque()  # (due, chunk or None for EOF, block)
        self.queued = 0  # bytes in the queue, at most ``window``
        self.block: _Block | None = None
        self.reading = self.writing = self.eof = self.done = False
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.reading = True
        self.loop.add_reader(self.src, self._receive)

    def stop(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.src)
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.dst)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()

    def _receive(self) -> None:
        block = self.block
        if block is not None and block.pending == 0:
            block.used = 0  # all sent: start it over
        elif block is None or _BLOCK - block.used < _MIN_ROOM:
            if block is not None:
                block.live = False
            block = self.block = self.pool.take()
            block.live = True
        start = block.used
        room = min(_BLOCK - start, max(self.window - self.queued, 1))  # reading: room in the window
        try:
            n = self.src.recv_into(block.view[start:start + room])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.conn.close()
            return
        due = max(self.loop.time(), self.not_before) + self.delay
        if n == 0:
            self.eof = True
            self._stop_reading()
            self.queue.append((due, None, None))
        else:
            block.used += n
            block.pending += 1
            self.queue.append((due, block.view[start:start + n], block))
            self.queued += n
            if self.queued >= self.window:
                self._stop_reading()  # back-pressure: the sender waits until some is sent
        if len(self.queue) == 1:
            self.timer = self.loop.call_at(due, self._send)

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.src)

    def _send(self) -> None:
        self.timer = None
        queue, now, full = self.queue, self.loop.time(), False
        while queue and queue[0][0] <= now and not full:
            if queue[0][1] is None:  # EOF, after every byte before it
                queue.popleft()
                self._stop_writing()
                try:
                    self.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    self.conn.close()
                    return
                self.done = True
                self.conn.pipe_done()
                return
            # Everything already due goes in one sendmsg: in order, and no slower than the sender.
            chunks = []
            for due, chunk, _ in queue:
                if due > now or chunk is None or len(chunks) == _IOV:
                    break
                chunks.append(chunk)
            try:
                sent = self.dst.sendmsg(chunks)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.conn.close()
                return
            full = sent < sum(len(c) for c in chunks)
            self.queued -= sent
            while sent:
                due, chunk, block = queue[0]
                if sent < len(chunk):
                    queue[0] = (due, chunk[sent:], block)
                    break
                sent -= len(chunk)
                queue.popleft()
                block.pending -= 1
                if block.pending == 0 and not block.live:
                    self.pool.give(block)
        if full:  # dst cannot take more now: go on when it can
            if not self.writing:
                self.writing = True
                self.loop.add_writer(self.dst, self._send)
        else:
            self._stop_writing()
            if queue:
                self.timer = self.loop.call_at(queue[0][0], self._send)
        if not self.reading and not self.eof and self.queued < self.window:
            self.reading = True
            self.loop.add_reader(self.src, self._receive)

    def _stop_writing(self) -> None:
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.dst)


class _Pool:
    """Free receive blocks, shared by the connections of one line (its loop thread only)."""

    def __init__(self):
        self.free: list[_Block] = []

    def take(self) -> _Block:
        if self.free:
            block = self.free.pop()
            block.used = 0
            return block
        return _Block()

    def give(self, block: _Block) -> None:
        if len(self.free) < _KEEP:
            self.free.append(block)


class _Connection:
    """A client socket and its upstream socket, relayed both ways; closes both when both
    directions have passed their EOF on, or at the first error on either side."""

    def __init__(self, line: DelayLine, client: socket.socket, server: socket.socket, accepted: float):
        self.line, self.socks, self.closed = line, (client, server), False
        self.up = _Pipe(self, client, server, accepted + line.rtt if line.handshake else 0.0)
        self.down = _Pipe(self, server, client, 0.0)
        line._connections.add(self)
        self.up.start()
        self.down.start()

    def pipe_done(self) -> None:
        if self.up.done and self.down.done:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.up.stop()
        self.down.stop()
        for sock in self.socks:
            sock.close()
        self.line._connections.discard(self)


class DelayLine:
    """The relay on ``127.0.0.1:<port>`` (free port unless given), run in a thread; a context
    manager. ``upstream``: ``(host, port)`` of the server (may be set later, before the first
    connection). ``rtt_ms``: the round-trip time added. ``handshake``: a new connection pays one
    RTT (default True). :attr:`connections` counts the connections accepted."""

    host = "127.0.0.1"

    def __init__(self, upstream: tuple[str, int] | None = None, rtt_ms: float = 20.0, *, port: int = 0,
                 handshake: bool = True, window: int = _WINDOW):
        self.upstream = upstream
        self.rtt = rtt_ms / 1000.0
        self.handshake = handshake
        self.window = window
        self.port = port
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()  # connecting upstream
        self._connections: set[_Connection] = set()
        self._pool = _Pool()
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> DelayLine:
        self._thread = threading.Thread(target=self._run, name=f"delayline-{self.rtt * 1000:g}ms", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or not self._ready.is_set():
            self.stop()
            raise RuntimeError(f"delay line did not start: {self._error}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError("delay line thread did not stop")
        self._thread = None

    def __enter__(self) -> DelayLine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            try:
                self._listener = socket.create_server((self.host, self.port), backlog=1024)
                self._listener.setblocking(False)
                loop.add_reader(self._listener, self._accept)
            except BaseException as exc:
                self._error = exc
                return
            self.port = self._listener.getsockname()[1]
            self._ready.set()
            loop.run_forever()
        finally:
            if self._listener is not None:
                self._listener.close()
            loop.close()

    async def _shutdown(self) -> None:
        if self._listener is not None:
            self._loop.remove_reader(self._listener)
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in list(self._connections):
            conn.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors: accept again in a second, not in a busy loop
                self._loop.remove_reader(self._listener)
                self._loop.call_later(1.0, self._accept_again)
                return
            self.connections += 1
            if self.upstream is None:
                client.close()
                continue
            client.setblocking(False)
            task = self._loop.create_task(self._connect(client, self._loop.time(), self.upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _accept_again(self) -> None:
        if self._listener.fileno() >= 0:  # not stopped meanwhile
            self._loop.add_reader(self._listener, self._accept)

    async def _connect(self, client: socket.socket, accepted: float, upstream: tuple[str, int]) -> None:
        server = None
        try:
            for family, kind, proto, _, addr in socket.getaddrinfo(*upstream, type=socket.SOCK_STREAM):
                server = socket.socket(family, kind, proto)
                server.setblocking(False)
                try:
                    await self._loop.sock_connect(server, addr)
                    break
                except OSError:
                    server.close()
                    server = None
            if server is None:
                client.close()
                return
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException as exc:  # stop() while connecting, or the name does not resolve
            client.close()
            if server is not None:
                server.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        _Connection(self, client, server, accepted)


class DelayLineProcess:
    """The same relay in a child process (``python tests/delayline.py``), stopped by its PID.
    ``upstream`` may be None and given later with :meth:`set_upstream` (over its stdin)."""

    host = "127.0.0.1"

    def __init__(self, upstream: tuple[str, int] | None = None, rtt_ms: float = 20.0, *, handshake: bool = True):
        self.upstream, self.rtt_ms, self.handshake = upstream, rtt_ms, handshake
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 10.0) -> DelayLineProcess:
        cmd = [sys.executable, os.path.abspath(__file__), "--rtt-ms", str(self.rtt_ms)]
        if self.upstream:
            cmd += ["--upstream", f"{self.upstream[0]}:{self.upstream[1]}"]
        if not self.handshake:
            cmd.append("--no-handshake")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline()
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"delay line process did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def set_upstream(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self._proc.stdin.write(f"upstream {host}:{port}\n")
        self._proc.stdin.flush()
        if self._proc.stdout.readline().strip() != "ok":
            raise RuntimeError("delay line process did not take the upstream")

    def connections(self) -> int:
        """How many connections the line has accepted so far (each one a new TCP connection
        from a client: a pool that reuses its connections keeps this near its size)."""
        self._proc.stdin.write("connections\n")
        self._proc.stdin.flush()
        return int(self._proc.stdout.readline().split()[1])

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for f in (proc.stdin, proc.stdout):
            with contextlib.suppress(Exception):
                f.close()

    def __enter__(self) -> DelayLineProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a TCP delay line on 127.0.0.1 (see the module docstring)")
    p.add_argument("--rtt-ms", type=float, required=True)
    p.add_argument("--upstream", help="HOST:PORT of the server (or later, as 'upstream HOST:PORT' on stdin)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--no-handshake", action="store_true", help="new connections pay no extra RTT")
    a = p.parse_args(argv)
    line = DelayLine(_parse_hostport(a.upstream) if a.upstream else None, a.rtt_ms, port=a.port,
                     handshake=not a.no_handshake).start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    with contextlib.suppress(Exception):  # the parent dying ends us too (stdin closes)
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    print(f"listening {line.port}", flush=True)

    def commands() -> None:
        for text in sys.stdin:
            if text.startswith("upstream "):
                line.upstream = _parse_hostport(text.split()[1])
                print("ok", flush=True)
            elif text.strip() == "connections":
                print(f"connections {line.connections}", flush=True)
        stopping.set()

    threading.Thread(target=commands, daemon=True).start()
    while not stopping.wait(0.5):
        pass
    line.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
