#!/usr/bin/env python3
"""Write path through a real ``octuefs mount --local``: N small files closed, then ``octuefs sync``.

Prints the seconds from the first open to the end of the sync, for each run, and their median;
then the CPU seconds the daemon and its fake-gcs-server used meanwhile (less noisy than the wall
clock on a shared machine). Every mount it makes is unmounted (and its daemon waited for) before it returns, even on failure.

    PYTHONPATH=. python3 scripts/local_write_bench.py [--files 1000] [--size 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def octuefs(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "octuefs", *args], check=True, capture_output=True, timeout=600)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live children (the emulator's server)."""
    total = 0.0
    pids = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            pids += [int(c) for c in f.read().split()]
    for p in pids:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def daemon_pid(mnt: str) -> int:
    from octuefs.mount import read_state

    return int(read_state(mnt)["pid"])


def one_run(files: int, size: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="octuefs-bench-") as tmp:
        mnt, cache = os.path.join(tmp, "mnt"), os.path.join(tmp, "cache")
        os.mkdir(mnt)
        octuefs("mount", "--local", "bench", mnt, "--cache-dir", cache)
        try:
            payload = os.urandom(size)
            pid = daemon_pid(mnt)
            cpu = cpu_seconds(pid)
            started = time.monotonic()
            for i in range(files):
                with open(os.path.join(mnt, f"f{i:05d}.dat"), "wb") as f:
                    f.write(payload)
            octuefs("sync", mnt)
            return time.monotonic() - started, cpu_seconds(pid) - cpu
        finally:
            subprocess.run([sys.executable, "-m", "octuefs", "unmount", mnt], capture_output=True, timeout=600)
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run(args.files, args.size) for _ in range(args.runs)]
    times, cpus = [t for t, _ in runs], [c for _, c in runs]
    print(" ".join(f"{t:.2f}" for t in times), f"median {statistics.median(times):.2f}s;",
          "cpu", " ".join(f"{c:.2f}" for c in cpus), f"median {statistics.median(cpus):.2f}s")


if __name__ == "__main__":
    main()
