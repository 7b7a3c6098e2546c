"""Differential test: random sequences of operations on the mount and on a local directory.

A hypothesis ``RuleBasedStateMachine`` does every step twice, once under the octuefs mount and
once under a plain local directory, and after every step compares what both show: the names
of every directory, the size and content of every file, and which operations failed with
which errno. Octue xattrs have no local equivalent, so they are compared against a model (a
dict per file that follows the file through renames, like an inode's xattrs). After ``sync``
(and after a remount, which writes everything out) the bucket's objects are compared too:
names, content, and the Octue fields decoded from their custom metadata.

Speed: one mount per test function; each hypothesis example works in a fresh subdirectory
``exN/`` of it (and of the local directory), so examples never see each other's files and no
example pays for a mount. The ``remount`` rule unmounts (writing everything out, or leaving it
journaled with ``--leave-pending``) and mounts the same bucket with the same cache directory.

The mount keeps its default caches (``--stat-ttl``/``--list-ttl`` 30 s, kernel caches 1 s):
the semantics promise that changes made through a mount show through it at once, so no cache
is switched off to make comparisons pass. Nothing else writes to the bucket meanwhile.

Bounded for CI (``OCTUEFS_STRESS_EXAMPLES`` examples, default 25, of at most
``OCTUEFS_STRESS_STEPS`` steps, default 15); ``scripts/stress.py`` runs long ones.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import json
import os
import shutil
import stat

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from octuefs import metadata as octue

from .conftest import is_mounted, run_octuefs

pytestmark = pytest.mark.fuse

EXAMPLES = int(os.environ.get("OCTUEFS_STRESS_EXAMPLES", "25"))
STEPS = int(os.environ.get("OCTUEFS_STRESS_STEPS", "15"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

NAMES = ["a", "b.txt", "d"]  # few names: operations often meet the same file
MAX_HANDLES = 3

# xattr values with their meaning, as docs/semantics.md and octue-metadata.md define it.
TAG_NAMES = ["a", "height_m", "x1", "Bad", "x_", "a-b"]  # the last three are invalid
TAG_VALUES = ["raw", "Vestas", "80.5", "true", '"true"', "[1, 2]", '{"a": 1}', "two words", ""]
LABELS = ["raw cleaned", "Vestas", "", "qc-passed", '["a", "b"]', "Bad_Label!", "ends-"]
SEQUENCES = ["0", "3", "-1", " 7 ", "abc", "1.5"]


def _valid_tag_name(name: str) -> bool:
    try:
        octue.validate_tag_name(name)
    except ValueError:
        return False
    return True


def _tag_text(text: str) -> str:
    """What getxattr shows for a tag set to ``text``: the text, or its JSON normal form."""
    try:
        return json.dumps(json.loads(text))
    except ValueError:
        return text


def _labels(text: str) -> frozenset[str] | None:
    """The labels ``text`` sets, or None if it is refused."""
    stripped = text.strip()
    words = json.loads(stripped) if stripped.startswith("[") else stripped.split()
    folded = {w.strip().lower() for w in words}
    ok = all(w and w[0].isalnum() and w[-1].isalnum() and all(c.isalnum() or c == "-" for c in w) and w.isascii()
             for w in folded)
    return frozenset(folded) if ok else None


def _sequence(text: str) -> int | None:
    stripped = text.strip()
    return int(stripped) if stripped.lstrip("+-").isdigit() else None


@dataclasses.dataclass
class Xattrs:
    """The model of one file's Octue xattrs (follows the file like an inode's would)."""

    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> text getxattr shows
    labels: frozenset[str] = frozenset()
    sequence: int | None = None


@dataclasses.dataclass
class Handle:
    n: int
    path: str  # relative to the example's directory, as opened
    mnt_fd: int
    loc_fd: int
    append: bool
    mode_write_only: bool


TRACE: list[str] = []  # the calls of the current example, for failure messages
ROOTS: dict[str, str] = {}  # the example's two directories -> "M:" / "L:" in TRACE


def outcome(fn, *args):
    """``("ok", value)`` or ``("err", errno)``."""
    try:
        result = ("ok", fn(*args))
    except OSError as exc:
        result = ("err", errno.errorcode.get(exc.errno, exc.errno))
    shown = repr(args)[1:-1]
    for root, tag in ROOTS.items():
        shown = shown.replace(root + "/", tag).replace(root, tag)
    shown = shown[:120]
    TRACE.append(f"{getattr(fn, '__name__', fn)}({shown}) -> {str(result)[:60]}")
    return result


def traced(message: str) -> str:
    return message + "\ncalls so far (mount and local alternate):\n  " + "\n  ".join(TRACE[-60:])


class Remounter:
    """Unmount and mount again the same bucket, mountpoint and cache directory."""

    def __init__(self, mount, extra: tuple[str, ...]):
        self.mount, self.extra = mount, extra

    failure: str | None = None  # why the last remount left no mount, for the examples after it

    def __call__(self, leave_pending: bool) -> None:
        m = self.mount
        try:
            run_octuefs("unmount", *(["--leave-pending"] if leave_pending else []), str(m.path), timeout=120)
            assert not is_mounted(m.path), "still mounted after octuefs unmount"
            run_octuefs("mount", m.spec, str(m.path), "--cache-dir", str(m.cache), "--log-file", str(m.log),
                        "-vv", *self.extra)
            assert is_mounted(m.path), "not mounted after octuefs mount"
        except AssertionError as exc:
            self.failure = f"remount (leave_pending={leave_pending}) failed: {exc}"
            raise

    def check(self) -> None:
        """Every example must run on the mount, not on the bare directory under it."""
        assert is_mounted(self.mount.path), self.failure or "the mount is gone"


def make_machine(mount, local_root, remount):
    counter = itertools.count()

    class Differential(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            remount.check()
            TRACE.clear()
            self.sub = f"ex{next(counter)}"
            self.mnt = os.path.join(mount.path, self.sub)
            self.loc = os.path.join(local_root, self.sub)
            ROOTS.clear()
            ROOTS.update({self.mnt: "M:", self.loc: "L:"})
            os.mkdir(self.mnt)
            os.mkdir(self.loc)
            self.xattrs: dict[str, Xattrs] = {}  # by file path relative to the example's directory
            self.handles: list[Handle] = []
            self.next_handle = itertools.count()
            self.remounts = 0

        # --- helpers ----------------------------------------------------------------------

        def both(self, fn, rel: str, *args, rel2: str | None = None):
            """Run ``fn`` on the mount and locally; the outcomes (errno included) must agree."""
            m = (os.path.join(self.mnt, rel),) + ((os.path.join(self.mnt, rel2),) if rel2 is not None else ())
            lo = (os.path.join(self.loc, rel),) + ((os.path.join(self.loc, rel2),) if rel2 is not None else ())
            got, want = outcome(fn, *m, *args), outcome(fn, *lo, *args)
            if want[0] == "err" or got[0] == "err":
                assert got == want, f"{fn.__name__}{(rel, rel2, *args)}: mount {got}, local {want}"
            return want

        def walk(self) -> tuple[list[str], list[str]]:
            """Local (dirs, files), relative paths."""
            dirs, files = [""], []
            for root, ds, fs in os.walk(self.loc):
                rel = os.path.relpath(root, self.loc)
                rel = "" if rel == "." else rel
                dirs += [os.path.join(rel, d) for d in ds]
                files += [os.path.join(rel, f) for f in fs]
            return sorted(dirs), sorted(files)

        def dirs(self) -> list[str]:
            return self.walk()[0]

        def files(self) -> list[str]:
            return self.walk()[1]

        def any_path(self, data) -> str:
            """An open file, an existing file or directory, or a new name in an existing directory
            (in that order, so operations often meet files that are open or exist)."""
            dirs, files = self.walk()
            hot = [h.path for h in self.handles] + files + dirs[1:]
            fresh = [os.path.join(d, n) for d in dirs for n in NAMES]
            return data.draw(st.sampled_from(list(dict.fromkeys(hot + fresh))), label="path")

        def drop_xattrs_under(self, rel: str) -> None:
            for key in [k for k in self.xattrs if k == rel or k.startswith(rel + "/")]:
                del self.xattrs[key]

        def move_xattrs(self, old: str, new: str) -> None:
            self.drop_xattrs_under(new)
            for key in [k for k in self.xattrs if k == old or k.startswith(old + "/")]:
                self.xattrs[new + key[len(old):]] = self.xattrs.pop(key)
            for h in self.handles:
                if h.path == old or h.path.startswith(old + "/"):
                    h.path = new + h.path[len(old):]

        def model(self, rel: str) -> Xattrs:
            return self.xattrs.setdefault(rel, Xattrs())

        # --- a starting point: some files, maybe a directory, maybe open handles -------------

        @initialize(data=st.data(), n_files=st.integers(0, 3), subdir=st.booleans(), n_open=st.integers(0, 2))
        def start(self, data, n_files, subdir, n_open):
            if subdir:
                self.both(os.mkdir, "d")
            for i in range(n_files):
                self.write_whole_file(data, data.draw(st.binary(max_size=300), label=f"content {i}"))
            for _ in range(n_open):
                self.open_file(data, data.draw(st.sampled_from(["w", "r+", "a"]), label="mode"))

        # --- files ------------------------------------------------------------------------

        @rule(data=st.data(), content=st.binary(max_size=300))
        def write_whole_file(self, data, content):
            rel = self.any_path(data)
            new = not os.path.lexists(os.path.join(self.loc, rel))

            def write(path):
                with open(path, "wb") as f:
                    f.write(content)

            if self.both(write, rel)[0] == "ok" and new:
                self.xattrs[rel] = Xattrs()

        @precondition(lambda self: len(self.handles) < MAX_HANDLES)
        @rule(data=st.data(), mode=st.sampled_from(["w", "r+", "a", "x"]))
        def open_file(self, data, mode):
            rel = self.any_path(data)
            flags = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "r+": os.O_RDWR,
                     "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}[mode]
            new = not os.path.lexists(os.path.join(self.loc, rel))
            got = outcome(os.open, os.path.join(self.mnt, rel), flags, 0o644)
            want = outcome(os.open, os.path.join(self.loc, rel), flags, 0o644)
            if got[0] == "ok" and want[0] == "ok":
                self.handles.append(Handle(next(self.next_handle), rel, got[1], want[1], mode == "a", mode != "r+"))
                if new:
                    self.xattrs[rel] = Xattrs()
                return
            for fd in (got, want):
                if fd[0] == "ok":
                    os.close(fd[1])
            assert got == want, f"open({rel!r}, {mode}): mount {got}, local {want}"

        @precondition(lambda self: self.handles)
        @rule(data=st.data(), offset=st.integers(0, 9000), content=st.binary(min_size=1, max_size=200))
        def pwrite(self, data, offset, content):
            h = data.draw(st.sampled_from(self.handles), label="handle")
            if h.append:
                got, want = outcome(os.write, h.mnt_fd, content), outcome(os.write, h.loc_fd, content)
            else:
                got, want = outcome(os.pwrite, h.mnt_fd, content, offset), outcome(os.pwrite, h.loc_fd, content, offset)
            assert got == want, f"write to handle {h.n} ({h.path}): mount {got}, local {want}"

        @precondition(lambda self: self.handles)
        @rule(data=st.data(), offset=st.integers(0, 9000), size=st.integers(0, 10000))
        def pread(self, data, offset, size):
            h = data.draw(st.sampled_from(self.handles), label="handle")
            if h.append or h.mode_write_only:
                return
            got, want = outcome(os.pread, h.mnt_fd, size, offset), outcome(os.pread, h.loc_fd, size, offset)
            assert got == want, f"pread of handle {h.n} ({h.path}): mount {got}, local {want}"

        @precondition(lambda self: self.handles)
        @rule(data=st.data())
        def fsync(self, data):
            h = data.draw(st.sampled_from(self.handles), label="handle")
            got, want = outcome(os.fsync, h.mnt_fd), outcome(os.fsync, h.loc_fd)
            assert got == want, f"fsync of handle {h.n} ({h.path}): mount {got}, local {want}"

        @precondition(lambda self: self.handles)
        @rule(data=st.data(), length=st.integers(0, 5000))
        def ftruncate(self, data, length):
            h = data.draw(st.sampled_from(self.handles), label="handle")
            got, want = outcome(os.ftruncate, h.mnt_fd, length), outcome(os.ftruncate, h.loc_fd, length)
            assert got == want, f"ftruncate of handle {h.n} ({h.path}): mount {got}, local {want}"

        @precondition(lambda self: self.handles)
        @rule(data=st.data())
        def close(self, data):
            h = data.draw(st.sampled_from(self.handles), label="handle")
            self.handles.remove(h)
            got, want = outcome(os.close, h.mnt_fd), outcome(os.close, h.loc_fd)
            assert got == want, f"close of handle {h.n} ({h.path}): mount {got}, local {want}"

        @rule(data=st.data(), length=st.integers(0, 5000))
        def truncate_path(self, data, length):
            self.both(os.truncate, self.any_path(data), length)

        @rule(data=st.data())
        def unlink(self, data):
            rel = self.any_path(data)
            if self.both(os.unlink, rel)[0] == "ok":
                self.drop_xattrs_under(rel)

        @rule(data=st.data())
        def rename(self, data):
            old, new = self.any_path(data), self.any_path(data)
            if self.both(os.rename, old, rel2=new)[0] == "ok" and old != new:
                self.move_xattrs(old, new)

        # --- directories -----------------------------------------------------------------

        @rule(data=st.data())
        def mkdir(self, data):
            self.both(os.mkdir, self.any_path(data))

        @rule(data=st.data())
        def rmdir(self, data):
            self.both(os.rmdir, self.any_path(data))

        # --- Octue xattrs ----------------------------------------------------------------

        def file_for_xattr(self, data) -> str | None:
            files = self.files()
            return data.draw(st.sampled_from(files), label="file") if files else None

        def expect_xattr(self, rel: str, call, expected_errno: str | None) -> bool:
            got = outcome(call, os.path.join(self.mnt, rel))
            want = ("err", expected_errno) if expected_errno else ("ok", None)
            assert got == want, f"xattr call on {rel!r}: mount {got}, model {want}"
            return expected_errno is None

        @rule(data=st.data(), tag=st.sampled_from(TAG_NAMES), value=st.sampled_from(TAG_VALUES))
        def set_tag(self, data, tag, value):
            rel = self.file_for_xattr(data)
            if rel is None:
                return
            name = f"user.octue.tags.{tag}"
            ok = self.expect_xattr(rel, lambda p: os.setxattr(p, name, value.encode()),
                                   None if _valid_tag_name(tag) else "EINVAL")
            if ok:
                self.model(rel).tags[tag] = _tag_text(value)

        @rule(data=st.data(), tag=st.sampled_from(TAG_NAMES))
        def remove_tag(self, data, tag):
            rel = self.file_for_xattr(data)
            if rel is None:
                return
            present = tag in self.model(rel).tags
            if self.expect_xattr(rel, lambda p: os.removexattr(p, f"user.octue.tags.{tag}"),
                                 None if present else "ENODATA"):
                del self.model(rel).tags[tag]

        @rule(data=st.data(), value=st.sampled_from(LABELS))
        def set_labels(self, data, value):
            rel = self.file_for_xattr(data)
            if rel is None:
                return
            labels = _labels(value)
            if self.expect_xattr(rel, lambda p: os.setxattr(p, "user.octue.labels", value.encode()),
                                 None if labels is not None else "EINVAL"):
                self.model(rel).labels = labels

        @rule(data=st.data(), value=st.sampled_from(SEQUENCES),
              flags=st.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE]))
        def set_sequence(self, data, value, flags):
            rel = self.file_for_xattr(data)
            if rel is None:
                return
            model = self.model(rel)
            number = _sequence(value)
            expected = None
            if flags == os.XATTR_CREATE and model.sequence is not None:
                expected = "EEXIST"
            elif flags == os.XATTR_REPLACE and model.sequence is None:
                expected = "ENODATA"
            elif number is None:
                expected = "EINVAL"
            if self.expect_xattr(rel, lambda p: os.setxattr(p, "user.octue.sequence", value.encode(), flags), expected):
                model.sequence = number

        @rule(data=st.data())
        def remove_sequence(self, data):
            rel = self.file_for_xattr(data)
            if rel is None:
                return
            model = self.model(rel)
            if self.expect_xattr(rel, lambda p: os.removexattr(p, "user.octue.sequence"),
                                 None if model.sequence is not None else "ENODATA"):
                model.sequence = None

        # --- the mount as a whole ----------------------------------------------------------

        def close_all(self) -> None:
            for h in self.handles:
                os.close(h.mnt_fd)
                os.close(h.loc_fd)
            self.handles.clear()

        @precondition(lambda self: not self.handles)
        @rule()
        def sync(self):
            mount.sync()
            self.compare_bucket()

        @precondition(lambda self: self.remounts < 1)
        @rule(leave_pending=st.booleans())
        def remount_(self, leave_pending):
            self.remounts += 1
            self.close_all()  # unmount refuses while files are open
            remount(leave_pending)
            if not leave_pending:
                self.compare_bucket()

        # --- comparisons -----------------------------------------------------------------

        @invariant()
        def same_tree(self):
            try:
                self._same_tree()
            except (AssertionError, OSError) as exc:
                raise AssertionError(traced(f"{type(exc).__name__}: {exc}")) from None

        @invariant()
        def same_xattrs(self):
            try:
                self._same_xattrs()
            except (AssertionError, OSError) as exc:
                raise AssertionError(traced(f"{type(exc).__name__}: {exc}")) from None

        def _same_tree(self):
            dirs, files = self.walk()
            for d in dirs:
                got = sorted(os.listdir(os.path.join(self.mnt, d)))
                want = sorted(os.listdir(os.path.join(self.loc, d)))
                assert got == want, f"listdir({d!r}): mount {got}, local {want}"
            for f in files:
                m, lo = os.path.join(self.mnt, f), os.path.join(self.loc, f)
                assert stat.S_ISREG(os.stat(m).st_mode), f"{f!r} is not a file on the mount"
                assert os.stat(m).st_size == os.stat(lo).st_size, f"size of {f!r}"
                with open(m, "rb") as a, open(lo, "rb") as b:
                    assert a.read() == b.read(), f"content of {f!r}"
            for d in dirs[1:]:
                assert stat.S_ISDIR(os.stat(os.path.join(self.mnt, d)).st_mode), f"{d!r} is not a directory"

        def _same_xattrs(self):
            for f in self.files():
                p = os.path.join(self.mnt, f)
                model = self.xattrs.get(f, Xattrs())
                names = os.listxattr(p)
                tags = {n[len("user.octue.tags."):] for n in names if n.startswith("user.octue.tags.")}
                assert tags == set(model.tags), f"tags of {f!r}: {names}"
                for tag, text in model.tags.items():
                    assert os.getxattr(p, f"user.octue.tags.{tag}").decode() == text, f"tag {tag} of {f!r}"
                assert os.getxattr(p, "user.octue.labels").decode() == " ".join(sorted(model.labels)), f"labels of {f!r}"
                got = outcome(os.getxattr, p, "user.octue.sequence")
                want = ("err", "ENODATA") if model.sequence is None else ("ok", str(model.sequence).encode())
                assert got == want, f"sequence of {f!r}"

        def compare_bucket(self):
            """Every closed file is an object with the same content and Octue fields; nothing else is."""
            prefix = self.sub + "/"
            objects = {o.name[len(prefix):]: o for o in mount.bucket.list_all(prefix, delimiter=None)[0]}
            dirs, files = self.walk()
            open_paths = {h.path for h in self.handles}
            expected = set(files) | {d + "/" for d in dirs if d} | {""}  # "" is exN/ itself
            extra = {n for n in objects if n not in expected and n not in open_paths}
            assert not extra, f"objects the local directory does not have: {sorted(extra)}"
            for f in files:
                if f in open_paths:
                    continue
                assert f in objects, f"{f!r} is not in the bucket after sync"
                with open(os.path.join(self.loc, f), "rb") as lf:
                    assert mount.bucket.read_range(prefix + f, 0, 1 << 20) == lf.read(), f"bucket content of {f!r}"
                meta = octue.decode_object_metadata(objects[f].metadata)
                model = self.xattrs.get(f, Xattrs())
                assert set(meta.tags) == set(model.tags), f"bucket tags of {f!r}: {dict(meta.tags)}"
                for tag, text in model.tags.items():
                    assert octue.get_xattr(meta, f"user.octue.tags.{tag}").decode() == text, f"bucket tag {tag} of {f!r}"
                assert meta.labels == model.labels, f"bucket labels of {f!r}"
                assert meta.sequence == model.sequence, f"bucket sequence of {f!r}"
                assert meta.id is not None, f"{f!r} has no octue__id in the bucket"
            for d in dirs[1:]:
                assert d + "/" in objects or any(n.startswith(d + "/") for n in objects), f"directory {d!r} is gone"

        def teardown(self):
            self.close_all()

    return Differential


@pytest.fixture
def local_root(tmp_path):
    root = tmp_path / "local"
    root.mkdir()
    yield str(root)
    shutil.rmtree(root, ignore_errors=True)


NO_CACHES = ("--stat-ttl", "0", "--list-ttl", "0", "--negative-ttl", "0", "--attr-timeout", "0", "--entry-timeout", "0")


@pytest.mark.timeout(max(300, EXAMPLES * STEPS * 2))
@pytest.mark.parametrize("options", [(), NO_CACHES], ids=["default-caches", "no-caches"])
def test_mount_behaves_like_a_local_directory(mount_factory, local_root, options):
    """With the default caches, and with none (every lookup and listing asks the bucket, which
    must then agree with what is still pending upload)."""
    m = mount_factory(*options)
    machine = make_machine(m, local_root, Remounter(m, options))
    examples = EXAMPLES if not options else max(1, EXAMPLES // 2)
    run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=examples))
