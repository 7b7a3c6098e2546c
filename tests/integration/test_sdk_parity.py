"""octuefs's Datafile against the real Octue SDK (``octue`` 0.69.1), each writing what the other reads.

The SDK runs in a virtual environment of its own (``scripts/install`` makes it:
``~/.cache/octuefs-sdk-venv``, or ``$OCTUEFS_SDK_VENV``), driven through ``sdk_side.py`` in a
subprocess, so it never shares an interpreter with octuefs. Without that environment these tests
FAIL, on purpose: the install script provides it, and a parity check that silently skips checks
nothing.

* Local metadata: the ``.octue`` file the SDK writes, octuefs reads, and the other way round; one
  directory's file shared by both keeps both records.
* The attributes of the SDK's Datafile (``extension``, ``size_bytes``, ``hash_value``...), compared
  value for value.
* Cloud metadata on the session's fake-gcs-server (the SDK honours ``STORAGE_EMULATOR_HOST``).

Where octuefs deliberately differs (README, "For Python users"), the tests say so.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import subprocess

import pytest

from octuefs import Datafile, Dataset, find
from octuefs.octue.dataset_record import dumps_compact

SDK_VERSION = "0.69.1"
SDK_SIDE = pathlib.Path(__file__).with_name("sdk_side.py")
TIMESTAMP = "2024-01-01T00:00:00+00:00"
TAGS = {"height_m": 80.5, "site": "north", "calibrated": True}
LABELS = ["qc-passed", "raw"]
OCTUEFS_EXTRAS = {"cluster", "sequence"}  # the seed's fields, which the SDK dropped in 2021


def sdk_venv() -> pathlib.Path:
    return pathlib.Path(os.environ.get("OCTUEFS_SDK_VENV") or pathlib.Path.home() / ".cache" / "octuefs-sdk-venv")


@pytest.fixture(scope="module")
def sdk_python() -> str:
    python = sdk_venv() / "bin" / "python"
    if not python.exists():
        pytest.fail(f"the Octue SDK's virtual environment is missing ({sdk_venv()}): run scripts/install", pytrace=False)
    found = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('octue'))"],
                           capture_output=True, text=True)
    if found.stdout.strip() != SDK_VERSION:
        pytest.fail(f"{python} has octue {found.stdout.strip() or 'not installed'} ({found.stderr.strip()[-300:]}), "
                    f"not {SDK_VERSION}: run scripts/install", pytrace=False)
    return str(python)


def sdk(sdk_python: str, cwd: pathlib.Path, *steps: dict) -> list[dict]:
    """Run ``steps`` with the SDK (sdk_side.py) in ``cwd``; one description per step."""
    done = subprocess.run([sdk_python, str(SDK_SIDE)], input=json.dumps(steps), capture_output=True, text=True,
                          cwd=cwd, timeout=120)
    assert done.returncode == 0, f"the SDK failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(datafile: Datafile) -> dict:
    """What sdk_side.py reports for the SDK's datafile, for octuefs's."""
    metadata = datafile.metadata()
    return {
        "id": datafile.id,
        "name": datafile.name,
        "posix_timestamp": datafile.posix_timestamp,
        "tags": dict(datafile.tags),
        "labels": sorted(datafile.labels),
        "extension": datafile.extension,
        "size_bytes": datafile.size_bytes,
        "hash_value": datafile.hash_value,
        "cloud_hash_value": datafile.cloud_hash_value,
        "metadata_path": datafile.metadata_path,
        "exists_locally": datafile.exists_locally,
        "exists_in_cloud": datafile.exists_in_cloud,
        "metadata_keys": sorted(set(metadata) - {f"octue__{extra}" for extra in OCTUEFS_EXTRAS}),
        "metadata_keys_plain_without_id": sorted(
            set(datafile.metadata(include_id=False, use_octue_namespace=False)) - OCTUEFS_EXTRAS
        ),
        "labels_are_a_set": isinstance(metadata["octue__labels"], set),
        "sdk_version": metadata["octue__sdk_version"],
    }


def same(ours: dict, theirs: dict, *keys: str) -> None:
    keys = keys or tuple(theirs.keys() & ours.keys())
    assert {k: ours[k] for k in keys} == {k: theirs[k] for k in keys}


# --- local metadata: the .octue file ------------------------------------------------------------


def test_octuefs_reads_the_record_the_sdk_wrote(sdk_python, tmp_path):
    (theirs,) = sdk(sdk_python, tmp_path, dict(op="write", path="data.csv", content="a,b\n", tags=TAGS,
                                              labels=LABELS, timestamp=TIMESTAMP))
    ours = Datafile(str(tmp_path / "data.csv"))
    assert ours.id == theirs["id"]
    assert dict(ours.tags) == TAGS and sorted(ours.labels) == LABELS
    assert ours.timestamp == dt.datetime.fromisoformat(TIMESTAMP)


def test_the_sdk_reads_the_record_octuefs_wrote(sdk_python, tmp_path):
    with Datafile(str(tmp_path / "data.csv"), tags=TAGS, labels=LABELS, timestamp=TIMESTAMP, mode="w") as (ours, f):
        f.write("a,b\n")
    (theirs,) = sdk(sdk_python, tmp_path, dict(op="describe", path="data.csv"))
    same(describe(ours), theirs, "id", "tags", "labels", "posix_timestamp")


def test_one_directory_file_shared_by_both_keeps_both_records(sdk_python, tmp_path):
    with Datafile(str(tmp_path / "ours.csv"), tags={"by": "octuefs"}, labels="mine", sequence=3, mode="w") as (ours, f):
        f.write("1")
    sdk(sdk_python, tmp_path, dict(op="write", path="theirs.csv", content="2", tags={"by": "sdk"}, labels=["sdk"]))
    again = Datafile(str(tmp_path / "ours.csv"))
    assert again.id == ours.id and again.tags == {"by": "octuefs"} and again.labels == {"mine"}
    assert again.sequence == 3  # octuefs's own key survives the SDK rewriting the file
    theirs = Datafile(str(tmp_path / "theirs.csv"))
    theirs.labels.add("seen-by-octuefs")
    theirs.update_local_metadata()
    ours_seen, theirs_seen = sdk(sdk_python, tmp_path, dict(op="describe", path="ours.csv"),
                                 dict(op="describe", path="theirs.csv"))
    assert ours_seen["id"] == ours.id and ours_seen["labels"] == ["mine"]
    assert theirs_seen["id"] == theirs.id and theirs_seen["labels"] == ["sdk", "seen-by-octuefs"]


# --- the attributes ------------------------------------------------------------------------------


def test_the_attributes_of_a_local_datafile_agree(sdk_python, tmp_path):
    (tmp_path / "data.csv").write_text("time,speed\n0,7.5\n")
    theirs, missing_theirs = sdk(sdk_python, tmp_path, dict(op="describe", path="data.csv"),
                                 dict(op="describe", path="missing.dat"))
    ours = describe(Datafile(str(tmp_path / "data.csv")))
    missing_ours = describe(Datafile(str(tmp_path / "missing.dat")))
    for key in ("id",):  # new random ids on each side: no record was written
        ours.pop(key), theirs.pop(key), missing_ours.pop(key), missing_theirs.pop(key)
    assert ours == theirs
    assert missing_ours == missing_theirs


# --- cloud metadata, on the session's emulator ----------------------------------------------------


@pytest.mark.emulator
def test_cloud_metadata_both_ways(sdk_python, gcs_bucket, tmp_path):
    (tmp_path / "ours.csv").write_text("time,speed\n0,7.5\n")
    (tmp_path / "theirs.csv").write_text("time,speed\n1,8.0\n2,9.5\n")
    ours = Datafile(str(tmp_path / "ours.csv"), tags=TAGS, labels=LABELS, timestamp=TIMESTAMP)
    ours_url = ours.to_cloud("my-project", f"gs://{gcs_bucket.name}/a/ours.csv")
    theirs_url = f"gs://{gcs_bucket.name}/a/theirs.csv"
    seen_by_sdk, uploaded_by_sdk, theirs_in_cloud = sdk(
        sdk_python, tmp_path, dict(op="describe", path=ours_url),
        dict(op="upload", path="theirs.csv", cloud_path=theirs_url, tags={"by": "sdk"}, labels=["sdk"]),
        dict(op="describe", path=theirs_url),  # the uploader's own size_bytes is None: stat-ed before it uploaded
    )
    cloud_ours = Datafile.from_cloud("my-project", ours_url)
    same(describe(cloud_ours), seen_by_sdk)
    seen_by_octuefs = Datafile.from_cloud("my-project", theirs_url)
    assert seen_by_octuefs.id == uploaded_by_sdk["id"]
    assert seen_by_octuefs.tags == {"by": "sdk"} and seen_by_octuefs.labels == {"sdk"}
    same(describe(seen_by_octuefs), theirs_in_cloud)


@pytest.mark.emulator
def test_sending_onto_an_existing_object_keeps_the_senders_id_on_both_sides(sdk_python, gcs_bucket, tmp_path):
    url = f"gs://{gcs_bucket.name}/shared.csv"
    (tmp_path / "ours.csv").write_text("ours")
    (tmp_path / "theirs.csv").write_text("theirs")
    ours = Datafile(str(tmp_path / "ours.csv"))
    ours.to_cloud("my-project", url)
    (theirs,) = sdk(sdk_python, tmp_path, dict(op="upload", path="theirs.csv", cloud_path=url))
    assert theirs["id"] != ours.id and Datafile.from_cloud("my-project", url).id == theirs["id"]
    again = Datafile(str(tmp_path / "ours.csv"))
    again.upload(url)  # the SDK 0.69.1 name, as the SDK side used it
    assert Datafile.from_cloud("my-project", url).id == again.id


# --- datasets and manifests, on the session's emulator ---------------------------------------------


def describe_dataset(dataset: Dataset) -> dict:
    """What sdk_side.py reports of the SDK's Dataset (but ``stats``), for octuefs's."""
    def plain(value):
        return json.loads(dumps_compact(value))

    return {
        "id": dataset.id, "name": dataset.name, "path": dataset.path, "tags": plain(dict(dataset.tags)),
        "labels": sorted(dataset.labels),
        "files": {f.cloud_path: {"id": f.id, "name": f.name, "tags": plain(dict(f.tags)), "labels": sorted(f.labels),
                                 "posix_timestamp": f.posix_timestamp, "size_bytes": f.size_bytes,
                                 "cloud_hash_value": f.cloud_hash_value} for f in dataset.files},
    }


def without_stats(description: dict) -> dict:
    return {k: v for k, v in description.items() if k != "stats"}


def sdk_uploads_a_dataset(sdk_python, tmp_path, url: str) -> dict:
    (tmp_path / "wind" / "sub").mkdir(parents=True)
    *_, theirs = sdk(
        sdk_python, tmp_path,
        dict(op="write", path="wind/a.csv", content="1", tags=TAGS, labels=LABELS, timestamp=TIMESTAMP),
        dict(op="write", path="wind/sub/b.csv", content="2,3", tags={"by": "sdk"}, labels=["sdk"]),
        dict(op="dataset_upload", path="wind", cloud_path=url, tags={"project": "octuefs", "version": 2},
             labels=["dataset", "example"]),
    )
    return theirs


def octuefs_writes_a_dataset(url: str) -> Dataset:
    with Datafile(f"{url}/a.csv", tags=TAGS, labels=LABELS, timestamp=TIMESTAMP, mode="w") as (_, f):
        f.write("1")
    with Datafile(f"{url}/deep/b.csv", tags={"by": "octuefs"}, mode="w") as (_, f):
        f.write("2,3")
    when = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc)
    dataset = Dataset(url, tags={"project": "octuefs", "when": when}, labels="dataset Example")
    dataset.update_cloud_metadata()
    return dataset


@pytest.mark.emulator
def test_a_dataset_the_sdk_uploaded_reads_the_same_through_octuefs(sdk_python, gcs_bucket, tmp_path):
    url = f"gs://{gcs_bucket.name}/datasets/wind"
    theirs = sdk_uploads_a_dataset(sdk_python, tmp_path, url)
    ours = Dataset.from_cloud(url)
    assert describe_dataset(ours) == without_stats(theirs)
    record = gcs_bucket.stat("datasets/wind/.octue")
    assert dict(record.metadata) == {} and record.content_type == "text/plain"
    ours.update_cloud_metadata()  # octuefs encodes the same metadata to the SDK's very bytes: nothing to send
    assert gcs_bucket.stat("datasets/wind/.octue").generation == record.generation
    assert theirs["name"] == "wind" and theirs["labels"] == ["dataset", "example"] and len(theirs["files"]) == 2
    assert theirs["stats"] == 2  # the SDK asked about each file on its own; octuefs listed them once


@pytest.mark.emulator
def test_a_dataset_octuefs_wrote_reads_the_same_through_the_sdk(sdk_python, gcs_bucket, tmp_path):
    url = f"gs://{gcs_bucket.name}/by-octuefs/run1"
    ours = octuefs_writes_a_dataset(url)
    (theirs,) = sdk(sdk_python, tmp_path, dict(op="dataset", path=url))
    assert without_stats(theirs) == describe_dataset(Dataset.from_cloud(url))
    assert (theirs["id"], theirs["name"], theirs["labels"]) == (ours.id, "run1", ["dataset", "example"])
    assert theirs["tags"]["when"] == {"_type": "datetime", "value": "2024-01-01T12:00:00+00:00"}


@pytest.mark.emulator
def test_octuefs_manifest_loads_in_the_sdk_as_the_datasets_it_finds_itself(sdk_python, gcs_bucket, tmp_path):
    by_sdk, by_octuefs = f"gs://{gcs_bucket.name}/datasets/wind", f"gs://{gcs_bucket.name}/by-octuefs/run1"
    sdk_uploads_a_dataset(sdk_python, tmp_path, by_sdk)
    octuefs_writes_a_dataset(by_octuefs)
    manifest = tmp_path / "manifest.json"
    assert find.run_manifest([by_sdk, by_octuefs], str(manifest)) == 0
    loaded, *asked = sdk(sdk_python, tmp_path, dict(op="manifest", path=str(manifest)),
                         dict(op="dataset", path=by_sdk), dict(op="dataset", path=by_octuefs))
    written = json.loads(manifest.read_text())["datasets"]
    assert sorted(loaded) == sorted(written) == ["run1", "wind"]
    for itself in asked:
        got = loaded[itself["name"]]
        assert got["stats"] == 0 and itself["stats"] == len(itself["files"]) == 2  # per file, unless from a manifest
        assert (got["path"], got["name"], got["files"]) == (itself["path"], itself["name"], itself["files"])
        # The SDK 0.69.1 gives a manifest's dataset with files no id, tags or labels of its own
        # (Manifest._instantiate_dataset); the manifest carries them all the same:
        mine = written[itself["name"]]
        assert (mine["id"], mine["tags"], mine["labels"]) == (itself["id"], itself["tags"], itself["labels"])
