"""Octue manifests of cloud datasets, made from listings: what ``octuefs manifest`` writes.

The shape is the one the SDK (``octue`` 0.69.1) loads with ``Manifest.from_file`` or
``Manifest.deserialise(text, from_string=True)``::

    {"id": "<uuid>", "name": null, "datasets": {"<key>": <serialised dataset>}}

each dataset as the SDK's ``Dataset.to_primitive()`` (``id``, ``name``, ``tags``, ``labels``,
``path``) with ``files`` as serialised Datafiles (the SDK's ``Datafile.to_primitive()``: ``id``,
``timestamp``, ``tags``, ``labels``, ``name``, ``local_path``, ``cloud_path``, ``path`` and
``_cloud_metadata``, the object's facts as the SDK's ``get_metadata`` gives them), each with
``"ignore_stored_metadata": true`` so that the SDK takes the metadata written here instead of
asking the bucket again for every file. Every field comes from one listing of each dataset
(:class:`~octuefs.Dataset`), and its ``.octue`` record.

The SDK 0.69.1 itself gives a cloud dataset in a manifest no ``id``, ``tags`` or ``labels`` of its
own when it carries ``files`` (``Manifest._instantiate_dataset`` passes only its path and files):
they are written here all the same, as the SDK's own serialisation has them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from octuefs.octue.dataset import Dataset
from octuefs.octue.dataset_record import cloud_metadata_of, dumps_serialised

__all__ = ["serialised_dataset", "build_manifest", "dumps_manifest"]


def _serialised_datafile(datafile, info) -> dict[str, Any]:
    return {
        "id": datafile.id, "timestamp": datafile.timestamp, "tags": dict(datafile.tags),
        "labels": sorted(datafile.labels), "name": datafile.name, "local_path": None,
        "cloud_path": datafile.cloud_path, "path": datafile.cloud_path,
        "_cloud_metadata": cloud_metadata_of(info) if info is not None else {},
        "ignore_stored_metadata": True,
    }


def serialised_dataset(dataset: Dataset) -> dict[str, Any]:
    """The dataset as the SDK serialises one, with its files as serialised Datafiles."""
    primitive = dataset.to_primitive(include_files=False)
    primitive["files"] = [_serialised_datafile(f, dataset.listed.get(f.path_in_bucket)) for f in dataset.files]
    return primitive


def build_manifest(datasets: Iterable[Dataset], id: str | None = None, name: str | None = None) -> dict[str, Any]:
    """A manifest of ``datasets``, each under its name (``name-2``, ``name-3``... where names repeat)."""
    keyed: dict[str, Any] = {}
    for dataset in datasets:
        key, n = dataset.name, 1
        while key in keyed:
            n += 1
            key = f"{dataset.name}-{n}"
        keyed[key] = serialised_dataset(dataset)
    return {"id": id or str(uuid.uuid4()), "name": name, "datasets": keyed}


def dumps_manifest(manifest: dict[str, Any]) -> str:
    """The manifest's JSON, as the SDK's ``Manifest.serialise()`` writes one."""
    return dumps_serialised(manifest) + "\n"
