"""Review of the renovation (issue 14, e8a7f55..): behaviour the restructuring changed, each shown by
a test that failed on the renovated code before its fix (or is marked xfail, strict, where not fixed)."""

from __future__ import annotations

import os

import pytest

from octuefs.errors import BucketUnreachable
from octuefs.storage.base import RetryPolicy

MiB = 1 << 20


def test_a_composite_upload_the_bucket_never_answers_names_the_file_and_its_part(monkeypatch, closed_port, tmp_path):
    """Before the renovation a part went up under GCSBucket._call("uploading a part of", ...,
    shown="NAME (part i of n)"), so the error a composite upload ended with (logged, and shown by
    `octuefs status` as the upload's last error) named the file: "... while uploading a part of
    gs://b/d/big.bin (part 1 of 4)". Through ComposingBucket -> upload_range it named only the
    part's object (".../d/.octuefs-parts/<hex>/00.octuefs-part")."""
    from octuefs.storage.gcs import GCSBucket
    from octuefs.writeback.composite import ComposingBucket

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{closed_port}")
    inner = GCSBucket("b", retry=RetryPolicy(initial_delay=0.05, max_delay=0.1, deadline=0.3))
    composing = ComposingBucket(inner, str(tmp_path / "parts"), compose_min=MiB)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(2 * MiB))
    with pytest.raises(BucketUnreachable) as raised:
        composing.upload_file("d/big.bin", str(src), {})
    message = str(raised.value)
    assert "gs://b/d/big.bin" in message and "(part " in message and " of 4)" in message, message
