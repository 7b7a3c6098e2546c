#!/usr/bin/env python3
"""Long data-integrity runs on a real mount: fsx (scripts/fsx.py) and fio --verify.

    scripts/integrity.py                        # the default long run (about 10-20 minutes)
    scripts/integrity.py --fsx-ops 20000 --fsx-seeds 10 --parallel 4 --fio-size 256
    scripts/integrity.py --only fio -v

It starts its own fake-gcs-server on 127.0.0.1, mounts a fresh bucket with ``octuefs`` (this
checkout's code), and runs:

* fsx: ``--fsx-seeds`` seeds one after another (small files, then files crossing the cache's
  4 MiB blocks), plus ``--parallel`` fsx processes at once on files of their own; after every
  ``octuefs sync`` the object in the bucket must equal fsx's shadow copy.
* fio: sequential, random and mixed writes with ``--verify=crc32c`` through the psync, pvsync,
  libaio (if present) and mmap engines, ``numjobs`` files each, O_DIRECT, and four processes
  writing their own parts of one file; then ``octuefs sync`` and the same checksums verified
  again through a fresh mount, which can only read the bucket.

Everything is unmounted and the emulator stopped at the end, whatever happened. Exit status 0
when every run verified, 1 otherwise (the failing run's output is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

FSX = os.path.join(HERE, "scripts", "fsx.py")


def octuefs(*args: str, env: dict, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "octuefs", *args], capture_output=True, text=True, env=env,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"octuefs {' '.join(args)} failed: {result.stderr.strip()}")
    return result


class Session:
    """An emulator, a bucket, and the mounts made of it; ``close()`` undoes all of it."""

    def __init__(self, verbose: bool):
        from octuefs.local.emulator import Emulator

        self.root = tempfile.mkdtemp(prefix="octuefs-integrity-")
        self.verbose = verbose
        self.emulator = Emulator(data_dir=None, kill_with_parent=True).start()
        self.env = dict(os.environ, **self.emulator.env())
        self.env["PYTHONPATH"] = HERE + (os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else "")
        self.bucket = f"integrity-{uuid.uuid4().hex[:8]}"
        self.emulator.create_bucket(self.bucket)
        self.mounts: list[str] = []

    def mount(self) -> str:
        n = len(self.mounts)
        mp = os.path.join(self.root, f"mnt{n}")
        os.makedirs(mp)
        octuefs("mount", self.bucket, mp, "--cache-dir", os.path.join(self.root, f"cache{n}"),
                "--log-file", os.path.join(self.root, f"octuefs{n}.log"), *(["-v"] if self.verbose else []),
                env=self.env)
        self.mounts.append(mp)
        return mp

    def unmount(self, mp: str) -> None:
        if os.path.ismount(mp):
            octuefs("unmount", mp, env=self.env, check=False)
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-uz", mp], capture_output=True, check=False)

    def tracebacks(self) -> list[str]:
        found = []
        for n in range(len(self.mounts)):
            log = os.path.join(self.root, f"octuefs{n}.log")
            if os.path.exists(log) and "Traceback" in open(log, errors="replace").read():
                found.append(log)
        return found

    def close(self, keep: bool) -> None:
        for mp in self.mounts:
            self.unmount(mp)
        self.emulator.stop()
        if keep:
            print(f"logs and caches kept in {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def run_fsx(s: Session, mp: str, args: argparse.Namespace) -> bool:
    common = ["--bucket", s.bucket, "--mountpoint", mp, "--check-every", "250"]
    plans = [  # (label, extra arguments)
        ("small files", ["-N", str(args.fsx_ops), "--seeds", str(args.fsx_seeds), "--maxlen", str(256 * 1024)]),
        ("files across 4 MiB blocks", ["-N", str(max(200, args.fsx_ops // 10)), "--seeds", "2",
                                       "--maxlen", str(9 * 1024 * 1024), "--maxop", str(1024 * 1024)]),
    ]
    ok = True
    for label, extra in plans:
        started = time.monotonic()
        seed = str(args.seed)
        result = subprocess.run([sys.executable, FSX, mp, "-S", seed, *common, *extra], env=s.env, text=True,
                                capture_output=True, check=False)
        print(f"fsx, {label}: {'OK' if result.returncode == 0 else 'FAILED'} in {time.monotonic() - started:.0f}s")
        print(_indent(result.stdout + result.stderr))
        ok &= result.returncode == 0
    if args.parallel:
        started = time.monotonic()
        procs = [subprocess.Popen([sys.executable, FSX, mp, "-S", str(args.seed + 1000 * (i + 1)), *common,
                                   "-N", str(args.fsx_ops), "--name", f"fsx-parallel-{i}.bin"],
                                  env=s.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for i in range(args.parallel)]
        outputs = [p.communicate()[0] for p in procs]
        good = all(p.returncode == 0 for p in procs)
        print(f"fsx, {args.parallel} at once: {'OK' if good else 'FAILED'} in {time.monotonic() - started:.0f}s")
        print(_indent("".join(outputs)))
        ok &= good
    return ok


def fio_jobs(size_mib: int, numjobs: int) -> str:
    engines = ["psync", "pvsync", "mmap"] + (["libaio"] if _fio_has("libaio") else [])
    jobs = [f"[global]\nsize={size_mib}m\nverify=crc32c\nverify_fatal=1\ndo_verify=1\nrandrepeat=1\n"
            f"numjobs={numjobs}\n"]
    for engine in engines:
        depth = "iodepth=16\ndirect=0\n" if engine == "libaio" else ""
        jobs.append(f"[seq-{engine}]\nrw=write\nbs=1m\nioengine={engine}\n{depth}")
        jobs.append(f"[rand-{engine}]\nrw=randwrite\nbsrange=4k-512k\nioengine={engine}\nfsync=64\n{depth}")
        jobs.append(f"[randrw-{engine}]\nrw=randrw\nbs=16k\nioengine={engine}\n{depth}")
    jobs.append("[direct-psync]\nrw=randwrite\nbs=64k\ndirect=1\nioengine=psync\n")
    jobs.append(f"[shared-file]\nfilename=shared.bin\nnumjobs=4\noffset_increment={size_mib}m\nrw=randwrite\n"
                "bs=8k\nioengine=psync\n")  # four processes, each writing its own part of one file
    return "\n".join(jobs)


def _fio_has(engine: str) -> bool:
    out = subprocess.run(["fio", "--enghelp"], capture_output=True, text=True, check=False).stdout
    return engine in out.split()


def run_fio(s: Session, mp: str, args: argparse.Namespace) -> bool:
    if not shutil.which("fio"):
        print("fio: not installed (scripts/install installs it); skipped")
        return True
    jobfile = os.path.join(s.root, "integrity.fio")
    with open(jobfile, "w") as f:
        f.write(fio_jobs(args.fio_size, args.fio_jobs))
    ok = True
    for label, target, extra in (("write + verify", mp, []), ("verify again through a fresh mount", None, ["--verify_only"])):
        if target is None:
            octuefs("sync", mp, env=s.env)
            target = s.mount()
        started = time.monotonic()
        result = subprocess.run(["fio", f"--directory={target}", "--output-format=json", jobfile, *extra],
                                capture_output=True, text=True, cwd=s.root, check=False)
        try:
            report = json.loads(result.stdout[result.stdout.index("{"):])
            errors = {j["jobname"]: j["error"] for j in report["jobs"] if j["error"]}
            moved = sum(j["write"]["io_bytes"] + j["read"]["io_bytes"] for j in report["jobs"])
        except (ValueError, KeyError):
            errors, moved = {"(no report)": -1}, 0
        good = result.returncode == 0 and not errors
        print(f"fio, {label}: {'OK' if good else 'FAILED'} in {time.monotonic() - started:.0f}s, "
              f"{moved / 2**20:.0f} MiB moved")
        if not good:
            print(_indent(result.stderr[-4000:] + result.stdout[-4000:]), f"job errors: {errors}")
        ok &= good
    return ok


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["fsx", "fio"], help="run only one tool")
    p.add_argument("--fsx-ops", type=int, default=10_000, help="operations per fsx seed (default 10,000)")
    p.add_argument("--fsx-seeds", type=int, default=5, help="fsx seeds run one after another (default 5)")
    p.add_argument("--parallel", type=int, default=3, help="fsx processes at once on their own files (default 3)")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100_000, help="first fsx seed (default: the time)")
    p.add_argument("--fio-size", type=int, default=64, help="MiB per fio file (default 64)")
    p.add_argument("--fio-jobs", type=int, default=2, help="fio numjobs: files per job section (default 2)")
    p.add_argument("--keep", action="store_true", help="keep logs and caches (printed at the end)")
    p.add_argument("-v", "--verbose", action="store_true", help="daemon log at INFO")
    args = p.parse_args()
    if not os.path.exists("/dev/fuse"):
        print("no /dev/fuse here", file=sys.stderr)
        return 2
    s = Session(args.verbose)
    ok = False
    try:
        mp = s.mount()
        print(f"bucket {s.bucket} mounted on {mp}; fsx seeds from {args.seed}")
        ok = True
        if args.only in (None, "fsx"):
            ok &= run_fsx(s, mp, args)
        if args.only in (None, "fio"):
            ok &= run_fio(s, mp, args)
        if bad := s.tracebacks():
            print(f"tracebacks in the daemon log(s): {', '.join(bad)}")
            ok = False
    finally:
        s.close(keep=args.keep or not ok)
    print("integrity: all verified" if ok else "integrity: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
