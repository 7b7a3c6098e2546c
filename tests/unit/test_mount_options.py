"""FUSE options a mount passes to libfuse."""

from __future__ import annotations

import pytest

from octuefs.config import MountConfig
from octuefs.mount import fuse_kwargs


def test_allow_other_brings_default_permissions():
    # Without it, any user could write every file of a mount shown as 644 root:root.
    kwargs = fuse_kwargs(MountConfig(bucket="b", mountpoint="/mnt", fuse_options=("allow_other",)))
    assert kwargs["allow_other"] is True and kwargs["default_permissions"] is True


def test_a_private_mount_leaves_permission_checks_alone():
    assert "default_permissions" not in fuse_kwargs(MountConfig(bucket="b", mountpoint="/mnt"))


def test_an_open_file_is_unlinked_for_real():
    assert fuse_kwargs(MountConfig(bucket="b", mountpoint="/mnt"))["hard_remove"] is True


def config(*argv: str) -> MountConfig:
    """The configuration ``octuefs mount b /mnt ARGV...`` gives."""
    from octuefs.cli import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(["mount", "b", "/mnt", *argv]))


@pytest.mark.parametrize("key, default, given, o_given", [
    ("op_timeout", 30.0, "3", "7.5"),
    ("small_uploads", 32, "64", "16"),
])
def test_an_option_comes_from_the_command_line_or_o_options_and_must_be_positive(key, default, given, o_given):
    assert getattr(config(), key) == default
    assert getattr(config("--" + key.replace("_", "-"), given), key) == type(default)(given)
    assert getattr(config("-o", f"{key}={o_given},allow_other"), key) == type(default)(o_given)
    with pytest.raises(ValueError, match=key):
        config("--" + key.replace("_", "-"), "0")


def test_prefetch_files_comes_from_the_command_line_or_o_options_and_no_prefetch_turns_it_off():
    assert config().prefetch_files == 32
    assert config("--prefetch-files", "8").prefetch_files == 8
    assert config("-o", "prefetch_files=4").prefetch_files == 4
    assert config("--no-prefetch").prefetch_files == 0
    with pytest.raises(ValueError, match="prefetch_files"):
        config("--prefetch-files", "-1")


def test_waiting_for_a_daemon_that_exited_but_is_not_reaped_returns_at_once():
    """`octuefs unmount` run by the daemon's own parent: the daemon is a zombie until reaped."""
    import subprocess
    import time

    from octuefs.mount import wait_for_exit

    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until it has exited (a zombie: not reaped yet)
            with open(f"/proc/{child.pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
        start = time.monotonic()
        wait_for_exit(child.pid, 5)
        assert time.monotonic() - start < 1
    finally:
        child.wait()


def test_path_options_are_made_absolute_where_the_command_was_typed(tmp_path, monkeypatch):
    """The daemon runs in "/": a relative --cache-dir kept as given named another directory
    there, and every write failed with ENOENT. The -o form (fstab) is read the same way."""
    from octuefs.cli import build_parser, config_from_args

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["mount", "b", "mnt", "--cache-dir", "lc", "--log-file", "logs/o.log"])
    assert config_from_args(args).cache_dir == str(tmp_path / "lc")
    assert args.log_file == str(tmp_path / "logs/o.log")
    args = build_parser().parse_args(["mount", "b", "mnt", "-o", "cache_dir=c2,log_file=l2.log,local"])
    config = config_from_args(args)
    assert (config.cache_dir, config.local_data_dir) == (str(tmp_path / "c2"), str(tmp_path / "c2/local-gcs"))
    assert args.log_file == str(tmp_path / "l2.log")


def test_nothing_the_daemon_writes_may_be_inside_its_own_mountpoint(tmp_path):
    """Its accesses would go through its own FUSE mount and wait on themselves for ever."""
    import pytest

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "link").symlink_to(mnt)
    for kwargs in ({"cache_dir": str(mnt)}, {"cache_dir": str(mnt / "a" / "b")},
                   {"cache_dir": str(tmp_path / "link" / "c")},
                   {"cache_dir": str(tmp_path / "c"), "local": True, "local_data_dir": str(mnt / "gcs")}):
        with pytest.raises(ValueError, match="inside the mountpoint"):
            MountConfig(bucket="b", mountpoint=str(mnt), **kwargs)
    # Beside it, or a mountpoint inside the cache directory, is fine.
    MountConfig(bucket="b", mountpoint=str(mnt), cache_dir=str(tmp_path / "mnt-cache"), local=True)
    MountConfig(bucket="b", mountpoint=str(tmp_path / "c" / "mnt"), cache_dir=str(tmp_path / "c"))
