"""The Datafile attributes the SDK has (issue 13, part 5): their values and forms as octue 0.69.1 gives them.

tests/integration/test_sdk_parity.py compares the same attributes with the SDK itself.
"""

from __future__ import annotations

import base64
import os
import pathlib

import google_crc32c
import pytest

import octuefs.octue.datafile as datafile_module
from octuefs import Datafile
from octuefs.octue.datafile import LabelSet, TagDict
from octuefs.storage.fake import FakeBucket

PROJECT = "my-project"
BUCKET = "my-bucket"
DATA = b"time,speed\n0,7.5\n1,8.0\n"


def sdk_crc32c(data: bytes) -> str:
    """The SDK's hash_value: base64 of google_crc32c's big-endian digest."""
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


@pytest.fixture(autouse=True)
def bucket(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    bucket = FakeBucket(BUCKET)
    monkeypatch.setattr(datafile_module, "bucket_factory", lambda name, project: bucket)
    return bucket


def test_extension():
    assert Datafile("a/b/data.csv").extension == "csv"
    assert Datafile("gs://my-bucket/x/archive.tar.gz").extension == "gz"
    assert Datafile("README").extension == ""


def test_a_local_datafile_sizes_and_hashes_its_file():
    datafile = Datafile("data.csv")
    assert datafile.size_bytes is None and datafile.hash_value == "AAAAAA=="
    pathlib.Path("data.csv").write_bytes(DATA)
    assert datafile.size_bytes == len(DATA)
    assert datafile.hash_value == sdk_crc32c(DATA)
    assert datafile.cloud_hash_value is None


def test_a_cloud_datafile_sizes_and_hashes_its_object(bucket):
    bucket.upload_bytes("x/data.csv", DATA, {})
    datafile = Datafile.from_cloud(PROJECT, BUCKET, "x/data.csv")
    assert datafile.size_bytes == len(DATA)
    assert datafile.cloud_hash_value == sdk_crc32c(DATA) == datafile.hash_value
    assert bucket.calls["download"] == 0  # the object's own checksum: nothing downloaded


def test_exists_locally_means_has_a_local_path_as_in_the_sdk(bucket):
    assert Datafile("not-written-yet.csv").exists_locally
    bucket.upload_bytes("data.csv", DATA, {})
    datafile = Datafile.from_cloud(PROJECT, BUCKET, "data.csv")
    assert datafile.exists_in_cloud and not datafile.exists_locally
    datafile.download()
    assert datafile.exists_locally


def test_metadata_path(bucket):
    assert Datafile("sub/data.csv").metadata_path == os.path.join(os.getcwd(), "sub", ".octue")
    bucket.upload_bytes("data.csv", DATA, {})
    assert Datafile.from_cloud(PROJECT, BUCKET, "data.csv").metadata_path is None


def test_metadata_defaults_to_the_octue_namespace_with_a_label_set():
    datafile = Datafile("data.csv", tags={"a": 1}, labels="x y")
    metadata = datafile.metadata()
    assert set(metadata) == {"octue__id", "octue__timestamp", "octue__tags", "octue__labels", "octue__sdk_version",
                             "octue__cluster", "octue__sequence"}
    assert isinstance(metadata["octue__labels"], LabelSet) and metadata["octue__labels"] == {"x", "y"}
    assert isinstance(metadata["octue__tags"], TagDict) and metadata["octue__tags"] == {"a": 1}
    assert metadata["octue__id"] == datafile.id and metadata["octue__sdk_version"] == "0.69.1"


def test_metadata_without_the_id_has_no_name_or_path():
    plain = Datafile("data.csv").metadata(include_id=False, use_octue_namespace=False)
    assert set(plain) == {"timestamp", "tags", "labels", "sdk_version", "cluster", "sequence"}


def test_to_cloud_keeps_the_id_and_path_and_name_agree(bucket):
    bucket.upload_bytes("dir/dest.txt", b"old", {"octue__id": '"02464c6f-0070-50ca-8a9b-ba1af5456601"'})
    pathlib.Path("local.txt").write_bytes(DATA)
    datafile = Datafile("local.txt")
    own_id = datafile.id
    assert datafile.to_cloud(PROJECT, BUCKET, "dir/dest.txt") == "gs://my-bucket/dir/dest.txt"
    assert datafile.id == own_id
    assert datafile.path == "gs://my-bucket/dir/dest.txt" and datafile.name == "dest.txt"
    assert datafile.name == datafile.path.rsplit("/", 1)[-1]
    assert datafile.local_path == os.path.abspath("local.txt")
