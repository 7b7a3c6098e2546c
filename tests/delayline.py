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
import time

_READ = 1024 * 1024
_WINDOW = 64 * 1024 * 1024
_EOF = None


class _Pipe:
    """One direction of one connection: chunks due at ``arrival + delay``, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, not_before: float, window: int):
        self.loop = loop
        self.delay = delay
        self.not_before = not_before  # the end of the modelled handshake
        self.window = window
        self.queue: collections.deque = collections.deque()
        self.queued = 0
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()

    def due(self) -> float:
        return max(self.loop.time(), self.not_before) + self.delay

    async def pump_in(self, reader: asyncio.StreamReader) -> None:
        while True:
            await self.room.wait()
            data = await reader.read(_READ)
            self.queue.append((self.due(), data or _EOF))
            self.wake.set()
            if not data:
                return
            self.queued += len(data)
            if self.queued >= self.window:
                self.room.clear()

    async def pump_out(self, writer: asyncio.StreamWriter) -> None:
        while True:
            while not self.queue:
                self.wake.clear()
                await self.wake.wait()
            due, data = self.queue[0]
            wait = due - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.queue.popleft()
            if data is _EOF:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            # Everything already due goes in one write: in order, and no slower than the sender.
            pieces = [data]
            now = self.loop.time()
            while self.queue and self.queue[0][0] <= now and self.queue[0][1] is not _EOF:
                pieces.append(self.queue.popleft()[1])
            writer.write(b"".join(pieces) if len(pieces) > 1 else data)
            await writer.drain()
            self.queued -= sum(len(p) for p in pieces)
            if self.queued < self.window:
                self.room.set()


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
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
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
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, self.host, self.port, reuse_address=True, backlog=1024, limit=_READ))
            except BaseException as exc:
                self._error = exc
                return
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.connections += 1
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        s_writer = None
        try:
            if self.upstream is None:
                return
            s_reader, s_writer = await asyncio.open_connection(*self.upstream, limit=_READ)
            for w in (c_writer, s_writer):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            half = self.rtt / 2
            up = _Pipe(loop, half, accepted + self.rtt if self.handshake else 0.0, self.window)
            down = _Pipe(loop, half, 0.0, self.window)
            pumps = [asyncio.ensure_future(c) for c in (up.pump_in(c_reader), up.pump_out(s_writer),
                                                         down.pump_in(s_reader), down.pump_out(c_writer))]
            try:
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
                # Both directions ended cleanly (EOF passed on), or one failed: close both.
            finally:
                for p in pumps:
                    p.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): the connection is closed below; nothing to report
        finally:
            for w in (c_writer, s_writer):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(w.wait_closed(), 1)
            self._tasks.discard(task)


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
