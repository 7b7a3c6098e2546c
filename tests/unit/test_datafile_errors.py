"""Datafile errors that say what is wrong, and gs:// URLs where the SDK takes them (issue 13, part 4)."""

from __future__ import annotations

import pathlib

import pytest

import octuefs.octue.datafile as datafile_module
from octuefs import Datafile
from octuefs.errors import BucketNotFound, NotFound
from octuefs.storage.fake import FakeBucket

PROJECT = "my-project"
BUCKET = "my-bucket"
DATA = b"time,speed\n0,7.5\n"


class MissingBucket(FakeBucket):
    """A bucket that does not exist, answered as GCS and fake-gcs-server answer: a plain 404 (no such
    object) for an object request, "bucket does not exist" only for a listing."""

    def _gone(self, *args, **kwargs):
        raise NotFound(f"gs://{self.name}/...: no such object")

    stat = upload_file = upload_bytes = patch_metadata = download_to_file = _gone

    def list_page(self, *args, **kwargs):
        raise BucketNotFound(f"bucket {self.name!r} does not exist")


@pytest.fixture(autouse=True)
def buckets(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    served = {BUCKET: FakeBucket(BUCKET)}
    monkeypatch.setattr(datafile_module, "bucket_factory", lambda name, project: served.get(name) or MissingBucket(name))
    return served


@pytest.mark.parametrize("mode", ["r", "w"])
def test_from_cloud_says_the_bucket_does_not_exist(mode):
    with pytest.raises(BucketNotFound, match="bucket 'no-such-bucket' does not exist"):
        Datafile.from_cloud(PROJECT, "no-such-bucket", "x.csv", mode=mode)


def test_a_missing_object_in_an_existing_bucket_is_not_called_a_missing_bucket():
    with pytest.raises(NotFound, match="no such object") as caught:
        Datafile.from_cloud(PROJECT, BUCKET, "x.csv")
    assert not isinstance(caught.value, BucketNotFound)


def test_to_cloud_says_the_bucket_does_not_exist():
    pathlib.Path("local.csv").write_bytes(DATA)
    with pytest.raises(BucketNotFound, match="bucket 'no-such-bucket' does not exist"):
        Datafile("local.csv").to_cloud(PROJECT, "no-such-bucket", "x.csv")


def test_writing_a_new_object_in_a_missing_bucket_says_so():
    datafile = Datafile("gs://no-such-bucket/x.csv")
    with pytest.raises(BucketNotFound, match="does not exist"):
        with datafile.open("w") as f:
            f.write("x")


@pytest.mark.parametrize(
    "call",
    [
        lambda: Datafile.from_cloud(PROJECT, "gs://my-bucket/a/x.csv"),
        lambda: Datafile.from_cloud("gs://my-bucket/a/x.csv"),
        lambda: Datafile.from_cloud(PROJECT, cloud_path="gs://my-bucket/a/x.csv"),
        lambda: Datafile("gs://my-bucket/a/x.csv"),
    ],
)
def test_from_cloud_takes_a_gs_url(buckets, call):
    buckets[BUCKET].upload_bytes("a/x.csv", DATA, {})
    datafile = call()
    assert (datafile.bucket_name, datafile.path_in_bucket) == (BUCKET, "a/x.csv")
    assert datafile.cloud_path == "gs://my-bucket/a/x.csv"


@pytest.mark.parametrize(
    "call",
    [
        lambda d: d.to_cloud(PROJECT, "gs://my-bucket/b/y.csv"),
        lambda d: d.to_cloud("gs://my-bucket/b/y.csv"),
        lambda d: d.to_cloud(project_name=PROJECT, cloud_path="gs://my-bucket/b/y.csv"),
        lambda d: d.upload("gs://my-bucket/b/y.csv"),  # the SDK 0.69.1 name
    ],
)
def test_to_cloud_takes_a_gs_url(buckets, call):
    pathlib.Path("local.csv").write_bytes(DATA)
    assert call(Datafile("local.csv")) == "gs://my-bucket/b/y.csv"
    assert buckets[BUCKET].objects()["b/y.csv"] == DATA


def test_a_gs_url_with_a_path_as_well_is_refused_clearly():
    with pytest.raises(ValueError, match="is a gs:// URL"):
        Datafile.from_cloud(PROJECT, "gs://my-bucket", "x.csv")
    pathlib.Path("local.csv").write_bytes(DATA)
    with pytest.raises(ValueError, match="is a gs:// URL"):
        Datafile("local.csv").to_cloud(PROJECT, "gs://my-bucket", "x.csv")
