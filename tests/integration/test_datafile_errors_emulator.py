"""Datafile errors against fake-gcs-server (through the strict proxy), opened the ordinary way.

The unit tests (tests/unit/test_datafile_errors.py) stand in for the bucket; these check that the
emulator answers as they assume: a plain 404 for an object request in a missing bucket.
"""

from __future__ import annotations

import pathlib

import pytest

from octuefs import Datafile
from octuefs.errors import BucketNotFound

pytestmark = pytest.mark.emulator


@pytest.mark.parametrize("mode", ["r", "w"])
def test_from_cloud_says_the_bucket_does_not_exist(emulator, mode):
    with pytest.raises(BucketNotFound, match="bucket 'octuefs-no-such-bucket' does not exist"):
        Datafile.from_cloud("my-project", "octuefs-no-such-bucket", "x.csv", mode=mode)


def test_to_cloud_says_the_bucket_does_not_exist(emulator, tmp_path):
    local = tmp_path / "local.csv"
    local.write_text("x")
    with pytest.raises(BucketNotFound, match="does not exist"):
        Datafile(str(local)).to_cloud("my-project", "gs://octuefs-no-such-bucket/x.csv")


def test_gs_urls_round_trip(emulator, gcs_bucket, tmp_path):
    local = tmp_path / "local.csv"
    local.write_text("x")
    url = f"gs://{gcs_bucket.name}/a/x.csv"
    assert Datafile(str(local), labels="raw").to_cloud("my-project", url) == url
    assert Datafile.from_cloud("my-project", url).labels == {"raw"}
