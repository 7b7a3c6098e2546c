"""The retry loop (octuefs/storage/retry.py) and how open_bucket / GCSBucket fail when GCS is
unreachable, missing or refuses us."""

from __future__ import annotations

import time

import pytest

from octuefs.errors import BucketNotFound, BucketUnreachable, PermissionDenied, PreconditionFailed, TransientError
from octuefs.storage import open_bucket
from octuefs.storage.base import RetryPolicy
from octuefs.storage.retry import Retrier


class FakeTime:
    """A clock that only moves when someone sleeps (or an attempt takes time)."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def retrier(policy: RetryPolicy, t: FakeTime, jitter: float = 1.0) -> Retrier:
    return Retrier(policy, sleep=t.sleep, clock=t.clock, random=lambda: jitter)


def failing(times: int, result="done", exc=lambda: TransientError("flaky")):
    calls = []

    def attempt():
        calls.append(1)
        if len(calls) <= times:
            raise exc()
        return result

    attempt.calls = calls
    return attempt


# --- backoff ----------------------------------------------------------------------------------


def test_delays_grow_exponentially_up_to_max_delay():
    policy = RetryPolicy(initial_delay=0.1, max_delay=1.0, multiplier=2.0, deadline=100)
    top = Retrier(policy, random=lambda: 1.0)
    bottom = Retrier(policy, random=lambda: 0.0)
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert [round(top.delay(n), 9) for n in range(1, 7)] == ceilings
    assert [round(bottom.delay(n), 9) for n in range(1, 7)] == [c / 2 for c in ceilings]  # jitter: [d/2, d]


def test_retries_until_success_with_growing_sleeps():
    t = FakeTime()
    attempt = failing(3)
    assert retrier(RetryPolicy(initial_delay=0.5, multiplier=3, max_delay=100, deadline=100), t).call(attempt) == "done"
    assert len(attempt.calls) == 4
    assert t.sleeps == [0.5, 1.5, 4.5]


def test_deadline_bounds_the_total_time():
    t = FakeTime()

    def slow_failure():
        t.now += 0.3  # each attempt itself takes time
        raise TransientError("down")

    with pytest.raises(BucketUnreachable) as info:
        retrier(RetryPolicy(initial_delay=0.1, max_delay=1.0, deadline=5.0), t).call(slow_failure, "listing gs://b/d/")
    assert t.now <= 5.0 + 0.3  # at most the last attempt's own time past the deadline
    assert t.now > 3.0  # and it did keep trying for most of it
    attempts = len(t.sleeps) + 1
    assert str(info.value) == f"bucket unreachable: down after {attempts} attempts in {t.now:.1f}s while listing gs://b/d/"


def test_zero_deadline_means_one_attempt():
    t = FakeTime()
    attempt = failing(1)
    with pytest.raises(TransientError):
        retrier(RetryPolicy(deadline=0), t).call(attempt)
    assert len(attempt.calls) == 1 and t.sleeps == []


@pytest.mark.parametrize("exc", [lambda: PreconditionFailed("x"), lambda: ValueError("bug"), lambda: PermissionDenied("no")])
def test_non_transient_errors_are_not_retried(exc):
    t = FakeTime()
    attempt = failing(1, exc=exc)
    with pytest.raises(type(exc())):
        retrier(RetryPolicy(), t).call(attempt)
    assert len(attempt.calls) == 1 and t.sleeps == []


def test_after_ambiguous_only_after_a_transient_failure():
    t = FakeTime()
    seen = []

    def resolve(exc):
        seen.append(exc)
        return "it had worked"

    first_try = failing(1, exc=lambda: PreconditionFailed("conflict"))
    with pytest.raises(PreconditionFailed):
        retrier(RetryPolicy(), t).call(first_try, after_ambiguous=resolve)
    assert seen == []

    calls = []

    def lost_then_conflict():
        calls.append(1)
        raise TransientError("lost") if len(calls) == 1 else PreconditionFailed("conflict")

    assert retrier(RetryPolicy(), t).call(lost_then_conflict, after_ambiguous=resolve) == "it had worked"
    assert len(seen) == 1 and isinstance(seen[0], PreconditionFailed)


# --- real network failures --------------------------------------------------------------------


def test_gcs_bucket_at_a_closed_port_gives_transient_error_within_the_deadline(monkeypatch, closed_port):
    from octuefs.storage.gcs import GCSBucket

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{closed_port}")
    bucket = GCSBucket("any", retry=RetryPolicy(initial_delay=0.05, max_delay=0.2, deadline=1.0))
    start = time.monotonic()
    with pytest.raises(TransientError, match="ConnectionError"):
        bucket.stat("x")
    assert 0.5 < time.monotonic() - start < 3.0


def test_open_bucket_at_a_closed_port_says_where_it_could_not_connect(monkeypatch, closed_port):
    url = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    start = time.monotonic()
    with pytest.raises(TransientError) as info:
        open_bucket("any", check_deadline=1.0)
    assert time.monotonic() - start < 3.0
    message = str(info.value)
    assert message.startswith(f"cannot reach GCS at {url}") and "\n" not in message


@pytest.mark.emulator
def test_open_bucket_on_a_missing_bucket(emulator):
    with pytest.raises(BucketNotFound) as info:
        open_bucket("no-such-bucket-here")
    message = str(info.value)
    assert message.startswith("bucket 'no-such-bucket-here' does not exist") and "\n" not in message


@pytest.mark.emulator
def test_open_bucket_on_an_existing_bucket(emulator):
    emulator.create_bucket("open-me")
    bucket = open_bucket("open-me")
    assert bucket.name == "open-me"
    assert bucket.list_all() == ([], [])


def test_open_bucket_without_credentials_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(PermissionDenied, match="gcloud auth application-default login") as info:
        open_bucket("any")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(info.value) and "\n" not in str(info.value)
