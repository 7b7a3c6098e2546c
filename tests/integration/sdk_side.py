"""The Octue SDK's half of tests/integration/test_sdk_parity.py, run by the SDK's own interpreter.

Run as ``<sdk venv>/bin/python sdk_side.py`` with a JSON list of steps on stdin; prints a JSON list
with one result per step. It imports only the SDK (``octue`` 0.69.1), never octuefs. Steps:

* ``{"op": "write", "path": P, "content": TEXT, "tags": {...}, "labels": [...], "timestamp": ISO}``:
  ``with Datafile(path=P, ..., mode="w") as (d, f): f.write(TEXT)`` (records the local ``.octue``);
* ``{"op": "describe", "path": P}``: ``Datafile(path=P)`` (a local path or a gs:// one), described;
* ``{"op": "upload", "path": P, "cloud_path": URL, "tags": ..., "labels": ...}``: a local datafile
  uploaded with ``Datafile.upload(cloud_path=URL)``, described.
* ``{"op": "dataset_upload", "path": DIR, "cloud_path": URL, "tags": ..., "labels": ...}``: the local
  dataset ``Dataset(path=DIR, ...)`` uploaded with ``Dataset.upload(cloud_path=URL)`` (its files,
  then its ``.octue`` record), described as below;
* ``{"op": "dataset", "path": URL}``: ``Dataset(path=URL)`` described: its metadata, each file's
  facts by cloud path, and ``stats``, how many objects the SDK asked about one by one;
* ``{"op": "manifest", "path": FILE}``: ``Manifest.from_file(FILE)``, each dataset described so.

Against an emulator (``STORAGE_EMULATOR_HOST``), the SDK still asks ``google.auth.default()`` for
credentials first; with none on the machine, anonymous ones are given instead (the emulator
checks none).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")

if os.environ.get("STORAGE_EMULATOR_HOST"):
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    def _anonymous(*args, **kwargs):
        return AnonymousCredentials(), "octuefs-test-project"

    google.auth.default = _anonymous

import octue.cloud.storage.client as _client  # noqa: E402
from octue.resources import Datafile, Dataset, Manifest  # noqa: E402
from octue.utils.encoders import OctueJSONEncoder  # noqa: E402


def _describe(datafile: Datafile) -> dict:
    metadata = datafile.metadata()
    return {
        "id": datafile.id,
        "name": datafile.name,
        "posix_timestamp": datafile.posix_timestamp,
        "tags": json.loads(json.dumps(datafile.tags, cls=OctueJSONEncoder)),
        "labels": sorted(str(label) for label in datafile.labels),
        "extension": datafile.extension,
        "size_bytes": datafile.size_bytes,
        "hash_value": datafile.hash_value,
        "cloud_hash_value": datafile.cloud_hash_value,
        "metadata_path": datafile.metadata_path,
        "exists_locally": bool(datafile.exists_locally),
        "exists_in_cloud": bool(datafile.exists_in_cloud),
        "metadata_keys": sorted(metadata),
        "metadata_keys_plain_without_id": sorted(datafile.metadata(include_id=False, use_octue_namespace=False)),
        "labels_are_a_set": isinstance(metadata["octue__labels"], set),
        "sdk_version": metadata["octue__sdk_version"],
    }


_STATS = [0]
_get_metadata = _client.GoogleCloudStorageClient.get_metadata


def _counted_get_metadata(self, *args, **kwargs):
    _STATS[0] += 1
    return _get_metadata(self, *args, **kwargs)


_client.GoogleCloudStorageClient.get_metadata = _counted_get_metadata


def _plain(value):
    return json.loads(json.dumps(value, cls=OctueJSONEncoder))


def _describe_dataset(dataset: Dataset, stats_before: int) -> dict:
    return {
        "id": dataset.id, "name": dataset.name, "path": dataset.path, "tags": _plain(dataset.tags),
        "labels": sorted(str(label) for label in dataset.labels),
        "files": {f.cloud_path: {"id": f.id, "name": f.name, "tags": _plain(f.tags),
                                 "labels": sorted(str(label) for label in f.labels),
                                 "posix_timestamp": f.posix_timestamp, "size_bytes": f.size_bytes,
                                 "cloud_hash_value": f.cloud_hash_value} for f in dataset.files},
        "stats": _STATS[0] - stats_before,
    }


def _metadata_arguments(step: dict) -> dict:
    timestamp = step.get("timestamp")
    return {
        "tags": step.get("tags"),
        "labels": step.get("labels"),
        "timestamp": dt.datetime.fromisoformat(timestamp) if timestamp else None,
    }


def _run(step: dict) -> dict:
    if step["op"] == "write":
        with Datafile(path=step["path"], mode="w", **_metadata_arguments(step)) as (datafile, f):
            f.write(step["content"])
        return _describe(datafile)
    if step["op"] == "describe":
        return _describe(Datafile(path=step["path"]))
    if step["op"] == "upload":
        datafile = Datafile(path=step["path"], **_metadata_arguments(step))
        datafile.upload(cloud_path=step["cloud_path"])
        return _describe(datafile)
    before = _STATS[0]
    if step["op"] == "dataset_upload":
        dataset = Dataset(path=step["path"], tags=step.get("tags"), labels=step.get("labels"))
        dataset.upload(cloud_path=step["cloud_path"])
        before = _STATS[0]
        return _describe_dataset(Dataset(path=step["cloud_path"]), before)
    if step["op"] == "dataset":
        return _describe_dataset(Dataset(path=step["path"]), before)
    if step["op"] == "manifest":
        manifest = Manifest.from_file(step["path"])
        return {key: _describe_dataset(dataset, before) for key, dataset in manifest.datasets.items()}
    raise ValueError(f"unknown step {step!r}")


if __name__ == "__main__":
    print(json.dumps([_run(step) for step in json.load(sys.stdin)]))
