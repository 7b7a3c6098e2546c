"""FUSE options a mount passes to libfuse."""

from __future__ import annotations

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
