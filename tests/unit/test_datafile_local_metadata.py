"""A local Datafile's metadata in the SDK's ``.octue`` file beside it (issue 13, part 3).

The layout is the one ``octue`` 0.69.1 writes (``Datafile.update_local_metadata``,
``octue/utils/metadata.py``); tests/integration/test_sdk_parity.py checks it against the SDK itself.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import pathlib

import pytest

from octuefs import Datafile
from octuefs.octue.local_metadata import LocalMetadataError

ID = "02464c6f-0070-50ca-8a9b-ba1af5456601"

# What octue 0.69.1 wrote for `with Datafile(path="other.csv", tags=..., labels="x y", timestamp=5, mode="w")`
# (the timestamp is naive: the SDK turns POSIX seconds into local time without an offset).
SDK_FILE = """{
    "datafiles": {
        "other.csv": {
            "id": "02464c6f-0070-50ca-8a9b-ba1af5456601",
            "timestamp": {
                "_type": "datetime",
                "value": "1970-01-01T00:00:05"
            },
            "tags": {
                "a": 1,
                "t": {
                    "_type": "datetime",
                    "value": "2024-01-01T00:00:00"
                }
            },
            "labels": {
                "_type": "set",
                "items": [
                    "x",
                    "y"
                ]
            },
            "sdk_version": "0.69.1"
        }
    }
}
"""


@pytest.fixture(autouse=True)
def in_tmp_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


def stored() -> dict:
    return json.loads(pathlib.Path(".octue").read_text())


def test_metadata_written_with_the_file_survives_a_new_datafile():
    with Datafile(path="other.csv", tags={"height_m": 80}, labels="a b", mode="w") as (datafile, f):
        f.write("hello")
    again = Datafile(path="other.csv")
    assert again.id == datafile.id
    assert again.tags == {"height_m": 80} and again.labels == {"a", "b"}
    assert pathlib.Path("other.csv").read_text() == "hello"


def test_the_file_is_in_the_sdk_layout():
    timestamp = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    with Datafile(path="other.csv", tags={"n": 1}, labels="b a", timestamp=timestamp, mode="w") as (datafile, f):
        f.write("x")
    text = pathlib.Path(".octue").read_text()
    assert text.startswith('{\n    "datafiles": {\n        "other.csv": {\n') and text.endswith("}\n")
    record = stored()["datafiles"]["other.csv"]
    assert record["id"] == datafile.id
    assert record["timestamp"] == {"_type": "datetime", "value": "2024-01-01T00:00:00+00:00"}
    assert record["tags"] == {"n": 1}
    assert record["labels"] == {"_type": "set", "items": ["a", "b"]}
    assert record["sdk_version"] == "0.69.1"


def test_reads_what_the_sdk_wrote():
    pathlib.Path(".octue").write_text(SDK_FILE)
    pathlib.Path("other.csv").write_text("hello")
    datafile = Datafile(path="other.csv")
    assert datafile.id == ID
    assert datafile.tags == {"a": 1, "t": dt.datetime(2024, 1, 1)}
    assert datafile.labels == {"x", "y"}
    assert datafile.timestamp == dt.datetime(1970, 1, 1, 0, 0, 5)


def test_other_records_and_the_dataset_are_kept():
    data = json.loads(SDK_FILE)
    data["dataset"] = {"id": ID, "name": "d", "tags": {}, "labels": ["l"]}
    data["datafiles"]["other.csv"]["future_key"] = 1
    pathlib.Path(".octue").write_text(json.dumps(data, indent=4) + "\n")
    with Datafile(path="new.csv", labels="new", mode="w") as (_, f):
        f.write("x")
    datafile = Datafile(path="other.csv")
    datafile.labels.add("z")
    datafile.update_local_metadata()
    after = stored()
    assert after["dataset"] == data["dataset"]
    assert after["datafiles"]["new.csv"]["labels"] == {"_type": "set", "items": ["new"]}
    assert after["datafiles"]["other.csv"]["future_key"] == 1
    assert after["datafiles"]["other.csv"]["labels"]["items"] == ["x", "y", "z"]
    assert after["datafiles"]["other.csv"]["id"] == ID


def test_reading_without_changes_writes_nothing():
    pathlib.Path("data.csv").write_text("x")
    with Datafile(path="data.csv") as (_, f):
        f.read()
    assert not pathlib.Path(".octue").exists()
    pathlib.Path(".octue").write_text(SDK_FILE)
    before = pathlib.Path(".octue").stat().st_mtime_ns
    with Datafile(path="other.csv").open("w") as f:  # written, metadata unchanged: the record stays as it is
        f.write("y")
    assert pathlib.Path(".octue").read_text() == SDK_FILE and pathlib.Path(".octue").stat().st_mtime_ns == before


def test_a_metadata_change_in_a_read_block_is_recorded():
    pathlib.Path("data.csv").write_text("x")
    with Datafile(path="data.csv") as (datafile, f):
        f.read()
        datafile.tags = {"rows": 1}
    assert stored()["datafiles"]["data.csv"]["tags"] == {"rows": 1}


def test_update_metadata_records_a_local_datafile():
    datafile = Datafile(path="sub/data.csv", labels="raw")
    pathlib.Path("sub").mkdir()
    datafile.update_metadata()
    assert json.loads(pathlib.Path("sub/.octue").read_text())["datafiles"]["data.csv"]["id"] == datafile.id


def test_a_malformed_file_is_reported_and_not_overwritten(caplog):
    pathlib.Path(".octue").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        datafile = Datafile(path="data.csv", tags={"a": 1})
    assert "not a valid Octue metadata file" in caplog.text and datafile.tags == {"a": 1}
    with pytest.raises(LocalMetadataError, match="fix or delete it"):
        datafile.update_local_metadata()
    assert pathlib.Path(".octue").read_text() == "{not json"


def test_a_different_id_for_a_recorded_file_is_refused():
    pathlib.Path(".octue").write_text(SDK_FILE)
    with pytest.raises(ValueError, match="already has octue__id"):
        Datafile(path="other.csv", id="d6a2f4e4-9ad4-4e0e-9d8e-0a3f1bd6d5a0")


def test_a_filesystem_without_flock_still_records(monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with Datafile(path="data.csv", labels="a", mode="w") as (datafile, f):
        f.write("x")
    assert stored()["datafiles"]["data.csv"]["id"] == datafile.id


def test_an_unreadable_file_is_reported_and_read_as_no_record(caplog):
    pathlib.Path(".octue").mkdir()  # a directory where the file should be: reading it fails
    with caplog.at_level(logging.WARNING):
        datafile = Datafile(path="data.csv", labels="a")
    assert "cannot read" in caplog.text and datafile.labels == {"a"}


def test_a_block_left_by_an_exception_records_nothing_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        with pytest.raises(RuntimeError):
            with Datafile(path="data.csv", labels="a", mode="w") as (_, f):
                f.write("x")
                raise RuntimeError("stop")
    assert not pathlib.Path(".octue").exists() and "metadata was not recorded" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        with pytest.raises(RuntimeError):
            with Datafile(path="data.csv") as (_, f):  # reading, nothing to record: nothing said
                raise RuntimeError("stop")
    assert caplog.text == ""
