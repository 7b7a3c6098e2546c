"""octuefs.local.emulator.Emulator: lifecycle, snapshots (persistence), and the filesystem backend's limits.

Every server a test starts is stopped by PID at teardown, even when the test fails; the autouse
fixture ``no_stray_servers`` checks that no fake-gcs-server child of this process outlives its test.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from octuefs.errors import NotFound, PreconditionFailed
from octuefs.local.emulator import (
    SNAPSHOT_FORMAT,
    Emulator,
    SnapshotError,
    emulator_binary,
)
from octuefs.storage.base import RetryPolicy

pytestmark = pytest.mark.emulator

NO_RETRY = RetryPolicy(deadline=0)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def our_servers() -> set[int]:
    """Live fake-gcs-server processes whose parent is this process: servers this session started."""
    binary = os.path.realpath(emulator_binary())
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            if int(ppid) == os.getpid() and state != "Z" and os.path.realpath(f"/proc/{entry}/exe") == binary:
                found.add(int(entry))
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return found


@pytest.fixture(autouse=True)
def no_stray_servers():
    before = our_servers()
    yield
    stray = our_servers() - before
    for pid in stray:  # children of this process, so ours: end them, then fail
        os.kill(pid, signal.SIGKILL)
    assert not stray, f"fake-gcs-server processes left running: {sorted(stray)}"


@pytest.fixture
def start(tmp_path):
    """``start(data_dir=tmp_path/"data", **kwargs)``: a started Emulator, stopped at teardown."""
    servers = []

    def start(data_dir=tmp_path / "data", **kwargs):
        kwargs.setdefault("kill_with_parent", True)
        kwargs.setdefault("snapshot_interval", 0)
        server = Emulator(data_dir=data_dir, **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def bucket_on(server: Emulator, name: str):
    from octuefs.storage.gcs import GCSBucket

    server.create_bucket(name)
    return GCSBucket(name, retry=NO_RETRY, endpoint=server.url)


def restart(server: Emulator) -> Emulator:
    server.stop()
    return server.start()  # same data_dir, same port


# --- raw JSON API, to see exactly what the server holds -----------------------------------------


def raw_upload(server: Emulator, bucket: str, name: str, data: bytes, **fields) -> dict:
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{json.dumps({'name': name, **fields})}\r\n--{boundary}\r\n"
    if "contentType" in fields:
        head += f"Content-Type: {fields['contentType']}\r\n"
    body = (head + "\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        f"{server.url}/upload/storage/v1/b/{bucket}/o?uploadType=multipart",
        data=body,
        headers={"Content-Type": f"multipart/related; boundary={boundary}"},
    )
    with _OPENER.open(req, timeout=10) as resp:
        return json.load(resp)


KEPT = ("size", "md5Hash", "crc32c", "contentType", "contentEncoding", "contentDisposition", "contentLanguage",
        "cacheControl", "customTime", "storageClass", "metadata")  # fmt: skip


def raw_state(server: Emulator) -> dict:
    """{bucket: {name: (kept fields, bytes as stored)}} for every bucket on the server."""
    state = {}
    for bucket in server.list_buckets():
        with _OPENER.open(f"{server.url}/storage/v1/b/{bucket}/o?maxResults=100000", timeout=10) as resp:
            items = json.load(resp).get("items", [])
        state[bucket] = {}
        for item in items:
            url = f"{server.url}/download/storage/v1/b/{bucket}/o/{urllib.parse.quote(item['name'], safe='')}?alt=media"
            req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})  # bytes as stored
            with _OPENER.open(req, timeout=10) as resp:
                data = resp.read()
            state[bucket][item["name"]] = ({k: item.get(k) for k in KEPT}, data)
    return state


def manifest(server: Emulator) -> dict:
    return json.loads((server.data_dir / "snapshot" / "manifest.json").read_text())


# --- lifecycle ------------------------------------------------------------------------------------


def test_start_stop_and_facts(tmp_path):
    env_before = dict(os.environ)
    server = Emulator()
    with server:
        assert server.running and server.url == f"http://127.0.0.1:{server.port}"
        assert server.env() == {"STORAGE_EMULATOR_HOST": server.url}
        assert pid_alive(server.pid) and not server.persistent
        pid = server.pid
        server.create_bucket("twice")
        server.create_bucket("twice")  # idempotent
        assert "twice" in server.list_buckets()
        assert dict(os.environ) == env_before  # the emulator never touches os.environ
        with pytest.raises(RuntimeError, match="data_dir"):
            server.snapshot()
    assert not pid_alive(pid) and server.pid is None
    server.stop()  # idempotent


def test_stopped_by_pid_when_the_body_fails(tmp_path):
    server = Emulator(data_dir=tmp_path / "data", kill_with_parent=True)
    with pytest.raises(ZeroDivisionError), server:
        pid = server.pid
        1 / 0
    assert not pid_alive(pid)


def test_binds_only_to_loopback(start):
    server = start()
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    local = [row[1] for row in rows if row[3] == "0A" and int(row[1].split(":")[1], 16) == server.port]
    assert local == ["0100007F:%04X" % server.port]


def test_open_bucket_with_an_explicit_endpoint(start, monkeypatch):
    from octuefs.storage import open_bucket

    server = start(data_dir=None)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")  # endpoint wins
    server.create_bucket("explicit")
    bucket = open_bucket("explicit", endpoint=server.url)
    assert bucket.upload_bytes("x", b"1", {"k": "v"}, if_generation_match=0).metadata == {"k": "v"}
    assert bucket.read_range("x", 0, 1) == b"1"


def test_start_failure_reports_the_servers_output(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        server = Emulator(port=s.getsockname()[1])
        with pytest.raises(RuntimeError, match="in use"):
            server.start(timeout=5)
    assert server.pid is None


def test_bad_data_dir_fails_clearly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises((RuntimeError, OSError)):
        Emulator(data_dir=blocker).start(timeout=5)
    with pytest.raises(ValueError):
        Emulator(backend="filesystem")  # needs a data_dir


def test_one_emulator_per_data_dir(start, tmp_path):
    first = start()
    with pytest.raises(RuntimeError, match=f"in use by another emulator \\(pid {os.getpid()}\\)"):
        Emulator(data_dir=first.data_dir).start()
    first.stop()
    start()  # the lock went with the first


# --- persistence ----------------------------------------------------------------------------------


def test_data_persists_across_restarts(start):
    server = start()
    bucket = bucket_on(server, "keep")
    written = bucket.upload_bytes("dir/file.txt", b"persisted", {"octue__id": '"1"'})
    restart(server)
    assert bucket.stat("dir/file.txt").metadata == written.metadata
    assert bucket.read_range("dir/file.txt", 0, 100) == b"persisted"
    assert (server.data_dir / "emulator.log").exists()


def test_octue_buckets_survive_a_restart_byte_for_byte(start):
    server = start()
    bucket = bucket_on(server, "faithful")
    big = os.urandom(3 * 1024 * 1024 + 17)
    objects = {  # name: (bytes, custom metadata, content type)
        "data.csv": (b"a,b\n1,2\n", {"octue__id": '"6b0e"', "octue__tags": '{"run": 3}'}, "text/csv"),
        "empty-dir/": (b"", {"octue__labels": '["marker"]'}, None),
        "a": (b"a file", {}, "text/plain"),
        "a/x": (b"below a file of the same name", {"blank": ""}, None),
        "a/./b/../c//d": (b"dots kept as written", {}, None),
        "données/naïve ☃ 文件.txt": ("unicode ✓".encode(), {"note": "café ☕"}, "text/plain; charset=utf-8"),
        "zero-bytes": (b"", {}, "application/octet-stream"),
        "big.bin": (big, {"octue__id": '"big"'}, "application/x-hdf5"),
    }
    for name, (data, metadata, content_type) in objects.items():
        bucket.upload_bytes(name, data, metadata, content_type=content_type)
    raw_upload(server, "faithful", "log.gz", b"\x1f\x8b gzip bytes stored as is", contentType="text/plain",
               contentEncoding="gzip", cacheControl="no-cache", contentDisposition="attachment",
               contentLanguage="en", customTime="2024-05-01T12:00:00Z", metadata={"k": "v"})  # fmt: skip
    server.create_bucket("empty-bucket")
    before = raw_state(server)
    assert set(before["faithful"]) == {*objects, "log.gz"}

    restart(server)
    assert raw_state(server) == before
    for name, (data, metadata, _type) in objects.items():  # and as octuefs reads them
        assert dict(bucket.stat(name).metadata) == metadata
    assert bucket.stat("empty-dir/").is_dir_marker

    snapshot = server.data_dir / "snapshot"
    for path in [snapshot, *snapshot.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    assert manifest(server)["format"] == SNAPSHOT_FORMAT
    blobs = list((snapshot / "blobs").iterdir())
    assert len(blobs) == len(objects) + 1 - 1  # two empty objects share one blob
    assert (snapshot / "blobs" / hashlib.sha256(big).hexdigest()).read_bytes() == big


def test_a_deleted_object_stays_deleted(start):
    server = start()
    bucket = bucket_on(server, "deletions")
    bucket.upload_bytes("keep", b"1")
    bucket.upload_bytes("gone", b"2")
    restart(server)
    bucket.delete("gone")
    restart(server)
    assert [o.name for o in bucket.list_all(delimiter=None)[0]] == ["keep"]
    with pytest.raises(NotFound):
        bucket.stat("gone")


def test_generations_and_metagenerations_survive_a_restart(start):
    server = start()
    bucket = bucket_on(server, "stable")
    one = bucket.upload_bytes("one", b"first")
    two = bucket.patch_metadata(bucket.upload_bytes("two", b"second").name, {"octue__id": '"2"'})
    assert two.metageneration == 2  # a patch moves the metageneration, as on GCS
    restart(server)
    assert (bucket.stat("one").generation, bucket.stat("one").metageneration) == (one.generation, 1)
    assert (bucket.stat("two").generation, bucket.stat("two").metageneration) == (two.generation, 2)
    assert bucket.read_range("two", 0, 100, generation=two.generation) == b"second"
    replaced = bucket.upload_bytes("one", b"again", if_generation_match=one.generation)  # lands: no conflict
    with pytest.raises(PreconditionFailed):
        bucket.upload_bytes("one", b"stale", if_generation_match=one.generation)
    with pytest.raises(PreconditionFailed):
        bucket.patch_metadata("two", {"k": "v"}, if_metageneration_match=1)
    assert bucket.read_range("one", 0, 100) == b"again" and bucket.stat("one").generation == replaced.generation


def test_an_acknowledged_upload_survives_kill_9_at_once(start, tmp_path):
    data_dir = tmp_path / "data"
    owner = subprocess.Popen([sys.executable, "-c", CRASHING_OWNER, str(data_dir), "3600"], stdout=subprocess.PIPE, text=True)
    server_pid = None
    try:
        server_pid, url = owner.stdout.readline().split()
        server_pid = int(server_pid)
        from octuefs.storage.gcs import GCSBucket

        info = GCSBucket("crash", retry=NO_RETRY, endpoint=url).upload_bytes("now.txt", b"acknowledged", {"k": "v"})
        owner.kill()  # no snapshot was taken (interval one hour): only the journal has it
        owner.wait(5)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(5)
        if server_pid is not None and pid_alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)  # started by our child for this test
    server = start(data_dir)
    bucket = bucket_on(server, "crash")
    assert bucket.read_range("now.txt", 0, 100) == b"acknowledged"
    assert (bucket.stat("now.txt").metadata, bucket.stat("now.txt").generation) == ({"k": "v"}, info.generation)


def test_snapshots_under_concurrent_writes_are_consistent(start):
    import threading

    server = start()
    bucket = bucket_on(server, "busy")
    stop = threading.Event()

    def churn(seed: int) -> None:  # replace and delete a few names as fast as possible
        for i in itertools.count():
            if stop.is_set():
                return
            name = f"o{(i * 7 + seed) % 5}"
            if i % 4 == 3:
                with contextlib.suppress(NotFound):
                    bucket.delete(name)
            else:
                bucket.upload_bytes(name, os.urandom(1000 + i % 3000), {"i": str(i)})

    writers = [threading.Thread(target=churn, args=(seed,)) for seed in range(3)]
    for w in writers:
        w.start()
    try:
        for _ in range(10):
            server.snapshot()
            for entry in manifest(server)["buckets"]["busy"]:  # every entry names its own bytes
                data = (server.data_dir / "snapshot" / "blobs" / entry["blob"]).read_bytes()
                assert base64.b64encode(hashlib.md5(data).digest()).decode() == entry["md5Hash"]
    finally:
        stop.set()
        for w in writers:
            w.join()
    before = raw_state(server)
    restart(server)
    assert raw_state(server) == before


CRASHING_OWNER = textwrap.dedent("""
    import sys, time
    from octuefs.local.emulator import Emulator
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1
    server = Emulator(sys.argv[1], snapshot_interval=interval, snapshot_min_journal=0, kill_with_parent=True).start()
    server.create_bucket("crash")
    print(server.pid, server.url, flush=True)
    time.sleep(60)
""")


def test_periodic_snapshots_bound_the_loss_when_the_owner_is_killed(start, tmp_path):
    data_dir = tmp_path / "data"
    owner = subprocess.Popen([sys.executable, "-c", CRASHING_OWNER, str(data_dir)], stdout=subprocess.PIPE, text=True)
    server_pid = None
    try:
        server_pid, url = owner.stdout.readline().split()
        server_pid = int(server_pid)
        from octuefs.storage.gcs import GCSBucket

        GCSBucket("crash", retry=NO_RETRY, endpoint=url).upload_bytes("late.txt", b"after start", {"k": "v"})
        deadline = time.monotonic() + 5
        while not any(e["name"] == "late.txt" for e in _manifest_entries(data_dir, "crash")):
            assert time.monotonic() < deadline, "no periodic snapshot within 5 s"
            time.sleep(0.05)
        owner.kill()  # kill -9: no stop(), no final snapshot; the kernel SIGTERMs the server
        owner.wait(5)
        deadline = time.monotonic() + 5
        while pid_alive(server_pid):
            assert time.monotonic() < deadline, "the server outlived its owner"
            time.sleep(0.05)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(5)
        if server_pid is not None and pid_alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)  # started by our child for this test
    server = start(data_dir)
    bucket = bucket_on(server, "crash")
    assert bucket.read_range("late.txt", 0, 100) == b"after start"
    assert bucket.stat("late.txt").metadata == {"k": "v"}


def _manifest_entries(data_dir, bucket: str) -> list[dict]:
    try:
        return json.loads((data_dir / "snapshot" / "manifest.json").read_text())["buckets"].get(bucket, [])
    except (FileNotFoundError, ValueError):
        return []


def test_leftovers_of_an_interrupted_snapshot_are_ignored(start):
    server = start()
    bucket_on(server, "crashy").upload_bytes("good.txt", b"committed", {"k": "v"})
    server.stop()
    snapshot = server.data_dir / "snapshot"
    committed = (snapshot / "manifest.json").read_bytes()
    # what a crash in the middle of a snapshot leaves: a half-written manifest and blob, and a
    # complete blob that no committed manifest names yet
    (snapshot / "manifest.json.tmp-crashed").write_text('{"format": "' + SNAPSHOT_FORMAT + '", "buckets": {"cra')
    (snapshot / "blobs" / "blob.tmp-crashed").write_bytes(b"half of some")
    orphan = snapshot / "blobs" / hashlib.sha256(b"uncommitted").hexdigest()
    orphan.write_bytes(b"uncommitted")

    server.start()
    state = raw_state(server)
    assert {name: data for name, (_fields, data) in state["crashy"].items()} == {"good.txt": b"committed"}
    remaining = sorted(p.name for p in snapshot.rglob("*"))
    assert remaining == sorted(["blobs", "manifest.json", hashlib.sha256(b"committed").hexdigest()])
    assert (snapshot / "manifest.json").read_bytes() == committed


def _drop_a_blob(snapshot):
    next((snapshot / "blobs").iterdir()).unlink()


def _truncate_the_manifest(snapshot):
    path = snapshot / "manifest.json"
    path.write_bytes(path.read_bytes()[:40])


def _alter_a_blob(snapshot):  # same size, other bytes: found by the MD5 check while restoring
    blob = next((snapshot / "blobs").iterdir())
    blob.write_bytes(b"X" * blob.stat().st_size)


@pytest.mark.parametrize("damage", [_drop_a_blob, _truncate_the_manifest, _alter_a_blob])
def test_a_damaged_snapshot_stops_start_and_is_kept(start, damage):
    server = start()
    bucket_on(server, "damaged").upload_bytes("x", b"precious bytes")
    server.stop()
    snapshot = server.data_dir / "snapshot"
    damage(snapshot)
    files = {p: p.read_bytes() for p in snapshot.rglob("*") if p.is_file()}
    with pytest.raises(SnapshotError, match="damaged.*move"):
        server.start()
    assert server.pid is None
    assert {p: p.read_bytes() for p in snapshot.rglob("*") if p.is_file()} == files  # nothing overwritten


def test_buckets_of_the_old_filesystem_backend_are_imported(start, tmp_path):
    old = start(backend="filesystem")
    bucket_on(old, "legacy").upload_bytes("dir/old.txt", b"from before", {"octue__id": '"7"'})
    old.stop()
    server = start()
    bucket = bucket_on(server, "legacy")
    assert bucket.read_range("dir/old.txt", 0, 100) == b"from before"
    assert bucket.stat("dir/old.txt").metadata == {"octue__id": '"7"'}
    assert (server.data_dir / "buckets").is_dir()  # left for the user to delete


def test_restoring_a_thousand_small_objects_takes_seconds(start, tmp_path):
    import google_crc32c

    data = b"a small object\n"
    snapshot = tmp_path / "data" / "snapshot"
    (snapshot / "blobs").mkdir(parents=True)
    sha = hashlib.sha256(data).hexdigest()
    (snapshot / "blobs" / sha).write_bytes(data)
    entry = {
        "blob": sha,
        "size": len(data),
        "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
        "crc32c": base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode(),
        "contentType": "text/plain",
    }
    objects = [{"name": f"d{i % 10}/f{i}.txt", "metadata": {"octue__id": f'"{i}"'}, **entry} for i in range(1000)]
    (snapshot / "manifest.json").write_text(json.dumps({"format": SNAPSHOT_FORMAT, "buckets": {"many": objects}}))

    began = time.monotonic()
    server = start()
    took = time.monotonic() - began
    assert took < 5, f"restoring 1000 objects took {took:.1f}s"
    bucket = bucket_on(server, "many")
    assert len(bucket.list_all(delimiter=None)[0]) == 1000
    assert bucket.stat("d7/f777.txt").metadata == {"octue__id": '"777"'}
    assert server.snapshot().downloaded == 0  # the restored bytes are known by their checksums


# --- the filesystem backend's limits (why snapshots exist) ----------------------------------------


@pytest.fixture
def fs_backend(start):
    return start(backend="filesystem")


@pytest.mark.xfail(strict=True, reason="filesystem backend drops directory markers (objects ending in '/')")
def test_filesystem_backend_keeps_directory_markers(fs_backend):
    bucket = bucket_on(fs_backend, "markers")
    bucket.upload_bytes("empty-dir/", b"")
    assert bucket.stat("empty-dir/").is_dir_marker


@pytest.mark.xfail(strict=True, reason="filesystem backend cannot hold both 'a' and 'a/x' (500 from the server)")
def test_filesystem_backend_file_and_prefix_of_the_same_name(fs_backend):
    bucket = bucket_on(fs_backend, "clash")
    bucket.upload_bytes("a", b"file")
    bucket.upload_bytes("a/x", b"below")


@pytest.mark.xfail(strict=True, reason="filesystem backend rewrites './', '../' and '//' in names")
def test_filesystem_backend_keeps_names_as_written(fs_backend):
    bucket = bucket_on(fs_backend, "dots")
    bucket.upload_bytes("a/./b/../c//d", b"x")
    assert [o.name for o in bucket.list_all(delimiter=None)[0]] == ["a/./b/../c//d"]


def test_another_user_is_refused_by_the_persistent_front(start):
    import shutil

    if os.getuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to connect as another user")
    server = start()
    code = "import sys, urllib.request\ntry:\n urllib.request.urlopen(sys.argv[1] + '/storage/v1/b', timeout=5)\n print('served')\nexcept Exception:\n print('refused')"
    other = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code,
                            server.url], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert other.stdout.strip() == "refused", other.stderr


# --- the journal under faults: what a failed write, a crash image and a torn record leave ------------


def crash_image(server: Emulator, tmp_path) -> Emulator:
    """An Emulator on a copy of ``server``'s data_dir as a kill -9 would leave it (not stopped)."""
    import shutil

    image = tmp_path / f"image-{uuid.uuid4().hex[:8]}"
    shutil.copytree(server.data_dir, image, ignore=shutil.ignore_patterns("lock"))
    return Emulator(data_dir=image, kill_with_parent=True, snapshot_interval=0)


def _status(call) -> int:
    try:
        call()
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def _get(server: Emulator, bucket: str, name: str) -> bytes:
    with _OPENER.open(f"{server.url}/download/storage/v1/b/{bucket}/o/{name}?alt=media", timeout=10) as resp:
        return resp.read()


def _delete(server: Emulator, bucket: str, name: str) -> None:
    req = urllib.request.Request(f"{server.url}/storage/v1/b/{bucket}/o/{name}", method="DELETE")
    with _OPENER.open(req, timeout=10) as resp:
        resp.read()


@pytest.mark.parametrize("fault", ["torn write", "ENOSPC", "fdatasync EIO"])
@pytest.mark.parametrize("op", ["upload", "delete"])
def test_a_journal_write_that_fails_is_never_acknowledged_and_fences_the_front(start, tmp_path, monkeypatch, fault, op):
    import errno

    server = start()
    server.create_bucket("faults")
    raw_upload(server, "faults", "a", b"version 1")
    segment, armed = server._journal._segment, [True]
    real_write, real_sync = os.write, os.fdatasync

    def write(fd, data):
        if fd == segment and armed and fault != "fdatasync EIO":
            armed.clear()
            if fault == "ENOSPC":
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data[: len(data) // 2])  # a full disk: part of the line, and its length
        return real_write(fd, data)

    def fdatasync(fd):
        if fd == segment and armed and fault == "fdatasync EIO":
            armed.clear()
            raise OSError(errno.EIO, "Input/output error")
        return real_sync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    mutate = (lambda: raw_upload(server, "faults", "a", b"version 2")) if op == "upload" else (lambda: _delete(server, "faults", "a"))
    assert _status(mutate) >= 500, "a change the journal could not keep was acknowledged"
    # the server may hold that change and the journal not: nothing is served until a restart
    assert _status(lambda: _get(server, "faults", "a")) == 503
    assert _status(lambda: raw_upload(server, "faults", "b", b"later")) == 503
    monkeypatch.undo()

    allowed = {b"version 1"}  # a failed fdatasync may have kept the record all the same
    if fault == "fdatasync EIO":
        allowed.add(b"version 2" if op == "upload" else None)
    image = crash_image(server, tmp_path).start()  # kill -9 now: the journal must replay
    try:
        state = {n: v[1] for n, v in raw_state(image)["faults"].items()}
        assert state.get("a") in allowed and "b" not in state
    finally:
        image.stop()
    restart(server)  # and a clean restart serves again
    raw_upload(server, "faults", "b", b"later")
    assert {n: v[1] for n, v in raw_state(server)["faults"].items()}.get("a") in allowed


def test_a_torn_last_record_is_ignored_and_a_damaged_one_inside_stops_start(start, tmp_path):
    server = start()
    server.create_bucket("torn")
    raw_upload(server, "torn", "kept", b"acknowledged")
    segment = server._journal._segment
    os.write(segment, b'{"op":"put","b":"torn","e":{"name":"half')  # the crash came in the middle of a record
    image = crash_image(server, tmp_path).start()
    try:
        assert {n: v[1] for n, v in raw_state(image)["torn"].items()} == {"kept": b"acknowledged"}
    finally:
        image.stop()
    os.write(segment, b'\n{"op":"del","b":"torn","n":"kept"}\n')  # a damaged record with records after it
    damaged = crash_image(server, tmp_path)
    with pytest.raises(SnapshotError, match="damaged"):
        damaged.start()
    os.ftruncate(segment, server._journal.appended)  # leave the running server's journal whole


def test_a_resumable_upload_is_journaled_and_checks_its_precondition(start, tmp_path):
    from octuefs.storage.gcswrites import MULTIPART_MAX

    server = start()
    bucket = bucket_on(server, "big")
    data = os.urandom(MULTIPART_MAX + 1000)
    info = bucket.upload_bytes("large.bin", data, if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.upload_bytes("large.bin", b"stale" * 1000, if_generation_match=0)
    image = crash_image(server, tmp_path).start()
    try:
        again = bucket_on(image, "big")
        assert again.read_range("large.bin", 0, len(data) + 1) == data
        assert again.stat("large.bin").generation == info.generation
    finally:
        image.stop()


def test_concurrent_conditional_uploads_of_one_object_have_one_winner_and_it_is_kept(start, tmp_path):
    import concurrent.futures

    server = start()
    bucket = bucket_on(server, "race")
    first = bucket.upload_bytes("x", b"base")

    def attempt(i: int):
        try:
            return i, bucket.upload_bytes("x", f"writer {i}".encode(), if_generation_match=first.generation)
        except PreconditionFailed:
            return i, None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = [r for r in pool.map(attempt, range(16))]
    winners = [(i, info) for i, info in results if info is not None]
    assert len(winners) == 1, winners
    (i, info), = winners
    image = crash_image(server, tmp_path).start()
    try:
        again = bucket_on(image, "race")
        assert again.read_range("x", 0, 100) == f"writer {i}".encode()
        assert again.stat("x").generation == info.generation
    finally:
        image.stop()
