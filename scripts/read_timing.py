#!/usr/bin/env python3
"""Time a cold sequential read through a mount against a direct download of the same object.

Starts fake-gcs-server (``octuefs.local.emulator.Emulator``, memory backend), uploads one object of
``--size-mib`` random bytes, mounts the bucket with the ``octuefs mount`` command, then times:

* ``download_as_bytes`` of the object with google-cloud-storage (the floor: one GET);
* a cold ``cat`` of the file through the mount (empty cache, first open);
* a warm ``cat`` (second open of the unchanged object: the kernel page cache should answer);
* with ``--random N``, N random 1 MiB ``pread``s through a fresh mount.

The emulator answers on loopback at once, unlike GCS (tens of ms before the first byte):
``--latency-ms`` puts a proxy in front of it that holds every request back that long, so that
fetching block after block shows its cost. Both the download and the mount go through it.

Everything it starts (emulator, mount daemon) is stopped by PID or unmounted before it exits.
Usage: ``PYTHONPATH=$PWD python scripts/read_timing.py [--size-mib 256] [--latency-ms 30]
[--mount-arg=--cache-size=8M]``; the
mount daemon imports octuefs from PYTHONPATH (it is started from ``/``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from octuefs.local.emulator import Emulator
from octuefs.mount import read_state

MiB = 1024 * 1024


class LatencyProxy:
    """A TCP proxy on 127.0.0.1 that delays everything sent to ``target`` by ``latency`` s."""

    def __init__(self, target_port: int, latency: float):
        self.target_port, self.latency = target_port, latency
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _client(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src, dst, delay):
            try:
                while data := await src.read(1 << 20):
                    if delay:
                        await asyncio.sleep(delay)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer, self.latency), pipe(up_reader, writer, 0))
        except asyncio.CancelledError:
            pass

    def stop(self) -> None:
        async def shutdown():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def octuefs(*args: str, env: dict, check: bool = True) -> int:
    # cwd "/": `python -m` puts the working directory first on sys.path, before PYTHONPATH.
    return subprocess.run([sys.executable, "-m", "octuefs", *args], check=check, env=env, cwd="/").returncode


def cat(path: str) -> None:
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--random", type=int, default=64, help="random 1 MiB preads to time (0: none)")
    parser.add_argument("--latency-ms", type=float, default=0, help="delay of every request to the emulator")
    parser.add_argument("--keep-log", action="store_true", help="print the daemon log's tail")
    parser.add_argument("--mount-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for octuefs mount, e.g. --mount-arg=--cache-size=8M (repeatable)")
    parser.add_argument("--py-spy", metavar="OUT", help="record the daemon during the cold cat (py-spy raw format)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="octuefs-timing-")
    emulator = Emulator(data_dir=None, kill_with_parent=True).start()
    proxy = LatencyProxy(emulator.port, args.latency_ms / 1000) if args.latency_ms else None
    endpoint = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{proxy.port}"} if proxy else emulator.env()
    env = {**os.environ, **endpoint}
    os.environ.update(endpoint)
    mounted: list[str] = []
    try:
        from google.cloud import storage

        from octuefs.storage.gcs import make_client

        emulator.create_bucket("timing")
        direct = make_client(endpoint=emulator.url)  # the upload skips the proxy
        data = os.urandom(args.size_mib * MiB)
        want = hashlib.sha256(data).hexdigest()
        direct.bucket("timing").blob("big.bin").upload_from_string(data, content_type="application/octet-stream")
        del data
        blob = storage.Blob("big.bin", make_client().bucket("timing"))

        got, t = timed(lambda: blob.download_as_bytes(raw_download=True, checksum=None))
        assert hashlib.sha256(got).hexdigest() == want
        del got
        print(f"download_as_bytes   {t:6.2f} s  {args.size_mib / t:7.1f} MiB/s")

        def mount(n: int) -> str:
            mp, cache = os.path.join(work, f"mnt{n}"), os.path.join(work, f"cache{n}")
            os.mkdir(mp)
            octuefs("mount", "timing", mp, "--cache-dir", cache, "--log-file", os.path.join(work, f"log{n}"),
                    *args.mount_arg, env=env)
            mounted.append(mp)
            return mp

        mp = mount(0)
        path = os.path.join(mp, "big.bin")
        spy = None
        if args.py_spy:
            pid = read_state(mp)["pid"]
            spy = subprocess.Popen(["py-spy", "record", "-f", "raw", "-r", "250", "--threads", "-o", args.py_spy,
                                    "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        _, t = timed(lambda: cat(path))
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        print(f"cold cat            {t:6.2f} s  {args.size_mib / t:7.1f} MiB/s")
        _, t = timed(lambda: cat(path))
        print(f"second cat          {t:6.2f} s  {args.size_mib / t:7.1f} MiB/s")
        assert sha256_of(path) == want, "the mount returned other bytes"

        if args.random:
            mp = mount(1)
            path = os.path.join(mp, "big.bin")
            rng = random.Random(1)
            offsets = [rng.randrange(0, (args.size_mib - 1) * MiB) for _ in range(args.random)]

            def preads():
                fd = os.open(path, os.O_RDONLY)
                try:
                    for off in offsets:
                        assert len(os.pread(fd, MiB, off)) == MiB
                finally:
                    os.close(fd)

            _, t = timed(preads)
            print(f"{args.random} random 1 MiB preads {t:6.2f} s  {t / args.random * 1000:7.1f} ms each")
        if args.keep_log:
            for n in range(len(mounted)):
                with open(os.path.join(work, f"log{n}"), errors="replace") as f:
                    print("".join(f.readlines()[-20:]))
    finally:
        for mp in mounted:
            if octuefs("unmount", mp, env=env, check=False):
                subprocess.run(["fusermount3", "-uz", mp])
        if proxy is not None:
            proxy.stop()
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
