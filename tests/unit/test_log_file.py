"""The daemon's log names the mount's files: it is created private (0600) whatever the umask."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from octuefs.cli import configure_logging


@pytest.fixture
def log_to(monkeypatch):
    """``log_to(path)``: configure_logging as ``octuefs mount -f --log-file path`` does, under the
    usual umask 022; the handler is closed and the root logger restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    old_umask = os.umask(0o022)

    def log_to(path) -> None:
        configure_logging(1, str(path))
        logging.getLogger("octuefs.test").warning("opened %s", "secret/results.csv")
        for handler in root.handlers:
            handler.flush()

    try:
        yield log_to
    finally:
        os.umask(old_umask)
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = saved


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_log_file_is_0600_under_umask_022(tmp_path, log_to):
    log_to(tmp_path / "octuefs.log")
    assert mode(tmp_path / "octuefs.log") == 0o600
    assert "secret/results.csv" in (tmp_path / "octuefs.log").read_text()


def test_a_world_readable_log_left_by_an_older_version_stops_being_so_and_keeps_its_lines(tmp_path, log_to):
    log = tmp_path / "octuefs.log"
    log.write_text("an earlier run\n")
    log.chmod(0o644)
    log_to(log)
    assert mode(log) == 0o640
    assert log.read_text().startswith("an earlier run\n")


def test_a_log_file_someone_shared_with_a_group_keeps_it(tmp_path, log_to):
    log = tmp_path / "octuefs.log"
    log.write_text("")
    log.chmod(0o640)
    log_to(log)
    assert mode(log) == 0o640
