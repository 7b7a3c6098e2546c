#!/usr/bin/env python3
"""Write path through a real ``octuefs mount --local``: N small files closed, then ``octuefs sync``.

Prints the seconds from the first open to the end of the sync, for each run, and their median.
Every mount it makes is unmounted (and its daemon waited for) before it returns, even on failure.

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


def one_run(files: int, size: int) -> float:
    with tempfile.TemporaryDirectory(prefix="octuefs-bench-") as tmp:
        mnt, cache = os.path.join(tmp, "mnt"), os.path.join(tmp, "cache")
        os.mkdir(mnt)
        octuefs("mount", "--local", "bench", mnt, "--cache-dir", cache)
        try:
            payload = os.urandom(size)
            started = time.monotonic()
            for i in range(files):
                with open(os.path.join(mnt, f"f{i:05d}.dat"), "wb") as f:
                    f.write(payload)
            octuefs("sync", mnt)
            return time.monotonic() - started
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
    times = [one_run(args.files, args.size) for _ in range(args.runs)]
    print(" ".join(f"{t:.2f}" for t in times), f"median {statistics.median(times):.2f}s")


if __name__ == "__main__":
    main()
