"""Review 2, findings 7-10: the fixes' own edges (the findings' tests are in test_review2.py)."""

from __future__ import annotations

import pytest

import octuefs.octue.datafile as datafile_module
from octuefs import Datafile
from octuefs.errors import DirectoryNotEmpty
from octuefs.storage.fake import FakeBucket
from tests.unit.test_review_findings import make_fs


@pytest.fixture
def bucket():
    return FakeBucket("fixb")


@pytest.fixture
def fs(bucket, tmp_path):
    fs = make_fs(bucket, tmp_path)
    yield fs
    fs.uploader.shutdown(drain=False)


# --- finding 8: a Datafile is never sent to a name no file can have ---------------------------


@pytest.mark.parametrize("url", ["gs://fixb/results/", "gs://fixb/", "gs://fixb//x.csv", "gs://fixb/a//x.csv",
                                 "gs://fixb/a/../x.csv", "gs://fixb/./x.csv"])
def test_a_datafile_is_not_sent_to_a_name_the_mount_cannot_show_as_a_file(bucket, monkeypatch, tmp_path, url):
    monkeypatch.setattr(datafile_module, "bucket_factory", lambda name, project: bucket)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_bytes(b"a\n")
    with pytest.raises(ValueError, match="gs://fixb/"):
        Datafile("data.csv").to_cloud(url)
    with pytest.raises(ValueError):
        Datafile("data.csv").to_cloud(cloud_path=url)
    with pytest.raises(ValueError):
        Datafile(url, mode="w")
    assert bucket.objects() == {}


def test_a_datafile_is_not_sent_to_a_directory_given_as_bucket_and_path(bucket, monkeypatch, tmp_path):
    monkeypatch.setattr(datafile_module, "bucket_factory", lambda name, project: bucket)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_bytes(b"a\n")
    with pytest.raises(ValueError, match="directory"):
        Datafile("data.csv").to_cloud("project", "fixb", "results/")
    with pytest.raises(ValueError, match="directory"):
        Datafile.from_cloud("project", "fixb", "results/", mode="w")
    assert bucket.objects() == {}
    assert Datafile("data.csv").to_cloud("project", "fixb", "results/data.csv") == "gs://fixb/results/data.csv"


# --- finding 8: rmdir deletes only the empty marker it saw ----------------------------------


def test_rmdir_still_removes_an_empty_directory(fs, bucket):
    fs.mkdir("/d")
    fs.rmdir("/d")
    assert "d/" not in bucket.objects()


def test_rmdir_does_not_delete_a_marker_replaced_while_it_looked(fs, bucket):
    """Another machine writes data to "d/" between rmdir's listing and its delete."""
    other = FakeBucket(server=bucket.server)
    fs.mkdir("/d")
    real = bucket.list_page

    def list_then_they_write(prefix, *args, **kwargs):
        page = real(prefix, *args, **kwargs)
        if prefix == "d/":
            other.upload_bytes("d/", b"their data\n", {})
        return page

    bucket.list_page = list_then_they_write
    with pytest.raises(DirectoryNotEmpty):
        fs.rmdir("/d")
    assert bucket.objects()["d/"] == b"their data\n"


# --- finding 9: the conflict log survives a torn line ---------------------------------------


def test_conflict_records_around_torn_lines_are_all_read_and_reported_once(tmp_path, caplog, monkeypatch):
    from octuefs.writeback import conflictlog
    from octuefs.writeback.journal import Journal

    synced = []
    real_fsync = conflictlog.os.fsync
    monkeypatch.setattr(conflictlog.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    journal = Journal(str(tmp_path))
    journal.note_conflict({"object": "a.csv"})
    assert synced, "a conflict record is not fsync'd"
    with open(journal.conflicts_path, "a") as f:
        f.write('{"object": "torn.csv", "the')  # a crash mid-append
    upto, unreported = journal.unreported_conflicts()
    assert [c["object"] for c in unreported] == ["a.csv"]
    journal.mark_reported(upto)
    journal.note_conflict({"object": "b.csv"})
    with open(journal.conflicts_path, "a") as f:
        f.write('[1, 2]\n"not a record"\n')  # whole lines, but no records either
    journal.note_conflict({"object": "c.csv"})
    caplog.clear()
    upto, unreported = journal.unreported_conflicts()
    assert [c["object"] for c in unreported] == ["b.csv", "c.csv"]
    assert [c["object"] for c in journal.conflicts()] == ["a.csv", "b.csv", "c.csv"]
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "conflict record" in r.getMessage()]
    assert len(warnings) == 2  # one per bad line, not one per read (the torn line was warned of before)
    journal.mark_reported(upto)
    assert journal.unreported_conflicts()[1] == []


# --- finding 10: a sync whose answer is lost never reads as "all uploaded" ----------------------


def serve_lines(path: str, lines: list[str]):
    """A stand-in daemon: answers one request on the Unix socket ``path`` with ``lines``, then hangs up."""
    import socket
    import threading

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        with conn, conn.makefile("rw") as stream:
            stream.readline()
            stream.write("".join(lines))
            stream.flush()
        server.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("lines", [
    [],  # the daemon died before answering
    ['{"done": 3, "total": 3}\n'],  # progress, then nothing: the final reply failed
    ['{"done": 3, "total": 3}\n', '{"left": 0, "conf'],  # the final reply cut short
    ['{"left": null, "conflicts": []}\n'],  # a final reply without a count
])
def test_a_sync_without_its_final_reply_is_an_error(tmp_path, monkeypatch, lines):
    from octuefs import mount as mount_module
    from octuefs.control import ControlError

    sock = str(tmp_path / "ctl.sock")
    monkeypatch.setattr(mount_module, "_require_mounted", lambda mountpoint: None)
    monkeypatch.setattr(mount_module, "socket_path", lambda mountpoint: sock)
    thread = serve_lines(sock, lines)
    with pytest.raises(ControlError):
        mount_module.sync(str(tmp_path / "mnt"), timeout=5)
    thread.join(5)


@pytest.fixture
def control(fs, tmp_path, monkeypatch):
    """A control server for ``fs``, reached by `octuefs sync` / `status` on tmp_path/mnt."""
    import logging

    from octuefs import mount as mount_module
    from octuefs.control import ControlServer

    sock = str(tmp_path / "ctl.sock")
    monkeypatch.setattr(mount_module, "_require_mounted", lambda mountpoint: None)
    monkeypatch.setattr(mount_module, "socket_path", lambda mountpoint: sock)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # cli.main configures logging: put it back after
    server = ControlServer(fs, sock)
    yield str(tmp_path / "mnt")
    server.close()
    root.handlers[:], root.level = handlers, level


def test_an_error_building_the_final_reply_reaches_the_cli_as_an_error(fs, control, monkeypatch, capsys):
    from octuefs import cli

    def broken():
        raise RuntimeError("the conflict log cannot be read")

    monkeypatch.setattr(fs.uploader.journal, "unreported_conflicts", broken)
    monkeypatch.setattr(fs.uploader, "status", broken)
    for command in ("sync", "status"):
        capsys.readouterr()
        assert cli.main([command, control]) == 1
        # (the daemon's own log of the failure goes to the same stderr here: one process)
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("octuefs:")]
        assert len(err) == 1 and err[0].startswith("octuefs: error:") and "conflict log" in err[0], err


def test_a_sync_that_fails_in_the_daemon_is_an_error_not_a_hang(fs, control, monkeypatch):
    from octuefs import mount as mount_module
    from octuefs.control import ControlError

    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fs.uploader, "sync", broken)
    with pytest.raises(ControlError, match="Input/output error"):
        mount_module.sync(control, timeout=5)


def test_a_sync_with_its_answer_says_what_is_left(fs, control):
    from octuefs import mount as mount_module

    assert mount_module.sync(control, timeout=5) == (0, [])
    assert "uploads" in mount_module.status(control)
