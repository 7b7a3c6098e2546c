"""FakeBucket's own promises: call counts, fault injection, latency, clock, GCS counters.

The Bucket contract itself is checked against the fake in tests/contract.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from octuefs.errors import NotFound, PermissionDenied, PreconditionFailed, TransientError
from octuefs.storage.base import RetryPolicy
from octuefs.storage.fake import FakeBucket, crc32c, crc32c_b64


class Clock:
    """A settable clock (POSIX seconds)."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def fake(clock):
    return FakeBucket("b", clock=clock)


# --- hashes -----------------------------------------------------------------------------------


def test_crc32c_known_values():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(b"") == 0
    assert crc32c_b64(b"hello world") == "yZRlqg=="  # as fake-gcs-server and GCS report it


def test_crc32c_matches_google_crc32c():
    google_crc32c = pytest.importorskip("google_crc32c")
    data = bytes(range(256)) * 17 + b"tail"
    assert crc32c(data) == google_crc32c.value(data)


# --- call counts ------------------------------------------------------------------------------


def test_each_operation_is_counted_once(fake, tmp_path):
    fake.upload_bytes("a", b"1")
    fake.stat("a")
    fake.read_range("a", 0, 1)
    fake.download_to_file("a", str(tmp_path / "a"))
    fake.patch_metadata("a", {"k": "v"})
    fake.copy("a", "b")
    fake.list_all()
    fake.delete("b")
    assert fake.calls == {op: 1 for op in ("upload", "stat", "read", "download", "patch", "copy", "list", "delete")}


def test_listing_counts_one_request_per_page(fake):
    for i in range(25):
        fake.upload_bytes(f"o{i:02d}", b"")
    fake.reset_calls()
    list(fake.iter_pages(max_results=10))
    assert fake.calls == {"list": 3}


def test_failed_and_retried_attempts_count(fake):
    fake.fail_next("stat", times=2)
    fake.upload_bytes("a", b"1")
    fake.stat("a")
    assert fake.calls["stat"] == 3


def test_empty_range_needs_no_request(fake):
    assert fake.read_range("anything", 4, 4) == b""
    assert fake.calls == {}


# --- fault injection --------------------------------------------------------------------------


def test_transient_fault_is_retried(fake):
    fake.upload_bytes("a", b"data")
    fake.fail_next("read", times=3)
    assert fake.read_range("a", 0, 4) == b"data"
    assert fake.calls["read"] == 4


def test_non_transient_fault_is_not_retried(fake):
    fake.upload_bytes("a", b"data")
    fake.fail_next("read", PermissionDenied("no"))
    with pytest.raises(PermissionDenied):
        fake.read_range("a", 0, 4)
    assert fake.calls["read"] == 1
    assert fake.read_range("a", 0, 4) == b"data"  # only the next one failed


def test_persistent_transient_fault_gives_up_at_the_deadline():
    sleeps = []
    fake = FakeBucket(
        retry=RetryPolicy(initial_delay=1, max_delay=4, deadline=10),
        sleep=sleeps.append,
        monotonic=lambda: sum(sleeps),
    )
    fake.fail_next("list", times=100)
    with pytest.raises(TransientError):
        fake.list_page()
    # slept ~0.5-1, 1-2, 2-4, 2-4 ... but never more than the deadline in total
    assert 1 <= len(sleeps) < 100 and sum(sleeps) <= 10


def test_fault_factory_and_any_operation(fake):
    made = []

    def factory():
        made.append(1)
        return PermissionDenied(f"factory {len(made)}")

    fake.fail_next(None, factory, times=2)
    with pytest.raises(PermissionDenied, match="factory 1"):
        fake.stat("x")
    with pytest.raises(PermissionDenied, match="factory 2"):
        fake.list_page()
    with pytest.raises(NotFound):
        fake.stat("x")


def test_unknown_operation_is_refused(fake):
    with pytest.raises(ValueError):
        fake.fail_next("rename")


def test_lost_response_on_create_only_upload_counts_as_success(fake):
    """The upload lands, its response is lost, the retry meets its own object: success."""
    fake.fail_next("upload", after=True)
    info = fake.upload_bytes("a", b"data", {"k": "v"}, if_generation_match=0)
    assert info == fake.stat("a") and fake.calls["upload"] == 2


def test_precondition_failure_after_a_retry_is_real_when_content_differs(fake):
    fake.upload_bytes("a", b"theirs")
    fake.fail_next("upload")  # fails before acting: nothing of ours landed
    with pytest.raises(PreconditionFailed):
        fake.upload_bytes("a", b"ours", if_generation_match=0)
    assert fake.objects() == {"a": b"theirs"}


def test_upload_after_another_writers_patch_fails_the_metageneration_precondition(fake):
    """GCS: a metadata change moves only the metageneration, so only that precondition sees it."""
    base = fake.upload_bytes("a", b"v1", {"owner": "me"})
    fake.patch_metadata("a", {"label": "theirs"})  # another writer
    with pytest.raises(PreconditionFailed, match="metageneration"):
        fake.upload_bytes("a", b"v2", {"owner": "me"}, if_generation_match=base.generation,
                          if_metageneration_match=base.metageneration)
    assert fake.objects() == {"a": b"v1"}
    assert dict(fake.stat("a").metadata) == {"owner": "me", "label": "theirs"}
    new = fake.upload_bytes("a", b"v2", {"owner": "me"}, if_generation_match=base.generation,
                            if_metageneration_match=2)
    assert (new.metageneration, fake.objects()) == (1, {"a": b"v2"})


def test_metageneration_precondition_on_an_absent_object_fails(fake, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(PreconditionFailed):
        fake.upload_file("a", str(path), {}, if_metageneration_match=1)
    assert fake.objects() == {}


def test_lost_response_on_a_metageneration_guarded_upload_counts_as_success(fake):
    base = fake.upload_bytes("a", b"v1")
    fake.patch_metadata("a", {"k": "v"})
    fake.reset_calls()
    fake.fail_next("upload", after=True)
    info = fake.upload_bytes("a", b"v2", {"k": "v"}, if_metageneration_match=2)
    assert info == fake.stat("a") and info.generation > base.generation
    assert fake.objects() == {"a": b"v2"} and fake.calls["upload"] == 2


def test_metageneration_failure_after_a_retry_is_real_when_another_writer_patched(fake):
    base = fake.upload_bytes("a", b"v1")
    fake.fail_next("upload", error=lambda: (fake.patch_metadata("a", {"k": "theirs"}), TransientError("x"))[1])
    with pytest.raises(PreconditionFailed):
        fake.upload_bytes("a", b"v2", if_generation_match=base.generation, if_metageneration_match=1)
    assert fake.objects() == {"a": b"v1"} and dict(fake.stat("a").metadata) == {"k": "theirs"}


def test_lost_response_on_a_guarded_patch_counts_as_success(fake):
    """The patch lands (the metageneration moves), its answer is lost, the retry meets its own
    metageneration: success, not a 412 read as "changed elsewhere"."""
    base = fake.upload_bytes("a", b"v1", {"keep": "1", "old": "x"})
    fake.fail_next("patch", after=True)
    info = fake.patch_metadata("a", {"k": "v", "old": None}, if_generation_match=base.generation,
                               if_metageneration_match=base.metageneration)
    assert info == fake.stat("a") and fake.calls["patch"] == 2
    assert (info.metageneration, dict(info.metadata)) == (2, {"keep": "1", "k": "v"})


def test_a_patch_refused_after_a_retry_is_real_when_another_writer_patched(fake):
    base = fake.upload_bytes("a", b"v1")
    fake.fail_next("patch", error=lambda: (fake.patch_metadata("a", {"k": "theirs"}), TransientError("x"))[1])
    with pytest.raises(PreconditionFailed):
        fake.patch_metadata("a", {"k": "ours"}, if_generation_match=base.generation, if_metageneration_match=1)
    assert dict(fake.stat("a").metadata) == {"k": "theirs"}


def test_a_patch_refused_after_a_retry_is_real_when_another_writer_patched_the_same(fake):
    """Even the same change made elsewhere and then another on top: two moves, not ours alone."""
    base = fake.upload_bytes("a", b"v1")
    fake.fail_next("patch", after=True)
    real = fake.server.patch

    def and_another(*args, **kwargs):
        fake.server.patch = real
        real(*args, **kwargs)
        return real("a", {"k": "v"}, None, None, None)

    fake.server.patch = and_another
    with pytest.raises(PreconditionFailed):
        fake.patch_metadata("a", {"k": "v"}, if_generation_match=base.generation, if_metageneration_match=1)


def test_lost_response_on_delete_counts_as_success(fake):
    fake.upload_bytes("a", b"data")
    fake.fail_next("delete", after=True)
    fake.delete("a")
    assert fake.objects() == {}


def test_fault_rate():
    fake = FakeBucket(seed=1)
    fake.upload_bytes("a", b"x")
    fake.set_fault_rate(0.5, operations=("stat",))
    for _ in range(20):
        fake.stat("a")  # every failure is retried away
    assert fake.calls["stat"] > 20
    fake.set_fault_rate(0.0)
    fake.reset_calls()
    fake.stat("a")
    assert fake.calls["stat"] == 1


# --- latency and clock ------------------------------------------------------------------------


def test_latency_sleeps_before_each_attempt():
    sleeps = []
    fake = FakeBucket(sleep=sleeps.append)
    fake.set_latency(0.25)
    fake.upload_bytes("a", b"x")
    fake.stat("a")
    assert sleeps == [0.25, 0.25]


def test_latency_does_not_hold_the_lock():
    fake = FakeBucket()
    fake.upload_bytes("a", b"x")
    fake.set_latency(0.2)
    threads = [threading.Thread(target=fake.stat, args=("a",)) for _ in range(10)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start < 1.0  # 10 x 0.2 s in parallel, not in series


def test_clock_sets_updated_and_generation_stays_monotonic(fake, clock):
    first = fake.upload_bytes("a", b"1")
    assert first.updated == dt.datetime.fromtimestamp(clock.now, dt.timezone.utc)
    assert first.generation == int(clock.now * 1_000_000)
    clock.now -= 3600  # the clock goes backwards: generations must not
    second = fake.upload_bytes("a", b"2")
    assert second.generation > first.generation
    assert second.updated < first.updated


def test_patch_bumps_metageneration_and_updated_not_generation(fake, clock):
    before = fake.upload_bytes("a", b"1", {"k": "v"})
    clock.now += 10
    after = fake.patch_metadata("a", {"k": "w", "n": None})
    assert (after.generation, after.metageneration) == (before.generation, 2)
    assert after.updated - before.updated == dt.timedelta(seconds=10)
    assert dict(after.metadata) == {"k": "w"}


def test_empty_patch_checks_preconditions_and_changes_nothing(fake):
    before = fake.upload_bytes("a", b"1")
    assert fake.patch_metadata("a", {}, if_metageneration_match=1) == before
    with pytest.raises(PreconditionFailed):
        fake.patch_metadata("a", {}, if_metageneration_match=2)


def test_copy_gets_a_new_generation_and_metageneration_one(fake):
    src = fake.upload_bytes("s", b"1", {"k": "v"})
    fake.patch_metadata("s", {"k": "w"})
    dst = fake.copy("s", "d")
    assert dst.generation > src.generation and dst.metageneration == 1
    assert dict(dst.metadata) == {"k": "w"}


# --- listing details --------------------------------------------------------------------------


def test_page_counts_prefixes_and_objects(fake):
    for name in ["a/1", "a/2", "b", "c/1", "d", "e/1", "f"]:
        fake.upload_bytes(name, b"")
    pages = list(fake.iter_pages(max_results=2))
    assert [(len(p.objects), len(p.prefixes)) for p in pages] == [(1, 1), (1, 1), (1, 1)]
    assert pages[-1].next_token is None
    assert [q for p in pages for q in p.prefixes] == ["a/", "c/", "e/"]


def test_prefix_listing_with_other_delimiter(fake):
    for name in ["x-1-a", "x-1-b", "x-2", "y"]:
        fake.upload_bytes(name, b"")
    page = fake.list_page("x-", delimiter="-")
    assert [o.name for o in page.objects] == ["x-2"] and page.prefixes == ["x-1-"]


def test_bad_page_token(fake):
    with pytest.raises(ValueError):
        fake.list_page(page_token="!!!not base64!!!")


def test_invalid_names_are_refused(fake):
    for name in ["", "a\nb", "x" * 1025]:
        with pytest.raises(ValueError):
            fake.upload_bytes(name, b"")


def test_state_is_consistent_under_concurrent_writers(fake):
    def writer(t):
        for i in range(50):
            fake.upload_bytes(f"n{i % 10}", f"{t}".encode())
            if i % 7 == 0:
                try:
                    fake.delete(f"n{(i + 3) % 10}")
                except NotFound:
                    pass

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    objects, _ = fake.list_all(delimiter=None)
    assert [o.name for o in objects] == sorted(fake.objects())
    gens = [o.generation for o in objects]
    assert len(set(gens)) == len(gens)


# --- listing against a model ------------------------------------------------------------------

_segment = st.text(alphabet="ab/é-", min_size=1, max_size=6)


def _model(names, prefix, delimiter):
    objects, prefixes = [], []
    for name in sorted(n for n in names if n.startswith(prefix)):
        cut = name.find(delimiter, len(prefix)) if delimiter else -1
        if cut < 0:
            objects.append(name)
        elif name[: cut + len(delimiter)] not in prefixes:
            prefixes.append(name[: cut + len(delimiter)])
    return objects, prefixes


@settings(max_examples=150, deadline=None)
@given(
    names=st.sets(_segment, max_size=25),
    prefix=st.sampled_from(["", "a", "a/", "b/", "é"]),
    delimiter=st.sampled_from([None, "/", "-"]),
    max_results=st.integers(1, 7),
)
def test_paged_listing_matches_a_model(names, prefix, delimiter, max_results):
    fake = FakeBucket()
    for name in names:
        fake.upload_bytes(name, b"")
    pages = list(fake.iter_pages(prefix, delimiter, max_results))
    assert all(len(p.objects) + len(p.prefixes) <= max_results for p in pages)
    got = ([o.name for p in pages for o in p.objects], [q for p in pages for q in p.prefixes])
    assert got == _model(names, prefix, delimiter)


# --- compose ------------------------------------------------------------------------------------


def test_compose_concatenates_into_a_new_generation_with_a_crc32c_and_no_md5(fake):
    a = fake.upload_bytes("p/a", b"hello ")
    fake.upload_bytes("p/b", b"world")
    old = fake.upload_bytes("out.txt", b"old", {"k": "old"})
    fake.reset_calls()
    info = fake.compose(["p/a", "p/b"], "out.txt", {"k": "v"}, if_generation_match=old.generation)
    assert fake.objects() == {"p/a": b"hello ", "p/b": b"world", "out.txt": b"hello world"}
    assert info == fake.stat("out.txt") and info.generation > a.generation and info.metageneration == 1
    assert (info.size, info.crc32c, info.md5) == (11, crc32c_b64(b"hello world"), None)
    assert dict(info.metadata) == {"k": "v"} and info.content_type == "text/plain"
    assert fake.calls == {"compose": 1, "stat": 1}


def test_compose_under_a_stale_generation_or_metageneration_changes_nothing(fake):
    fake.upload_bytes("a", b"1")
    base = fake.upload_bytes("out", b"old", {"k": "old"})
    fake.patch_metadata("out", {"k": "theirs"})
    for preconditions in ({"if_generation_match": base.generation - 1}, {"if_generation_match": 0},
                          {"if_metageneration_match": base.metageneration}):
        with pytest.raises(PreconditionFailed):
            fake.compose(["a"], "out", {"k": "ours"}, **preconditions)
    assert fake.objects()["out"] == b"old" and dict(fake.stat("out").metadata) == {"k": "theirs"}


def test_compose_of_a_missing_source_fails_and_too_many_are_refused_unsent(fake):
    fake.upload_bytes("a", b"1")
    with pytest.raises(NotFound):
        fake.compose(["a", "missing"], "out")
    fake.reset_calls()
    for sources in ([], ["a"] * 33, "a"):
        with pytest.raises(ValueError):
            fake.compose(sources, "out")
    assert fake.objects() == {"a": b"1"} and fake.calls == {}
    assert fake.compose(["a"] * 32, "out").size == 32


def test_compose_whose_answer_was_lost_counts_as_done(fake):
    fake.upload_bytes("a", b"12")
    fake.upload_bytes("b", b"34")
    fake.fail_next("compose", after=True)
    info = fake.compose(["a", "b"], "out", {"k": "v"}, if_generation_match=0)
    assert info == fake.stat("out") and fake.objects()["out"] == b"1234" and fake.calls["compose"] == 2


def test_compose_after_a_lost_answer_and_another_writer_is_a_conflict(fake):
    fake.upload_bytes("a", b"12")
    fake.fail_next("compose", error=lambda: (fake.upload_bytes("out", b"theirs"), TransientError("lost"))[1])
    with pytest.raises(PreconditionFailed):
        fake.compose(["a"], "out", if_generation_match=0)
    assert fake.objects()["out"] == b"theirs"


# --- requests that land after the client gave up --------------------------------------------------


def test_a_late_upload_lands_after_the_retry_and_fails_its_precondition_then(fake):
    gate = threading.Event()
    fake.fail_next("upload", late=gate)
    info = fake.upload_bytes("a", b"ours", if_generation_match=0)  # timed out, retried, done
    assert fake.objects() == {"a": b"ours"} and fake.calls["upload"] == 2
    gate.set()
    (landing,) = fake.wait_landed()
    assert isinstance(landing.error, PreconditionFailed)  # judged when it landed, as GCS does
    assert fake.stat("a") == info


def test_a_late_delete_without_a_precondition_deletes_what_came_after_it(fake):
    """What GCS does too: the reason callers send preconditions."""
    fake.upload_bytes("a", b"1")
    gate = threading.Event()
    fake.fail_next("delete", late=gate)
    fake.delete("a")  # the retry deletes it
    fake.upload_bytes("a", b"2")
    gate.set()
    fake.wait_landed()
    assert fake.objects() == {}


def test_a_late_delete_with_a_precondition_spares_a_newer_generation(fake):
    first = fake.upload_bytes("a", b"1")
    gate = threading.Event()
    fake.fail_next("delete", late=gate)
    fake.delete("a", if_generation_match=first.generation)
    fake.upload_bytes("a", b"2")
    gate.set()
    (landing,) = fake.wait_landed()
    assert isinstance(landing.error, PreconditionFailed) and fake.objects() == {"a": b"2"}


def test_a_late_patch_lands_after_a_delay_and_is_judged_then(fake):
    fake.upload_bytes("a", b"1")
    fake.fail_next("patch", late=0.05)
    assert fake.patch_metadata("a", {"k": "v"}, if_metageneration_match=1).metageneration == 2  # the retry
    (guarded,) = fake.wait_landed()
    assert isinstance(guarded.error, PreconditionFailed)
    fake.fail_next("patch", late=0.05)
    fake.patch_metadata("a", {"k": "w"})
    assert fake.stat("a").metageneration == 3
    fake.wait_landed()
    info = fake.stat("a")
    assert (dict(info.metadata), info.metageneration) == ({"k": "w"}, 4)  # unguarded: it applied again


def test_two_clients_of_one_server_see_one_bucket():
    one = FakeBucket("shared")
    other = FakeBucket(server=one.server)
    base = one.upload_bytes("a", b"1")
    other.patch_metadata("a", {"k": "theirs"})
    with pytest.raises(PreconditionFailed):
        one.upload_bytes("a", b"2", if_generation_match=base.generation, if_metageneration_match=1)
    assert one.calls == other.calls == {"upload": 2, "patch": 1}
