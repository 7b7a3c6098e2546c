"""``octuefs mount --config FILE``: TOML settings, the command line winning, one-line refusals,
``--print-config``; ``--log-format json``; systemd notifications."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tomllib

import pytest

from octuefs import configfile
from octuefs.cli import _read_config_file, build_parser, config_from_args, mount_parser


def _config(tmp_path, text: str, *argv: str):
    path = tmp_path / "octuefs.toml"
    path.write_text(text)
    args = build_parser().parse_args(["mount", "--config", str(path), *argv])
    _read_config_file(args, ["--config", str(path), *argv])
    return config_from_args(args), args


def test_the_file_sets_any_option_and_the_command_line_wins(tmp_path):
    config, _ = _config(tmp_path, """
bucket = "data/raw"
mountpoint = "/mnt/data"
list_ttl = 10
"negative-ttl" = 2
file_mode = "600"
read_only = true
cache_size = "2G"
options = ["allow_other", "stat_ttl=7"]
""", "--list-ttl", "3", "-o", "stat_ttl=9")
    assert (config.bucket, config.prefix, config.mountpoint) == ("data", "raw/", "/mnt/data")
    assert config.list_ttl == 3.0  # the command line's
    assert config.negative_ttl == 2.0 and config.file_mode == 0o600 and config.read_only
    assert config.cache_size == 2 * 1024**3
    assert config.stat_ttl == 9.0  # -o on the command line comes after the file's
    assert config.fuse_options == ("allow_other",)


def test_a_command_line_value_equal_to_its_default_still_wins(tmp_path):
    _, args = _config(tmp_path, 'bucket = "b"\nmountpoint = "/m"\nlog_format = "json"\nverbose = 2\n',
                      "--log-format", "text")
    assert args.log_format == "text" and args.verbose == 2


def test_command_line_positionals_win_and_relative_paths_are_the_files(tmp_path):
    config, _ = _config(tmp_path, 'bucket = "other"\nmountpoint = "m"\ncache_dir = "cache"\n', "mine", "/mnt/x")
    assert (config.bucket, config.mountpoint) == ("mine", "/mnt/x")
    assert config.cache_dir == str(tmp_path / "cache")


@pytest.mark.parametrize("text, needles", [
    ('cache_dri = "/x"', ["unknown key 'cache_dri'", "cache_dir"]),
    ('list_ttl = "ten"', ["list_ttl", "expected a number", '"ten"']),
    ("file_mode = 644", ["file_mode", 'like "644"']),
    ('file_mode = "9x"', ["file_mode", "octal"]),
    ("read_only = 1", ["read_only", "true or false"]),
    ('options = "allow_other"', ["options", "list of strings"]),
    ("upload_workers = 2.5", ["upload_workers", "whole number"]),
    ("list_ttl = [", ["not valid TOML"]),
])
def test_a_bad_key_or_value_is_refused_in_one_line_naming_it(tmp_path, text, needles):
    with pytest.raises(configfile.ConfigFileError) as caught:
        _config(tmp_path, 'bucket = "b"\nmountpoint = "/m"\n' + text + "\n")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "octuefs.toml") in message
    for needle in needles:
        assert needle in message


def test_a_value_the_mount_refuses_names_its_key(tmp_path):
    with pytest.raises(ValueError, match="stat_ttl"):
        _config(tmp_path, 'bucket = "b"\nmountpoint = "/m"\nstat_ttl = -1\n')


def test_without_a_bucket_or_mountpoint_anywhere_the_error_says_where_to_give_them(tmp_path):
    with pytest.raises(ValueError, match="--config"):
        _config(tmp_path, "list_ttl = 1\n")


def test_print_config_is_a_config_file_that_gives_the_same_mount(tmp_path):
    config, args = _config(tmp_path, 'bucket = "b/p"\nmountpoint = "/mnt/b"\nlist_ttl = 4\ndir_mode = "750"\n',
                           "--upload-workers", "3", "-o", "allow_other")
    printed = configfile.effective(config, args, mount_parser(), None)
    data = tomllib.loads(printed)
    assert data["list_ttl"] == 4.0 and data["upload_workers"] == 3 and data["dir_mode"] == "750"
    assert data["options"] == ["allow_other"] and data["bucket"] == "b/p"
    again, _ = _config(tmp_path, printed)
    assert again == config


def test_every_mount_option_is_a_config_key():
    keys = configfile.keys_of(mount_parser())
    for action in mount_parser()._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if long and action.dest not in ("help", "config", "print_config", "ready_fd", "foreground"):
            assert action.dest in keys, long


def test_the_command_prints_the_config_and_refuses_bad_files_in_one_line(tmp_path):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('bucket = "b"\nmountpoint = "/nonexistent/mp"\nlist_ttl = 12\n')
    bad.write_text('bucket = "b"\nmountpoint = "/m"\nlist-tl = 1\n')
    run = lambda *a: subprocess.run([sys.executable, "-m", "octuefs", *a], capture_output=True, text=True, timeout=60)
    shown = run("mount", "--config", str(good), "--print-config")
    assert shown.returncode == 0, shown.stderr
    assert tomllib.loads(shown.stdout)["list_ttl"] == 12.0
    refused = run("mount", "--config", str(bad))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert refused.stderr.startswith("octuefs: error: ") and "unknown key 'list-tl'" in refused.stderr


def test_json_log_lines_are_one_object_each_with_stable_fields(tmp_path):
    from octuefs.cli import configure_logging

    log_file = tmp_path / "octuefs.log"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(1, str(log_file), log_format="json")
        logging.getLogger("octuefs.writeback.uploads").warning("upload of %r failed (%s); retrying", "a/b\udcff.csv", "503")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("octuefs").exception("unexpected")
        for h in root.handlers:
            h.flush()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], root.level = saved
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [set(line) for line in lines] == [{"time", "level", "logger", "message", "pid"},
                                             {"time", "level", "logger", "message", "pid", "error"}]
    assert lines[0]["level"] == "WARNING" and lines[0]["logger"] == "octuefs.writeback.uploads"
    assert "a/b" in lines[0]["message"] and "503" in lines[0]["message"]
    assert lines[0]["time"].endswith("Z") and lines[0]["pid"] == os.getpid()
    assert "RuntimeError: boom" in lines[1]["error"]


def test_systemd_is_told_when_it_listens_and_nothing_happens_otherwise(tmp_path, monkeypatch):
    from octuefs import sdnotify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.notify("READY=1", "STATUS=mounted") is True
        assert sock.recv(1024) == b"READY=1\nSTATUS=mounted"
