"""Review of the renovation (issue 14): what a real mount must still do after the restructuring.

Composite uploads moved from GCSBucket into ComposingBucket, which mount.serve wraps around the
bucket; test_files.py's large-file test cannot tell a composed object from one streamed whole, so
this one reads the daemon's log (-vv) and the cache directory's parts ledger."""

from __future__ import annotations

import os


def test_a_large_file_through_the_mount_is_composed_from_parts_noted_in_the_ledger(mount):
    data = os.urandom(1 << 20) * 65  # 65 MiB: at least COMPOSE_MIN
    with open(mount / "big.bin", "wb") as f:
        f.write(data)
    mount.sync()
    assert mount.bucket.stat("big.bin").size == len(data)
    log = mount.log_text()
    assert "uploaded big.bin in " in log and " parts, composed" in log, log[-3000:]
    ledger = mount.cache / "parts"
    assert ledger.is_dir() and os.listdir(ledger) == []  # noted while running, forgotten once deleted
