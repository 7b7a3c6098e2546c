"""octuefs as a service: the systemd unit, a mount from a config file, and a stop (SIGTERM)
that writes out pending uploads before the daemon exits, as systemd would run it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import force_unmount, run_octuefs, wait_until

pytestmark = pytest.mark.fuse

def test_a_service_mount_from_a_config_file_writes_out_pending_uploads_on_sigterm(emulator, tmp_path):
    """What `systemctl start` then `systemctl stop` does: Type=notify hears READY=1 once the files
    are there; SIGTERM unmounts, then the daemon uploads what is pending and says STOPPING=1."""
    from urllib.parse import urlsplit

    from octuefs.storage.gcs import GCSBucket
    from tests.delayline import DelayLineProcess

    name = f"service-{uuid.uuid4().hex[:8]}"
    emulator.create_bucket(name)
    mp, cache = tmp_path / "mp", tmp_path / "cache"
    mp.mkdir()
    config = tmp_path / "data.toml"
    config.write_text(f'bucket = "{name}"\nmountpoint = "{mp}"\nlog_format = "json"\nverbose = 1\nupload_workers = 2\n')
    notify_path = str(tmp_path / "notify")
    upstream = urlsplit(emulator.url)
    # A bucket 300 ms away: the files are still being uploaded when the stop comes.
    line = DelayLineProcess((upstream.hostname, upstream.port), rtt_ms=300).start()
    files = {f"f{i:02d}.csv": f"{i},{i * i}\n".encode() for i in range(12)}
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(notify_path)
        sock.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": notify_path, "STORAGE_EMULATOR_HOST": line.url}
        daemon = subprocess.Popen([sys.executable, "-m", "octuefs", "mount", "--foreground", "--config", str(config),
                                   "--cache-dir", str(cache), "--log-file", str(tmp_path / "log")],
                                  env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            ready = sock.recv(4096).decode()
            assert ready.startswith("READY=1") and str(mp) in ready
            assert os.path.ismount(mp)
            for file, data in files.items():
                (mp / file).write_bytes(data)
            status = json.loads(run_octuefs("status", "--json", str(mp)).stdout)
            assert status["uploads"], "nothing was pending at the stop: the test proves nothing"
            daemon.send_signal(signal.SIGTERM)
            stopping = sock.recv(4096).decode()
            assert stopping.startswith("STOPPING=1")
            assert daemon.wait(timeout=120) == 0, daemon.stderr.read().decode()
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            force_unmount(mp)
            line.stop()
    assert not os.path.ismount(mp)
    bucket = GCSBucket(name)
    assert {file: bucket.read_range(file, 0, 100) for file in files} == files
    logged = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert any(line["message"].startswith("mounted ") for line in logged)
    assert any("stopped by a signal" in line["message"] for line in logged)


def test_unmount_finds_the_mountpoint_in_the_config_file(emulator, tmp_path):
    name = f"svc-unmount-{uuid.uuid4().hex[:8]}"
    emulator.create_bucket(name)
    mp = tmp_path / "mp"
    mp.mkdir()
    config = tmp_path / "m.toml"
    config.write_text(f'bucket = "{name}"\nmountpoint = "mp"\ncache_dir = "cache"\nlog_file = "octuefs.log"\n')
    try:
        run_octuefs("mount", "--config", str(config))
        assert wait_until(lambda: os.path.ismount(mp))
        (mp / "x").write_bytes(b"x")
        run_octuefs("unmount", "--config", str(config))
        assert not os.path.ismount(mp)
        assert (tmp_path / "cache" / "lock").exists() and (tmp_path / "octuefs.log").exists()
    finally:
        force_unmount(mp)


def _documented_status_fields() -> dict[str, tuple[tuple[type, ...], bool]]:
    """docs/operations.md's status table: field -> (accepted types, optional)."""
    types = {"integer": (int,), "string": (str,), "number": (int, float), "array": (list,), "object": (dict,),
             "null": (type(None),)}
    doc = (Path(__file__).resolve().parents[2] / "docs/operations.md").read_text()
    table = doc.split("<!-- status-fields:", 1)[1].split("\n\n", 1)[0]
    fields = {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            accepted = tuple(t for word in cells[1].split(" or ") for t in types[word])
            fields[cells[0].strip("`")] = (accepted, cells[2].startswith("only when"))
    return fields


def _check(where: str, obj: dict, fields: dict, prefix: str) -> None:
    mine = {name[len(prefix):]: spec for name, spec in fields.items()
            if name.startswith(prefix) and "." not in name[len(prefix):] and "[]" not in name[len(prefix):]}
    assert set(obj) <= set(mine), f"{where}: undocumented fields {sorted(set(obj) - set(mine))}"
    for name, (accepted, optional) in mine.items():
        assert name in obj or optional, f"{where}: documented field {name!r} missing"
        if name in obj:
            assert type(obj[name]) in accepted, f"{where}.{name} = {obj[name]!r}, documented as {accepted}"


def test_status_json_has_exactly_the_documented_fields(emulator, mount_factory, monkeypatch):
    """`octuefs status --json` against docs/operations.md, with an upload in flight and a conflict, so every documented part of the reply is there to be checked."""
    from octuefs.control import STATUS_STATES
    from tests.faultproxy import FaultProxy

    with FaultProxy(emulator.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        mount = mount_factory()
        mount.bucket.upload_bytes("theirs.csv", b"v1")
        with open(mount / "theirs.csv", "r+b") as f:
            f.read()
            mount.bucket.upload_bytes("theirs.csv", b"their version")  # another machine, meanwhile
            f.seek(0)
            f.write(b"mine")
        status = lambda: json.loads(run_octuefs("status", "--json", str(mount.path)).stdout)
        assert wait_until(lambda: status()["conflicts"], timeout=30)
        proxy.set_faults({"stall": 1.0}, only=("upload",))  # the upload hangs until healed: it stays listed
        (mount / "pending.csv").write_bytes(b"a,b\n")
        assert wait_until(lambda: any(r["state"] == "running" for r in status()["uploads"]), timeout=30)
        reply = status()
        proxy.set_faults({})
        proxy.heal()
        mount.sync()

    fields = _documented_status_fields()
    _check("status", reply, fields, "")
    assert reply["format"] == 1 and reply["mountpoint"] == str(mount.path) and reply["bucket"] == mount.bucket.name
    assert set(reply["totals"]) == set(STATUS_STATES) and sum(reply["totals"].values()) == len(reply["uploads"])
    for row in reply["uploads"]:
        _check("uploads[]", row, fields, "uploads[].")
    for row in reply["conflicts"]:
        _check("conflicts[]", row, fields, "conflicts[].")
    _check("cache", reply["cache"], fields, "cache.")
