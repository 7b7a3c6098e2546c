"""The thin FUSE adapter: translate each FUSE call into a core call, and errors into errno.

This is the only module that speaks FUSE (mfusepy's ``Operations``, ``FuseOSError``, ``st_*``
dictionaries). Every error passes through one place, :func:`_translated`, which asks
:func:`octuefs.errors.errno_for` for the errno and the log level; an unexpected exception is
logged with its traceback and answered EIO, never the binding's default EINVAL.
"""

from __future__ import annotations

import ctypes.util
import errno
import functools
import logging
import os
import stat

# mfusepy takes libfuse 2 when both are installed; octuefs wants libfuse 3 (mfusepy's own
# recommendation). It reads the choice when imported, so this must come first.
if not os.environ.get("FUSE_LIBRARY_PATH") and ctypes.util.find_library("fuse3"):
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # noqa: E402

from .core import Attr, FileSystem
from .errors import OctuefsError, errno_for

log = logging.getLogger(__name__)


def _what(name: str, args: tuple) -> str:
    """``op('/path', 'other')`` for the log: paths and names only, never data."""
    shown = [repr(a) for a in args[:2] if isinstance(a, str)]
    return f"{name}({', '.join(shown)})"


def _translated(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
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

    return wrapper


class OctueOperations(mfusepy.Operations):
    """mfusepy operations backed by a :class:`~octuefs.core.FileSystem`."""

    use_ns = True  # times in integer nanoseconds

    def __init__(self, fs: FileSystem):
        self.fs = fs
        cfg = fs.config
        self._uid, self._gid = cfg.uid, cfg.gid
        self._file_mode = stat.S_IFREG | (cfg.file_mode & (0o555 if cfg.read_only else 0o7777))
        self._dir_mode = stat.S_IFDIR | (cfg.dir_mode & (0o555 if cfg.read_only else 0o7777))

    def _st(self, attr: Attr) -> dict:
        ns = int(attr.mtime * 1e9)
        return {
            "st_mode": self._dir_mode if attr.is_dir else self._file_mode,
            "st_nlink": 2 if attr.is_dir else 1,
            "st_size": attr.size,
            "st_blocks": (attr.size + 511) // 512,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_mtime": ns,
            "st_ctime": ns,
            "st_atime": ns,
        }

    # --- lifetime -------------------------------------------------------------------------

    def destroy(self, path):
        self.fs.shutdown()  # finishes pending uploads unless asked to leave them

    # --- attributes and directories --------------------------------------------------------

    @_translated
    def getattr(self, path, fh=None):
        return self._st(self.fs.getattr(path, fh))

    @_translated
    def readdir(self, path, fh):
        entries = [(".", None, 0), ("..", None, 0)]
        entries += [(name, self._st(attr), 0) for name, attr in self.fs.readdir(path)]
        return entries

    @_translated
    def statfs(self, path):
        return {"f_" + key: value for key, value in self.fs.statfs().items()}

    @_translated
    def mkdir(self, path, mode):
        self.fs.mkdir(path)
        return 0

    @_translated
    def rmdir(self, path):
        self.fs.rmdir(path)
        return 0

    @_translated
    def unlink(self, path):
        self.fs.unlink(path)
        return 0

    @_translated
    def rename(self, old, new):
        self.fs.rename(old, new)
        return 0

    @_translated
    def chmod(self, path, mode):
        self.fs.getattr(path)  # exists? Ownership and modes are fixed by mount options.
        return 0

    @_translated
    def chown(self, path, uid, gid):
        self.fs.getattr(path)
        return 0

    @_translated
    def utimens(self, path, times=None):
        mtime = None if times is None else times[1] / 1e9
        self.fs.utimens(path, mtime)
        return 0

    # --- files ----------------------------------------------------------------------------

    @_translated
    def create(self, path, mode, flags=0):
        return self.fs.create(path, flags)

    @_translated
    def open(self, path, flags):
        return self.fs.open(path, flags)

    @_translated
    def read(self, path, size, offset, fh):
        return self.fs.read(fh, size, offset)

    @_translated
    def write(self, path, data, offset, fh):
        return self.fs.write(fh, data, offset)

    @_translated
    def truncate(self, path, length, fh=None):
        self.fs.truncate(path, length, fh)
        return 0

    @_translated
    def flush(self, path, fh):
        self.fs.flush(fh)
        return 0

    @_translated
    def fsync(self, path, datasync, fh):
        self.fs.fsync(fh)
        return 0

    @_translated
    def release(self, path, fh):
        self.fs.release(fh)
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


class _FUSE(mfusepy.FUSE):
    """mfusepy 3.1.1 drops the file handle libfuse 3 gives truncate (an ftruncate), which
    turned it into a truncate by path: that saves at once, uploading a writer's unfinished
    data, and fails for an unlinked file, which has no path. Pass the handle on."""

    def truncate_fuse_3(self, path, length, fip):
        return self.ftruncate(path, length, fip)


def run(ops: OctueOperations, mountpoint: str, options: dict) -> None:
    """Serve ``ops`` on ``mountpoint`` until it is unmounted (multithreaded)."""
    log.debug("libfuse %d.%d, options %s", mfusepy.fuse_version_major, mfusepy.fuse_version_minor, options)
    _FUSE(ops, mountpoint, nothreads=False, **options)
