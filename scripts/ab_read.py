#!/usr/bin/env python3
"""Interleaved A/B of a cold read of one large object through a fresh mount, against the direct
client's streaming download of it.

Two (or more) source trees of octuefs take turns, in alternating order, each round on a fresh
mount (an empty cache) of one bucket on fake-gcs-server (memory backend), behind the delay line
with ``--rtt-ms``; in the same round the google-cloud-storage client downloads the object
(``download_to_file``, one GET) through the same line. Bytes are checked every time.

    python scripts/ab_read.py --tree new=/work/wt-x --tree base=/work/wt-base --rtt-ms 20 --rounds 6

Before each timed read the script waits ``--settle`` seconds. On these VMs memory the guest has
not used for a few seconds goes back to the host, and the first touch of a page costs a host
fault (new page-cache pages fill at ~400 MiB/s, reused ones at ~5 GiB/s): a read right after
another reuses its freed pages and looks several times faster than the same read in the full
bench. ``--settle 6`` (the default) measures what the bench sees; ``--settle 0`` the warm case.

``--marks`` prints, per read, when the reader had 1, 32, 64, 128 and 192 MiB and the end (ms from
open), how busy the machine was and the daemon's CPU during the read. ``--random N`` times N
random 4 KiB preads instead of the whole read (seeded; the figure is then reads per second, and
the client's is as many ranged GETs of 4 KiB, as ``scripts/bench.py`` makes them).
``--perf DIR`` records ``perf record -a -g`` during each read (one file per tree).

Each tree's mount runs with the tree as its working directory: ``python -m`` puts that before
PYTHONPATH, so run from another tree both sides would run that one.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics as st
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import google_crc32c  # noqa: E402
from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import storage  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/
import emulated  # noqa: E402

BUCKET, NAME, MiB, PAGE = "ab-read", "big.bin", 1 << 20, 4096
MARKS = (1, 32, 64, 128, 192)


def busy_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:]))
    return v[3] + v[4], sum(v)  # idle + iowait, all


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int | None) -> int:
    """The daemon's minor page faults so far (new pages it touched: see the module's note)."""
    if pid is None:
        return 0
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def read_whole(path: str, marks: list[int]) -> tuple[int, int]:
    crc, n, t0 = google_crc32c.Checksum(), 0, time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while data := f.read(MiB):
            crc.update(data)
            n += len(data)
            if n in [m * MiB for m in MARKS]:
                marks.append(round((time.perf_counter() - t0) * 1000))
    marks.append(round((time.perf_counter() - t0) * 1000))
    return int.from_bytes(crc.digest(), "big"), n


def read_random(path: str, expected: list[tuple[int, int]]) -> None:
    """4 KiB preads at the offsets of ``expected``, each checked against its CRC32C."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, crc in expected:
            if google_crc32c.value(os.pread(fd, PAGE, offset)) != crc:
                raise SystemExit(f"WRONG BYTES at {offset}")
    finally:
        os.close(fd)


class _Sink:
    """The client's download: its CRC, and (``marks``) ms from ``started`` when it had each of MARKS MiB."""

    def __init__(self, started: float = 0.0):
        self.crc = google_crc32c.Checksum()
        self.started, self.got, self.marks = started, 0, []

    def write(self, data) -> int:
        self.crc.update(bytes(data))
        self.got += len(data)
        while len(self.marks) < len(MARKS) and self.got >= MARKS[len(self.marks)] * MiB:
            self.marks.append(round((time.perf_counter() - self.started) * 1000))
        return len(data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH of an octuefs source tree (repeat)")
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--mib", type=int, default=256, help="object size (256)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--settle", type=float, default=6.0, help="seconds before each timed read (6)")
    ap.add_argument("--random", type=int, default=0, metavar="N", help="N random 4 KiB preads instead")
    ap.add_argument("--marks", action="store_true")
    ap.add_argument("--perf", metavar="DIR")
    ap.add_argument("--mount-arg", action="append", default=[])
    a = ap.parse_args()
    trees = dict(t.split("=", 1) for t in a.tree)
    work = Path(tempfile.mkdtemp(prefix="ab-read-"))
    emulator, line, endpoint = emulated.start(a.rtt_ms)
    rates: dict[str, list[float]] = {name: [] for name in [*trees, "client"]}
    cpu: dict[str, list[float]] = {name: [] for name in trees}
    try:
        emulator.create_bucket(BUCKET)
        client = storage.Client(project="ab", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": endpoint})
        blob = client.bucket(BUCKET).blob(NAME)
        data = os.urandom(MiB) * a.mib
        want = google_crc32c.value(data)
        rng = random.Random(7)
        offsets = [rng.randrange(0, len(data) - PAGE) for _ in range(a.random)]
        expected = [(o, google_crc32c.value(data[o : o + PAGE])) for o in offsets]
        blob.upload_from_string(data, timeout=600)
        del data
        for r in range(a.rounds):
            for name in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                rates[name].append(one_read(a, name, trees[name], work, endpoint, r, want, expected, cpu))
            time.sleep(a.settle)
            rates["client"].append(client_read(a, blob, want, expected))
            print(f"round {r}: " + "  ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), flush=True)
    finally:
        emulated.finish(emulator, line, work)
    unit = "reads/s" if a.random else "MiB/s"
    client_median = st.median(rates["client"])
    for name, values in rates.items():
        m = st.median(values)
        extra = f"  daemon CPU (whole mount) median {st.median(cpu[name]):.2f} s" if cpu.get(name) else ""
        print(f"{name:10s} median {m:7.0f} {unit} ({m / client_median:.2f}x the client)  rounds {[round(v) for v in values]}{extra}")
    return 0


def client_read(a, blob, want: int, expected: list[tuple[int, int]]) -> float:
    """The client's rate: one streaming download, or (``--random``) a ranged GET per read."""
    t = time.perf_counter()
    if a.random:
        for offset, crc in expected:
            if google_crc32c.value(blob.download_as_bytes(start=offset, end=offset + PAGE - 1, checksum=None)) != crc:
                raise SystemExit(f"WRONG BYTES from the client at {offset}")
        return a.random / (time.perf_counter() - t)
    sink = _Sink(t)
    blob.download_to_file(sink)
    dt = time.perf_counter() - t
    if a.marks:
        print(f"  client: ms at {'/'.join(map(str, MARKS))}/all MiB {sink.marks + [round(dt * 1000)]}", flush=True)
    if int.from_bytes(sink.crc.digest(), "big") != want:
        raise SystemExit("WRONG BYTES from the client")
    return a.mib / dt


def one_read(a, name: str, tree: str, work: Path, endpoint: str, r: int, want: int, expected: list, cpu: dict) -> float:
    """Mount with ``tree``, time one read, unmount; the rate."""
    mp, cache = work / f"mnt-{name}", work / f"cache-{name}-{r}"
    mp.mkdir(exist_ok=True)
    env = {**os.environ, "STORAGE_EMULATOR_HOST": endpoint, "PYTHONPATH": tree}
    command = [sys.executable, "-m", "octuefs"]
    p = subprocess.run([*command, "mount", BUCKET, str(mp), "--cache-dir", str(cache), "--log-file",
                        str(work / f"log-{name}"), *a.mount_arg], cwd=tree, env=env, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise SystemExit(f"mount with {tree} failed: {p.stderr}")
    pid = int(p.stdout.split("(pid ")[1].split(",")[0]) if "(pid " in p.stdout else None
    try:
        time.sleep(a.settle)
        perf = None
        if a.perf:
            Path(a.perf).mkdir(parents=True, exist_ok=True)
            perf = subprocess.Popen(["perf", "record", "-a", "-g", "-o", f"{a.perf}/perf-{name}.data"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        idle0, all0 = busy_ticks()
        cpu0, faults0, marks = cpu_seconds(pid), minor_faults(pid), []
        t = time.perf_counter()
        if a.random:
            read_random(str(mp / NAME), expected)
        else:
            got, n = read_whole(str(mp / NAME), marks)
            if got != want or n != a.mib * MiB:
                raise SystemExit(f"WRONG BYTES through the mount of {tree}")
        dt = time.perf_counter() - t
        idle1, all1 = busy_ticks()
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        cpu[name].append(cpu_seconds(pid))
        if a.marks:
            busy = 100 * (1 - (idle1 - idle0) / max(1, all1 - all0))
            print(f"  {name}: ms at {'/'.join(map(str, MARKS))}/all MiB {marks}; machine {busy:.0f}% busy; "
                  f"daemon CPU in the read {cpu_seconds(pid) - cpu0:.2f} s of {dt:.2f} s, "
                  f"{minor_faults(pid) - faults0} minor faults", flush=True)
        return a.random / dt if a.random else a.mib / dt
    finally:
        subprocess.run([*command, "unmount", str(mp)], cwd=tree, env=env, capture_output=True, timeout=150)
        if pid is not None:
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
