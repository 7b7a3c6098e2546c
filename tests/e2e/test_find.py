"""`octuefs find` and `octuefs manifest` given paths inside a real mount: answered in the mount's
paths, from the bucket's listings plus what the mount has not uploaded yet (its uploads are
held back here by a proxy answering every upload with 503, while listings pass)."""

from __future__ import annotations

import json
import os

from octuefs.octue.metadata import OctueMetadata, encode_object_metadata
from tests.faultproxy import FaultProxy

from .conftest import run_octuefs

RECORD = {"dataset": {"id": "c59e22eb-fea9-5c80-80bb-845be985c70e", "name": "wind", "tags": {"site": "north"},
                      "labels": ["dataset"], "path": "gs://x/data/wind"}}


def put(bucket, name, labels=(), **tags):
    custom = encode_object_metadata(OctueMetadata(labels=set(labels), tags=tags).with_id())
    bucket.upload_bytes(name, b"1,2\n", custom)


def found(*args: str) -> tuple[int, list[str]]:
    result = run_octuefs("find", *args, check=False)
    assert result.stderr == ""
    return result.returncode, result.stdout.splitlines()


def test_find_in_a_mount_answers_in_its_paths_and_counts_pending_changes(emulator, mount_factory, monkeypatch):
    with FaultProxy(emulator.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        m = mount_factory(prefix="data")
        try:
            put(m.bucket, "data/wind/a.csv", ["raw"], height_m=80.5)
            put(m.bucket, "data/wind/b.csv", ["raw"], instrument="lidar")
            put(m.bucket, "outside/c.csv", ["raw"])
            m.bucket.upload_bytes("data/wind/.octue", json.dumps(RECORD).encode())
            # find asks the bucket where the mount's daemon does (a --local mount's own emulator),
            # whatever its own environment says:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
            (m / "solar").mkdir()  # (a marker, uploaded at once)
            proxy.set_faults({"503": 1.0}, only=("upload",))  # from now on nothing the mount closes goes up
            wind = m / "wind"
            (wind / "new.csv").write_text("3,4\n")
            os.setxattr(wind / "new.csv", "user.octue.labels", b"raw fresh")
            with open(wind / "b.csv", "a") as f:
                f.write("5,6\n")
            os.setxattr(wind / "b.csv", "user.octue.labels", b"fresh")
            assert m.bucket.stat("data/wind/b.csv").size == 4  # still pending: the bucket has the old version

            assert found(str(wind), "--label", "fresh") == (0, [f"{wind}/b.csv", f"{wind}/new.csv"])
            assert found(str(m.path), "--label", "raw") == (0, [f"{wind}/a.csv", f"{wind}/new.csv"])
            assert found(str(m.path), "--tag", "height_m=80.5") == (0, [f"{wind}/a.csv"])
            assert found(str(wind / "a.csv"), "--tag", "height_m") == (0, [f"{wind}/a.csv"])
            assert found(str(m.path), "--label", "absent") == (1, [])
            relative = run_octuefs("find", "wind/", "--label", "fresh", cwd=m.path).stdout  # printed as find(1) does
            assert relative.splitlines() == ["wind/b.csv", "wind/new.csv"]
            assert found(str(m.path), "--datasets", "--tag", "site=north") == (0, [str(wind)])
            (m / "solar" / ".octue").write_text(json.dumps({"dataset": {**RECORD["dataset"], "labels": ["new"]}}))
            assert found(str(m.path), "--datasets") == (0, [str(m / "solar"), str(wind)])  # a pending record too
            assert found(str(m.path), "--datasets", "--label", "new") == (0, [str(m / "solar")])
            zero = run_octuefs("find", str(wind), "--label", "fresh", "-print0", check=False)
            assert zero.stdout == f"{wind}/b.csv\0{wind}/new.csv\0"
            (line,) = json.loads("[" + run_octuefs("find", str(wind), "--label", "fresh", "--tag", "instrument",
                                                   "--json").stdout.strip() + "]")
            assert line["path"] == f"{wind}/b.csv" and line["size"] == 8 and line["labels"] == ["fresh"]

            manifest = run_octuefs("manifest", str(wind)).stdout
            files = json.loads(manifest)["datasets"]["wind"]["files"]
            assert [f["name"] for f in files] == ["a.csv", "b.csv"]  # the bucket's (new.csv is not there yet)
        finally:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
            proxy.set_faults({})
            m.sync()
            run_octuefs("unmount", str(m.path), check=False)
