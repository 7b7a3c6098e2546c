"""Mount configuration: one frozen dataclass with defaults and validation.

The CLI fills it; every other layer receives it and never parses arguments itself.
"""

from __future__ import annotations

import dataclasses
import os

MiB = 1024 * 1024


def split_bucket_spec(spec: str) -> tuple[str, str]:
    """``"bucket/some/prefix"`` -> ``("bucket", "some/prefix/")``; ``"bucket"`` -> ``("bucket", "")``."""
    spec = spec.strip()
    if spec.startswith("gs://"):
        spec = spec[len("gs://") :]
    bucket, _, prefix = spec.partition("/")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


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
    file_mode: int = 0o644
    dir_mode: int = 0o755
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
    rename_dir_limit: int = 10_000  # objects; past this a directory rename is refused
    fuse_options: tuple[str, ...] = ()  # extra -o options passed to FUSE (allow_other, ...)
    upload_on_close: bool = False  # close waits for the upload (errors at close) instead of write-back
    upload_workers: int = 8  # uploads running at once
    fsync_timeout: float = 300.0  # fsync gives EIO if the file is not in the bucket by then (it stays queued)
    # Every FUSE call that needs the bucket answers within about this long: its requests are
    # retried until then, each waiting at most a third of it for an answer; then the call fails
    # with ETIMEDOUT and a log line saying why. 30 s rides out the brief bursts of 503s, 429s
    # and resets GCS asks clients to retry through (several attempts with backoff), yet shows a
    # dead network as an error within half a minute, well before the kernel's 120 s hung-task
    # warnings, instead of the 100 s and more of the library's own timeouts.
    op_timeout: float = 30.0
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
            object.__setattr__(self, "local_data_dir", os.path.join(self.cache_dir, "local-gcs"))
        for name in ("stat_ttl", "list_ttl", "negative_ttl", "kernel_attr_ttl", "kernel_entry_ttl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.block_size < 64 * 1024:
            raise ValueError("block_size must be at least 64 KiB")
        if not self.op_timeout > 0:
            raise ValueError("op_timeout must be > 0")
        if self.upload_workers < 1:
            raise ValueError("upload_workers must be at least 1")
        if self.rename_dir_limit < 0:
            raise ValueError("rename_dir_limit must be >= 0")
        for name in ("file_mode", "dir_mode"):
            if not 0 <= getattr(self, name) <= 0o7777:
                raise ValueError(f"{name} must be an octal permission like 644")
