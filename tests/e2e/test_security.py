"""Security: who can see the mount, how private the cache is, and that secrets stay out of logs.

* Without ``-o allow_other`` another user cannot even stat the mount (the kernel's FUSE
  check answers EACCES); with it they can, and the modes the mount shows are enforced
  (``default_permissions``), so they cannot write where the modes say they may not.
* The cache directory (the journal, sealed uploads, cached blocks, staging files, the lock,
  conflict records, the log if it lives there) is 0700 and every file in it 0600.
* A service-account key's ``private_key`` never appears in the daemon's log or output, even
  at the most verbose level and when the credentials fail.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from .conftest import run_octuefs

pytestmark = pytest.mark.fuse

NOBODY = 65534


def as_nobody(fn) -> object:
    """Run ``fn()`` in a forked child that has dropped to uid/gid nobody; return what it returns
    (JSON-able), or the errno name of the OSError it raised."""
    if os.getuid() != 0:
        pytest.skip("needs root to switch to another user")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only plain syscalls from here on, then _exit
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result = {"ok": fn()}
            except OSError as exc:
                result = {"err": errno.errorcode.get(exc.errno, str(exc.errno))}
            os.write(w, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks) or b'{"err": "child died"}')
    return result.get("ok", result.get("err"))


def test_the_mount_is_private_without_allow_other(mount_factory, public_dir):
    m = mount_factory(parent=public_dir)
    (m / "f.txt").write_bytes(b"secret data")
    assert as_nobody(lambda: os.stat(m.path).st_mode) == "EACCES"
    assert as_nobody(lambda: os.listdir(m.path)) == "EACCES"
    assert as_nobody(lambda: open(m / "f.txt", "rb").read().decode()) == "EACCES"
    assert as_nobody(lambda: os.stat(public_dir).st_mode) != "EACCES"  # the dir above is reachable


def test_allow_other_shows_the_mount_and_enforces_the_modes_shown(mount_factory, public_dir):
    m = mount_factory("-o", "allow_other", parent=public_dir)
    (m / "f.txt").write_bytes(b"shared data")
    assert stat.S_ISDIR(as_nobody(lambda: os.stat(m.path).st_mode))
    assert as_nobody(lambda: os.listdir(m.path)) == ["f.txt"]
    assert as_nobody(lambda: open(m / "f.txt", "rb").read().decode()) == "shared data"
    # Files are 644 and directories 755, owned by the mounting user: nobody may not write.
    assert as_nobody(lambda: open(m / "f.txt", "ab").write(b"x")) == "EACCES"
    assert as_nobody(lambda: open(m / "new.txt", "wb").write(b"x")) == "EACCES"
    assert as_nobody(lambda: os.unlink(m / "f.txt")) == "EACCES"
    assert as_nobody(lambda: os.setxattr(m / "f.txt", "user.octue.labels", b"x")) == "EACCES"
    m.sync()
    assert [o.name for o in m.bucket.list_all("", delimiter=None)[0]] == ["f.txt"]
    assert m.bucket.read_range("f.txt", 0, 100) == b"shared data"


def _modes(root: Path) -> dict[str, int]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            found[os.path.relpath(p, root)] = stat.S_IMODE(os.lstat(p).st_mode)
    return found


def _assert_private(cache: Path) -> dict[str, int]:
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    modes = _modes(cache)
    loose = {p: oct(mode) for p, mode in modes.items()
             if mode != (0o700 if os.path.isdir(cache / p) and not os.path.islink(cache / p) else 0o600)
             and not stat.S_ISSOCK(os.lstat(cache / p).st_mode)}
    assert not loose, f"cache entries that are not private: {loose}"
    return modes


def test_the_cache_directory_and_every_file_in_it_are_private(mount_factory, tmp_path):
    cache = tmp_path / "cache0"
    # The log in the cache directory, where it goes by default.
    m = mount_factory("--log-file", str(cache / "octuefs.log"))
    m.bucket.upload_bytes("read.bin", os.urandom(300_000))
    m.bucket.upload_bytes("conflict.csv", b"v1")
    assert len((m / "read.bin").read_bytes()) == 300_000  # cached blocks
    with open(m / "conflict.csv", "r+b") as f:  # a conflict record
        f.read()
        m.bucket.upload_bytes("conflict.csv", b"theirs")
        f.write(b"mine")
    (m / "written.txt").write_bytes(b"w" * 10_000)  # a sealed upload
    os.setxattr(m / "written.txt", "user.octue.labels", b"private")
    unclosed = open(m / "unclosed.txt", "wb")  # a staging file
    unclosed.write(b"still open")
    unclosed.flush()
    try:
        _assert_private(cache)
        m.sync()
        modes = _assert_private(cache)
    finally:
        unclosed.close()
    m.sync()
    modes.update(_assert_private(cache))
    for part in ("journal", "pending", "blocks", "staging", "lock", "conflicts.jsonl", "octuefs.log"):
        assert part in modes, f"{part} was never made, so never checked"

    # Left pending for the next mount: the journal and its data stay private too.
    run_octuefs("unmount", str(m.path))
    run_octuefs("mount", m.spec, str(m.path), "--cache-dir", str(cache), "--log-file", str(cache / "octuefs.log"))
    (m / "later.txt").write_bytes(b"later")
    _assert_private(cache)
    m.sync()


def _secret_pieces(private_key: str) -> list[str]:
    """Every 24-character run of the key's base64 body (and the body with its newlines escaped)."""
    body = "".join(line for line in private_key.splitlines() if not line.startswith("-----"))
    return [body[i:i + 24] for i in range(0, len(body) - 24, 12)] + [private_key.replace("\n", "\\n")[:80]]


def _assert_no_secret(private_key: str, **texts: str) -> None:
    for where, text in texts.items():
        leaked = [p for p in _secret_pieces(private_key) if p in text]
        assert not leaked, f"the private key appears in {where}: {leaked[0]!r}"


def test_a_service_account_key_never_reaches_the_daemon_log(mount_factory, emulator, tmp_path, monkeypatch):
    from .fake_google import FakeGoogle, new_private_key_pem, service_account_json

    private_key = new_private_key_pem()
    key_file = tmp_path / "service-account.json"
    key_file.write_text(service_account_json(private_key))
    key_file.chmod(0o600)
    with FakeGoogle(tmp_path, emulator.url) as google:
        monkeypatch.delenv("STORAGE_EMULATOR_HOST")  # real GCS, as far as octuefs can tell
        for k, v in google.env(str(key_file)).items():
            monkeypatch.setenv(k, v)
        m = mount_factory("-v")  # -vvv: google's and urllib3's debug logging too
        (m / "f.txt").write_bytes(b"data")
        os.setxattr(m / "f.txt", "user.octue.labels", b"secret-test")
        m.sync()
        assert (m / "f.txt").read_bytes() == b"data"
        result = run_octuefs("unmount", str(m.path))
        # The key was really used: a JWT signed with it was exchanged for a token, which the
        # storage requests carried; nothing tried to go anywhere else.
        assert ("oauth2.googleapis.com", "POST", "/token", "") in google.seen
        assert any(h == "storage.googleapis.com" and a.startswith("Bearer fake-access") for h, _, _, a in google.seen)
        assert not google.refused
    assert "DEBUG google" in m.log_text() or "DEBUG urllib3" in m.log_text()  # the most verbose level
    _assert_no_secret(private_key, log=m.log_text(), unmount_output=result.stdout + result.stderr)


def test_a_broken_key_fails_in_one_line_without_showing_it(emulator, tmp_path, monkeypatch):
    from .fake_google import FakeGoogle, service_account_json

    secret = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC" + "S3CR3TK3Y" * 20 + "\n-----END PRIVATE KEY-----\n"
    key_file = tmp_path / "service-account.json"
    key_file.write_text(service_account_json(secret))
    (tmp_path / "mp").mkdir()
    log = tmp_path / "octuefs.log"
    with FakeGoogle(tmp_path, emulator.url) as google:
        monkeypatch.delenv("STORAGE_EMULATOR_HOST")
        for k, v in google.env(str(key_file)).items():
            monkeypatch.setenv(k, v)
        plain = run_octuefs("mount", "some-bucket", str(tmp_path / "mp"), "--log-file", str(log),
                            check=False, timeout=60)
        verbose = run_octuefs("mount", "some-bucket", str(tmp_path / "mp"), "--log-file", str(log), "-vvv",
                              check=False, timeout=60)
        assert not google.refused
    assert plain.returncode != 0 and not os.path.ismount(tmp_path / "mp")
    assert plain.stderr.startswith("octuefs: error:") and len(plain.stderr.strip().splitlines()) == 1
    assert "credentials" in plain.stderr
    assert verbose.returncode != 0 and "DEBUG" in verbose.stderr  # -vvv logs google's own steps too
    _assert_no_secret(secret, stderr=plain.stderr + verbose.stderr, stdout=plain.stdout + verbose.stdout,
                      log=log.read_text(errors="replace") if log.exists() else "")


def test_a_local_buckets_data_is_private_too(tmp_path):
    # --local keeps the bucket's objects under the cache directory, written by the emulator.
    mp, cache = tmp_path / "mp", tmp_path / "cache"
    mp.mkdir()
    try:
        run_octuefs("mount", "--local", "privbucket", str(mp), "--cache-dir", str(cache))
        (mp / "d").mkdir()
        (mp / "d" / "kept.txt").write_bytes(b"kept")
        os.setxattr(mp / "d" / "kept.txt", "user.octue.labels", b"local")
        run_octuefs("sync", str(mp))
        _assert_private(cache)
        run_octuefs("unmount", str(mp))  # writes the bucket's snapshot
        modes = _assert_private(cache)
        assert any(p.startswith("local-gcs/snapshot/") for p in modes), sorted(modes)
    finally:
        from .conftest import force_unmount

        force_unmount(mp)
    assert "Traceback" not in (cache / "octuefs.log").read_text()
