"""Hostile input: fuzzed xattr names and values, odd object names, odd sizes, malformed metadata.

Whatever a caller or another writer of the bucket throws at the mount, every call answers with
a defined errno (never EIO for bad input, never ENOSYS, never a hang), a refused change leaves
the bucket as it was, listings never fail, and no object name makes the daemon touch a file
outside its cache directory and mountpoint. The daemon log must stay free of tracebacks
(the ``mount_factory`` fixture checks that at teardown).
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import random
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from octuefs.octue import metadata as octue

pytestmark = pytest.mark.fuse

EXAMPLES = int(os.environ.get("OCTUEFS_STRESS_EXAMPLES", "150"))
CALL_TIMEOUT = 30  # seconds: a call still running by then counts as a hang

# What an xattr call on the mount may answer, besides success.
DEFINED = {errno.ENODATA, errno.ENOTSUP, errno.EINVAL, errno.E2BIG, errno.EEXIST, errno.EPERM, errno.ENOSPC}

SDK_METADATA = {
    "octue__id": '"02464c6f-0070-50ca-8a9b-ba1af5456601"',
    "octue__tags": '{"instrument": "anemometer"}',
    "octue__labels": '{"_type": "set", "items": ["raw"]}',
    "someone-else": "kept",
}

_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="hostile")


def call(fn, *args):
    """``fn(*args)`` in a worker thread: ``("ok", result)`` or ``("err", errno)``; fails on a hang."""
    future = _pool.submit(fn, *args)
    try:
        return ("ok", future.result(timeout=CALL_TIMEOUT))
    except concurrent.futures.TimeoutError:
        pytest.fail(f"{fn.__name__}{args!r:.200} hung for {CALL_TIMEOUT}s")
    except OSError as exc:
        return ("err", exc.errno)


def files_outside(root, *allowed) -> set[str]:
    """Every path under ``root`` except inside the ``allowed`` directories (and those themselves)."""
    allowed = [os.path.abspath(a) for a in allowed]
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in allowed]
        found.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return found


# --- fuzzed xattrs ------------------------------------------------------------------------

_octue_names = st.sampled_from(
    ["id", "timestamp", "tags", "labels", "cluster", "sequence", "tags.", "tags.a", "tags.height_m", "tags..",
     "tags.a.b", "Tags", "", "labels ", "tags.\n", "sequence\x00"]
)
_tag_names = st.text(min_size=0, max_size=40).map(lambda t: "tags." + t)
_known_names = st.sampled_from(
    ["user.octue.id", "user.octue.timestamp", "user.octue.tags", "user.octue.tags.a", "user.octue.labels",
     "user.octue.cluster", "user.octue.sequence", "user.gcs.content_type"]
)
_names = st.one_of(
    _known_names,
    _octue_names.map(lambda n: "user.octue." + n),
    _tag_names.map(lambda n: "user.octue." + n),
    st.text(min_size=1, max_size=60).map(lambda n: "user.octue." + n),
    st.sampled_from(["user.gcs.generation", "user.gcs.md5", "user.gcs.content_type", "user.gcs.storage_class",
                     "user.gcs.", "user.gcs.nope", "user.other", "user.", "security.capability", "security.selinux",
                     "trusted.octue", "user.octue"]),
    st.text(min_size=1, max_size=40).map(lambda n: "user." + n),
).filter(lambda n: "\x00" not in n and len(n.encode("utf-8", "surrogatepass")) <= 255)
_text_values = st.sampled_from(
    ["", " ", "0", "-1", "1e400", "NaN", "Infinity", "99999999999999999999999999", "1704067200.5",
     "2024-01-01T00:00:00+00:00", "2024-13-45", "[", "]", "{", "{}", "[]", '{"a": 1}', '{"A": 1}', '{"a_": 1}',
     '[1, 2]', '["raw", "Bad Label"]', '["a", 1]', "null", "true", "raw cleaned", "Vestas", "bad_label!",
     "text/plain", "no-slash", "a/b c", '"quoted"', '{"_type": "set", "items": [1]}',
     '{"_type": "datetime", "value": "x"}', "\udcff", "é", "\n", "[" * 5000]
)
_values = st.one_of(
    _text_values.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(3000, 70_000).map(lambda n: b"y" * n),
)
_flags = st.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE])


def _setx(path, name, value, flags):
    os.setxattr(path, name, value, flags)


def _getx(path, name):
    return os.getxattr(path, name)


def _rmx(path, name):
    os.removexattr(path, name)


def test_fuzzed_xattr_calls_answer_a_defined_errno_and_refusals_change_nothing(mount):
    mount.bucket.upload_bytes("f.csv", b"content", SDK_METADATA)
    (mount / "d").mkdir()
    target = mount / "f.csv"

    def view() -> dict:
        """The file's attributes as the mount shows them. (A setfattr is written back about a
        second later: an earlier example's may land in the bucket during a later one, so the
        refusals are checked on what the mount shows, and the bucket once synced, at the end.
        The object's own facts, user.gcs.*, move when a patch lands: left out.)"""
        return {n: call(_getx, target, n) for n in sorted(os.listxattr(target)) if not n.startswith("user.gcs.")}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(name=_names, value=_values, flags=_flags, op=st.sampled_from(["set", "set", "get", "remove"]),
           on_dir=st.booleans())
    def fuzz(name, value, flags, op, on_dir):
        path = mount / "d" if on_dir else target
        before = view()
        if op == "set":
            if len(value) > 65536:  # the kernel itself refuses these with E2BIG; still, ask it
                pass
            result = call(_setx, path, name, value, flags)
        elif op == "get":
            result = call(_getx, path, name)
        else:
            result = call(_rmx, path, name)
        if result[0] == "err":
            assert result[1] in DEFINED, (
                f"{op} {name!r} = {value[:60]!r} (flags {flags}): {errno.errorcode.get(result[1], result[1])}")
            assert view() == before, f"a refused {op} of {name!r} changed the file's attributes"
        # Whatever happened, the file still answers and its metadata still decodes.
        assert call(os.listxattr, target)[0] == "ok"
        assert call(_getx, target, "user.octue.tags")[0] == "ok"

    fuzz()
    shown = view()
    mount.sync()
    after = mount.bucket.stat("f.csv")
    assert view() == shown  # what the mount showed is what the bucket now holds, read back
    assert mount.bucket.read_range("f.csv", 0, 100) == b"content"  # metadata changes never touched data
    assert after.metadata["someone-else"] == "kept"
    assert json.loads(after.metadata["octue__id"]) == "02464c6f-0070-50ca-8a9b-ba1af5456601"
    assert subprocess.run(["getfattr", "-d", "-m", "-", str(target)], capture_output=True).returncode == 0


def test_non_utf8_xattr_names_are_refused_cleanly(mount):
    (mount / "f").write_bytes(b"x")
    mount.sync()
    before = dict(mount.bucket.stat("f").metadata)
    for name in (b"user.octue.tags.\xff", b"user.\xff\xfe", b"user.octue.labels\xc0"):
        for op, args in (("set", (b"v", 0)), ("get", ()), ("remove", ())):
            fn = {"set": _setx, "get": _getx, "remove": _rmx}[op]
            result = call(fn, os.fsencode(str(mount / "f")), name, *args)
            assert result[0] == "err" and result[1] in DEFINED, (op, name, result)
    assert dict(mount.bucket.stat("f").metadata) == before


# --- odd object names -----------------------------------------------------------------------

UNSHOWABLE = ["../x", "a//b", "./y", "..", ".", "dir/./z", "dir/../w", "/leading", "n" * 1000,
              "deep/" + "s" * 256 + "/f"]
SHOWABLE = ["ctl\x01\x02\x7fname", "tab\tname", "new\nline", "cr\rname", "%ff%fe%c0%af", "%2e%2e%2fescape",
            "sp ace", "ünïcödé", "trailing.", "...", "-dash", "\\backslash", "q\"uote'"]


def test_odd_object_names_are_skipped_or_shown_never_fatal(mount, tmp_path):
    outside_before = files_outside(tmp_path, mount.path, mount.cache)
    for name in UNSHOWABLE + SHOWABLE:
        mount.bucket.upload_bytes(name, b"odd " + name.encode())
    mount.bucket.upload_bytes("ok.txt", b"ok")

    shown = os.listdir(mount.path)
    assert "ok.txt" in shown and "dir" in shown and "deep" in shown
    for name in SHOWABLE:
        assert name in shown, f"{name!r} is a valid file name and should be shown"
        assert (mount / name).read_bytes() == b"odd " + name.encode()
        assert subprocess.run(["getfattr", "-d", str(mount / name)], capture_output=True).returncode == 0
    for bad in ("", ".", "..", "x", "y", "n" * 1000):
        assert bad not in shown
    assert os.listdir(mount / "dir") == []  # ./z and ../w are not shown as dir/z or w
    assert os.listdir(mount / "deep") == []  # the 256-byte segment is skipped; the listing still works
    assert os.listdir(mount / "a") == []  # a//b
    log = mount.log_text()
    # One warning per skipped name: the object's, or the prefix ("../") a listing rolls it into.
    for bad in ("../", "a//", "./", "n" * 1000, "dir/./", "dir/../", "/"):
        assert f"skipping object {bad!r}" in log, f"no warning for {bad!r}"

    # Writing, renaming and setting metadata through the odd names works and stays inside the cache.
    for name in SHOWABLE:
        with open(mount / name, "ab") as f:
            f.write(b"+")
        os.setxattr(mount / name, "user.octue.labels", b"odd")
    # GCS refuses names with CR or LF (fake-gcs-server holds them): no new name may have one.
    with pytest.raises(OSError) as refused:
        os.rename(mount / SHOWABLE[2], mount / "renamed\nagain")
    assert refused.value.errno == errno.EINVAL
    os.rename(mount / SHOWABLE[2], mount / "renamed again")
    mount.sync()
    assert mount.bucket.read_range("renamed again", 0, 100) == b"odd " + SHOWABLE[2].encode() + b"+"
    listed = {o.name: o for o in mount.bucket.list_all("", delimiter=None)[0]}
    for name in UNSHOWABLE:  # never touched
        assert listed[name].size == len(b"odd " + name.encode())
        if name not in (".", ".."):  # the HTTP client cannot address these two by name
            assert mount.bucket.read_range(name, 0, 2000) == b"odd " + name.encode()
    assert files_outside(tmp_path, mount.path, mount.cache) == outside_before


def test_a_file_named_like_a_path_escape_stays_inside_the_cache(mount, tmp_path):
    outside_before = files_outside(tmp_path, mount.path, mount.cache)
    names = ["%2e%2e", "..%2fx", "..\\x", "....", "x" * 255]
    for name in names:
        (mount / name).write_bytes(b"data")
        os.setxattr(mount / name, "user.octue.tags.t", b"1")
        assert (mount / name).read_bytes() == b"data"
    mount.sync()
    for name in names:
        assert mount.bucket.read_range(name, 0, 10) == b"data"
    assert files_outside(tmp_path, mount.path, mount.cache) == outside_before


# --- odd sizes ---------------------------------------------------------------------------------


def test_zero_byte_objects(mount):
    mount.bucket.upload_bytes("empty", b"")
    mount.bucket.upload_bytes("d/empty", b"", SDK_METADATA)
    assert (mount / "empty").read_bytes() == b""
    assert os.stat(mount / "empty").st_size == 0
    with open(mount / "d/empty", "rb") as f:
        assert os.pread(f.fileno(), 100, 0) == b""
        assert os.pread(f.fileno(), 100, 12345) == b""
    assert os.getxattr(mount / "d/empty", "user.octue.labels") == b"raw"
    os.setxattr(mount / "d/empty", "user.octue.labels", b"empty")
    assert mount.bucket.stat("d/empty").size == 0


def test_a_64_mib_object_reads_right_at_random_offsets(mount):
    size = 64 << 20
    data = random.Random(7).randbytes(size)
    mount.bucket.upload_bytes("big.bin", data)
    assert os.stat(mount / "big.bin").st_size == size
    rng = random.Random(11)
    with open(mount / "big.bin", "rb") as f:
        for _ in range(40):
            offset = rng.choice([0, size - 1, size, size + 10, (4 << 20) - 1, rng.randrange(size)])
            length = rng.choice([1, 4096, 1 << 20, 5 << 20, rng.randrange(1, 300_000)])
            assert os.pread(f.fileno(), length, offset) == data[offset:offset + length], (offset, length)


# --- malformed Octue metadata ----------------------------------------------------------------------

MALFORMED = {
    "octue__tags": "{not json",
    "octue__labels": "42",
    "octue__cluster": '"seven"',
    "octue__sequence": '{"a": 1}',
    "octue__timestamp": '"yesterday"',
    "octue__sdk_version": "[[[",
    "someone-else": "kept",
}
WRONG_TYPES = {
    "octue__tags": "[1, 2]",
    "octue__labels": '{"_type": "set", "items": [1, 2]}',
    "octue__cluster": "1.5",
    "octue__sequence": "true",
    "octue__timestamp": '{"_type": "datetime", "value": "not a date"}',
}
# Within the GCS limits (4 KiB a value, 8 KiB in all), as any object in a real bucket is.
DEEP = {"octue__tags": "[" * 2000 + "]" * 2000, "octue__labels": '{"_type": "set", "items": ' + "[" * 3000}
HUGE = {"octue__tags": json.dumps({"k": "v" * 3900}), "octue__labels": "x" * 4000}


@pytest.mark.parametrize("custom", [MALFORMED, WRONG_TYPES, DEEP, HUGE], ids=["bad-json", "wrong-types", "deep", "huge"])
def test_malformed_metadata_reads_as_defaults_and_survives_a_setfattr(mount, custom):
    mount.bucket.upload_bytes("m/data.csv", b"1,2\n", custom)
    assert os.listdir(mount / "m") == ["data.csv"]
    assert (mount / "m/data.csv").read_bytes() == b"1,2\n"
    dump = subprocess.run(["getfattr", "-d", "-m", "user.octue", str(mount / "m/data.csv")], capture_output=True,
                          text=True)
    assert dump.returncode == 0, dump.stderr
    meta = octue.decode_object_metadata(custom)
    if "octue__tags" in custom and not meta.tags:
        assert os.getxattr(mount / "m/data.csv", "user.octue.tags") == b"{}"
    if "octue__labels" in custom and not meta.labels:
        assert os.getxattr(mount / "m/data.csv", "user.octue.labels") == b""
    if "octue__sequence" in custom:
        assert call(_getx, mount / "m/data.csv", "user.octue.sequence") == ("err", errno.ENODATA)
    if "octue__cluster" in custom:
        assert os.getxattr(mount / "m/data.csv", "user.octue.cluster") == b"0"

    # One field set: the others' raw values stay exactly as the other writer left them.
    field = "user.octue.tags.fresh" if "octue__tags" not in custom else "user.octue.cluster"
    os.setxattr(mount / "m/data.csv", field, b"3")
    after = mount.bucket.stat("m/data.csv").metadata
    changed = "octue__tags" if field.startswith("user.octue.tags") else "octue__cluster"
    for key, raw in custom.items():
        if key != changed and key != "octue__sdk_version":
            assert after[key] == raw, f"{key} was rewritten"
    assert mount.bucket.read_range("m/data.csv", 0, 100) == b"1,2\n"


def test_a_malformed_id_is_replaced_only_when_metadata_is_written(mount):
    mount.bucket.upload_bytes("i.csv", b"x", {"octue__id": '"not-a-uuid"', "octue__labels": "{bad"})
    assert call(_getx, mount / "i.csv", "user.octue.id") == ("err", errno.ENODATA)
    assert mount.bucket.stat("i.csv").metadata["octue__id"] == '"not-a-uuid"'  # reading changes nothing
    os.setxattr(mount / "i.csv", "user.octue.sequence", b"1")
    mount.sync()
    after = mount.bucket.stat("i.csv").metadata
    assert octue.decode_object_metadata(after).id is not None  # the first write gives it a valid id
    assert after["octue__labels"] == "{bad"


def test_file_names_that_are_not_utf8_are_refused_without_eio(mount, tmp_path):
    # GCS object names are UTF-8: a name with other bytes cannot become an object.
    outside_before = files_outside(tmp_path, mount.path, mount.cache)
    root = os.fsencode(str(mount.path))
    for name in (b"\xff", b"caf\xe9.csv", b"ok\xc0\xafname"):
        path = root + b"/" + name
        for fn, args in ((os.open, (os.O_WRONLY | os.O_CREAT, 0o644)), (os.mkdir, ()), (os.stat, ()),
                         (os.rename, (root + b"/elsewhere",))):
            result = call(fn, path, *args)
            assert result[0] == "err" and result[1] in (errno.EINVAL, errno.ENOENT, errno.EILSEQ), (fn.__name__, name, result)
    (mount / "valid.txt").write_bytes(b"v")
    assert call(os.rename, root + b"/valid.txt", root + b"/\xff")[1] in (errno.EINVAL, errno.EILSEQ)
    assert os.listdir(mount.path) == ["valid.txt"]
    mount.sync()
    assert [o.name for o in mount.bucket.list_all("", delimiter=None)[0]] == ["valid.txt"]
    assert files_outside(tmp_path, mount.path, mount.cache) == outside_before


def test_content_type_values(mount):
    (mount / "c.txt").write_bytes(b"c")
    mount.sync()
    for value in (b"no-slash", b"a/b c", b"\xff/\xfe", b"", b"text/plain"):
        before = mount.bucket.stat("c.txt")
        result = call(_setx, mount / "c.txt", "user.gcs.content_type", value, 0)
        after = mount.bucket.stat("c.txt")
        if value == b"text/plain":
            assert result[0] == "ok" and after.content_type == "text/plain"
        else:
            assert result == ("err", errno.EINVAL), value
            assert (after.generation, after.content_type) == (before.generation, before.content_type)
