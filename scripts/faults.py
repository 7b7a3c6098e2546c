#!/usr/bin/env python3
"""A long run of a real mount behind a faulty network: what was injected, what survived.

    scripts/faults.py                                   # 3 minutes, a quarter of requests faulted
    scripts/faults.py --minutes 10 --seed 7 --fault 503=0.1 --fault reset_after=0.1
    scripts/faults.py --outage-every 60 --outage-seconds 20 --op-timeout 10

fake-gcs-server runs behind tests/faultproxy.py, and ``octuefs mount`` talks to the proxy.
Worker threads write files (with Octue tags), read them back, list, stat, copy, rename and set
metadata through the mount, timing every call; now and then the proxy stalls every request for
a while (an outage) and heals. At the end it syncs, heals, and checks every file in the bucket
itself: bytes and tags. It prints the faults injected, the operations and their errors, the
slowest call of each kind (as the program sees it: FUSE requests and any wait behind others in
the kernel) against the --op-timeout bound, and the verification.

Exit status: 1 if a read returned wrong bytes, a closed file is missing or wrong in the bucket,
or a call took longer than twice --op-timeout plus 10 s (fsync excepted); else 0.
"""

from __future__ import annotations

import argparse
import collections
import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from octuefs.local.emulator import Emulator  # noqa: E402
from tests.faultproxy import FAULTS, FaultProxy  # noqa: E402

DEFAULT_MIX = {"503": 0.08, "503_retry": 0.02, "429": 0.03, "reset_before": 0.04, "reset_after": 0.04, "slow": 0.04}
DIRS = ("a", "b", "c")


def octuefs(*args: str, env: dict, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    # cwd "/": `python -m` puts the working directory first on sys.path, before PYTHONPATH.
    return subprocess.run([sys.executable, "-m", "octuefs", *args], env=env, cwd="/", check=check, timeout=timeout,
                          capture_output=True, text=True)


class Run:
    """The workload's shared state; ``lock`` guards everything but the mountpoint."""

    def __init__(self, mountpoint: str, seed: int):
        self.mp = mountpoint
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.files: dict[str, tuple[str, int]] = {}  # name -> (sha256, tag) of the closed version
        self.uncertain: set[str] = set()  # a rename failed midway: either name may hold it
        self.ops: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[tuple[str, str]] = collections.Counter()
        self.slowest: dict[str, float] = collections.defaultdict(float)
        self.wrong_reads: list[str] = []
        self.counter = 0

    def timed(self, op: str, fn):
        start = time.monotonic()
        try:
            return fn()
        except OSError as exc:
            with self.lock:
                self.errors[(op, errno.errorcode.get(exc.errno, str(exc.errno)))] += 1
            return exc
        finally:
            took = time.monotonic() - start
            with self.lock:
                self.ops[op] += 1
                self.slowest[op] = max(self.slowest[op], took)

    def pick(self) -> str | None:
        with self.lock:
            names = sorted(n for n in self.files if n not in self.uncertain)
            return self.rng.choice(names) if names else None

    def path(self, name: str) -> str:
        return os.path.join(self.mp, name)

    # --- operations ---------------------------------------------------------------------------

    def write(self, rng: random.Random) -> None:
        with self.lock:
            self.counter += 1
            name = f"{rng.choice(DIRS)}/f{self.counter:05d}.bin"
        size = rng.choice([0, 100, 4096, 50_000, 300_000]) if rng.random() < 0.95 else rng.randrange(1, 12) << 20
        data = rng.randbytes(size)
        tag = rng.randrange(1 << 30)

        def write_and_tag():
            with open(self.path(name), "wb") as f:
                f.write(data)
            os.setxattr(self.path(name), "user.octue.tags", json.dumps({"t": tag}).encode())

        if not isinstance(self.timed("write+close+setfattr", write_and_tag), OSError):
            with self.lock:
                self.files[name] = (hashlib.sha256(data).hexdigest(), tag)
        elif os.path.lexists(self.path(name)):
            with self.lock:  # created, but its content or tag may not be what we meant
                self.uncertain.add(name)

    def read(self, rng: random.Random) -> None:
        name = self.pick()
        if name is None:
            return
        with self.lock:
            want = self.files.get(name)
        got = self.timed("read", lambda: open(self.path(name), "rb").read())
        if isinstance(got, bytes) and want is not None and hashlib.sha256(got).hexdigest() != want[0]:
            with self.lock:
                if self.files.get(name) == want and name not in self.uncertain:
                    self.wrong_reads.append(name)

    def listing(self, rng: random.Random) -> None:
        self.timed("ls", lambda: os.listdir(self.path(rng.choice(DIRS))))

    def stat(self, rng: random.Random) -> None:
        name = self.pick()
        if name is not None:
            self.timed("stat+getfattr", lambda: (os.stat(self.path(name)),
                                                 os.getxattr(self.path(name), "user.octue.tags")))

    def rename(self, rng: random.Random) -> None:
        name = self.pick()
        if name is None:
            return
        with self.lock:
            self.counter += 1
            new = f"{rng.choice(DIRS)}/m{self.counter:05d}.bin"
            if name not in self.files:
                return
            record = self.files.pop(name)  # nobody else picks it meanwhile
        result = self.timed("mv", lambda: os.rename(self.path(name), self.path(new)))
        with self.lock:
            if not isinstance(result, OSError):
                self.files[new] = record
            elif result.errno == errno.ETIMEDOUT and os.path.lexists(self.path(name)) \
                    and not os.path.lexists(self.path(new)):
                self.files[name] = record  # the original is untouched ...
                self.uncertain.add(new)  # ... and a copy whose answer was lost may exist
            else:
                self.files[name] = self.files[new] = record
                self.uncertain.update((name, new))

    def retag(self, rng: random.Random) -> None:
        name = self.pick()
        if name is None:
            return
        tag = rng.randrange(1 << 30)
        with self.lock:
            if name not in self.files:
                return
            digest = self.files.pop(name)[0]
        result = self.timed("setfattr", lambda: os.setxattr(self.path(name), "user.octue.tags",
                                                             json.dumps({"t": tag}).encode()))
        with self.lock:
            self.files[name] = (digest, tag)
            if isinstance(result, OSError):
                self.uncertain.add(name)  # refused, or done and its answer lost: either tag


OPERATIONS = [("write", 4), ("read", 4), ("listing", 1), ("stat", 2), ("rename", 1), ("retag", 1)]


def worker(run: Run, seed: int, stop: threading.Event) -> None:
    rng = random.Random(seed)
    names = [op for op, weight in OPERATIONS for _ in range(weight)]
    while not stop.is_set():
        getattr(run, rng.choice(names))(rng)


def outages(proxy: FaultProxy, faults: dict, every: float, length: float, stop: threading.Event, log: list) -> None:
    while not stop.wait(every):
        proxy.set_faults({"stall": 1.0})
        log.append(time.monotonic())
        stop.wait(length)
        proxy.heal()
        proxy.set_faults(faults)


def verify(run: Run, direct) -> dict:
    found = {o.name: o for o in direct.list_all("", delimiter=None)[0]}
    verified, missing, wrong = 0, [], []
    for name, (digest, tag) in sorted(run.files.items()):
        if name in run.uncertain:
            continue
        info = found.get(name)
        if info is None:
            missing.append(name)
            continue
        data = direct.read_range(name, 0, info.size + 1) if info.size else b""
        tags = json.loads(info.metadata.get("octue__tags", "{}"))
        if hashlib.sha256(data).hexdigest() != digest or tags != {"t": tag}:
            wrong.append(name)
        else:
            verified += 1
    known = set(run.files) | run.uncertain
    extra = sorted(n for n in found if n not in known and not n.endswith("/"))
    return {"verified": verified, "missing": missing, "wrong": wrong, "uncertain": len(run.uncertain), "extra": extra}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--fault", action="append", default=[], metavar="NAME=FRACTION",
                   help=f"replace the default mix {DEFAULT_MIX}; names: {', '.join(FAULTS)}")
    p.add_argument("--op-timeout", type=float, default=10.0, help="the mount's --op-timeout (default 10)")
    p.add_argument("--outage-every", type=float, default=60.0, help="seconds between outages (0: none)")
    p.add_argument("--outage-seconds", type=float, default=15.0, help="how long each outage stalls everything")
    p.add_argument("--keep", action="store_true", help="keep the work directory (daemon log) afterwards")
    args = p.parse_args()
    faults = {k: float(v) for k, v in (f.split("=", 1) for f in args.fault)} if args.fault else DEFAULT_MIX

    work = tempfile.mkdtemp(prefix="octuefs-faults-")
    mp, cache, log_file = (os.path.join(work, n) for n in ("mnt", "cache", "octuefs.log"))
    os.mkdir(mp)
    emulator = Emulator(data_dir=None, kill_with_parent=True).start()
    proxy = FaultProxy(emulator.url, seed=args.seed, stall_seconds=args.outage_seconds + 60).start()
    env = {**os.environ, "STORAGE_EMULATOR_HOST": proxy.url,
           "PYTHONPATH": HERE + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
    mounted = False
    try:
        from octuefs.storage.gcs import GCSBucket

        emulator.create_bucket("faults")
        direct = GCSBucket("faults", endpoint=emulator.url)
        octuefs("mount", "faults", mp, "--cache-dir", cache, "--log-file", log_file, "-v",
                "--op-timeout", str(args.op_timeout), env=env)
        mounted = True
        for d in DIRS:
            os.mkdir(os.path.join(mp, d))
        run = Run(mp, args.seed)
        proxy.set_faults(faults)
        stop = threading.Event()
        outage_log: list[float] = []
        threads = [threading.Thread(target=worker, args=(run, args.seed * 100 + i, stop)) for i in range(args.workers)]
        if args.outage_every > 0:
            threads.append(threading.Thread(target=outages, args=(proxy, faults, args.outage_every,
                                                                  args.outage_seconds, stop, outage_log)))
        started = time.monotonic()
        for t in threads:
            t.start()
        stop.wait(args.minutes * 60)
        stop.set()
        for t in threads:
            t.join()
        proxy.heal()
        ran = time.monotonic() - started
        sync_start = time.monotonic()
        synced = octuefs("sync", mp, env=env, check=False)
        sync_took = time.monotonic() - sync_start
        result = verify(run, direct)

        bound = 2 * args.op_timeout + 10
        print(f"ran {ran:.0f}s, {args.workers} workers, seed {args.seed}, op-timeout {args.op_timeout}s, "
              f"{len(outage_log)} outage(s) of {args.outage_seconds:.0f}s")
        counts = proxy.counts
        print("requests:", counts.get("requests", 0), " forwarded:", counts.get("forwarded", 0),
              " injected:", {f: counts[f] for f in FAULTS if counts.get(f)})
        print("operations (count, errors, slowest):")
        for op in sorted(run.ops):
            errs = {code: n for (o, code), n in run.errors.items() if o == op}
            flag = "  OVER THE BOUND" if run.slowest[op] > bound else ""
            print(f"  {op:<22} {run.ops[op]:>6}  {json.dumps(errs):<40} {run.slowest[op]:6.2f}s{flag}")
        # A system call may also wait in the kernel behind others (creates in one directory are
        # serialised), so this is what a program sees, an upper bound on any one FUSE request.
        print(f"slowest call through the mount: {max(run.slowest.values(), default=0):.2f}s (bound {bound:.0f}s)")
        print(f"files written and closed: {len(run.files)}; after `octuefs sync` ({sync_took:.1f}s, "
              f"exit {synced.returncode}): verified {result['verified']}, missing {len(result['missing'])}, "
              f"wrong {len(result['wrong'])}, uncertain (a failed mv/setfattr) {result['uncertain']}, "
              f"in the bucket but not expected {len(result['extra'])}")
        if run.wrong_reads:
            print("WRONG BYTES read:", run.wrong_reads[:10])
        for what in ("missing", "wrong", "extra"):
            if result[what]:
                print(f"{what.upper()}:", result[what][:10])
        with open(log_file, errors="replace") as f:
            text = f.read()
        print(f"daemon log: {text.count(' ERROR ')} ERROR lines, {text.count('Traceback')} tracebacks")
        bad = run.wrong_reads or result["missing"] or result["wrong"] or "Traceback" in text or \
            any(took > bound for took in run.slowest.values())
        return 1 if bad else 0
    finally:
        proxy.heal()
        if mounted and octuefs("unmount", mp, env=env, check=False).returncode:
            subprocess.run(["fusermount3", "-uz", mp])
        proxy.stop()
        emulator.stop()
        if args.keep:
            print("work directory kept:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
