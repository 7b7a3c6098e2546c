#!/usr/bin/env python3
"""Interleaved A/B of a cold ``ls -l`` through a fresh mount against the direct client's listing.

Two (or more) source trees of octuefs take turns, in alternating order, each round on a fresh
mount (an empty cache; the page cache dropped too with ``--drop-caches``), listing one directory of N objects
on fake-gcs-server (memory backend) with ``ls -l`` timed from outside the ls process (spawn to
exit, as ``scripts/bench.py`` times it). In the same round the google-cloud-storage client lists
the same directory (``list_blobs`` with a delimiter, every page read), through the same delay
line. The figure of each tree is the median over rounds of its time divided by that round's
client time; per round noise that hits both sides (another process on the machine) mostly
cancels out in the ratio.

    python scripts/ab_ls.py --tree new=/work/wt-ls --tree base=/work/wt-base --rtt-ms 20 --rounds 8

Objects are made as the bench makes them (Octue tags and labels as custom metadata, text/csv,
100-1,099 bytes). ``--posix`` gives every tenth object POSIX keys, one in fifty a symlink's
key, and adds directory markers, so the attrs' slow paths are exercised too (ls -l then reads
each link's target: one GET a link). ``--profile DIR`` records each tree's daemon with py-spy
(``--gil``: the time it holds the interpreter) during its ls, one raw file per round.
``--daemon-cpu`` also reports the daemon's CPU during the ls (/proc/PID/stat: 10 ms ticks, so
read its median over rounds). ``--strace DIR`` times ls's own execve, openat and getdents64.

Each tree's mount runs with the tree as its working directory: ``python -m`` puts that before
PYTHONPATH, so run from another tree both sides would run that one (``--check-loaded NAME`` says
whether each daemon loaded a C extension that only one side uses).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics as st
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import storage  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/
import emulated  # noqa: E402

BUCKET = "ab-ls"
DIR = "list/"


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


TICK = os.sysconf("SC_CLK_TCK")


def task_cpu_ns(pid: int) -> int:
    """CPU nanoseconds of process ``pid``, threads that ended included (user + system time
    from /proc/PID/stat: clock ticks, 10 ms here, so a median over rounds)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 10**9 // TICK
    except (OSError, ValueError, IndexError):
        return 0


def populate(direct, n: int, posix: bool) -> dict[str, int]:
    sys.path.insert(0, str(REPO))
    from octuefs.octue import metadata as octue

    expect: dict[str, int] = {}

    def one(i: int) -> None:
        name, size = f"o{i:05d}.csv", 100 + i % 1000
        tags = {"index": i, "instrument": "anemometer", "height_m": 80.5}
        meta = octue.encode_object_metadata(octue.OctueMetadata(tags=tags, labels={"bench"}).with_id())
        if posix and i % 10 == 0:
            meta.update({"goog-reserved-posix-mode": "640", "goog-reserved-posix-uid": "1234",
                         "goog-reserved-posix-gid": "4321", "goog-reserved-file-mtime": str(1_600_000_000 + i)})
        data = b"x" * size
        if posix and i % 50 == 25:
            meta = {"goog-reserved-file-is-symlink": "true"}
            data = f"target-{i}".encode()
            size = len(data)
        blob = direct.blob(DIR + name)
        blob.metadata = meta
        blob.upload_from_string(data, content_type="text/csv")
        expect[name] = size

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))
    if posix:
        for d in range(20):
            blob = direct.blob(f"{DIR}d{d:02d}/")
            blob.metadata = {"goog-reserved-posix-mode": "750"} if d % 2 else {}
            blob.upload_from_string(b"")
            direct.blob(f"{DIR}d{d:02d}/inner").upload_from_string(b"i")
            expect[f"d{d:02d}"] = -1
    return expect


def mount(tree: str, mp: Path, cache: Path, log: Path, env: dict, extra: list[str]) -> int:
    mp.mkdir(parents=True, exist_ok=True)
    # (run in the tree: ``python -m`` puts the working directory first on sys.path, before PYTHONPATH)
    r = subprocess.run([sys.executable, "-m", "octuefs", "mount", BUCKET, str(mp), "--cache-dir", str(cache),
                        "--log-file", str(log), *extra], env=env, capture_output=True, text=True, timeout=120,
                       cwd=tree)
    if r.returncode != 0:
        raise SystemExit(f"mount from {tree} failed: {r.stderr}")
    text = r.stdout
    pid = None
    if "(pid " in text:
        pid = int(text.split("(pid ", 1)[1].split(",", 1)[0].split(")", 1)[0])
    if pid is None:
        state = subprocess.run([sys.executable, "-m", "octuefs", "status", str(mp), "--json"], env=env,
                               capture_output=True, text=True, cwd=tree)
        try:
            pid = int(json.loads(state.stdout).get("pid"))
        except (ValueError, TypeError, AttributeError):
            pid = None
    return pid


def mapped(pid: int | None, fragment: str) -> bool:
    """Whether the daemon has a file whose path holds ``fragment`` mapped (a C extension it loaded)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(fragment in line for line in f)
    except (OSError, TypeError):
        return False


def unmount(mp: Path, env: dict, pid: int | None, tree: str) -> None:
    subprocess.run([sys.executable, "-m", "octuefs", "unmount", str(mp), "--timeout", "60"], env=env,
                   capture_output=True, cwd=tree)
    if os.path.ismount(mp):
        subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)
    if pid:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.02)


def ls(path: Path, expect: dict[str, int], wrapper: list[str] = ()) -> float:
    t = time.perf_counter()
    out = subprocess.run([*wrapper, "ls", "-l", str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    took = time.perf_counter() - t
    got = {f[-1] if f[0][0] != "l" else f[-3]: int(f[4]) for f in (line.split() for line in out.splitlines()[1:])}
    want = {k: v for k, v in expect.items() if v >= 0}
    if {k: v for k, v in got.items() if k in want} != want or len(got) != len(expect):
        raise SystemExit(f"ls -l {path} shows {len(got)} entries, not the {len(expect)} expected")
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", required=True, help="NAME=PATH of an octuefs source tree")
    p.add_argument("--rtt-ms", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--objects", type=int, default=5000)
    p.add_argument("--posix", action="store_true", help="some objects with POSIX keys, symlinks, markers")
    p.add_argument("--profile", help="record each tree's daemon with py-spy into this folder")
    p.add_argument("--daemon-cpu", action="store_true")
    p.add_argument("--check-loaded", metavar="NAME",
                   help="say whether each tree's daemon loaded a C extension whose path holds NAME (round 0)")
    p.add_argument("--settle", type=float, default=0.5,
                   help="seconds of rest before each timed listing (the emulator and the delay line idle)")
    p.add_argument("--drop-caches", action="store_true",
                   help="drop the page cache before each ls (the daemon's and ls's code then come from disk)")
    p.add_argument("--keep-logs", help="copy each round's daemon log (at --log-level debug) here")
    p.add_argument("--strace", help="run each ls under strace -tt -T, its trace in this folder (slows ls)")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args()
    trees = dict(t.split("=", 1) for t in a.tree)

    em, delay, url = emulated.start(a.rtt_ms)
    work = Path(tempfile.mkdtemp(prefix="ab-ls-"))
    result: dict = {"rtt_ms": a.rtt_ms, "objects": a.objects, "rounds": []}
    try:
        em.create_bucket(BUCKET)
        creds = AnonymousCredentials()
        direct = storage.Client(project="ab", credentials=creds, client_options={"api_endpoint": em.url}).bucket(BUCKET)
        client = storage.Client(project="ab", credentials=creds, client_options={"api_endpoint": url})
        t = time.perf_counter()
        expect = populate(direct, a.objects, a.posix)
        print(f"populated {len(expect)} entries in {time.perf_counter() - t:.1f} s; rtt {a.rtt_ms} ms", flush=True)

        def client_list() -> float:
            t = time.perf_counter()
            blobs = client.list_blobs(BUCKET, prefix=DIR, delimiter="/")
            n = sum(1 for page in blobs.pages for _ in page)
            took = time.perf_counter() - t
            if n != sum(1 for v in expect.values() if v >= 0):
                raise SystemExit(f"the client lists {n} objects, not {sum(1 for v in expect.values() if v >= 0)}")
            return took

        client_list()  # its connection open, as the bench's client has one by then
        dropped = drop_caches() if a.drop_caches else False
        times: dict[str, list[float]] = {k: [] for k in trees}
        cpus: dict[str, list[float]] = {k: [] for k in trees}
        clients: list[float] = []
        extra = ["-vv"] if a.keep_logs else []
        for r in range(a.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            row = {}
            for side in order:
                tree = trees[side]
                env = {**os.environ, "PYTHONPATH": tree, "STORAGE_EMULATOR_HOST": url}
                mp, cache, log = work / f"mnt-{side}-{r}", work / f"cache-{side}-{r}", work / f"log-{side}-{r}.log"
                pid = mount(tree, mp, cache, log, env, extra)
                if r == 0 and a.check_loaded:
                    print(f"{side}: daemon {pid} has {a.check_loaded!r} loaded: {mapped(pid, a.check_loaded)}", flush=True)
                try:
                    if dropped:
                        drop_caches()
                    prof = None
                    if a.profile and pid:
                        out = Path(a.profile) / f"{side}-{r}.txt"
                        out.parent.mkdir(parents=True, exist_ok=True)
                        prof = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "1000", "--gil", "--format",
                                                 "raw", "--nonblocking", "--threads", "-o", str(out)],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        time.sleep(1.0)
                    time.sleep(a.settle)
                    cpu0 = task_cpu_ns(pid) if pid else 0
                    wrapper = ["strace", "--seccomp-bpf", "-f", "-tt", "-T", "-e", "trace=execve,openat,getdents64,exit_group", "-o", str(Path(a.strace) / f"ls-{side}-{r}.txt")] if a.strace else []
                    if a.strace:
                        Path(a.strace).mkdir(parents=True, exist_ok=True)
                    took = ls(mp / DIR.rstrip("/"), expect, wrapper)
                    cpu = (task_cpu_ns(pid) - cpu0) / 1e9 if pid else float("nan")
                    if prof is not None:
                        prof.send_signal(signal.SIGINT)
                        prof.wait(timeout=60)
                finally:
                    unmount(mp, env, pid, tree)
                    if a.keep_logs:
                        Path(a.keep_logs).mkdir(parents=True, exist_ok=True)
                        shutil.copy(log, Path(a.keep_logs) / log.name)
                    shutil.rmtree(cache, ignore_errors=True)
                times[side].append(took)
                cpus[side].append(cpu)
                row[side] = took
            time.sleep(a.settle)
            c = client_list()
            clients.append(c)
            row["client"] = c
            result["rounds"].append(row)
            print(f"round {r}: " + "  ".join(f"{k} {v:.3f} s ({v / c:.2f}x)" if k != "client" else f"client {v:.3f} s"
                                            for k, v in row.items())
                  + ("  daemon cpu " + " ".join(f"{k} {cpus[k][-1]:.3f}" for k in trees) if a.daemon_cpu else ""),
                  flush=True)
        print(f"\nrtt {a.rtt_ms:g} ms, {a.objects} objects, {a.rounds} rounds; client median {st.median(clients):.3f} s")
        summary = {}
        for side in trees:
            ratios = [t / c for t, c in zip(times[side], clients)]
            summary[side] = {"median_s": st.median(times[side]), "median_ratio": st.median(ratios),
                             "ratios": [round(x, 3) for x in ratios],
                             "daemon_cpu_median_s": st.median(cpus[side]) if a.daemon_cpu else None}
            first = [x for r, x in enumerate(ratios) if (r % 2 == 0) == (side == list(trees)[0])]
            later = [x for r, x in enumerate(ratios) if (r % 2 == 0) != (side == list(trees)[0])]
            summary[side]["median_ratio_when_first"] = st.median(first) if first else None
            summary[side]["median_ratio_when_later"] = st.median(later) if later else None
            print(f"{side:>8}: median {st.median(times[side]):.3f} s, median ratio to client {st.median(ratios):.3f}"
                  + (f" (first in its round {st.median(first):.3f}, after the other {st.median(later):.3f})"
                     if first and later else "")
                  + f" (ratios {' '.join(f'{x:.2f}' for x in ratios)})"
                  + (f", daemon cpu median {st.median(cpus[side]):.3f} s" if a.daemon_cpu else ""))
        result["summary"] = summary
        result["client_median_s"] = st.median(clients)
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=1))
    finally:
        emulated.finish(em, delay, work)


if __name__ == "__main__":
    main()
