"""The write-through front of a persistent local emulator: an HTTP server on 127.0.0.1 that
passes the JSON API through to fake-gcs-server and answers a mutation only once
:class:`~octuefs.local.journal.Journal` has it on disk.

What it adds to the server behind it:

* **Durability.** An upload, compose, copy/rewrite, metadata patch or delete that succeeded is
  journaled (fdatasync) before the client sees the answer; so is a bucket's creation or deletion.
  Any other mutating request (batch, XML API, ``/_internal``) is refused with 501, so nothing
  changes the buckets behind the journal's back.
* **Stable generations and metagenerations.** The client sees the generations objects had when
  written, also after a restart, and a metageneration that a patch moves (as GCS does; the
  memory backend keeps "1"). Preconditions (``ifGenerationMatch``, ``ifMetagenerationMatch``,
  their ``Not`` and ``Source`` forms, compose's ``objectPreconditions``) are checked here,
  against the journal, under the object's lock, and answered 412 as GCS does.
* **One user.** Connections from another local user are refused (see
  :mod:`octuefs.local.proxy`, which holds the HTTP plumbing this module builds on).
* **No answer from a failed journal.** After the journal failed to keep a change (a full disk,
  a failed fdatasync), every request is refused with 503 until a restart.

Mutations of one object run one at a time (a striped lock per bucket and name, taken for the
request, its journaling and its answer), so the journal's order is the server's. Reads are not
locked; a read that sees a version the journal does not know yet waits for that object's lock.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
import urllib.parse

from octuefs.local.journal import INLINE_MAX, Journal, Stored, md5_b64
from octuefs.local.proxy import LoopbackServer, PassThroughHandler
from octuefs.local.snapshots import manifest_entry

log = logging.getLogger(__name__)

_CONDITIONS = ("ifGenerationMatch", "ifGenerationNotMatch", "ifMetagenerationMatch", "ifMetagenerationNotMatch")
_SOURCE_CONDITIONS = tuple(c.replace("if", "ifSource", 1) for c in _CONDITIONS)
_OBJECT = re.compile(r"^/storage/v1/b/([^/]+)/o/([^/]+)$")
_COMPOSE = re.compile(r"^/storage/v1/b/([^/]+)/o/([^/]+)/compose$")
_REWRITE = re.compile(r"^/storage/v1/b/([^/]+)/o/([^/]+)/(?:rewriteTo|copyTo)/b/([^/]+)/o/([^/]+)$")
_BUCKETS = re.compile(r"^/storage/v1/b/?$")
_BUCKET = re.compile(r"^/storage/v1/b/([^/]+)$")
_UPLOAD = re.compile(r"^/upload/storage/v1/b/([^/]+)/o/?$")
_RESUMABLE = re.compile(r"^/upload/resumable/([^/]+)$")
_DOWNLOAD = re.compile(r"^/download/storage/v1/b/([^/]+)/o/([^/]+)$")
_STRIPES = 256


class _Refused(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason = status, reason


def _unq(segment: str) -> str:
    return urllib.parse.unquote(segment)


def check(query: dict[str, str], stored: Stored | None, names=_CONDITIONS, missing_ok: bool = False) -> None:
    """Raise a 412 unless ``query``'s preconditions hold for ``stored`` (None: no such object).
    ``missing_ok``: a missing object is the server's to answer (404), not a failed precondition."""
    gen_match, gen_not, meta_match, meta_not = (query.get(n) for n in names)
    if stored is None:
        if missing_ok:
            return
        ok = gen_match in (None, "0") and meta_match is None
    else:
        ok = ((gen_match is None or int(gen_match) == stored.generation)
              and (gen_not is None or int(gen_not) != stored.generation)
              and (meta_match is None or int(meta_match) == stored.metageneration)
              and (meta_not is None or int(meta_not) != stored.metageneration))  # fmt: skip
    if not ok:
        raise _Refused(412, "conditionNotMet", "At least one of the pre-conditions you specified did not hold.")


class Front(LoopbackServer):
    """The front on ``127.0.0.1:port`` for the server on ``127.0.0.1:server_port``."""

    def __init__(self, port: int, server_port: int, journal: Journal):
        self.journal = journal
        self.locks = [threading.RLock() for _ in range(_STRIPES)]
        self.resumable: dict[str, tuple[str, str, dict[str, str]]] = {}  # upload id -> (bucket, name, conditions)
        super().__init__(port, server_port, _Handler)

    def lock_of(self, *keys: tuple[str, str]) -> list[threading.RLock]:
        return [self.locks[i] for i in sorted({hash(k) % _STRIPES for k in keys})]


class _Handler(PassThroughHandler):
    server: Front

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # --- dispatch --------------------------------------------------------------------------

    def _handle(self) -> None:
        self._request_body = None
        try:
            if self.server.journal.failed is not None:
                raise _Refused(503, "backendError", f"the local emulator's journal failed ({self.server.journal.failed}); "
                               "nothing acknowledged is lost: unmount and mount again")  # fmt: skip
            self._dispatch()
        except _Refused as exc:
            self._drain()
            self._send_json(exc.status, {"error": {"code": exc.status, "message": str(exc),
                                                   "errors": [{"reason": exc.reason, "message": str(exc)}]}})  # fmt: skip
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            log.warning("local emulator front: %s %s: %s", self.command, self.path, exc)
            self.close_connection = True
            try:
                self._send_json(502, {"error": {"code": 502, "message": f"local emulator: {exc}"}})
            except OSError:
                pass

    def _dispatch(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        path, method = split.path, self.command
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        if method in ("GET", "HEAD"):
            return self._read(path, query)
        if m := _UPLOAD.match(path):
            if method == "POST":
                return self._upload(_unq(m[1]), query)
            if method == "PUT":
                return self._resumable_put(query.get("upload_id", ""), query)
            if method == "DELETE":
                self.server.resumable.pop(query.get("upload_id", ""), None)
                return self._pass(query)
        if (m := _RESUMABLE.match(path)) and method in ("PUT", "POST"):
            return self._resumable_put(_unq(m[1]), query)
        if (m := _OBJECT.match(path)) and method in ("PATCH", "PUT", "DELETE"):
            key = (_unq(m[1]), _unq(m[2]))
            return self._delete(key, query) if method == "DELETE" else self._patch(key, query)
        if (m := _COMPOSE.match(path)) and method == "POST":
            return self._compose((_unq(m[1]), _unq(m[2])), query)
        if (m := _REWRITE.match(path)) and method == "POST":
            return self._rewrite((_unq(m[1]), _unq(m[2])), (_unq(m[3]), _unq(m[4])), query)
        if _BUCKETS.match(path) and method == "POST":
            status, headers, body = self._forward(query, self._body())
            if status == 200:
                self.server.journal.bucket_created(json.loads(body)["name"])
            return self._send(status, headers, body)
        if (m := _BUCKET.match(path)) and method == "DELETE":
            status, headers, body = self._forward(query, self._body())
            if status in (200, 204):
                self.server.journal.bucket_deleted(_unq(m[1]))
            return self._send(status, headers, body)
        raise _Refused(501, "notImplemented", f"the local emulator does not take {method} {path} (it would not be kept)")

    # --- reads -----------------------------------------------------------------------------

    def _read(self, path: str, query: dict[str, str]) -> None:
        m = _DOWNLOAD.match(path) or _OBJECT.match(path)
        key = (_unq(m[1]), _unq(m[2])) if m else None
        if key is not None:
            self._translate_generation(query, "generation", key)
        upstream = self._open(query, None)
        with upstream:
            if (upstream.getheader("Content-Type") or "").startswith("application/json"):
                body = upstream.read()
                if upstream.status == 200:
                    body = self._translated(body)
                return self._send(upstream.status, upstream.getheaders(), body)
            headers = upstream.getheaders()
            if key is not None:
                headers = self._translated_headers(key, headers)
            self._stream(upstream, headers)

    def _translated(self, body: bytes) -> bytes:
        try:
            data = json.loads(body)
        except ValueError:
            return body
        if not isinstance(data, dict):
            return body
        for resource in data.get("items", []) if "items" in data else [data]:
            if isinstance(resource, dict) and resource.get("kind") == "storage#object":
                self._show_stable(resource)
        return json.dumps(data).encode()

    def _show_stable(self, resource: dict) -> None:
        key = (resource.get("bucket"), resource.get("name"))
        server_generation = resource.get("generation")
        stored = self.server.journal.get(*key)
        if stored is None or str(stored.server_generation) != server_generation:
            for lock in self.server.lock_of(key):  # a mutation in flight: wait for its journaling
                with lock:
                    pass
            stored = self.server.journal.get(*key)
        if stored is not None and str(stored.server_generation) == server_generation:
            _show(resource, stored)

    def _translated_headers(self, key, headers):
        stored = self.server.journal.get(*key)
        if stored is None:
            return headers
        out = []
        for name, value in headers:
            if name.lower() == "x-goog-generation" and value == str(stored.server_generation):
                out += [(name, str(stored.generation)), ("X-Goog-Metageneration", str(stored.metageneration))]
            elif name.lower() != "x-goog-metageneration":
                out.append((name, value))
        return out

    def _translate_generation(self, query: dict[str, str], param: str, key) -> None:
        if param in query:
            stored = self.server.journal.get(*key)
            if stored is not None and query[param] == str(stored.generation):
                query[param] = str(stored.server_generation)

    # --- mutations -------------------------------------------------------------------------

    def _upload(self, bucket: str, query: dict[str, str]) -> None:
        kind = query.get("uploadType", "")
        sent = None  # the object's bytes as sent, if they can be told apart in the body
        if kind == "multipart":
            body = self._body()
            name, sent = _multipart(self.headers.get("Content-Type", ""), body)
            name = query.get("name") or name
        elif kind == "resumable":
            body = self._body()
            name = query.get("name") or json.loads(body or b"{}").get("name")
            conditions = {c: query.pop(c) for c in _CONDITIONS if c in query}
            status, headers, answer = self._forward(query, body)
            upload_id = _upload_id(dict((k.lower(), v) for k, v in headers).get("location", ""))
            if status == 200 and not upload_id:  # its chunks could not be told apart: not kept
                raise _Refused(501, "notImplemented", "the local emulator cannot follow this resumable upload")
            if status == 200:
                self.server.resumable[upload_id] = (bucket, name, conditions)
            return self._send(status, headers, answer)
        else:
            body = self._body_stream()
            name = query.get("name")
        if not name:
            raise _Refused(400, "required", "the upload names no object")
        key = (bucket, name)
        with _locked(self.server.lock_of(key)):
            check(query, self.server.journal.get(*key))
            status, headers, answer = self._forward(_strip(query), body)
            self._created(key, status, headers, answer, sent=sent)

    def _resumable_put(self, upload_id: str, query: dict[str, str]) -> None:
        known = self.server.resumable.get(upload_id)
        if known is None:  # never begun through the front, or done: the server must not take it unjournaled
            raise _Refused(404, "notFound", f"no resumable upload {upload_id!r}")
        bucket, name, conditions = known
        key = (bucket, name)
        with _locked(self.server.lock_of(key)):
            check(conditions, self.server.journal.get(*key))
            status, headers, answer = self._forward(query, self._body_stream())
            if status in (200, 201):
                self.server.resumable.pop(upload_id, None)
            self._created(key, status, headers, answer)

    def _compose(self, key, query: dict[str, str]) -> None:
        request = json.loads(self._body())
        sources = [(key[0], s["name"]) for s in request.get("sourceObjects", [])]
        with _locked(self.server.lock_of(key, *sources)):
            check(query, self.server.journal.get(*key))
            for source in request.get("sourceObjects", []):
                stored = self.server.journal.get(key[0], source["name"])
                wanted = source.get("objectPreconditions", {}).get("ifGenerationMatch")
                if wanted is not None:
                    check({"ifGenerationMatch": str(wanted)}, stored)
                    source["objectPreconditions"]["ifGenerationMatch"] = str(stored.server_generation)
                if source.get("generation") is not None and stored is not None and int(source["generation"]) == stored.generation:
                    source["generation"] = str(stored.server_generation)
            status, headers, answer = self._forward(_strip(query), json.dumps(request).encode(),
                                                    content_type="application/json")  # fmt: skip
            self._created(key, status, headers, answer)

    def _rewrite(self, source, key, query: dict[str, str]) -> None:
        body = self._body()
        with _locked(self.server.lock_of(source, key)):
            check(query, self.server.journal.get(*key))
            check(query, self.server.journal.get(*source), _SOURCE_CONDITIONS, missing_ok=True)
            self._translate_generation(query, "sourceGeneration", source)
            query = {k: v for k, v in _strip(query).items() if k not in _SOURCE_CONDITIONS}
            status, headers, answer = self._forward(query, body)
            if status == 200 and not json.loads(answer).get("done", True):
                raise _Refused(501, "notImplemented", "a rewrite in several calls is not kept by the local emulator")
            if status == 200:
                resource = json.loads(answer)
                created = self._created(key, status, headers, json.dumps(resource.get("resource", resource)).encode(), send=False)
                if "resource" in resource:
                    resource["resource"] = created
                else:
                    resource = created
                answer = json.dumps(resource).encode()
            self._send(status, headers, answer)

    def _patch(self, key, query: dict[str, str]) -> None:
        body = self._body()
        with _locked(self.server.lock_of(key)):
            stored = self.server.journal.get(*key)
            check(query, stored, missing_ok=True)
            status, headers, answer = self._forward(_strip(query), body)
            if status == 200 and stored is not None:
                resource = json.loads(answer)
                entry = {**manifest_entry(resource), "generation": str(stored.generation),
                         "metageneration": str(stored.metageneration + 1)}  # fmt: skip
                if "blob" in stored.entry:
                    entry["blob"] = stored.entry["blob"]
                self.server.journal.put(key[0], entry, int(resource["generation"]), stored.data)
                _show(resource, self.server.journal.get(*key))
                answer = json.dumps(resource).encode()
            self._send(status, headers, answer)

    def _delete(self, key, query: dict[str, str]) -> None:
        body = self._body()
        with _locked(self.server.lock_of(key)):
            stored = self.server.journal.get(*key)
            check(query, stored, missing_ok=True)
            self._translate_generation(query, "generation", key)
            status, headers, answer = self._forward(_strip(query), body)
            if status in (200, 204):
                self.server.journal.delete(*key)
            self._send(status, headers, answer)

    def _created(self, key, status: int, headers, answer: bytes, send: bool = True, sent: bytes | None = None):
        """Journal the object version a successful request made, then answer; holds the object's
        lock. Its bytes are ``sent`` (what the client sent) when the server's MD5 of the object
        says they are what it stored, else fetched back from the server, pinned to its generation."""
        if status not in (200, 201):
            return self._send(status, headers, answer) if send else None
        resource = json.loads(answer)
        server_generation = int(resource["generation"])
        entry = {**manifest_entry(resource), "generation": str(server_generation), "metageneration": "1"}
        if sent is not None and len(sent) == entry["size"] <= INLINE_MAX and md5_b64(sent) == entry.get("md5Hash"):
            self.server.journal.put(key[0], entry, server_generation, sent)
        else:
            self._fetched(key, entry, server_generation)
        resource["metageneration"] = "1"
        if send:
            self._send(status, headers, json.dumps(resource).encode())
        return resource

    def _fetched(self, key, entry: dict, server_generation: int) -> None:
        """Journal ``entry`` with its bytes read back from the server."""
        what = f"gs://{key[0]}/{key[1]}"
        query = urllib.parse.urlencode({"alt": "media", "generation": server_generation})
        path = f"/download/storage/v1/b/{_q(key[0])}/o/{_q(key[1])}?{query}"
        with self._upstream().request_stream("GET", path, {"Accept-Encoding": "gzip"}) as upstream:
            if upstream.status != 200:
                raise OSError(f"{what} vanished from the server before it was journaled (HTTP {upstream.status})")
            if entry["size"] <= INLINE_MAX:
                data = upstream.read()
                if entry.get("md5Hash") and md5_b64(data) != entry["md5Hash"]:
                    raise OSError(f"{what}: the server's bytes do not match its MD5")
                self.server.journal.put(key[0], entry, server_generation, data)
            else:
                entry["blob"] = self.server.journal.blob(iter(lambda: upstream.read(1 << 20), b""), what, entry.get("md5Hash"))
                self.server.journal.put(key[0], entry, server_generation)

class _locked:
    def __init__(self, locks):
        self.locks = locks

    def __enter__(self):
        for lock in self.locks:
            lock.acquire()

    def __exit__(self, *exc_info):
        for lock in reversed(self.locks):
            lock.release()


def _show(resource: dict, stored: Stored) -> None:
    """Make ``resource`` (the server's view of ``stored``) show its stable generations."""
    server_generation = str(stored.server_generation)
    generation = str(stored.generation)
    resource["generation"] = generation
    resource["metageneration"] = str(stored.metageneration)
    for field in ("id", "mediaLink", "selfLink"):
        if isinstance(resource.get(field), str) and server_generation != generation:
            resource[field] = resource[field].replace(server_generation, generation)


def _strip(query: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in query.items() if k not in _CONDITIONS}


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _upload_id(location: str) -> str | None:
    split = urllib.parse.urlsplit(location)
    found = dict(urllib.parse.parse_qsl(split.query)).get("upload_id")
    if found:
        return found
    m = _RESUMABLE.match(split.path)
    return _unq(m[1]) if m else None


def _multipart(content_type: str, body: bytes) -> tuple[str | None, bytes | None]:
    """The object name in a multipart upload's metadata part, and its media part's bytes (None
    for what cannot be found)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        return None, None
    delimiter = b"--" + m[1].encode()
    parts = body.split(delimiter, 3)
    if len(parts) < 3:
        return None, None
    _headers, _, rest = parts[1].partition(b"\r\n\r\n")
    try:
        name = json.loads(rest.strip()).get("name")
    except (ValueError, AttributeError):
        name = None
    start = body.find(b"\r\n\r\n", len(parts[0]) + len(delimiter) + len(parts[1]) + len(delimiter))
    end = body.rfind(b"\r\n" + delimiter + b"--")
    if start < 0 or end < start + 4:
        return name, None
    return name, body[start + 4 : end]


