"""Retrying transient failures: exponential backoff with jitter, bounded in total time.

One loop for every bucket implementation (``gcs.GCSBucket`` and ``fake.FakeBucket``), so retry
behaviour is the same everywhere and can be tested on the fake. Nothing here knows about Google:
an attempt is any callable, and an error is retried when it is a
:class:`~octuefs.errors.TransientError` (the buckets translate library errors before this loop
sees them).

Timing: before attempt ``n`` (n >= 1) the loop sleeps a random time in ``[d/2, d]`` where
``d = min(max_delay, initial_delay * multiplier ** (n - 1))`` ("equal jitter", so the delays grow
but concurrent clients do not retry in lock-step). It gives up, re-raising the last
TransientError, when the next sleep would end past ``deadline`` seconds after the first attempt
started. The sleep, the clock and the random source are injectable for tests.

Ambiguous retries: when an attempt failed transiently, the request may still have been applied
(the response was lost). A later attempt can then fail *because* the first one worked (a
create-only upload gets ``PreconditionFailed``, a delete gets ``NotFound``). ``call`` takes an
optional ``after_ambiguous`` callback that sees such a non-transient error and may return a
result (the earlier attempt did the job) or re-raise it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from octuefs.errors import NotFound, PreconditionFailed, TransientError
from octuefs.storage.base import ObjectInfo, RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass
class Retrier:
    """Runs an attempt until it succeeds, fails for good, or the policy's deadline passes."""

    policy: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    random: Callable[[], float] = random.random  # uniform in [0, 1)

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry), with jitter."""
        p = self.policy
        ceiling = min(p.max_delay, p.initial_delay * p.multiplier ** (retry_number - 1))
        return ceiling * (0.5 + 0.5 * self.random())

    def call(
        self,
        attempt: Callable[[], T],
        what: str = "request",
        after_ambiguous: Callable[[Exception], T] | None = None,
    ) -> T:
        """Return ``attempt()``, retrying it on TransientError within the policy's deadline."""
        start = self.clock()
        retries = 0
        while True:
            try:
                return attempt()
            except TransientError as exc:
                retries += 1
                wait = self.delay(retries)
                elapsed = self.clock() - start
                if elapsed + wait > self.policy.deadline:
                    if retries > 1:
                        exc.add_note(f"gave up after {retries} attempts in {elapsed:.1f}s")
                    log.warning("%s failed, not retrying (%d attempts, %.1fs): %s", what, retries, elapsed, exc)
                    raise
                log.info("%s failed (attempt %d), retrying in %.2fs: %s", what, retries, wait, exc)
                self.sleep(wait)
            except Exception as exc:
                if retries and after_ambiguous is not None:
                    log.debug("%s: %s after a retried failure; checking whether it had worked", what, exc)
                    return after_ambiguous(exc)
                raise


def call_with_retry(attempt: Callable[[], T], policy: RetryPolicy, what: str = "request") -> T:
    """Shorthand for ``Retrier(policy).call(attempt, what)``."""
    return Retrier(policy).call(attempt, what)


# --- resolving ambiguous retries ------------------------------------------------------------


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
    path: str | bytes,
    metadata: Mapping[str, str],
    if_generation_match: int | None,
) -> Callable[[Exception], ObjectInfo]:
    """An ``after_ambiguous`` for uploads: a PreconditionFailed after a lost response is a
    success if the live object now holds exactly our bytes and metadata."""

    def resolve(exc: Exception) -> ObjectInfo:
        if not isinstance(exc, PreconditionFailed) or if_generation_match is None:
            raise exc
        try:
            info = stat(name)
        except NotFound:
            raise exc from None
        if info.generation != if_generation_match and info.md5 == file_md5(path) and dict(info.metadata) == dict(metadata):
            log.info("upload of %s had succeeded before its retry (generation %d)", name, info.generation)
            return info
        raise exc

    return resolve


def confirm_delete(exc: Exception) -> None:
    """An ``after_ambiguous`` for deletes: NotFound after a lost response means it worked."""
    if isinstance(exc, NotFound):
        return None
    raise exc
