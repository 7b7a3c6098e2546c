"""Mount configuration: one frozen dataclass with defaults and validation.

The CLI fills it; every other layer receives it and never parses arguments itself.
"""

from __future__ import annotations

import dataclasses
import os
import re

from octuefs.cachedir import CacheDir

MiB = 1024 * 1024
GiB = 1024 * MiB

UNLIMITED = -1  # cache_size: keep every clean block (gcsfuse's and rclone's default)
DEFAULT_CACHE_SIZE = 10 * GiB  # the most clean data kept by default (less on a fuller disk)

_UNITS = {"": 1, "b": 1, "k": 1024, "m": MiB, "g": GiB, "t": 1024 * GiB,
          "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)(b?)\s*", re.IGNORECASE)


def parse_size(text: str) -> int | None:
    """``"500M"``, ``"10G"``, ``"1.5GiB"``, ``"1048576"`` -> bytes; ``"unlimited"`` (or ``-1``, as
    gcsfuse spells it) -> UNLIMITED;
    ``"auto"`` -> None (the default). K, M, G, T and KiB, MiB, ... are powers of 1024; KB, MB, GB,
    TB powers of 1000 (as dd(1) reads them). ValueError for anything else."""
    word = text.strip().lower()
    if word in ("unlimited", "-1"):
        return UNLIMITED
    if word == "auto":
        return None
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size like 500M, 10G, 1.5GiB or 1048576 (bytes), or 'unlimited'")
    number, prefix, binary, byte = match.groups()
    unit = prefix.lower() + ("b" if byte and prefix and not binary else "")
    if binary and not prefix:
        raise ValueError(f"{text!r} is not a size like 500M, 10G, 1.5GiB or 1048576 (bytes), or 'unlimited'")
    return int(float(number) * _UNITS[unit])


def format_size(n: int) -> str:
    """Bytes for people: ``8388608`` -> ``"8.0 MiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def split_bucket_spec(spec: str) -> tuple[str, str]:
    """``"bucket/some/prefix"`` -> ``("bucket", "some/prefix/")``; ``"bucket"`` -> ``("bucket", "")``."""
    spec = spec.strip()
    if spec.startswith("gs://"):
        spec = spec[len("gs://") :]
    bucket, _, prefix = spec.partition("/")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


def refuse_inside_mountpoint(what: str, path: str, mountpoint: str) -> None:
    """ValueError if ``path`` is the mountpoint or inside it: once mounted, the daemon's own
    accesses to it would go through its own FUSE mount and wait on themselves (a hang that
    even SIGKILL does not end). Symbolic links are followed, as far as they exist."""
    if not path or not mountpoint:
        return
    where, mp = os.path.realpath(path), os.path.realpath(mountpoint)
    if where == mp or where.startswith(mp.rstrip("/") + "/"):
        raise ValueError(f"{what} {path} is inside the mountpoint {mountpoint}: the daemon would wait on its own "
                         f"mount for ever; choose a place outside it")


def default_cache_dir(bucket: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "octuefs", bucket)


@dataclasses.dataclass(frozen=True)
class MountConfig:
    """Everything a mount needs to know. Times are seconds; sizes are bytes."""

    bucket: str
    mountpoint: str
    prefix: str = ""  # "" or "a/b/" (always ends in "/")
    cache_dir: str = ""  # "" means default_cache_dir(bucket)
    project: str | None = None
    read_only: bool = False
    uid: int = dataclasses.field(default_factory=os.getuid)
    gid: int = dataclasses.field(default_factory=os.getgid)
    file_mode: int = 0o644  # modes and owners of entries whose objects record none (posixmeta.py)
    dir_mode: int = 0o755
    ignore_stored_owners: bool = False  # show uid/gid above for every entry, whatever its object records
    # Metadata caches in the daemon (stat, listing, "does not exist").
    stat_ttl: float = 30.0
    list_ttl: float = 30.0
    negative_ttl: float = 5.0
    # Kernel caches (FUSE attr_timeout / entry_timeout / negative_timeout). As long as the
    # daemon's own: changes made elsewhere show within stat_ttl either way, and each expiry
    # costs every stat or getxattr an extra round trip into the daemon.
    kernel_attr_ttl: float = 30.0
    kernel_entry_ttl: float = 30.0
    block_size: int = 4 * MiB  # unit of ranged reads into the local cache
    # A directory's files opened in name order: up to this many of the next small ones are
    # fetched before they are opened (see octuefs.cache.prefetch). 0: never.
    prefetch_files: int = 32
    # The most clean (already saved) data the cache keeps, bytes; None: the default (see
    # effective_cache_size); UNLIMITED: no bound. Unsaved data is never counted or evicted.
    cache_size: int | None = None
    rename_dir_limit: int = 10_000  # objects; past this a directory rename is refused
    fuse_options: tuple[str, ...] = ()  # extra -o options passed to FUSE (allow_other, ...)
    upload_on_close: bool = False  # close waits for the upload (errors at close) instead of write-back
    upload_workers: int = 8  # uploads running at once, of files of any size
    # Uploads of small files (up to 1 MiB: one request each) running at once. At a distance each
    # is a round trip spent waiting: N small files go up in about N x RTT / small_uploads.
    small_uploads: int = 32
    # While closes keep coming (a burst: a program writing many small files), a small file's
    # upload waits up to this long for the burst to pause (50 ms without a close), so that the
    # closes get the CPU first; then the uploads go at full speed. 0: upload at once.
    upload_hold: float = 2.0
    # GCS takes about one change of an object per second: a setfattr of a saved file waits this
    # long for more changes of the file to join its patch, and a patch goes no sooner than this
    # after the mount's last change of the object. Less only against a bucket without the limit.
    patch_pace: float = 1.0
    fsync_timeout: float = 300.0  # fsync gives EIO if the file is not in the bucket by then (it stays queued)
    # Every FUSE call that needs the bucket answers within about this long: its requests are
    # retried until then, each waiting at most a third of it for an answer; then the call fails
    # with ETIMEDOUT and a log line saying why. 30 s rides out the brief bursts of 503s, 429s
    # and resets GCS asks clients to retry through (several attempts with backoff), yet shows a
    # dead network as an error within half a minute, well before the kernel's 120 s hung-task
    # warnings, instead of the 100 s and more of the library's own timeouts.
    op_timeout: float = 30.0
    # Prometheus metrics on http://metrics_address:metrics_port/metrics; None: off. 0: any free port.
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    local: bool = False  # serve the bucket from an embedded fake-gcs-server
    local_data_dir: str = ""  # where --local keeps objects ("" = <cache_dir>/local-gcs)

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("a bucket name is required")
        if self.prefix and not self.prefix.endswith("/"):
            object.__setattr__(self, "prefix", self.prefix + "/")
        if not self.cache_dir:
            object.__setattr__(self, "cache_dir", default_cache_dir(self.bucket))
        if self.local and not self.local_data_dir:
            object.__setattr__(self, "local_data_dir", CacheDir(self.cache_dir).local_gcs)
        for name in ("cache_dir", "local_data_dir"):  # the daemon runs in "/": relative paths would move
            if getattr(self, name):
                object.__setattr__(self, name, os.path.abspath(os.path.expanduser(getattr(self, name))))
        refuse_inside_mountpoint("the cache directory", self.cache_dir, self.mountpoint)
        refuse_inside_mountpoint("the --local data directory", self.local_data_dir, self.mountpoint)
        for name in ("stat_ttl", "list_ttl", "negative_ttl", "kernel_attr_ttl", "kernel_entry_ttl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.block_size < 64 * 1024:
            raise ValueError("block_size must be at least 64 KiB")
        if self.cache_size is not None and self.cache_size != UNLIMITED and self.cache_size < 2 * self.block_size:
            raise ValueError(f"the cache size must be at least {format_size(2 * self.block_size)} (two blocks of "
                             f"{format_size(self.block_size)}), or 'unlimited'")
        if not self.op_timeout > 0:
            raise ValueError("op_timeout must be > 0")
        if not 0 <= self.upload_hold <= 60:
            raise ValueError("upload_hold must be between 0 and 60 seconds")
        if not 0 <= self.patch_pace <= 60:
            raise ValueError("patch_pace must be between 0 and 60 seconds")
        if self.upload_workers < 1:
            raise ValueError("upload_workers must be at least 1")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be a TCP port, 0-65535 (0: any free one)")
        if self.prefetch_files < 0:
            raise ValueError("prefetch_files must be >= 0")
        if self.small_uploads < 1:
            raise ValueError("small_uploads must be at least 1")
        if self.rename_dir_limit < 0:
            raise ValueError("rename_dir_limit must be >= 0")
        for name in ("file_mode", "dir_mode"):
            if not 0 <= getattr(self, name) <= 0o7777:
                raise ValueError(f"{name} must be an octal permission like 644")


def effective_cache_size(config: MountConfig) -> int | None:
    """The bound on clean cached data in bytes, None for none. The default is the smaller of
    DEFAULT_CACHE_SIZE and half the space free on the cache disk now (two blocks at least), so
    reading a large dataset never takes the room that writes need."""
    if config.cache_size == UNLIMITED:
        return None
    if config.cache_size is not None:
        return config.cache_size
    path = config.cache_dir
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return max(2 * config.block_size, min(DEFAULT_CACHE_SIZE, st.f_bavail * st.f_frsize // 2))
