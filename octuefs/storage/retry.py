"""Retrying transient failures: exponential backoff with jitter, bounded in total time.

One loop for every bucket implementation (``gcs.GCSBucket`` and ``fake.FakeBucket``), so retry
behaviour is the same everywhere and can be tested on the fake. Nothing here knows about Google:
an attempt is any callable, and an error is retried when it is a
:class:`~octuefs.errors.TransientError` (the buckets translate library errors before this loop
sees them).

Timing: before attempt ``n`` (n >= 1) the loop sleeps a random time in ``[d/2, d]`` where
``d = min(max_delay, initial_delay * multiplier ** (n - 1))`` ("equal jitter", so the delays grow
but concurrent clients do not retry in lock-step). It gives up, re-raising the last
TransientError, as a :class:`~octuefs.errors.BucketUnreachable`, when the next sleep would end
past ``deadline`` seconds after the first attempt started. A ``Retry-After`` the server sent is
honoured (the sleep is at least that long). The sleep, the clock and the random source are
injectable for tests.

Bounded calls: a call someone is waiting on (a FUSE request) runs with a short deadline
(:func:`bounded_policy`) and each attempt's timeout cut to the time left (:func:`cut_to`), so the
whole call ends within about its deadline even when the server accepts connections and then
never answers.

Ambiguous retries: when an attempt failed transiently, the request may still have been applied
(the response was lost). A later attempt can then fail *because* the first one worked (a
create-only upload gets ``PreconditionFailed``, a delete gets ``NotFound``). ``call`` takes an
optional ``after_ambiguous`` callback that sees such a non-transient error and may return a
result (the earlier attempt did the job) or re-raise it.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import dataclasses
import hashlib
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from octuefs.errors import (
    BucketUnreachable,
    NotFound,
    PreconditionFailed,
    TransientError,
)
from octuefs.storage.objects import ObjectInfo, RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass
class Bound:
    """A time budget for one call on a bounded bucket, shared by every request it makes."""

    seconds: float
    attempt_timeout: float
    started: float | None = None  # on the clock of the first retry loop that ran under it

    def left(self, now: float) -> float:
        if self.started is None:
            self.started = now
        return self.seconds - (now - self.started)


_bound: contextvars.ContextVar[Bound | None] = contextvars.ContextVar("octuefs_bound", default=None)


def current_bound() -> Bound | None:
    """The budget of the bounded call running in this thread, if any."""
    return _bound.get()


@contextlib.contextmanager
def bounded(seconds: float, attempt: float | None = None) -> Iterator[Bound]:
    """Run the enclosed bucket calls within ``seconds`` in all (an enclosing budget, if any,
    holds instead): their retry loops stop when it is spent, and each attempt waits for an
    answer at most ``attempt`` seconds (default :func:`attempt_timeout` of ``seconds``), cut to
    the time left."""
    outer = _bound.get()
    if outer is not None:
        yield outer
        return
    token = _bound.set(Bound(seconds, attempt if attempt is not None else attempt_timeout(seconds)))
    try:
        yield _bound.get()
    finally:
        _bound.reset(token)


@dataclasses.dataclass
class Retrier:
    """Runs an attempt until it succeeds, fails for good, or the policy's deadline passes."""

    policy: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    random: Callable[[], float] = random.random  # uniform in [0, 1)

    def delay(self, retry_number: int, max_delay: float | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry), with jitter."""
        p = self.policy
        top = p.max_delay if max_delay is None else max_delay
        ceiling = min(top, p.initial_delay * p.multiplier ** (retry_number - 1))
        return ceiling * (0.5 + 0.5 * self.random())

    def call(
        self,
        attempt: Callable[[], T],
        what: str = "calling the bucket",
        after_ambiguous: Callable[[Exception], T] | None = None,
    ) -> T:
        """Return ``attempt()``, retrying it on TransientError within the policy's deadline."""
        return self.call_within(lambda _left: attempt(), what, after_ambiguous)

    def call_within(
        self,
        attempt: Callable[[float], T],
        what: str = "calling the bucket",
        after_ambiguous: Callable[[Exception], T] | None = None,
    ) -> T:
        """Like :meth:`call`, giving each attempt the seconds left before the deadline (to cut
        its own timeout to). ``what`` says what is being done, for the log and the final error:
        "listing gs://b/dir/". When the time is up, the last TransientError is raised as a
        :class:`BucketUnreachable` that says what failed, how often and for how long."""
        start = self.clock()
        deadline, max_delay = self.policy.deadline, self.policy.max_delay
        bound = current_bound()
        if bound is not None:  # a bounded call: its budget is what is left of it
            deadline = min(deadline, bound.left(start))
            max_delay = bounded_policy(self.policy, bound.seconds).max_delay
        retries = 0
        while True:
            try:
                return attempt(max(0.0, deadline - (self.clock() - start)))
            except TransientError as exc:
                retries += 1
                wait = self.delay(retries, max_delay)
                if exc.retry_after:  # the server said when to come back: not sooner
                    wait = max(wait, exc.retry_after)
                elapsed = self.clock() - start
                if elapsed + wait > deadline:
                    log.info("%s: attempt %d failed, giving up after %.1fs: %s", what, retries, elapsed, exc)
                    raise unreachable(exc, retries, elapsed, what) from exc
                log.info("%s: attempt %d failed, retrying in %.2fs: %s", what, retries, wait, exc)
                self.sleep(wait)
            except Exception as exc:
                if retries and after_ambiguous is not None:
                    log.debug("%s: %s after a retried failure; checking whether it had worked", what, exc)
                    return after_ambiguous(exc)
                raise


def unreachable(exc: TransientError, attempts: int, elapsed: float, what: str) -> BucketUnreachable:
    """The error for retries that ran out of time, in one line: what failed and what was being done."""
    if isinstance(exc, BucketUnreachable):
        return exc
    reason = _WHERE.sub("", str(exc), count=1) or type(exc).__name__
    plural = "attempt" if attempts == 1 else "attempts"
    return BucketUnreachable(f"bucket unreachable: {reason} after {attempts} {plural} in {elapsed:.1f}s while {what}")


_WHERE = re.compile(r"^[a-z]+://[^:]*: ")  # "gs://bucket/name: " at the head of a bucket's message


def bounded_policy(policy: RetryPolicy, deadline: float) -> RetryPolicy:
    """``policy`` cut to ``deadline`` seconds in all, with backoff short enough for several tries."""
    return dataclasses.replace(policy, deadline=deadline,
                               max_delay=min(policy.max_delay, max(policy.initial_delay, deadline / 4)))


def attempt_timeout(deadline: float) -> float:
    """How long one attempt of a call bounded by ``deadline`` may wait for the server to answer
    (connect, or the next bytes of a response): a third of the deadline, so a stalled connection
    leaves time for fresh ones, within 0.5 to 10 seconds."""
    return min(10.0, max(0.5, deadline / 3))


def cut_to(timeout: float, left: float) -> float:
    """An attempt's timeout cut to the ``left`` seconds of its call's deadline (but never below
    half a second or ``timeout``, whichever is less: an attempt needs some time to succeed)."""
    return max(min(timeout, left), min(timeout, 0.5))


def call_with_retry(attempt: Callable[[], T], policy: RetryPolicy, what: str = "calling the bucket") -> T:
    """Shorthand for ``Retrier(policy).call(attempt, what)``."""
    return Retrier(policy).call(attempt, what)


# --- resolving ambiguous retries ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What identifies some content in a bucket: its MD5, or, for a composed object (which
    has none), its CRC32C and size."""

    md5: str
    crc32c: str
    size: int

    def matches(self, info: ObjectInfo) -> bool:
        if info.size != self.size:
            return False
        return info.md5 == self.md5 if info.md5 else info.crc32c == self.crc32c


def file_fingerprint(path: str | bytes) -> Fingerprint:
    """The :class:`Fingerprint` of a local file (or of the bytes given), in one read."""
    import google_crc32c  # C speed; imported here so the storage package loads without it

    md5, crc, size = hashlib.md5(), google_crc32c.Checksum(), 0
    chunks = [path] if isinstance(path, bytes) else None
    with contextlib.ExitStack() as stack:
        if chunks is None:
            f = stack.enter_context(open(path, "rb"))
            chunks = iter(lambda: f.read(1 << 20), b"")
        for chunk in chunks:
            md5.update(chunk)
            crc.update(chunk)
            size += len(chunk)
    return Fingerprint(base64.b64encode(md5.digest()).decode(), base64.b64encode(crc.digest()).decode(), size)


def file_md5(path: str | bytes) -> str:
    """The base64 MD5 of a local file (or of the bytes given), as GCS reports ``md5Hash``."""
    digest = hashlib.md5()
    if isinstance(path, bytes):
        digest.update(path)
        return base64.b64encode(digest.digest()).decode()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode()


def confirm_upload(
    stat: Callable[[str], ObjectInfo],
    name: str,
    path: str | bytes | Callable[[], Fingerprint],
    metadata: Mapping[str, str],
    if_generation_match: int | None,
    if_metageneration_match: int | None = None,
) -> Callable[[Exception], ObjectInfo]:
    """An ``after_ambiguous`` for uploads (and composes): a PreconditionFailed after a lost
    response is a success if the live object now holds exactly our bytes and metadata, as a
    generation our upload made: not the generation it was to replace, and, under a
    metageneration precondition, still at metageneration 1 (a new generation's first).
    ``path``: the file or bytes sent, or a callable giving their :class:`Fingerprint` (a
    compose's, from its sources: see :func:`composed_fingerprint`)."""

    def resolve(exc: Exception) -> ObjectInfo:
        if not isinstance(exc, PreconditionFailed) or (if_generation_match is None and if_metageneration_match is None):
            raise exc
        try:
            info = stat(name)
        except NotFound:
            raise exc from None
        new_generation = if_generation_match is None or info.generation != if_generation_match
        fresh = if_metageneration_match is None or info.metageneration == 1
        sent = path() if callable(path) else file_fingerprint(path)
        if (new_generation and fresh and sent.matches(info)
                and dict(info.metadata) == dict(metadata)):
            log.info("upload of %s had succeeded before its retry (generation %d)", name, info.generation)
            return info
        raise exc

    return resolve


def composed_fingerprint(stat: Callable[[str], ObjectInfo], sources: list[str]) -> Callable[[], Fingerprint]:
    """The :class:`Fingerprint` a compose of ``sources`` (as they are now) makes, to be asked
    for when needed: their CRC32Cs combined, their sizes summed (a composed object has no MD5)."""

    def fingerprint() -> Fingerprint:
        from octuefs.storage.checksums import combine_b64

        try:
            infos = [stat(source) for source in sources]
        except NotFound:
            return Fingerprint("", "", -1)  # a source is gone: nothing to tell by
        if any(info.crc32c is None for info in infos):
            return Fingerprint("", "", -1)  # matches nothing
        return Fingerprint("", combine_b64((i.crc32c, i.size) for i in infos), sum(i.size for i in infos))

    return fingerprint


def confirm_delete(exc: Exception) -> None:
    """An ``after_ambiguous`` for deletes: NotFound after a lost response means it worked."""
    if isinstance(exc, NotFound):
        return None
    raise exc


def confirm_patch(
    stat: Callable[[str], ObjectInfo],
    name: str,
    changes: Mapping[str, str | None],
    content_type: str | None,
    if_generation_match: int | None,
    if_metageneration_match: int | None,
) -> Callable[[Exception], ObjectInfo]:
    """An ``after_ambiguous`` for metadata patches: a PreconditionFailed after a lost response is
    a success if the object is still the generation patched, its metageneration moved exactly
    once past the one named (by the patch that landed unanswered, and nothing since), and it
    holds the changes (and content type) sent. Without a metageneration precondition a retry
    cannot meet its own patch: its failure is real."""

    def resolve(exc: Exception) -> ObjectInfo:
        if not isinstance(exc, PreconditionFailed) or if_metageneration_match is None:
            raise exc
        try:
            info = stat(name)
        except NotFound:
            raise exc from None
        if if_generation_match is not None and info.generation != if_generation_match:
            raise exc
        if info.metageneration != if_metageneration_match + 1:
            raise exc
        # (A key patched away is absent on GCS; fake-gcs-server, the embedded emulator, keeps it as "".)
        held = all(info.metadata.get(k) == v if v is not None else info.metadata.get(k) in (None, "")
                   for k, v in changes.items())
        if held and (content_type is None or info.content_type == content_type):
            log.info("metadata patch of %s had succeeded before its retry (metageneration %d)", name,
                     info.metageneration)
            return info
        raise exc

    return resolve


def confirm_copy(
    stat: Callable[[str], ObjectInfo],
    source: str,
    destination: str,
    if_source_generation_match: int | None,
    if_generation_match: int | None,
    *,
    if_source_metageneration_match: int | None = None,
) -> Callable[[Exception], ObjectInfo]:
    """An ``after_ambiguous`` for copies: a PreconditionFailed after a lost response is a
    success if the destination now holds the source's bytes and metadata and the source is
    still the generation we copied."""

    def resolve(exc: Exception) -> ObjectInfo:
        if not isinstance(exc, PreconditionFailed) or if_generation_match is None:
            raise exc
        try:
            src, dst = stat(source), stat(destination)
        except NotFound:
            raise exc from None
        if if_source_generation_match is not None and src.generation != if_source_generation_match:
            raise exc
        if if_source_metageneration_match is not None and src.metageneration != if_source_metageneration_match:
            raise exc
        same = (dst.size, dst.md5, dict(dst.metadata)) == (src.size, src.md5, dict(src.metadata))
        if dst.generation != if_generation_match and same and src.md5:
            log.info("copy of %s to %s had succeeded before its retry (generation %d)", source, destination,
                     dst.generation)
            return dst
        raise exc

    return resolve
