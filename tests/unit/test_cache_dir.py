"""The cache directory holds only what :mod:`octuefs.cachedir` names (one owner of its layout)."""

from __future__ import annotations

import os

from octuefs import cachedir
from octuefs.cachedir import CacheDir
from tests.unit.corekit import bucket, close_write, make_fs  # noqa: F401  (bucket: a fixture)

NAMED = {getattr(cachedir, n) for n in dir(cachedir) if n.isupper() and isinstance(getattr(cachedir, n), str)}


def test_everything_under_the_cache_directory_is_named_by_its_layout(bucket, tmp_path):  # noqa: F811
    where = CacheDir(str(tmp_path / "cache"))
    os.makedirs(where.staging)
    with open(os.path.join(where.staging, "left-open"), "wb") as f:  # a dead daemon's unclosed file
        f.write(b"x")
    fs = make_fs(bucket, tmp_path)
    try:
        close_write(fs, "/a.txt", b"hello")
        assert fs.uploader.sync(timeout=30) == 0
        assert [n.endswith("-left-open") for n in os.listdir(where.lost_found)] == [True]
    finally:
        fs.shutdown()
    assert set(os.listdir(where.root)) <= NAMED
    assert os.path.isdir(where.pending) and os.path.isdir(where.blocks) and os.path.isdir(where.givebacks)
