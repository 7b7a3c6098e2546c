"""The seed's Datafile examples A-D, run as written against fake-gcs-server.

Each example is the seed's code with ``from octuefs import Datafile`` for
``from octue.resources import Datafile``, the emulator's bucket for ``my-bucket``, a
``metadata_calculating_function`` for example A, and example B's stray ``:`` (a syntax error)
dropped. Buckets are opened the ordinary way (``open_bucket`` via ``STORAGE_EMULATOR_HOST``), with
a counting proxy around them so each test can say how many requests of each kind it cost.
Assertions are on the bucket itself: raw custom metadata (the SDK's text) and bytes.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import pathlib

import pytest

import octuefs.octue.datafile as datafile_module
from octuefs import Datafile
from octuefs.errors import Conflict

# Raw metadata byte for byte as the SDK writes it (0.69.1, and 0.1.27 for the legacy keys).
from ..unit.test_metadata_sdk_layout import AWARE_FRACTION, LEGACY, RICH, SEED_D

pytestmark = pytest.mark.emulator

UTC = dt.timezone.utc
DATA = b"time,speed\n0,7.5\n1,8.0\n"

class CountingBucket:
    """A proxy that counts the calls made on a bucket, by method name."""

    def __init__(self, bucket, calls):
        self._bucket, self.calls = bucket, calls
        self.name = bucket.name

    def __getattr__(self, name):
        method = getattr(self._bucket, name)

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted


@pytest.fixture
def calls(gcs_bucket, monkeypatch, tmp_path):
    """Requests made through octuefs.octue.datafile's bucket hook (its default: open_bucket), by kind."""
    monkeypatch.chdir(tmp_path)
    counter: collections.Counter[str] = collections.Counter()
    default = datafile_module.bucket_factory
    monkeypatch.setattr(datafile_module, "bucket_factory", lambda name, project: CountingBucket(default(name, project), counter))
    return counter


def writes(calls):
    return {op: n for op, n in calls.items() if op in ("upload_file", "patch_metadata", "copy", "delete") and n}


def raw(gcs_bucket, name):
    return dict(gcs_bucket.stat(name).metadata)


def content(gcs_bucket, name):
    return gcs_bucket.read_range(name, 0, 1 << 20)


def metadata_calculating_function(data):
    rows = data.strip().splitlines()[1:]
    return {
        "timestamp": dt.datetime(2024, 1, 1, tzinfo=UTC),
        "cluster": 1,
        "sequence": len(rows),
        "tags": {"rows": len(rows), "source": "anemometer"},
        "labels": "raw qc-passed",
    }


def test_example_a(gcs_bucket, calls):
    before = gcs_bucket.upload_bytes("path/to/data.csv", DATA, {"owner": "ops"})

    project_name = "my-project"
    bucket_name = gcs_bucket.name,  # noqa: the seed's stray comma (a 1-tuple) is kept
    datafile_path = "path/to/data.csv"

    with Datafile.from_cloud(project_name, bucket_name, datafile_path, mode="r") as (datafile, f):
        data = f.read()
        new_metadata = metadata_calculating_function(data)

        datafile.timestamp = new_metadata["timestamp"]
        datafile.cluster = new_metadata["cluster"]
        datafile.sequence = new_metadata["sequence"]
        datafile.tags = new_metadata["tags"]
        datafile.labels = new_metadata["labels"]

    assert writes(calls) == {"patch_metadata": 1} and calls["download_to_file"] == 1
    after = gcs_bucket.stat("path/to/data.csv")
    assert (after.md5, after.crc32c) == (before.md5, before.crc32c)
    assert content(gcs_bucket, "path/to/data.csv") == DATA
    assert dict(after.metadata) == {
        "owner": "ops",
        "octue__id": json.dumps(datafile.id),
        "octue__timestamp": '{"_type": "datetime", "value": "2024-01-01T00:00:00+00:00"}',
        "octue__tags": '{"rows": 2, "source": "anemometer"}',
        "octue__labels": '{"_type": "set", "items": ["qc-passed", "raw"]}',
        "octue__cluster": "1",
        "octue__sequence": "2",
        "octue__sdk_version": '"0.69.1"',
    }


@pytest.mark.parametrize("finish", ["to_cloud", "update_cloud_metadata"])
def test_example_b(gcs_bucket, calls, finish):
    before = gcs_bucket.upload_bytes("path/to/data.csv", DATA, {"owner": "ops"})

    from datetime import datetime

    project_name = "my-project"
    bucket_name = gcs_bucket.name
    datafile_path = "path/to/data.csv"

    datafile = Datafile.from_cloud(project_name, bucket_name, datafile_path)

    datafile.timestamp = datetime.now()
    datafile.cluster = 0
    datafile.sequence = 3
    datafile.tags = {"manufacturer": "Vestas", "output": "1MW"}
    datafile.labels = {"new"}

    if finish == "to_cloud":
        datafile.to_cloud()
    else:
        datafile.update_cloud_metadata()

    assert writes(calls) == {"patch_metadata": 1} and calls["download_to_file"] == 0
    assert dict(raw(gcs_bucket, "path/to/data.csv")) == {
        "owner": "ops",
        "octue__id": json.dumps(datafile.id),
        "octue__timestamp": json.dumps({"_type": "datetime", "value": datafile.timestamp.isoformat()}),
        "octue__tags": '{"manufacturer": "Vestas", "output": "1MW"}',
        "octue__labels": '{"_type": "set", "items": ["new"]}',
        "octue__cluster": "0",
        "octue__sequence": "3",
        "octue__sdk_version": '"0.69.1"',
    }
    assert gcs_bucket.stat("path/to/data.csv").md5 == before.md5


def test_example_c(gcs_bucket, calls):
    gcs_bucket.upload_bytes("path/to/data.csv", DATA, AWARE_FRACTION)

    project_name = "my-project"
    bucket_name = gcs_bucket.name
    datafile_path = "path/to/data.csv"

    datafile = Datafile.from_cloud(project_name, bucket_name, datafile_path)

    with datafile.open("r") as f:
        data = f.read()

    metadata = datafile.metadata()

    assert data == DATA.decode()
    assert metadata["octue__id"] == "02464c6f-0070-50ca-8a9b-ba1af5456601"
    assert metadata["octue__timestamp"] == dt.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert metadata["octue__tags"] == {"instrument": "anemometer", "height_m": 80.5, "calibrated": True}
    assert metadata["octue__labels"] == {"qc-passed", "raw"}
    assert writes(calls) == {}
    assert raw(gcs_bucket, "path/to/data.csv") == AWARE_FRACTION


def _check_example_d(gcs_bucket, calls, datafile):
    assert writes(calls) == {"upload_file": 1}
    assert content(gcs_bucket, "path/to/data.dat") == b"This is some cleaned data."
    assert raw(gcs_bucket, "path/to/data.dat") == {
        "octue__id": json.dumps(datafile.id),
        "octue__timestamp": "null",
        "octue__tags": '{"cleaned": true, "type": "linear"}',
        "octue__labels": '{"_type": "set", "items": ["vestas"]}',
        "octue__cluster": "0",
        "octue__sequence": "2",
        "octue__sdk_version": '"0.69.1"',
    }
    # The SDK's own layout for the same datafile, but for the id and the legacy keys octuefs adds.
    sdk = {key: value for key, value in SEED_D.items() if key != "octue__id"}
    assert sdk.items() <= raw(gcs_bucket, "path/to/data.dat").items()


def test_example_d_new_local_file(gcs_bucket, calls):
    sequence = 2
    tags = {"cleaned": True, "type": "linear"}
    labels = {"Vestas"}

    with Datafile(path="path/to/local/file.dat", sequence=sequence, tags=tags, labels=labels, mode="w") as (datafile, f):
        f.write("This is some cleaned data.")

    datafile.to_cloud(project_name="my-project", bucket_name=gcs_bucket.name, path_in_bucket="path/to/data.dat")

    _check_example_d(gcs_bucket, calls, datafile)


def test_example_d_existing_local_file(gcs_bucket, calls):
    os.makedirs("path/to/local")
    pathlib.Path("path/to/local/file.dat").write_text("This is some cleaned data.")

    sequence = 2
    tags = {"cleaned": True, "type": "linear"}
    labels = {"Vestas"}

    datafile = Datafile(path="path/to/local/file.dat", sequence=sequence, tags=tags, labels=labels)
    datafile.to_cloud(project_name="my-project", bucket_name=gcs_bucket.name, path_in_bucket="path/to/data.dat")

    _check_example_d(gcs_bucket, calls, datafile)


def test_example_d_run_again_replaces_the_object_with_the_datafiles_id(gcs_bucket, calls):
    """As in the SDK, the datafile sent keeps its own id. A file written through a Datafile keeps its
    id across runs in the local .octue file, so the first form of example D, run again, keeps it."""
    with Datafile(path="file.dat", labels={"Vestas"}, mode="w") as (first, f):
        f.write("first")
    first.to_cloud(project_name="my-project", bucket_name=gcs_bucket.name, path_in_bucket="path/to/data.dat")
    with Datafile(path="file.dat", labels={"Vestas"}, sequence=5, mode="w") as (second, f):
        f.write("second")
    second.to_cloud(project_name="my-project", bucket_name=gcs_bucket.name, path_in_bucket="path/to/data.dat")
    assert second.id == first.id
    assert content(gcs_bucket, "path/to/data.dat") == b"second"
    assert raw(gcs_bucket, "path/to/data.dat")["octue__id"] == json.dumps(first.id)
    assert raw(gcs_bucket, "path/to/data.dat")["octue__sequence"] == "5"

    pathlib.Path("other.dat").write_text("third")
    third = Datafile(path="other.dat")  # never recorded: a new id, which replaces the object's
    third.to_cloud(project_name="my-project", bucket_name=gcs_bucket.name, path_in_bucket="path/to/data.dat")
    assert third.id != first.id and raw(gcs_bucket, "path/to/data.dat")["octue__id"] == json.dumps(third.id)


# --- objects the SDK wrote ---------------------------------------------------------------------


@pytest.mark.parametrize("dump", [SEED_D, AWARE_FRACTION, RICH, LEGACY], ids=["seed_d", "aware", "rich", "legacy"])
def test_reading_sdk_metadata_changes_nothing(gcs_bucket, calls, dump):
    gcs_bucket.upload_bytes("sdk.dat", DATA, {**dump, "owner": "ops"})
    with Datafile.from_cloud("my-project", gcs_bucket.name, "sdk.dat") as (datafile, f):
        assert f.read() == DATA.decode()
        datafile.labels = set(datafile.labels)  # reassigning the same values is no change
        datafile.tags = dict(datafile.tags)
    assert writes(calls) == {}
    assert raw(gcs_bucket, "sdk.dat") == {**dump, "owner": "ops"}
    assert datafile.id == json.loads(dump["octue__id"])


def test_reading_the_sdks_rich_and_legacy_layouts(gcs_bucket, calls):
    gcs_bucket.upload_bytes("rich.dat", DATA, RICH)
    gcs_bucket.upload_bytes("legacy.dat", DATA, LEGACY)
    rich = Datafile.from_cloud("my-project", gcs_bucket.name, "rich.dat")
    assert rich.timestamp == dt.datetime(2023, 6, 15, 8, 0, 0, 500, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert rich.tags["kinds"] == {"a", "b"} and rich.tags["unicode"] == "Vestas \u2013 caf\u00e9 \u2603"
    assert rich.labels == {"a", "b-2", "z9"}
    legacy = Datafile.from_cloud("my-project", gcs_bucket.name, "legacy.dat")
    assert (legacy.cluster, legacy.sequence) == (2, 3)
    assert legacy.timestamp == dt.datetime(2021, 5, 3, 18, 15, 58, 298086)
    assert legacy.tags == {"height_m": 80, "manufacturer": "vestas"}


def test_changing_one_field_of_sdk_metadata_leaves_the_other_keys_byte_for_byte(gcs_bucket, calls):
    gcs_bucket.upload_bytes("sdk.dat", DATA, {**RICH, "owner": "ops"})
    datafile = Datafile.from_cloud("my-project", gcs_bucket.name, "sdk.dat")
    datafile.sequence = 4
    datafile.update_cloud_metadata()
    assert writes(calls) == {"patch_metadata": 1}
    stored = raw(gcs_bucket, "sdk.dat")
    assert stored["octue__sequence"] == "4"
    assert {key: stored[key] for key in RICH} == RICH
    assert stored["owner"] == "ops"


def test_a_write_conflict_on_the_emulator_does_not_overwrite(gcs_bucket, calls):
    gcs_bucket.upload_bytes("c.dat", b"original")
    with pytest.raises(Conflict):
        with Datafile.from_cloud("my-project", gcs_bucket.name, "c.dat", mode="w") as (datafile, f):
            f.write("mine")
            gcs_bucket.upload_bytes("c.dat", b"theirs")
    assert content(gcs_bucket, "c.dat") == b"theirs"


def test_write_mode_on_the_emulator_is_one_upload(gcs_bucket, calls):
    gcs_bucket.upload_bytes("w.dat", b"old", {**AWARE_FRACTION, "owner": "ops"})
    with Datafile.from_cloud("my-project", gcs_bucket.name, "w.dat", mode="w", cluster=6) as (_, f):
        f.write("new")
    assert writes(calls) == {"upload_file": 1} and calls["download_to_file"] == 0
    stored = raw(gcs_bucket, "w.dat")
    assert content(gcs_bucket, "w.dat") == b"new"
    assert stored["owner"] == "ops" and stored["octue__id"] == AWARE_FRACTION["octue__id"]
    assert stored["octue__cluster"] == "6" and stored["octue__tags"] == AWARE_FRACTION["octue__tags"]
