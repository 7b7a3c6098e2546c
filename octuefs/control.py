"""The daemon's control socket: ``octuefs status``, ``octuefs sync`` and unmount's flush.

A Unix socket beside the mount's state file (a 0700 directory of the user's). A request is
one JSON line, ``{"cmd": "status" | "sync" | "leave-pending" | "pending-metadata"}``; the answer is JSON lines:
``status`` answers uploads, conflicts and cache usage; ``sync`` streams ``{"done": n, "total": m}``
progress, then ``{"left": k, "conflicts": [...]}``: the conflicts no sync had reported yet, which
count as reported once that line is sent; ``pending-metadata`` (with ``"prefix"``) answers
``{"pending": {name: {"metadata": {...}, "size": n}}}`` for ``octuefs find``.

Only the final reply answers: a request whose answer fails is answered ``{"error": "..."}``, and
the client takes an answer that ends without its final reply (the daemon died, the connection
broke, a reply was cut short) for a failure too, never for the last progress line: a sync
whose result is unknown must not read as "all uploaded".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator

from .errors import OctuefsError

log = logging.getLogger(__name__)


# `octuefs status --json`: its format number (raised only by a change that breaks a reader) and
# the upload states it counts in "totals" ("kept": journaled by a mount of another bucket).
STATUS_FORMAT = 1
STATUS_STATES = ("queued", "running", "failed", "withheld", "kept")


class ControlError(OctuefsError):
    """The daemon of a mount could not be asked (it is gone, or an older version)."""


class ControlServer:
    """Serves control requests for one mounted FileSystem, one thread per connection."""

    def __init__(self, fs, path: str):
        self.fs = fs
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        os.chmod(path, 0o600)
        self._sock.listen(8)
        self._thread = threading.Thread(target=self._serve, name="octuefs-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rw") as stream:
            try:
                request = json.loads(stream.readline() or "{}")
            except (OSError, ValueError) as exc:
                log.debug("control request unreadable: %s", exc)
                request = None
            if not isinstance(request, dict):
                self._send(stream, {"error": "the request is not a JSON object like {\"cmd\": \"status\"}"})
                return
            cmd = request.get("cmd")
            answer = (self._pending_metadata(str(request.get("prefix") or "")) if cmd == "pending-metadata"
                      else self._answer(cmd, request.get("timeout")))
            while True:
                try:
                    reply = next(answer)
                except StopIteration:
                    return
                except Exception as exc:  # whatever it is, the client must hear that there is no answer
                    log.exception("control request %r failed", cmd)
                    self._send(stream, {"error": f"the mount's daemon could not answer {cmd!r}: {exc} (see its log)"})
                    return
                if not self._send(stream, reply):
                    answer.close()  # the client went away: a sync's conflicts stay unreported
                    return

    @staticmethod
    def _send(stream, reply: dict) -> bool:
        try:
            stream.write(json.dumps(reply) + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:
            log.debug("control reply not delivered: %s", exc)
            return False
        return True

    def status(self) -> dict:
        """What `octuefs status --json` answers (and the metrics report). Field names are stable:
        docs/operations.md lists them, and a test holds the two equal."""
        report = self.fs.uploader.status()
        totals = {state: 0 for state in STATUS_STATES}
        for row in report["uploads"]:
            totals[row["state"] if row["state"] in totals else "kept"] += 1
        return {"format": STATUS_FORMAT, "bucket": self.fs.bucket.name, "prefix": self.fs.config.prefix,
                "mountpoint": self.fs.config.mountpoint, "pid": os.getpid(), "totals": totals, **report,
                "cache": self.fs.cache_usage()}

    def _pending_metadata(self, prefix: str) -> Iterator[dict]:
        """``octuefs find`` in a mount: the newest queued version of each object under ``prefix``
        (its custom metadata and size), which wins over what the bucket lists. Versions held back
        by an unlink or rename under way are left out."""
        newest: dict = {}
        for e in self.fs.uploader.snapshot():
            if e.name.startswith(prefix) and e.state != "withheld" and not e.check_copy and e.seq >= newest.get(e.name, e).seq:
                newest[e.name] = e
        yield {"pending": {name: {"metadata": dict(e.metadata), "size": e.size} for name, e in newest.items()}}

    def _answer(self, cmd: str | None, timeout: float | None = None) -> Iterator[dict]:
        uploader = self.fs.uploader
        if cmd == "status":
            yield self.status()
        elif cmd == "sync":
            progress: list[tuple[int, int]] = []
            done = threading.Event()
            left: list[int] = []
            failed: list[BaseException] = []

            def run() -> None:
                try:
                    pending = uploader.sync(timeout, progress=lambda d, t: progress.append((d, t)))
                    # Take-overs' give-backs still owed count as pending: a source carrying the id
                    # of the file it failed to replace is not what the mount shows.
                    left.append(pending + self.fs.givebacks.settle_owed(self.fs.bucket))
                except BaseException as exc:  # handed to the client as an error reply
                    failed.append(exc)
                finally:
                    done.set()

            threading.Thread(target=run, daemon=True).start()
            while not done.wait(0.5):
                if progress:
                    d, t = progress[-1]
                    yield {"done": d, "total": t}
            if progress:
                d, t = progress[-1]
                yield {"done": d, "total": t}
            if failed:
                raise failed[0]
            # Every conflict no sync has reported yet (this sync's uploads' and any earlier
            # ones'), marked reported only once the reply is out (the generator resumes then).
            upto, conflicts = uploader.journal.unreported_conflicts()
            yield {"left": left[0], "bucket": self.fs.bucket.name, "prefix": self.fs.config.prefix,
                   "conflicts": conflicts}
            if conflicts:
                uploader.journal.mark_reported(upto)
        elif cmd == "leave-pending":
            self.fs.leave_pending = True
            yield {"ok": True}
        else:
            yield {"error": f"unknown command {cmd!r}"}


def request(path: str, cmd: str, on_line: Callable[[dict], None] | None = None, timeout: float | None = None, *,
            expect: str, fields: dict | None = None) -> dict:
    """Send ``cmd`` to the daemon at ``path``; return its final reply, the one holding ``expect``
    (earlier ones, progress, go to on_line).

    ControlError if the daemon answers an error, or if its answer ends without the final reply
    (it died, the connection broke, a line was cut short): a missing answer is never read as a
    success. ``timeout`` bounds the daemon's work (a sync) and, with a margin, the wait for each reply.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(None if timeout is None else timeout + 30)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot reach the mount's daemon ({exc.strerror or exc})") from exc
    with sock, sock.makefile("rw") as stream:
        try:
            stream.write(json.dumps({"cmd": cmd, "timeout": timeout, **(fields or {})}) + "\n")
            stream.flush()
            for line in stream:
                try:
                    reply = json.loads(line)
                except ValueError:
                    reply = None
                if not isinstance(reply, dict):
                    raise ControlError(f"the mount's daemon sent a reply to {cmd!r} that is cut short or garbled: "
                                       f"{line[:200]!r}")
                if "error" in reply:
                    raise ControlError(str(reply["error"]))
                if expect in reply:
                    return reply
                if on_line is not None:
                    on_line(reply)
        except OSError as exc:
            raise ControlError(f"the mount's daemon stopped answering {cmd!r} ({exc.strerror or exc})") from exc
    raise ControlError(f"the mount's daemon ended its answer to {cmd!r} without a result (see its log)")
