"""The thin FUSE adapter: translate each FUSE call into a core call, and errors into errno.

This is the only module that speaks FUSE (mfusepy's ``Operations``, ``FuseOSError``, ``st_*``
dictionaries, ``fuse_file_info``). Every error passes through one place, :func:`_translated`,
which asks :func:`octuefs.errors.errno_for` for the errno and the log level; an unexpected
exception is logged with its traceback and answered EIO, never the binding's default EINVAL.

The kernel side of reading fast:

* Requests are as large as libfuse 3 allows: ``max_write`` 1 MiB (libfuse's own buffer size,
  which also bounds reads), and more background requests in flight, so the kernel's read-ahead
  requests reach the daemon's threads together (:meth:`init_with_config`). Once the mount is up,
  the kernel's read-ahead window is raised (:func:`octuefs.fuse.kernel.raise_read_ahead`).
* Reads are answered with ``read_buf``, into memory libfuse then owns and frees
  (:mod:`octuefs.fuse.bufreads`): no Python bytes object per read, one copy less.
* The kernel page cache is kept across opens while the object is unchanged: mfusepy runs with
  ``raw_fi=True`` so that :meth:`open` can set ``keep_cache`` (the policy is
  :class:`octuefs.fuse.kernel.OpenedGenerations`).

What is not FUSE-speaking lives beside it: the ``st_*`` values (:mod:`octuefs.fuse.attrs`), the
kernel cache policies (:mod:`octuefs.fuse.kernel`) and READDIRPLUS listings (:mod:`octuefs.fuse.dirstreams`).
"""

from __future__ import annotations

import ctypes.util
import errno
import functools
import logging
import os
import threading
import time
from time import monotonic_ns

# mfusepy takes libfuse 2 when both are installed; octuefs wants libfuse 3 (mfusepy's own
# recommendation). It reads the choice when imported, so this must come first.
if not os.environ.get("FUSE_LIBRARY_PATH") and ctypes.util.find_library("fuse3"):
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # noqa: E402

from octuefs.errors import OctuefsError, errno_for
from octuefs.fs.core import XATTR_PREFIXES, Attr, FileSystem
from octuefs.fuse.attrs import StatAttrs
from octuefs.fuse.bufreads import answer_read, layout_known
from octuefs.fuse.dirstreams import DirStream, Everything
from octuefs.fuse.kernel import OpenedGenerations, raise_read_ahead

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_WRITE = MiB  # libfuse 3 cannot take larger requests (its buffer is 256 pages)
MAX_BACKGROUND = 64  # kernel requests in flight at once that no caller waits on (read-ahead)
# Idle worker threads libfuse 3 keeps. Its default, UINT_MAX ("never end one"), is refused by
# libfuse 3.12-3.14's own check, which logs "Ignoring invalid max threads value 4294967295 >
# max (100000)" at every mount. 10 is libfuse's max_threads default, so it keeps every worker,
# as UINT_MAX meant: the same behaviour, without the line.
MAX_IDLE_THREADS = 10

# fuse_common.h (libfuse 3)
FUSE_CAP_ASYNC_READ = 1 << 0
FUSE_CAP_AUTO_INVAL_DATA = 1 << 12
FUSE_CAP_HANDLE_KILLPRIV = 1 << 20
FUSE_CAP_HANDLE_KILLPRIV_V2 = 1 << 28
FUSE_READDIR_PLUS = 1 << 0  # enum fuse_readdir_flags
FUSE_FILL_DIR_PLUS = 1 << 1  # enum fuse_fill_dir_flags


def _fh(fi) -> int | None:
    """The handle number in a ``fuse_file_info`` (mfusepy with ``raw_fi=True``)."""
    return None if fi is None else getattr(fi, "fh", fi)


def _what(name: str, args: tuple) -> str:
    """``op('/path', 'other')`` for the log: paths and names only, never data."""
    shown = [repr(a) for a in args[:2] if isinstance(a, str)]
    return f"{name}({', '.join(shown)})"


def _translated(method, name: str | None = None):
    name = name or method.__name__  # (the op's name in the metrics)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        metrics = self.metrics
        if metrics is None:
            return _answer(self, method, args, kwargs)
        started, code = monotonic_ns(), None  # integers: no float until a scrape
        try:
            return _answer(self, method, args, kwargs)
        except mfusepy.FuseOSError as exc:
            code = exc.errno
            raise
        finally:
            metrics.fuse_op(name, code, monotonic_ns() - started)

    return wrapper


def _answer(self, method, args, kwargs):
    """``method``'s answer, or its error as the errno FUSE answers (logged as it deserves)."""
    try:
        return method(self, *args, **kwargs)
    except mfusepy.FuseOSError:
        raise
    except OctuefsError as exc:
        code, level = errno_for(exc)
        log.log(level, "%s: %s (%s)", _what(method.__name__, args), exc or type(exc).__name__, errno.errorcode[code])
        raise mfusepy.FuseOSError(code) from None
    except OSError as exc:
        code, level = errno_for(exc)
        log.log(max(level, logging.WARNING), "%s: %s", _what(method.__name__, args), exc)
        raise mfusepy.FuseOSError(code) from None
    except Exception:
        log.exception("unexpected error in %s", _what(method.__name__, args))
        raise mfusepy.FuseOSError(errno.EIO) from None


class OctueOperations(mfusepy.Operations):
    """mfusepy operations backed by a :class:`~octuefs.fs.core.FileSystem`.

    Runs with ``raw_fi=True``: file calls get a ``fuse_file_info`` whose ``fh`` is the core's
    handle number. ``_opened`` remembers the generation each path's last open read (keep_cache).
    """

    use_ns = True  # times in integer nanoseconds

    def __init__(self, fs: FileSystem, mountpoint: str | None = None, metrics=None):
        self.fs = fs
        self.metrics = metrics  # octuefs.metrics.Metrics when --metrics-port is given
        self.mountpoint = mountpoint  # set by run(); used once the mount is up
        self._attrs = StatAttrs(fs.config, mfusepy.c_stat)
        self._opened = OpenedGenerations(fs)  # keep_cache: see octuefs.fuse.kernel
        self._dirs: dict[int, list] = {}  # open directory -> its entries (READDIRPLUS); _dirs_lock
        self._dirs_lock = threading.Lock()
        self._last_dir = 0

    # --- lifetime -------------------------------------------------------------------------

    def init_with_config(self, conn, config):
        """FUSE INIT: ask for large requests, then run ``init`` (the mount's "ready" hook)."""
        try:
            if conn is not None:
                self._tune(conn)
        except Exception:
            log.exception("could not tune the FUSE connection; going on with libfuse's defaults")
        if self.mountpoint:
            threading.Thread(target=raise_read_ahead, args=(self.mountpoint,), name="octuefs-ra", daemon=True).start()
        init = getattr(self, "init", None)
        if init is not None and not getattr(init, "libfuse_ignore", False):
            init("/")

    @staticmethod
    def _tune(conn) -> None:
        # libfuse has already capped max_write to its buffer; never raise it past that.
        conn.max_write = min(conn.max_write, MAX_WRITE) if conn.max_write else MAX_WRITE
        conn.max_background = max(conn.max_background, MAX_BACKGROUND)
        conn.congestion_threshold = max(conn.congestion_threshold, MAX_BACKGROUND * 3 // 4)
        wanted = FUSE_CAP_ASYNC_READ | FUSE_CAP_AUTO_INVAL_DATA
        conn.want |= wanted & conn.capable  # libfuse's defaults; said here because reads rely on them
        # The kernel clears setuid/setgid on a write or chown by someone else with a setattr of
        # the mode (a chmod, which is kept) only if the filesystem does not say it does so itself.
        conn.want &= ~(FUSE_CAP_HANDLE_KILLPRIV | FUSE_CAP_HANDLE_KILLPRIV_V2)
        log.info(
            "FUSE protocol %d.%d: max_write %d, max_read %d, max_readahead %d, max_background %d, want 0x%x of 0x%x",
            conn.proto_major, conn.proto_minor, conn.max_write, conn.max_read, conn.max_readahead,
            conn.max_background, conn.want, conn.capable,
        )

    def destroy(self, path):
        self.fs.shutdown()  # finishes pending uploads unless asked to leave them

    # --- attributes and directories --------------------------------------------------------

    @_translated
    def getattr(self, path, fh=None):
        return self._attrs.st(self.fs.getattr(path, _fh(fh)))

    @_translated
    def readdir(self, path, fh):
        return [(name, attrs, 0) for name, attrs in self._entries(path)]

    def _entries(self, path: str) -> list[tuple[str, dict | None]]:
        entries: list[tuple[str, dict | None]] = [(".", None), ("..", None)]
        entries += [(name, self._attrs.st(attr)) for name, attr in self.fs.readdir(path)]
        return entries

    def opendir(self, path):
        with self._dirs_lock:
            self._last_dir += 1
            return self._last_dir

    def releasedir(self, path, fh):
        with self._dirs_lock:
            stream = self._dirs.pop(fh, None)
        if stream is not None:
            stream.close()
        return 0

    def current(self, directory: str, name: str) -> bytes | None:
        """The attributes of ``name`` in ``directory`` now (:meth:`packed`), or None if it is gone."""
        try:
            return self.packed(self.fs.getattr(directory.rstrip("/") + "/" + name))
        except (OctuefsError, OSError):
            return None

    def packed(self, attr: Attr) -> bytes | None:
        """:meth:`StatAttrs.st` as a ``struct stat``, for READDIRPLUS (:meth:`StatAttrs.packed`)."""
        return self._attrs.packed(attr)

    @_translated
    def listing(self, path, fh: int, offset: int) -> tuple[list[tuple[str, bytes | None]], frozenset[str] | Everything]:
        """The entries of open directory ``fh`` for READDIR(PLUS), from ``offset`` on: at least
        one unless the listing has ended, more as its pages arrive. Listed afresh at offset 0
        (a new ``readdir`` or a ``rewinddir``), kept for the rest. Returns the entries so far
        and the names among them to refresh before they are sent (:meth:`DirStream.stale`).
        """
        with self._dirs_lock:
            stream = None if offset == 0 else self._dirs.get(fh)
        if stream is None:
            stream = DirStream(self.fs, path, self.packed)
            stream.start()
            with self._dirs_lock:
                previous, self._dirs[fh] = self._dirs.get(fh), stream
            if previous is not None:
                previous.close()
        return stream.upto(offset), stream.stale(offset)

    @_translated
    def statfs(self, path):
        return {"f_" + key: value for key, value in self.fs.statfs().items()}

    @_translated
    def mkdir(self, path, mode):
        self.fs.mkdir(path, mode & 0o7777, self._creator())
        return 0

    def _creator(self) -> dict[str, int]:
        """The owner to record on an entry made by this call: the caller's uid and gid where
        they are not the mount's (--uid, --gid), so a private mount records none."""
        try:
            uid, gid, _pid = mfusepy.fuse_get_context()
        except (ValueError, OSError):  # (called outside a FUSE request: a test)
            return {}
        owner = {}
        if uid != self._attrs.uid:
            owner["uid"] = uid
        if gid != self._attrs.gid:
            owner["gid"] = gid
        return owner

    @_translated
    def rmdir(self, path):
        self.fs.rmdir(path)
        return 0

    @_translated
    def unlink(self, path):
        self.fs.unlink(path)
        self._opened.forget(path)
        return 0

    @_translated
    def rename(self, old, new):
        self.fs.rename(old, new)
        self._opened.forget(old, new)
        return 0

    @_translated
    def chmod(self, path, mode):
        self.fs.chmod(path, mode & 0o7777)
        return 0

    @_translated
    def chown(self, path, uid, gid):
        self._may_chown(path, uid, gid)
        self.fs.chown(path, uid, gid)
        return 0

    def _may_chown(self, path, uid: int, gid: int) -> None:
        """chown(2)'s rule, for a mount without default_permissions (the kernel then passes
        chown on unchecked, and what is recorded shows on every machine): a caller that is not
        root may not give a file away, and may set its group only to one of its own if it owns
        it. (With default_permissions the kernel has checked the same already.)"""
        try:
            caller, caller_gid, pid = mfusepy.fuse_get_context()
        except (ValueError, OSError):  # (called outside a FUSE request: a test)
            return
        if caller != 0 and not self._attrs.may_chown(self.fs.getattr(path), caller, caller_gid, pid, uid, gid):
            raise mfusepy.FuseOSError(errno.EPERM)

    @_translated
    def utimens(self, path, times=None):
        if times is None:
            now = time.time()
            self.fs.set_times(path, now, now)
        else:
            self.fs.set_times(path, _time(times[0]), _time(times[1]))
        return 0

    @_translated
    def symlink(self, path, target):
        """``ln -s target path`` (mfusepy passes the link's path first)."""
        self.fs.symlink(path, target, self._creator())
        return 0

    @_translated
    def readlink(self, path):
        return self.fs.readlink(path)

    @_translated
    def mknod(self, path, mode, dev):
        self.fs.mknod(path, mode, dev, self._creator())
        return 0

    @_translated
    def link(self, path, target):
        """``ln target path`` (mfusepy passes the new name first): refused, EPERM."""
        self.fs.link(path, target)
        return 0

    # --- files (fi: a fuse_file_info, fi.fh the core's handle number) -----------------------

    @_translated
    def create(self, path, mode, fi):
        fi.fh = self.fs.create(path, fi.flags, mode & 0o7777, self._creator())
        self._opened.forget(path)
        return 0

    @_translated
    def open(self, path, fi):
        fi.fh = self.fs.open(path, fi.flags)
        fi.keep_cache = self._opened.same_as_last_open(path)
        return 0

    @_translated
    def read(self, path, size, offset, fi):
        return self.fs.read(fi.fh, size, offset)

    def read_buf(self, path, bufpp, size, offset, fi):
        """A read answered in memory libfuse owns (:mod:`octuefs.fuse.bufreads`): libfuse asks
        this rather than :meth:`read` once it is there. Counted as a read in the metrics."""
        fh = fi.fh
        return answer_read(bufpp, size, lambda buf: self.fs.read_into(fh, offset, buf))

    read_buf = _translated(read_buf, "read")
    # (only on a libfuse whose struct fuse_buf is the one declared there; else plain read)
    read_buf.libfuse_ignore = not layout_known(mfusepy.fuse_version_major, mfusepy.fuse_version_minor)

    @_translated
    def write(self, path, data, offset, fi):
        return self.fs.write(fi.fh, data, offset)

    @_translated
    def truncate(self, path, length, fh=None):
        self.fs.truncate(path, length, _fh(fh))
        return 0

    @_translated
    def flush(self, path, fi):
        self.fs.flush(fi.fh)
        return 0

    @_translated
    def fsync(self, path, datasync, fi):
        self.fs.fsync(fi.fh)
        return 0

    @_translated
    def release(self, path, fi):
        self.fs.release(fi.fh)
        return 0

    # --- extended attributes ---------------------------------------------------------------

    @_translated
    def getxattr(self, path, name, position=0):
        return self.fs.getxattr(path, name)

    @_translated
    def listxattr(self, path):
        return self.fs.listxattr(path)

    @_translated
    def setxattr(self, path, name, value, options, position=0):
        self.fs.setxattr(path, name, bytes(value), options)
        return 0

    @_translated
    def removexattr(self, path, name):
        self.fs.removexattr(path, name)
        return 0


# utimensat's special nanosecond values, which libfuse passes on with tv_sec 0 (sys/stat.h)
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def _time(ns: int) -> float | None:
    """A time utimens was given, in seconds: None for UTIME_OMIT (leave it), now for UTIME_NOW."""
    if ns == UTIME_OMIT:
        return None
    if ns == UTIME_NOW:
        return time.time()
    return ns / 1e9


_XATTR_PREFIXES = tuple(p.encode() for p in XATTR_PREFIXES)
# libfuse's fuse_fill_dir_t with the struct stat pointer taken from bytes (or None)
_FILLER_OF_BYTES = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, mfusepy.c_off_t,
                                    getattr(mfusepy, "fuse_fill_dir_flags", ctypes.c_int))
_worker = threading.local()  # .pinned: this libfuse worker thread keeps its Python thread state


def _pin_thread_state() -> None:
    """Keep the calling libfuse worker's Python thread state for the life of the thread.

    A ctypes callback on a thread Python did not start makes a new thread state on entry and
    destroys it on return (``PyGILState_Ensure``/``Release``), and with it everything
    thread-local, ``threading.local`` data and the ``_DummyThread`` record included: that was a
    third of the daemon's time per FUSE call. One extra ``PyGILState_Ensure``, never released,
    keeps the state alive, so every later callback on that thread only takes the GIL. libfuse
    keeps its workers for the life of the mount (``max_idle_threads`` aside), so this holds a few
    KiB per worker thread, freed when the interpreter exits.
    """
    if not getattr(_worker, "pinned", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _worker.pinned = True


class _FUSE(mfusepy.FUSE):
    """mfusepy's FUSE with two changes, each said where it is made."""

    def _wrapper(self, func, *args, **kwargs):
        _pin_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
        """Answer READDIRPLUS with every entry's full attributes (mfusepy passes only the mode).

        One listing then answers ``ls -l`` whole: the kernel caches the attributes it gets here
        as a lookup's, so the ``stat`` of each entry that follows never reaches the daemon.
        Entries go out with offsets (their position + 1), since libfuse 3.14 hands the kernel
        the attributes only in that mode; the listing is taken once per open directory, at
        offset 0, as a :class:`DirStream` that grows as the bucket's pages arrive, and the
        requests that follow page through it, with each entry's attributes as they are when its
        page is sent. A plain READDIR (which the kernel sends after the first READDIRPLUS unless
        a lookup advised more) pages through the same listing, without attributes: answered
        from a listing of its own (libfuse's, taken afresh at that offset), an entry new since
        would shift the positions, and a name already sent would be sent again.
        """
        plus = flags & FUSE_READDIR_PLUS
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        entries, stale = self.operations.listing(decoded, fip.contents.fh, offset)
        # The filler, taking the packed struct stat as it is kept (bytes) rather than a ctypes
        # struct to copy it into: libfuse copies what the pointer shows, and never writes to it.
        fill = ctypes.cast(filler, _FILLER_OF_BYTES)
        with_attrs = FUSE_FILL_DIR_PLUS if plus else 0
        encoding, errors = self.encoding, self.errors
        for position in range(offset, len(entries)):
            name, packed = entries[position]
            if plus and packed is not None and name in stale:
                # The kernel takes these attributes as newer than anything it saw before this
                # request, so they must be current, not the listing's (a file appended to
                # since, or removed, would otherwise be cached as it was).
                packed = self.operations.current(decoded, name)
            if fill(buf, name.encode(encoding, errors), packed, position + 1, 0 if packed is None else with_attrs):
                break
        return 0

    def getxattr(self, path, name, value, size, *args):
        """Names octuefs does not keep are answered here, without the round of exceptions and
        logging. Outside the ``user.`` namespace (``security.selinux``, POSIX ACLs, ``trusted.``)
        the answer is EOPNOTSUPP, what a filesystem without those features says: ``ls -l``
        asks for ``security.selinux`` and ``system.posix_acl_access`` of every file it lists,
        and on EOPNOTSUPP it stops asking for the rest of the filesystem (two round trips per
        file otherwise). Every ``user.`` name is ours (other ones are kept as custom metadata)."""
        if not name.startswith(_XATTR_PREFIXES):
            return -errno.EOPNOTSUPP
        return super().getxattr(path, name, value, size, *args)

    def read_buf(self, path, bufpp, size, offset, fip):
        """mfusepy's would decode a path libfuse leaves out (NULL, as for a read's)."""
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.read_buf(decoded, bufpp, size, offset, fip.contents)

    def truncate_fuse_3(self, path, length, fip):
        """mfusepy 3.1.1 drops the file handle libfuse 3 gives truncate (an ftruncate), which
        turned it into a truncate by path: that saves at once, uploading a writer's unfinished
        data, and fails for an unlinked file, which has no path. Pass the handle on."""
        return self.ftruncate(path, length, fip)


def run(ops: OctueOperations, mountpoint: str, options: dict) -> None:
    """Serve ``ops`` on ``mountpoint`` until it is unmounted (multithreaded)."""
    ops.mountpoint = os.path.abspath(mountpoint)
    if mfusepy.fuse_version_major >= 3:  # (libfuse 2 knows no such option, and has no such default)
        options = {"max_idle_threads": MAX_IDLE_THREADS, **options}
    log.debug("libfuse %d.%d, options %s", mfusepy.fuse_version_major, mfusepy.fuse_version_minor, options)
    _FUSE(ops, mountpoint, nothreads=False, raw_fi=True, **options)
