"""octuefs.Dataset, `octuefs find` and `octuefs manifest` on the in-memory bucket: what they read,
what they write, and how many requests it takes (the fake counts each one by kind)."""

from __future__ import annotations

import json

import pytest

from octuefs import Dataset, find
from octuefs.errors import Conflict, InvalidMetadata
from octuefs.octue.dataset_record import decode_dataset_record
from octuefs.octue.metadata import OctueMetadata, encode_object_metadata
from octuefs.storage.fake import FakeBucket

ID = "c59e22eb-fea9-5c80-80bb-845be985c70e"


def put(bucket, name, data=b"x", **meta):
    custom = encode_object_metadata(OctueMetadata(**meta).with_id()) if meta else {}
    return bucket.upload_bytes(name, data, custom)


def record(path, **fields):
    body = {"id": ID, "name": "example", "tags": {"project": "octuefs"}, "labels": ["a", "b"], "path": path}
    return json.dumps({"dataset": {**body, **fields}}).encode()


@pytest.fixture
def bucket():
    return FakeBucket("bk")


@pytest.fixture
def big(bucket):
    """2,500 files under ds/ (every tenth labelled 'raw'), and the dataset's record."""
    for i in range(2500):
        labels = {"raw"} if i % 10 == 0 else set()
        name = f"ds/{i // 100:02d}/f{i:04d}.csv"
        put(bucket, name, b"1,2\n", tags={"n": i}, labels=labels, timestamp=1_700_000_000 + i)
    bucket.upload_bytes("ds/.octue", record("gs://bk/ds"))
    bucket.reset_calls()
    return bucket


def test_from_cloud_reads_every_files_metadata_from_the_listing_alone(big):
    dataset = Dataset.from_cloud("gs://bk/ds", bucket=big)
    assert dict(big.calls) == {"list": 3, "read": 1}  # ceil(2500/1000) pages, the record; no stat
    assert len(dataset.files) == 2500
    assert (dataset.id, dataset.name, dataset.tags) == (ID, "example", {"project": "octuefs"})
    assert dataset.labels == {"a", "b"}
    first = dataset.files[0]
    assert first.cloud_path == "gs://bk/ds/00/f0000.csv" and first.tags == {"n": 0} and first.labels == {"raw"}
    assert first.size_bytes == 4 and first.posix_timestamp == 1_700_000_000
    assert dict(big.calls) == {"list": 3, "read": 1}  # the Datafiles asked nothing either


def test_the_files_are_those_the_sdk_counts(bucket):
    for name in ("d/a.csv", "d/sub/b.csv", "d/.octue", "d/sub/.octue", "d/x.octue", "d/sub/",
                 "d/.signed_metadata_files/s", "d/sub/.octuefs-parts/p.octuefs-part", "e/other.csv"):
        bucket.upload_bytes(name, b"{}" if name.endswith(".octue") else b"")
    assert [f.name for f in Dataset.from_cloud("gs://bk/d", bucket=bucket)] == ["a.csv", "b.csv"]
    assert [f.name for f in Dataset.from_cloud("gs://bk/d", bucket=bucket, recursive=False)] == ["a.csv"]
    with_records = Dataset("gs://bk/d", bucket=bucket, include_octue_metadata_files=True)
    assert sorted(f.path_in_bucket for f in with_records) == ["d/.octue", "d/a.csv", "d/sub/.octue", "d/sub/b.csv",
                                                              "d/x.octue"]


def test_a_new_dataset_writes_the_sdks_record_exactly_and_reads_it_back(bucket):
    put(bucket, "runs/r1/data.csv", tags={"a": 1})
    dataset = Dataset("gs://bk/runs/r1/", bucket=bucket, tags={"when": 3}, labels="Raw checked")
    assert dataset.name == "r1" and dataset.path == "gs://bk/runs/r1"
    dataset.update_cloud_metadata()
    stored = bucket.stat("runs/r1/.octue")
    assert dict(stored.metadata) == {} and stored.content_type == "text/plain"
    assert bucket.objects()["runs/r1/.octue"] == (
        '{"dataset": {"id": "%s", "name": "r1", "tags": {"when": 3}, "labels": ["checked", "raw"], '
        '"path": "gs://bk/runs/r1"}}' % dataset.id).encode()
    again = Dataset.from_cloud("gs://bk/runs/r1", bucket=bucket)
    assert (again.id, again.name, again.tags, again.labels) == (dataset.id, "r1", {"when": 3}, {"checked", "raw"})
    bucket.reset_calls()
    again.update_cloud_metadata()
    assert dict(bucket.calls) == {}  # the same record: nothing sent


def test_update_cloud_metadata_never_overwrites_a_record_changed_elsewhere(bucket):
    bucket.upload_bytes("ds/.octue", record("gs://bk/ds"))
    ours = Dataset.from_cloud("gs://bk/ds", bucket=bucket)
    theirs = Dataset.from_cloud("gs://bk/ds", bucket=bucket)
    theirs.labels.add("theirs")
    theirs.update_cloud_metadata()
    landed = bucket.objects()["ds/.octue"]
    ours.tags["mine"] = True
    with pytest.raises(Conflict, match=r"gs://bk/ds/\.octue changed in the bucket since this dataset read it"):
        ours.update_cloud_metadata()
    assert bucket.objects()["ds/.octue"] == landed
    assert decode_dataset_record(landed).labels == {"a", "b", "theirs"}


def test_update_cloud_metadata_keeps_what_the_record_holds_beyond_its_changed_fields(bucket):
    """The rewrite a directory's setfattr makes: keys octuefs does not know (in "dataset" and beside
    it), a `files` list and a malformed field left alone stay as stored; only the labels change."""
    stored = {"dataset": {"id": ID, "name": "example", "tags": {"Site": "north"}, "labels": ["a"],
                          "path": "gs://bk/ds", "files": ["gs://bk/ds/a.csv"], "newer": {"k": [1, 2]}},
              "datafiles": {"a.csv": {"labels": ["raw"]}}}
    put(bucket, "ds/a.csv")
    bucket.upload_bytes("ds/.octue", json.dumps(stored).encode())
    dataset = Dataset.from_cloud("gs://bk/ds", bucket=bucket)
    dataset.labels.add("b")
    dataset.update_cloud_metadata()
    after = json.loads(bucket.objects()["ds/.octue"])
    assert after == {**stored, "dataset": {**stored["dataset"], "labels": ["a", "b"]}}
    dataset.tags["height_m"] = 80  # merged into tags it reads as malformed: refused, nothing sent
    with pytest.raises(InvalidMetadata):
        dataset.update_cloud_metadata()
    assert json.loads(bucket.objects()["ds/.octue"]) == after
    Dataset.from_cloud("gs://bk/ds", bucket=bucket, tags={"site": "north"}).update_cloud_metadata()  # given whole
    assert json.loads(bucket.objects()["ds/.octue"])["dataset"]["tags"] == {"site": "north"}


def test_update_cloud_metadata_refuses_to_replace_an_id_that_is_not_a_uuid(bucket):
    bucket.upload_bytes("ds/.octue", record("gs://bk/ds", id="wind-2024"))
    dataset = Dataset.from_cloud("gs://bk/ds", bucket=bucket)
    dataset.labels.add("c")
    with pytest.raises(InvalidMetadata, match="not a UUID"):
        dataset.update_cloud_metadata()
    assert json.loads(bucket.objects()["ds/.octue"])["dataset"]["id"] == "wind-2024"


def test_a_record_created_elsewhere_meanwhile_is_not_overwritten(bucket):
    put(bucket, "ds/a.csv")
    ours = Dataset.from_cloud("gs://bk/ds", bucket=bucket)
    bucket.upload_bytes("ds/.octue", record("gs://bk/ds"))
    with pytest.raises(Conflict):
        ours.update_cloud_metadata()
    assert decode_dataset_record(bucket.objects()["ds/.octue"]).id == ID


def test_a_record_naming_its_files_is_followed_as_the_sdk_does(bucket):
    put(bucket, "ds/a.csv", tags={"a": 1})
    put(bucket, "ds/b.csv")
    put(bucket, "elsewhere/c.csv", labels={"far"})
    bucket.upload_bytes("ds/.octue", record("gs://bk/ds", files=["gs://bk/ds/a.csv", "gs://bk/elsewhere/c.csv"]))
    bucket.reset_calls()
    files = Dataset.from_cloud("gs://bk/ds", bucket=bucket).files
    assert [(f.name, f.tags, f.labels) for f in files] == [("a.csv", {"a": 1}, set()), ("c.csv", {}, {"far"})]
    assert dict(bucket.calls) == {"list": 1, "read": 1, "stat": 1}  # only the file outside the listing is asked about


def test_an_id_given_that_differs_from_the_stored_one_is_refused(bucket):
    bucket.upload_bytes("ds/.octue", record("gs://bk/ds"))
    with pytest.raises(ValueError, match="an existing id is kept"):
        Dataset("gs://bk/ds", bucket=bucket, id="7d0e4d4e-4a5e-4a39-9d0e-3f2f3b1e8a11")


# --- find ----------------------------------------------------------------------------------------


@pytest.fixture
def run(monkeypatch, capsys):
    def run_find(bucket, *args, **kwargs):
        monkeypatch.setattr(find, "open_bucket", lambda name, **kwargs: bucket)
        status = find.run_find(*args, **kwargs)
        out = capsys.readouterr()
        return status, out.out, out.err
    return run_find


def test_find_over_2500_objects_costs_3_list_requests(big, run):
    status, out, _ = run(big, "gs://bk/ds", labels=["raw"])
    assert status == 0 and dict(big.calls) == {"list": 3}
    assert out.splitlines()[:2] == ["gs://bk/ds/00/f0000.csv", "gs://bk/ds/00/f0010.csv"]
    assert len(out.splitlines()) == 250


@pytest.fixture
def wind(bucket):
    put(bucket, "wind/a.csv", tags={"height_m": 80.5, "instrument": "anemometer"}, labels={"raw", "qc-passed"},
        timestamp="2024-01-01T00:00:00+00:00")
    put(bucket, "wind/b.csv", tags={"height_m": 100, "instrument": "lidar", "flag": True}, labels={"raw"},
        timestamp="2024-06-01T00:00:00+00:00")
    put(bucket, "wind/c.csv", b"plain")
    bucket.upload_bytes("wind/.octue", record("gs://bk/wind", labels=["wind"], tags={"site": "north"}))
    bucket.upload_bytes("other/.octue", record("gs://bk/other", labels=["solar"]))
    return bucket


@pytest.mark.parametrize("conditions, expected", [
    ({}, ["a.csv", "b.csv", "c.csv"]),
    ({"labels": ["raw"]}, ["a.csv", "b.csv"]),
    ({"labels": ["raw", "QC-passed"]}, ["a.csv"]),
    ({"tags": ["height_m=80.5"]}, ["a.csv"]),
    ({"tags": ["instrument=anemometer"]}, ["a.csv"]),
    ({"tags": ["flag=true"]}, ["b.csv"]),
    ({"tags": ["flag"]}, ["b.csv"]),
    ({"tags": ["height_m", "instrument=lidar"]}, ["b.csv"]),
    ({"since": "2024-03-01"}, ["b.csv"]),
    ({"until": "1704067200"}, ["a.csv"]),
    ({"since": "1704067200", "until": "2024-06-01T00:00:00Z", "labels": ["raw"]}, ["a.csv", "b.csv"]),
])
def test_find_matches_every_condition(wind, run, conditions, expected):
    status, out, _ = run(wind, "gs://bk/wind/", **conditions)
    assert status == 0 and out.splitlines() == [f"gs://bk/wind/{name}" for name in expected]


def test_find_says_nothing_and_exits_1_when_nothing_matches(wind, run):
    assert run(wind, "gs://bk/wind", labels=["absent"]) == (1, "", "")


@pytest.mark.parametrize("args, message", [
    ({"labels": ["Bad Label!"]}, "--label"), ({"tags": ["Bad=1"]}, "--tag 'Bad=1'"),
    ({"since": "yesterday"}, "--since 'yesterday'"), ({"datasets": True, "since": "1"}, "datasets have no timestamp"),
])
def test_find_bad_arguments_exit_2_with_one_line(wind, run, args, message):
    status, out, err = run(wind, "gs://bk/wind", **args)
    assert status == 2 and out == "" and message in err and err.count("\n") == 1


def test_find_print0_and_json(wind, run):
    status, out, _ = run(wind, "gs://bk/wind", labels=["raw"], print0=True)
    assert status == 0 and out == "gs://bk/wind/a.csv\0gs://bk/wind/b.csv\0"
    status, out, _ = run(wind, "gs://bk/wind", tags=["instrument=anemometer"], as_json=True)
    (line,) = [json.loads(text) for text in out.splitlines()]
    assert line["path"] == "gs://bk/wind/a.csv" and line["size"] == 1 and len(line["id"]) == 36
    assert line["tags"] == {"height_m": 80.5, "instrument": "anemometer"}
    assert line["labels"] == ["qc-passed", "raw"] and line["timestamp"] == 1704067200.0


def test_find_datasets_matches_their_records(wind, run):
    assert run(wind, "gs://bk", datasets=True)[:2] == (0, "gs://bk/other\ngs://bk/wind\n")
    status, out, _ = run(wind, "gs://bk", datasets=True, labels=["wind"], tags=["site=north"], as_json=True)
    assert status == 0 and json.loads(out) == {"path": "gs://bk/wind", "id": ID, "name": "example",
                                               "tags": {"site": "north"}, "labels": ["wind"]}


def test_find_of_one_object_costs_one_list_request(wind, run):
    wind.reset_calls()
    assert run(wind, "gs://bk/wind/a.csv", labels=["raw"])[:2] == (0, "gs://bk/wind/a.csv\n")
    assert dict(wind.calls) == {"list": 2}  # the directory guess, then the object itself


# --- manifest ------------------------------------------------------------------------------------


def test_a_manifest_of_2500_files_costs_3_list_requests_and_one_read(big, monkeypatch, capsys):
    monkeypatch.setattr(find.Place, "open_bucket", lambda place: big)
    assert find.run_manifest(["gs://bk/ds/"]) == 0
    assert dict(big.calls) == {"list": 3, "read": 1}
    manifest = json.loads(capsys.readouterr().out)
    dataset = manifest["datasets"]["example"]
    assert (dataset["id"], dataset["path"], dataset["labels"]) == (ID, "gs://bk/ds", ["a", "b"])
    first = dataset["files"][0]
    assert first["path"] == first["cloud_path"] == "gs://bk/ds/00/f0000.csv" and first["ignore_stored_metadata"]
    assert first["tags"] == {"n": 0} and first["labels"] == ["raw"] and first["_cloud_metadata"]["size"] == 4
    assert first["timestamp"] == {"_type": "datetime", "value": "2023-11-14T22:13:20+00:00"}
    assert len(dataset["files"]) == 2500


def test_a_bad_manifest_path_is_one_line_and_status_2(bucket, monkeypatch, capsys):
    monkeypatch.setattr(find.Place, "open_bucket", lambda place: bucket)
    assert find.run_manifest(["gs://"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("octuefs manifest: error: 'gs://' names no bucket") and err.count("\n") == 1
