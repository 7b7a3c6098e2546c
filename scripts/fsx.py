#!/usr/bin/env python3
"""fsx for octuefs: seeded random operations on one file, each checked against a shadow copy.

    scripts/fsx.py MOUNTPOINT                       # 10,000 operations, a random seed
    scripts/fsx.py MOUNTPOINT -N 2000 -S 7 --seeds 5 --bucket my-bucket
    scripts/fsx.py /tmp/somedir --no-sync           # any directory: checks the tool itself

In the spirit of the classic fsx: one file is read and written at random offsets (holes past
the end included), truncated up and down, appended to through a second descriptor, read and
written through shared mappings (with msync, and also written after the descriptor was closed,
which reaches the daemon only at munmap), fsync'd, closed and reopened (sometimes with
O_TRUNC). An in-memory copy takes every change; every read, and the file's size after every
operation, must agree with it. Every ``--check-every`` operations the file is closed,
``octuefs sync`` waits for write-back, the object in the bucket (with ``--bucket``) must equal
the copy byte for byte, and so must a full read through the mount after dropping the file's
cached pages.

On a mismatch the tool prints the operations that led to it, the first differing offset and the
bytes around it, and exits 1; rerun with the same ``-S`` to reproduce. Only the standard library
is needed; ``--bucket`` imports octuefs to read the bucket (STORAGE_EMULATOR_HOST or Application
Default Credentials, as the mount itself).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import mmap
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

PAGE = mmap.PAGESIZE


class Mismatch(AssertionError):
    """The file disagreed with the shadow copy."""


@dataclasses.dataclass
class Options:
    ops: int = 10_000
    seed: int = 1
    maxlen: int = 256 * 1024  # largest file the operations aim for
    maxop: int = 64 * 1024  # largest single read or write
    check_every: int = 200  # a full check (sync, bucket, re-read) this often; 0: only at the end
    name: str = "fsx.bin"
    sync: bool = True  # run `octuefs sync` before comparing with the bucket
    mmap: bool = True
    drop_caches: bool = False  # also drop the whole page cache at each check (root)
    verbose: bool = False


# Operation weights: the classic fsx mix, plus what write-back makes interesting.
WEIGHTS = {
    "read": 20, "write": 20, "write_past_eof": 6, "append": 6, "truncate_down": 4, "truncate_up": 4,
    "map_read": 8, "map_write": 8, "map_write_after_close": 3, "reopen": 4, "reopen_trunc": 1,
    "fsync": 1, "stat_path": 3,
}


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def octuefs_sync(mountpoint: str) -> None:
    exe = shutil.which("octuefs")
    cmd = [exe] if exe else [sys.executable, "-m", "octuefs"]
    result = subprocess.run([*cmd, "sync", mountpoint], capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"octuefs sync {mountpoint} failed: {result.stderr.strip()}")


def first_difference(got: bytes, want: bytes) -> int:
    n = min(len(got), len(want))
    for start in range(0, n, 65536):
        if got[start:start + 65536] != want[start:start + 65536]:
            for i in range(start, min(start + 65536, n)):
                if got[i] != want[i]:
                    return i
    return n


class Fsx:
    """One run: ``run()`` returns normally or raises Mismatch with the story in its message.

    ``read_object``: returns the object's bytes in the bucket (None: not there), or is None to
    skip that comparison.
    """

    def __init__(self, directory: str, opts: Options, read_object: Callable[[str], bytes | None] | None = None,
                 mountpoint: str | None = None):
        self.dir = directory
        self.path = os.path.join(directory, opts.name)
        self.opts = opts
        self.read_object = read_object
        self.mountpoint = mountpoint or directory
        self.rng = random.Random(opts.seed)
        self.shadow = bytearray()
        self.log: list[str] = []
        self.fd = -1
        self.counts = dict.fromkeys(WEIGHTS, 0)
        self.counts["check"] = 0
        self._libc = _libc() if opts.mmap else None
        self._unmapped_after_close = False

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, int]:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        names = [n for n in WEIGHTS if self.opts.mmap or not n.startswith("map_")]
        weights = [WEIGHTS[n] for n in names]
        try:
            for i in range(1, self.opts.ops + 1):
                op = self.rng.choices(names, weights)[0]
                getattr(self, "op_" + op)(i)
                self.counts[op] += 1
                self._check_size(i)
                if self.opts.check_every and i % self.opts.check_every == 0:
                    self.check(i)
            self.check(self.opts.ops + 1)
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        return self.counts

    def note(self, i: int, text: str) -> None:
        self.log.append(f"{i:6d} {text}")
        if self.opts.verbose:
            print(self.log[-1], flush=True)

    def fail(self, i: int, what: str, got: bytes, want: bytes, base: int = 0) -> None:
        at = first_difference(got, want)
        lines = [f"MISMATCH at operation {i} (seed {self.opts.seed}): {what}",
                 f"  first difference at file offset {base + at} (0x{base + at:x}); "
                 f"got {len(got)} bytes, expected {len(want)}",
                 f"  got      {bytes(got[at:at + 16]).hex(' ')}",
                 f"  expected {bytes(want[at:at + 16]).hex(' ')}",
                 f"  shadow size {len(self.shadow)}; operations so far:"]
        shown = self.log if self.opts.verbose else self.log[-200:]
        if len(shown) < len(self.log):
            lines.append(f"  ... {len(self.log) - len(shown)} earlier operations (use -v for all)")
        lines += ["  " + line for line in shown]
        raise Mismatch("\n".join(lines))

    def _offset_len(self, limit: int) -> tuple[int, int]:
        off = self.rng.randrange(max(limit, 1))
        return off, self.rng.randint(1, self.opts.maxop)

    def _check_size(self, i: int) -> None:
        size = os.fstat(self.fd).st_size
        if size != len(self.shadow):
            self.fail(i, f"fstat size {size} != {len(self.shadow)}", b"", b"")

    def _set(self, off: int, data: bytes) -> None:
        end = off + len(data)
        if end > len(self.shadow):
            self.shadow.extend(bytes(end - len(self.shadow)))
        self.shadow[off:end] = data

    def _data(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    # --- operations --------------------------------------------------------------------------

    def op_read(self, i: int) -> None:
        off, n = self._offset_len(len(self.shadow) + 1024)  # sometimes past the end
        self.note(i, f"read    0x{off:x} +0x{n:x}")
        got = os.pread(self.fd, n, off)
        want = bytes(self.shadow[off:off + n])
        if got != want:
            self.fail(i, f"pread at 0x{off:x} of 0x{n:x}", got, want, off)

    def op_write(self, i: int) -> None:
        off, n = self._offset_len(min(len(self.shadow) + 1, self.opts.maxlen))
        n = min(n, max(1, self.opts.maxlen - off))
        self.note(i, f"write   0x{off:x} +0x{n:x}")
        data = self._data(n)
        os.pwrite(self.fd, data, off)
        self._set(off, data)

    def op_write_past_eof(self, i: int) -> None:
        """A write that leaves a hole between the old end and itself."""
        start = len(self.shadow)
        if start >= self.opts.maxlen:
            return self.op_truncate_down(i)
        off = self.rng.randint(start + 1, max(start + 1, self.opts.maxlen - 1))
        n = min(self.rng.randint(1, self.opts.maxop), self.opts.maxlen - off) or 1
        self.note(i, f"write   0x{off:x} +0x{n:x} (hole from 0x{start:x})")
        data = self._data(n)
        os.pwrite(self.fd, data, off)
        self._set(off, data)

    def op_append(self, i: int) -> None:
        """Through a second descriptor opened O_APPEND, closed at once."""
        n = self.rng.randint(1, self.opts.maxop // 4)
        self.note(i, f"append  +0x{n:x} at 0x{len(self.shadow):x}")
        data = self._data(n)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self.shadow.extend(data)

    def op_truncate_down(self, i: int) -> None:
        n = self.rng.randrange(len(self.shadow) + 1)
        self.note(i, f"trunc   0x{len(self.shadow):x} -> 0x{n:x}")
        os.ftruncate(self.fd, n)
        del self.shadow[n:]

    def op_truncate_up(self, i: int) -> None:
        n = self.rng.randint(len(self.shadow), max(len(self.shadow), self.opts.maxlen))
        self.note(i, f"trunc   0x{len(self.shadow):x} -> 0x{n:x}")
        os.ftruncate(self.fd, n)
        self.shadow.extend(bytes(n - len(self.shadow)))

    def op_map_read(self, i: int) -> None:
        if not self.shadow:
            return self.op_read(i)
        off, n = self._offset_len(len(self.shadow))
        n = min(n, len(self.shadow) - off)
        self.note(i, f"mapread 0x{off:x} +0x{n:x}")
        with mmap.mmap(self.fd, len(self.shadow), prot=mmap.PROT_READ) as m:
            got = m[off:off + n]
        want = bytes(self.shadow[off:off + n])
        if got != want:
            self.fail(i, f"mapped read at 0x{off:x} of 0x{n:x}", got, want, off)

    def _extend_for_map(self, off: int, n: int) -> None:
        """A mapping cannot grow the file: make it long enough first, as fsx does."""
        if off + n > len(self.shadow):
            os.ftruncate(self.fd, off + n)
            self.shadow.extend(bytes(off + n - len(self.shadow)))

    def op_map_write(self, i: int) -> None:
        off, n = self._offset_len(min(len(self.shadow) + 1, self.opts.maxlen))
        n = min(n, max(1, self.opts.maxlen - off))
        self.note(i, f"mapwrite 0x{off:x} +0x{n:x} (msync)")
        self._extend_for_map(off, n)
        data = self._data(n)
        with mmap.mmap(self.fd, len(self.shadow)) as m:  # (Python's mmap keeps a dup of fd)
            m[off:off + n] = data
            m.flush()  # msync(MS_SYNC)
        self._set(off, data)

    def op_map_write_after_close(self, i: int) -> None:
        """Map, close every descriptor, write through the mapping, munmap without msync.

        The writes reach the daemon after the last close; half the time a full check follows
        at once, with no other close that could save them first.
        """
        off, n = self._offset_len(min(len(self.shadow) + 1, self.opts.maxlen))
        n = min(n, max(1, self.opts.maxlen - off))
        self.note(i, f"mapwrite 0x{off:x} +0x{n:x} (after close, munmap without msync)")
        self._extend_for_map(off, n)
        data = self._data(n)
        length = len(self.shadow)
        fd = os.open(self.path, os.O_RDWR)
        os.close(self.fd)
        self.fd = -1
        addr = self._libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        os.close(fd)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap: {os.strerror(ctypes.get_errno())}")
        ctypes.memmove(addr + off, data, n)
        if self._libc.munmap(addr, length) != 0:
            raise OSError(ctypes.get_errno(), "munmap")
        self._set(off, data)
        self._unmapped_after_close = True
        if self.rng.random() < 0.5:
            self.check(i)
        else:
            self.fd = os.open(self.path, os.O_RDWR)

    def op_reopen(self, i: int) -> None:
        self.note(i, "close + open")
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR)

    def op_reopen_trunc(self, i: int) -> None:
        self.note(i, "close + open O_TRUNC")
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR | os.O_TRUNC)
        self.shadow.clear()

    def op_fsync(self, i: int) -> None:
        self.note(i, "fsync")
        os.fsync(self.fd)

    def op_stat_path(self, i: int) -> None:
        size = os.stat(self.path).st_size
        self.note(i, f"stat    {size}")
        if size != len(self.shadow):
            self.fail(i, f"stat size {size} != {len(self.shadow)}", b"", b"")

    # --- the full check ----------------------------------------------------------------------

    def check(self, i: int) -> None:
        """Close; sync; the bucket's object and a cold full read must equal the shadow."""
        self.note(i, "check: close, sync, compare bucket and a cold re-read")
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        want = bytes(self.shadow)
        # The last close of a mapping sends RELEASE asynchronously, and the daemon saves the
        # mapping's writes only once it has it: after such a close, sync again (for a few
        # seconds at most) until the object shows them.
        patience = 25 if self._unmapped_after_close else 1
        self._unmapped_after_close = False
        for attempt in range(1, patience + 1):
            if self.opts.sync:
                octuefs_sync(self.mountpoint)
            if self.read_object is None:
                break
            got = self.read_object(self.opts.name)
            if got == want:
                break
            if attempt == patience:
                if got is None:
                    self.fail(i, "the object is not in the bucket after sync", b"", want)
                self.fail(i, "the bucket's object after sync", got, want)
            time.sleep(0.2)
        if self.opts.drop_caches:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # drop the file's cached pages
            got = _read_all(fd)
        finally:
            os.close(fd)
        if got != want:
            self.fail(i, "a full re-read after dropping cached pages", got, want)
        self.fd = os.open(self.path, os.O_RDWR)
        self.counts["check"] += 1


def _read_all(fd: int) -> bytes:
    chunks, off = [], 0
    while True:
        chunk = os.pread(fd, 1 << 20, off)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        off += len(chunk)


def bucket_reader(spec: str) -> Callable[[str], bytes | None]:
    """``BUCKET[/PREFIX]`` -> a function reading an object's bytes (octuefs's storage layer)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from octuefs.errors import NotFound
    from octuefs.storage import open_bucket

    name, _, prefix = spec.partition("/")
    bucket = open_bucket(name, None)
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def read(obj: str) -> bytes | None:
        try:
            info = bucket.stat(prefix + obj)
        except NotFound:
            return None
        return bucket.read_range(prefix + obj, 0, info.size) if info.size else b""

    return read


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", help="where to make the test file (a directory on the mount)")
    p.add_argument("-N", "--ops", type=int, default=10_000, help="operations per seed (default 10,000)")
    p.add_argument("-S", "--seed", type=int, default=None, help="first seed (default: random)")
    p.add_argument("--seeds", type=int, default=1, help="how many seeds to run, one after another (default 1)")
    p.add_argument("--maxlen", type=int, default=256 * 1024, help="largest file size aimed for (default 256 KiB)")
    p.add_argument("--maxop", type=int, default=64 * 1024, help="largest read or write (default 64 KiB)")
    p.add_argument("--check-every", type=int, default=200, help="full check every N operations (default 200)")
    p.add_argument("--bucket", help="BUCKET[/PREFIX] the mount serves: compare the object after each sync")
    p.add_argument("--mountpoint", help="the mount's root, for `octuefs sync` (default: the directory)")
    p.add_argument("--name", default="fsx.bin", help="the test file's name (default fsx.bin)")
    p.add_argument("--no-sync", action="store_true", help="do not run `octuefs sync` (any directory)")
    p.add_argument("--no-mmap", action="store_true", help="no mapped reads or writes")
    p.add_argument("--drop-caches", action="store_true", help="drop the whole page cache at each check (root)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every operation")
    args = p.parse_args(argv)
    read_object = bucket_reader(args.bucket) if args.bucket else None
    first = args.seed if args.seed is not None else random.randrange(1 << 31)
    for seed in range(first, first + args.seeds):
        opts = Options(ops=args.ops, seed=seed, maxlen=args.maxlen, maxop=args.maxop, check_every=args.check_every,
                       name=args.name, sync=not args.no_sync, mmap=not args.no_mmap, drop_caches=args.drop_caches,
                       verbose=args.verbose)
        started = time.monotonic()
        try:
            counts = Fsx(args.directory, opts, read_object, args.mountpoint).run()
        except Mismatch as exc:
            print(exc, file=sys.stderr)
            return 1
        done = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        print(f"fsx seed {seed}: {args.ops} operations OK in {time.monotonic() - started:.1f}s ({done})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
