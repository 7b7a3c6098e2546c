"""posixmeta.decode of metadata without any POSIX key (most objects: a listing decodes thousands)
takes a short cut; the facts are the same as the long way's."""

from __future__ import annotations

import stat
from types import MappingProxyType

from octuefs.octue import posixmeta


def test_metadata_without_posix_keys_decodes_to_plain_file_facts():
    custom = MappingProxyType({"octue__tags": '{"a": 1}', "octue__id": '"x"', "other": "1"})
    facts = posixmeta.decode(custom)
    assert facts == posixmeta.PosixFacts() and facts.file_type == stat.S_IFREG and facts.mode is None


def test_each_posix_key_alone_is_still_read():
    assert posixmeta.decode({"x": "1", posixmeta.MODE_KEY: "640"}).mode == 0o640
    assert posixmeta.decode({posixmeta.UID_KEY: "7"}).uid == 7
    assert posixmeta.decode({posixmeta.GID_KEY: "8"}).gid == 8
    assert posixmeta.decode({posixmeta.MTIME_KEY: "12"}).mtime == 12
    assert posixmeta.decode({posixmeta.ATIME_KEY: "13"}).atime == 13
    assert posixmeta.decode({posixmeta.SYMLINK_KEY: "true"}).is_symlink
    assert posixmeta.decode({posixmeta.GCSFUSE_SYMLINK_KEY: "t"}).target == "t"
    assert posixmeta.decode({posixmeta.TYPE_KEY: "fifo"}).file_type == stat.S_IFIFO
    assert posixmeta.decode({posixmeta.TYPE_KEY: "char", posixmeta.RDEV_KEY: "1:3"}).rdev != 0
