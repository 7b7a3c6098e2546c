"""The struct stat READDIRPLUS sends (StatAttrs.packed): packed with ``struct`` in the layout of
mfusepy's ctypes struct, it is byte for byte what setting that struct's fields gives (the way it
was packed before), for every attribute a listing can hold; where struct refuses a value (out
of its field's range), the ctypes struct packs it, wrapped as ctypes wraps it."""

from __future__ import annotations

import ctypes
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from octuefs.config import MountConfig
from octuefs.fs.posixfs import Attr, facts_attr
from octuefs.fuse.attrs import STAT_FIELDS, StatAttrs, struct_packer
from octuefs.fuse.ops import OctueOperations, mfusepy
from octuefs.octue import posixmeta


def _config(**overrides) -> MountConfig:
    return MountConfig(bucket="b", mountpoint="/nonexistent/m", cache_dir="/nonexistent/c", **overrides)


def _by_hand(attrs: StatAttrs, attr: Attr) -> bytes:
    """How OctueOperations.packed filled mfusepy's c_stat before (field by field, ctypes wrapping)."""
    st_ = mfusepy.c_stat()
    st_.st_mode = attrs.mode(attr)
    st_.st_nlink = 2 if attr.is_dir else 1
    st_.st_size = attr.size
    st_.st_blocks = (attr.size + 511) // 512
    st_.st_uid, st_.st_gid = attrs.owners(attr)
    st_.st_rdev = attr.rdev
    sec, nsec = divmod(int(attr.mtime * 1e9), 10**9)
    st_.st_mtimespec.tv_sec, st_.st_mtimespec.tv_nsec = sec, nsec
    st_.st_ctimespec.tv_sec, st_.st_ctimespec.tv_nsec = divmod(
        int((attr.mtime if attr.ctime is None else attr.ctime) * 1e9), 10**9)
    if attr.atime is not None:
        sec, nsec = divmod(int(attr.atime * 1e9), 10**9)
    st_.st_atimespec.tv_sec, st_.st_atimespec.tv_nsec = sec, nsec
    return bytes(st_)


times = st.floats(min_value=-1e10, max_value=posixmeta.MAX_SECONDS, allow_nan=False)
maybe = st.none() | st.integers(min_value=0, max_value=posixmeta.MAX_ID)
attrs_ = st.builds(
    Attr, is_dir=st.booleans(), size=st.integers(min_value=0, max_value=5 * 1024**4), mtime=times,
    file_type=st.sampled_from([None, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK]),
    mode=st.none() | st.integers(min_value=0, max_value=0o7777), uid=maybe, gid=maybe, atime=st.none() | times,
    rdev=st.integers(min_value=0, max_value=2**32), ctime=st.none() | times, known=st.just(True))
configs = st.builds(_config, uid=st.integers(0, 70000), gid=st.integers(0, 70000), read_only=st.booleans(),
                    ignore_stored_owners=st.booleans(), file_mode=st.sampled_from([0o644, 0o600, 0o4755]),
                    dir_mode=st.sampled_from([0o755, 0o700]))


@given(configs, attrs_)
def test_packed_is_the_struct_filled_field_by_field(cfg, attr):
    attrs = StatAttrs(cfg, mfusepy.c_stat)
    assert attrs.packed(attr) == _by_hand(attrs, attr)


@pytest.mark.parametrize("changes", [
    {"uid": -1}, {"gid": 2**32}, {"size": 2**63}, {"rdev": 2**64 + 5}, {"mtime": 1e12}, {"atime": -1e11},
])
def test_what_struct_refuses_is_packed_as_ctypes_wraps_it(changes):
    attrs = StatAttrs(_config(), mfusepy.c_stat)
    attr = Attr(False, 10, 1.5)._replace(**changes)
    assert attrs.packed(attr) == _by_hand(attrs, attr)


def test_an_entry_whose_attributes_are_not_known_is_sent_without():
    attrs = StatAttrs(_config(), mfusepy.c_stat)
    assert attrs.packed(Attr(True, 0, 1.0, known=False)) is None


def test_a_plain_file_shows_the_mounts_defaults():
    attrs = StatAttrs(_config(uid=1001, gid=1002, file_mode=0o640), mfusepy.c_stat)
    attr = facts_attr(posixmeta.decode({"octue__tags": "{}"}), 5, 2.0)
    assert attr == Attr(False, 5, 2.0) and attrs.mode_owners(attr) == (stat.S_IFREG | 0o640, 1001, 1002)
    unpacked = mfusepy.c_stat.from_buffer_copy(attrs.packed(attr))
    assert (unpacked.st_mode, unpacked.st_uid, unpacked.st_gid, unpacked.st_size) == (stat.S_IFREG | 0o640, 1001, 1002, 5)
    assert (unpacked.st_mtimespec.tv_sec, unpacked.st_mtimespec.tv_nsec) == (2, 0)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_long)]


class _OtherOrder(ctypes.Structure):
    """A struct stat laid out as on aarch64 (mode before nlink, 32-bit nlink, padding)."""

    _fields_ = [("st_dev", ctypes.c_uint64), ("st_ino", ctypes.c_uint64), ("st_mode", ctypes.c_uint32),
                ("st_nlink", ctypes.c_uint32), ("st_uid", ctypes.c_uint32), ("st_gid", ctypes.c_uint32),
                ("st_rdev", ctypes.c_uint64), ("__pad1", ctypes.c_uint64), ("st_size", ctypes.c_int64),
                ("st_blksize", ctypes.c_int32), ("__pad2", ctypes.c_int32), ("st_blocks", ctypes.c_int64),
                ("st_atimespec", _Timespec), ("st_mtimespec", _Timespec), ("st_ctimespec", _Timespec),
                ("reserved", ctypes.c_int32 * 2)]


class _WithAFloat(ctypes.Structure):
    _fields_ = [("st_nlink", ctypes.c_double), *[(f, ctypes.c_int64) for f in STAT_FIELDS[1:7]],
                ("st_atimespec", _Timespec), ("st_mtimespec", _Timespec), ("st_ctimespec", _Timespec)]


def _fields(struct_: ctypes.Structure) -> dict[str, int]:
    out = {}
    for field in STAT_FIELDS:
        value = struct_
        for part in field.split("."):
            value = getattr(value, part)
        out[field] = value
    return out


@given(configs, attrs_)
def test_another_layout_is_packed_where_its_fields_are(cfg, attr):
    packed = StatAttrs(cfg, _OtherOrder).packed(attr)
    assert len(packed) == ctypes.sizeof(_OtherOrder)
    reference = mfusepy.c_stat.from_buffer_copy(_by_hand(StatAttrs(cfg), attr))
    assert _fields(_OtherOrder.from_buffer_copy(packed)) == _fields(reference)


def test_a_layout_struct_cannot_pack_is_set_field_by_field():
    assert struct_packer(_WithAFloat, STAT_FIELDS) is None
    assert struct_packer(_OtherOrder, STAT_FIELDS) is not None
    attrs = StatAttrs(_config(), _WithAFloat)
    unpacked = _WithAFloat.from_buffer_copy(attrs.packed(Attr(False, 7, 3.25)))
    assert (unpacked.st_nlink, unpacked.st_size, unpacked.st_mtimespec.tv_nsec) == (1.0, 7, 250_000_000)


def test_the_fuse_adapter_packs_with_mfusepys_struct(tmp_path):
    from octuefs.storage.fake import FakeBucket
    from tests.unit.corekit import make_fs

    bucket = FakeBucket("b")
    bucket.upload_bytes("f", b"abc", {posixmeta.MODE_KEY: "600"})
    fs = make_fs(bucket, tmp_path)
    try:
        ops = OctueOperations(fs)
        attr = fs.getattr("/f")
        assert ops.packed(attr) == _by_hand(StatAttrs(fs.config), attr)
    finally:
        fs.shutdown()
