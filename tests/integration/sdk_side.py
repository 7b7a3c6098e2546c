"""The Octue SDK's half of tests/integration/test_sdk_parity.py, run by the SDK's own interpreter.

Run as ``<sdk venv>/bin/python sdk_side.py`` with a JSON list of steps on stdin; prints a JSON list
with one result per step. It imports only the SDK (``octue`` 0.69.1), never octuefs. Steps:

* ``{"op": "write", "path": P, "content": TEXT, "tags": {...}, "labels": [...], "timestamp": ISO}``:
  ``with Datafile(path=P, ..., mode="w") as (d, f): f.write(TEXT)`` (records the local ``.octue``);
* ``{"op": "describe", "path": P}``: ``Datafile(path=P)`` (a local path or a gs:// one), described;
* ``{"op": "upload", "path": P, "cloud_path": URL, "tags": ..., "labels": ...}``: a local datafile
  uploaded with ``Datafile.upload(cloud_path=URL)``, described.

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

from octue.resources import Datafile  # noqa: E402
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
    raise ValueError(f"unknown step {step!r}")


if __name__ == "__main__":
    print(json.dumps([_run(step) for step in json.load(sys.stdin)]))
