"""Lifetime of a mount: checks, serving (the filesystem from :mod:`octuefs.assembly`, FUSE and the
control socket on top), and unmount.

``preflight`` runs the local checks whose failure a user should see as one clear line before any
daemon starts (FUSE, the mountpoint). ``serve`` runs the daemon in the calling process until the
filesystem is unmounted (starting and stopping the embedded emulator for ``--local``); the bucket
is checked there first, before anything is made on disk, and its one-line error is the one the
command shows. (Checked in the command too, it cost a second set of connections and the Google
libraries' import: ~0.25 s of every mount at 20 ms. A verbose command still checks it itself, so
that a failing check's steps show on its terminal.) ``start_background``
starts ``serve`` in a detached process and returns once the mount is ready, like gcsfuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

from octuefs import sdnotify
from octuefs.cachedir import CacheDir
from octuefs.config import MountConfig
from octuefs.control import ControlError, ControlServer, request
from octuefs.errors import OctuefsError

log = logging.getLogger(__name__)

READY = b"ready\n"


class MountError(OctuefsError):
    """A mount or unmount that cannot go ahead; the message is one line for the user."""


# --- checks -----------------------------------------------------------------------------


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def preflight(config: MountConfig, check_bucket: bool = False) -> None:
    """Refuse, with one clear line, what would make the mount fail. ``check_bucket``: the
    bucket too, here (the daemon checks it anyway; a verbose command does it first so that the
    steps of a failing check, Google's credentials among them, show on its terminal)."""
    mp = config.mountpoint
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse kernel module (modprobe fuse) or run with --device /dev/fuse")
    if _fusermount() is None:
        raise MountError("fusermount3 is not installed: install the fuse3 package (apt-get install fuse3)")
    if not os.path.isdir(mp):
        raise MountError(f"mountpoint {mp} does not exist or is not a directory")
    if os.path.ismount(mp):
        raise MountError(f"{mp} is already a mountpoint")
    if os.listdir(mp) and "nonempty" not in config.fuse_options:
        raise MountError(f"mountpoint {mp} is not empty")
    if check_bucket and not config.local:
        from octuefs.storage import open_bucket

        open_bucket(config.bucket, config.project)  # raises BucketNotFound / PermissionDenied / TransientError


# --- where a running mount is recorded ----------------------------------------------------


def _state_dir() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = runtime or f"/tmp/octuefs-{os.getuid()}"
    if not runtime:  # a name in /tmp anyone could have made first: it must be ours alone
        os.makedirs(base, mode=0o700, exist_ok=True)
        _check_private(base)
    path = os.path.join(base, "octuefs-mounts")
    os.makedirs(path, mode=0o700, exist_ok=True)
    _check_private(path)
    return path


def _check_private(path: str) -> None:
    """Refuse a state directory another user owns or may write: it holds the control socket."""
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.getuid():
        raise MountError(f"{path} is not a directory of yours (owner uid {st.st_uid}); remove it and try again")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def state_file(mountpoint: str) -> str:
    # abspath, not realpath: resolving a live mountpoint asks its daemon, which may be busy.
    key = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:32]
    return os.path.join(_state_dir(), key + ".json")


def socket_path(mountpoint: str) -> str:
    return state_file(mountpoint)[: -len(".json")] + ".sock"


def read_state(mountpoint: str) -> dict | None:
    try:
        with open(state_file(mountpoint)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


# --- the daemon ------------------------------------------------------------------------------


# Connections the daemon opens while it checks the bucket: the first lookup lists a directory and
# probes a name beside it, the first read's GET has a read-ahead GET beside it (see check).
WARM_CONNECTIONS = 4


def _checked(config: MountConfig) -> tuple[object, object] | None:
    """The bucket to serve (not --local's), checked, and the first page of the mount's root that
    its check listed (a ``SentPage``). Raises BucketNotFound, PermissionDenied or TransientError
    with one line."""
    if config.local:
        return None
    from octuefs.cache.listings import LOOKUP_PAGE
    from octuefs.storage import open_checked

    # The check lists the root's first page, as a fill for lookups asks for it (GCS's own 1,000
    # entries), and the mount keeps what it shows: its first lookups ask nothing.
    return open_checked(config.bucket, config.project, connections=WARM_CONNECTIONS, prefix=config.prefix,
                        page_size=LOOKUP_PAGE)


@contextlib.contextmanager
def _bucket_for(config: MountConfig, checked: tuple[object, object] | None) -> Iterator[tuple[object, object]]:
    """The bucket to serve and its root's first page: ``checked`` (see :func:`_checked`), or for
    --local an embedded emulator's bucket (no page), the emulator running for the duration."""
    from octuefs.storage import open_bucket

    if checked is not None:
        yield checked
        return
    from octuefs.local import demo
    from octuefs.local.emulator import Emulator

    os.makedirs(config.local_data_dir, mode=0o700, exist_ok=True)
    emulator = Emulator(data_dir=config.local_data_dir, kill_with_parent=True)
    emulator.start()
    try:
        os.environ.update(emulator.env())
        emulator.create_bucket(config.bucket)
        bucket = open_bucket(config.bucket, config.project)
        if config.bucket == demo.DEMO_BUCKET and not bucket.list_page(max_results=1).objects:
            demo.seed(bucket)
        log.info("serving bucket %r from a local emulator at %s (data in %s)", config.bucket, emulator.url, config.local_data_dir)
        yield bucket, None
    finally:
        emulator.stop()


def fuse_kwargs(config: MountConfig) -> dict:
    kwargs: dict = {
        "foreground": True,
        "fsname": f"octuefs:{config.bucket}" + (f"/{config.prefix.rstrip('/')}" if config.prefix else ""),
        "subtype": "octuefs",
        "attr_timeout": config.kernel_attr_ttl,
        "entry_timeout": config.kernel_entry_ttl,
        # The kernel keeps no "does not exist": the daemon answers it from memory, and only
        # within --negative-ttl of when the bucket said so (a kernel copy would add its own
        # timeout to that; docs/semantics.md, "Freshness").
        "negative_timeout": 0.0,
        # Unlink an open file for real: without this, libfuse renames it to .fuse_hiddenNNNN
        # instead, which would show in listings and be uploaded under that name.
        "hard_remove": True,
    }
    if config.read_only:
        kwargs["ro"] = True
    for opt in config.fuse_options:
        key, eq, value = opt.partition("=")
        if key in ("nonempty",):
            continue
        kwargs[key] = value if eq else True
    # Objects anyone with write access to the bucket made can say "setuid root" or "device 1:1"
    # (posixmeta.py): the kernel honours neither unless the mount is given -o suid or -o dev.
    for flag in ("suid", "dev"):
        if not kwargs.pop(flag, False):
            kwargs["no" + flag] = True
    if kwargs.get("allow_other"):
        # Other users then reach the files: let the kernel enforce the owner and modes shown
        # (--uid, --file-mode, ...), which octuefs itself never checks.
        kwargs["default_permissions"] = True
    return kwargs


def serve(config: MountConfig, ready_fd: int | None = None) -> None:
    """Run the mount in this process until it is unmounted."""
    from octuefs.assembly import build_filesystem
    from octuefs.fuse.ops import OctueOperations, run
    from octuefs.writeback.composite import ComposingBucket

    os.umask(0o077)  # everything the daemon writes (cache, journal, log, --local data) is private
    # The bucket first, before anything is made or locked on disk: a wrong name, credentials or
    # endpoint ends here with one line, which the command shows (start_background).
    checked = _checked(config)
    os.makedirs(config.cache_dir, mode=0o700, exist_ok=True)
    with _cache_lock(config.cache_dir), _bucket_for(config, checked) as (bucket, root_page):
        # Large files go up in parts, noted in a ledger until deleted; a sweep deletes what earlier mounts left.
        bucket = ComposingBucket(bucket, CacheDir(config.cache_dir).parts)
        bucket.sweep_in_background()
        metrics = None
        if config.metrics_port is not None:
            from octuefs.metrics import Metrics

            metrics = Metrics()
            bucket = metrics.bucket(bucket)
        fs = build_filesystem(bucket, config, root_page=root_page)
        ops = OctueOperations(fs, metrics=metrics)
        control = ControlServer(fs, socket_path(config.mountpoint))
        if metrics is not None:
            metrics.watch(control.status)
            try:
                metrics.serve(config.metrics_port, config.metrics_address)
            except OSError as exc:
                raise MountError(f"cannot serve metrics on {config.metrics_address}:{config.metrics_port}: "
                                 f"{exc.strerror or exc}") from None

        mounted = []

        def announce(_path="/"):
            # Runs inside FUSE's INIT: touching the mountpoint here would deadlock.
            mounted.append(True)
            _write_state(config)
            log.info("mounted %s on %s", config.bucket, config.mountpoint)
            if ready_fd is not None:
                os.write(ready_fd, READY)
                os.close(ready_fd)
            sdnotify.notify("READY=1", f"STATUS=gs://{config.bucket}/{config.prefix} mounted on {config.mountpoint}")

        def stopping(path, _destroy=ops.destroy):
            sdnotify.notify("STOPPING=1", "STATUS=unmounted; writing out pending uploads")
            _destroy(path)

        ops.init = announce
        ops.destroy = stopping
        try:
            run(ops, config.mountpoint, fuse_kwargs(config))
        except RuntimeError as exc:
            if not mounted:
                raise MountError(f"FUSE could not mount {config.mountpoint}: {exc}") from exc
            # libfuse ends its loop with an error status when a signal (SIGTERM from `systemctl
            # stop`, SIGINT, SIGHUP) unmounted it; the daemon has written out what was pending.
            log.info("stopped by a signal (libfuse status %s)", exc)
        finally:
            control.close()
            if metrics is not None:
                metrics.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state_file(config.mountpoint))
        log.info("unmounted %s", config.mountpoint)


@contextlib.contextmanager
def _cache_lock(cache_dir: str) -> Iterator[None]:
    """One daemon per cache directory: its journal must have one reader."""
    import fcntl

    path = CacheDir(cache_dir).lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise MountError(f"the cache directory {cache_dir} is in use by another octuefs mount (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _write_state(config: MountConfig) -> None:
    # "endpoint": the emulator this daemon talks to (--local's own), for `octuefs find` in the mount.
    state = {"pid": os.getpid(), "bucket": config.bucket, "prefix": config.prefix, "cache_dir": config.cache_dir,
             "mountpoint": config.mountpoint, "endpoint": os.environ.get("STORAGE_EMULATOR_HOST")}
    path = state_file(config.mountpoint)
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)


def start_background(argv: list[str], config: MountConfig, log_file: str, timeout: float = 60.0) -> int:
    """Start ``octuefs mount ... --foreground`` detached; return its PID once mounted."""
    made = _missing_dirs(os.path.dirname(os.path.abspath(log_file)))  # deepest first
    new_log = not os.path.lexists(log_file)
    try:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        # The log names objects: private, like the cache directory it lives in by default.
        logf = os.fdopen(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and exc.filename != log_file else ""
        raise MountError(f"cannot write the log file {log_file}: {exc.strerror or exc}{where}") from None
    read_fd, write_fd = os.pipe()
    with logf:
        start = logf.seek(0, os.SEEK_END)  # what is before is earlier mounts': never their error
        child = subprocess.Popen(
            [sys.executable, "-m", "octuefs", *argv, "--foreground", "--ready-fd", str(write_fd)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
            pass_fds=(write_fd,), start_new_session=True,
        )
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    try:
        os.set_blocking(read_fd, False)
        while time.monotonic() < deadline:
            try:
                if os.read(read_fd, 64).startswith(READY.strip()):
                    return child.pid
            except BlockingIOError:
                pass
            if child.poll() is not None:
                error = _last_error(log_file, start)
                if new_log:
                    _remove_if_only(log_file, error, made)
                raise MountError(error or f"the mount daemon exited with status {child.returncode}")
            time.sleep(0.02)
    finally:
        os.close(read_fd)
    os.kill(child.pid, signal.SIGTERM)
    raise MountError(f"the mount was not ready after {timeout:.0f}s; see {log_file}")


def _missing_dirs(path: str) -> list[str]:
    out = []
    while path and not os.path.exists(path):
        out.append(path)
        path = os.path.dirname(path) if os.path.dirname(path) != path else ""
    return out


def _remove_if_only(log_file: str, error: str | None, made: list[str]) -> None:
    """A failed mount leaves nothing on disk (a mistyped bucket, no ~/.cache/octuefs/<typo>/) when
    its log, made by this mount, holds nothing but the error the command shows."""
    with contextlib.suppress(OSError):
        with open(log_file, errors="replace") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        if error is None or lines != [f"octuefs: error: {error}"]:
            return
        os.unlink(log_file)
        for path in made:
            os.rmdir(path)  # only if empty: what the daemon made there stays


def _last_error(log_file: str, start: int = 0) -> str | None:
    try:
        with open(log_file, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()[-50:]
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        if "octuefs: error:" in line:
            return line.split("octuefs: error:", 1)[1].strip()
    for line in reversed(lines):
        if " ERROR " in line or "fuse:" in line:
            return line.strip()
    if "Traceback (most recent call last):" in lines:  # an uncaught error: its own last line
        return next((line.strip() for line in reversed(lines) if line.strip()), None)
    return None


# --- unmount -----------------------------------------------------------------------------------


def sync(mountpoint: str, progress=None, timeout: float | None = None) -> tuple[int, list[str]]:
    """Wait until every upload pending in the mount is in the bucket. Return how many failed to,
    and a line for each conflict no sync had reported yet (they count as reported now)."""
    _require_mounted(mountpoint)
    reply = request(socket_path(mountpoint), "sync", progress, timeout, expect="left")
    left = reply["left"]
    if type(left) is not int or left < 0:  # never a guess: an answer we cannot read is no "all uploaded"
        raise ControlError(f"the mount's daemon answered sync with {left!r} uploads left, which is no count")
    return left, [_conflict_line(c, reply, mountpoint) for c in reply.get("conflicts", ())]


def _conflict_line(conflict: dict, reply: dict, mountpoint: str) -> str:
    """``data.csv changed in the bucket (generation 7); your version was saved as gs://b/x (MNT/x)``."""
    bucket, prefix, saved = reply.get("bucket", "?"), reply.get("prefix", ""), conflict.get("saved_as", "?")
    seen = f" ({os.path.join(mountpoint, saved[len(prefix):])})" if saved.startswith(prefix) else ""
    return (f"{conflict.get('object')} changed in the bucket ({conflict.get('theirs')}); "
            f"your version was saved as gs://{bucket}/{saved}{seen}")


def status(mountpoint: str) -> dict:
    _require_mounted(mountpoint)
    return request(socket_path(mountpoint), "status", timeout=30, expect="uploads")


def _require_mounted(mountpoint: str) -> None:
    if not os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is not mounted")


def unmount(mountpoint: str, timeout: float = 600.0, lazy: bool = False, leave_pending: bool = False,
            progress=None) -> list[str]:
    """Write out pending uploads (unless ``leave_pending``), unmount, wait for the daemon to exit.
    Return the conflicts that writing out reported (see :func:`sync`)."""
    _require_mounted(mountpoint)
    state = read_state(mountpoint)
    conflicts: list[str] = []
    if state is not None:
        if leave_pending:
            request(socket_path(mountpoint), "leave-pending", timeout=30, expect="ok")
        elif not lazy:
            left, conflicts = sync(mountpoint, progress, timeout)
            if left:
                also = "".join(f"; conflict: {line}" for line in conflicts)
                raise MountError(f"{left} upload(s) are still pending; not unmounting (see `octuefs status`){also}")
    fusermount = _fusermount()
    if fusermount is None:
        raise MountError("fusermount3 is not installed: install the fuse3 package")
    args = [fusermount, "-u"] + (["-z"] if lazy else []) + [mountpoint]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        msg = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "fusermount failed"
        raise MountError(f"cannot unmount {mountpoint}: {msg}")
    if state and state.get("pid") and not lazy:  # lazy: open files keep the daemon serving them
        wait_for_exit(int(state["pid"]), timeout)
    return conflicts


def wait_for_exit(pid: int, timeout: float | None) -> None:
    """Wait until process ``pid`` is gone; MountError if it outlives ``timeout`` (None: 600 s)."""
    timeout = 600.0 if timeout is None else timeout  # it has little left to do after the sync
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if _is_zombie(pid):  # it has exited; only its parent (maybe the caller) has not reaped it
            return
        time.sleep(0.05)
    raise MountError(f"the mount daemon (pid {pid}) is still writing out data after {timeout:.0f}s")


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"Z"
