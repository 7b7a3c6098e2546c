"""GCS's precondition and metageneration rules, kept by a proxy in front of fake-gcs-server.

fake-gcs-server (1.54) ignores preconditions on patch, copy, delete and compose (uploads honour
``ifGenerationMatch`` only) and never moves the metageneration on a patch. :class:`GCSRules`
is what :class:`tests.faultproxy.FaultProxy` consults with ``strict=True``:

* it tracks each object's metageneration itself: 1 for every generation it has not seen
  patched, one more on every successful metadata patch (PATCH or PUT of an object), gone with
  the object on a delete;
* it rewrites ``metageneration`` in JSON answers (an object, a listing's ``items``, a rewrite's
  ``resource``) to the tracked value;
* before forwarding a patch, copy (``copyTo``/``rewriteTo``), delete, compose, or an upload with
  a precondition, it takes the object's lock (held until the answer is back, so the check and
  the change are one step for every client of the proxy), reads the object from the server, and
  answers 412 in GCS's JSON error shape if ``ifGenerationMatch``, ``ifMetagenerationMatch``,
  ``ifSourceGenerationMatch`` or ``ifSourceMetagenerationMatch`` does not hold. A metageneration
  precondition on an absent object fails, as on GCS.

Resumable uploads are judged when their session is opened (GCS judges them at the last chunk).
Requests that go to the server directly, not through the proxy, are not seen: their objects
count as unpatched.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import json
import threading
import urllib.parse
from collections.abc import Mapping

_PRECONDITIONS = ("ifGenerationMatch", "ifMetagenerationMatch", "ifSourceGenerationMatch",
                  "ifSourceMetagenerationMatch")


@dataclasses.dataclass
class Request:
    """What the rules need to know of one request to the JSON API."""

    op: str  # get, list, patch, delete, copy, compose, upload, other
    bucket: str | None = None
    name: str | None = None
    source: tuple[str, str] | None = None  # (bucket, name) of a copy's source
    sources: list[str] = dataclasses.field(default_factory=list)  # a compose's, once its body is read
    query: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def guarded(self) -> bool:
        return any(k in self.query for k in _PRECONDITIONS)


def parse(method: str, target: str) -> Request:
    """Classify a request by method and path (names are percent-decoded)."""
    path, _, raw_query = target.partition("?")
    query = dict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True))
    parts = [urllib.parse.unquote(p) for p in path.split("/")]
    if parts[:2] == ["", "upload"]:
        parts = parts[1:]
        if parts[1:4] == ["storage", "v1", "b"] and len(parts) >= 6 and method in ("POST", "PUT"):
            return Request("upload", parts[4], query.get("name"), query=query)
        return Request("other", query=query)
    if parts[1:4] != ["storage", "v1", "b"] or len(parts) < 6 or parts[5] != "o":
        return Request("other", query=query)
    bucket = parts[4]
    if len(parts) == 6:
        return Request("list" if method == "GET" else "other", bucket, query=query)
    name = parts[6]
    if len(parts) == 8 and parts[7] == "compose" and method == "POST":
        return Request("compose", bucket, name, query=query)
    if len(parts) == 12 and parts[7] in ("copyTo", "rewriteTo") and parts[10] == "o" and method == "POST":
        return Request("copy", parts[9], parts[11], source=(bucket, name), query=query)
    if len(parts) != 7:
        return Request("other", query=query)
    op = {"GET": "get", "PATCH": "patch", "PUT": "patch", "DELETE": "delete"}.get(method, "other")
    return Request(op, bucket, name, query=query)


def upload_name(content_type: str, body: bytes) -> str | None:
    """The object name in an upload's body: a multipart upload's first part, or a resumable
    upload's JSON resource."""
    try:
        if content_type.startswith("multipart/"):
            first = body.split(b"\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0]
            return json.loads(first).get("name")
        if body.strip():
            return json.loads(body).get("name")
    except (IndexError, ValueError, AttributeError):
        return None
    return None


def compose_sources(body: bytes) -> list[str]:
    """The source names in a compose request's body."""
    try:
        return [str(source["name"]) for source in json.loads(body).get("sourceObjects", ())]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


def error_body(status: int, message: str) -> bytes:
    """An error answer in GCS's JSON shape."""
    reason = {412: "conditionNotMet", 404: "notFound"}.get(status, "invalid")
    return json.dumps({"error": {"code": status, "message": message,
                                 "errors": [{"domain": "global", "reason": reason, "message": message,
                                             "locationType": "header", "location": "If-Match"}]}}).encode()


class Refused(Exception):
    """A precondition does not hold: answer ``status`` with ``message``, forward nothing."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class GCSRules:
    """See the module docstring. ``_lock`` guards ``_meta`` and ``_locks``; an object's own lock
    (from :meth:`hold`) is taken before ``_lock``, never the other way round."""

    def __init__(self, host: str, port: int):
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._meta: dict[tuple[str, str], tuple[int, int]] = {}  # (bucket, name) -> (generation, metageneration)
        self._locks: collections.defaultdict[tuple[str, str], threading.Lock] = collections.defaultdict(threading.Lock)
        self.refused = 0  # 412s answered by the rules

    def hold(self, bucket: str, name: str) -> threading.Lock:
        """The lock that orders the checked requests on one object."""
        with self._lock:
            return self._locks[(bucket, name)]

    # --- what the server holds ---------------------------------------------------------------

    def _lookup(self, bucket: str, name: str) -> tuple[int, int] | None:
        """The object's (generation, metageneration) as GCS would say, or None if absent."""
        conn = http.client.HTTPConnection(self._host, self._port, timeout=30)
        try:
            path = f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/{urllib.parse.quote(name, safe='')}"
            conn.request("GET", path + "?projection=noAcl", headers={"Host": f"{self._host}:{self._port}"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status == 404:
            return None
        if response.status != 200:
            raise Refused(503, f"strict proxy: looking up {name!r} for a precondition got HTTP {response.status}")
        generation = int(json.loads(body)["generation"])
        return generation, self.metageneration(bucket, name, generation)

    def metageneration(self, bucket: str, name: str, generation: int) -> int:
        with self._lock:
            known = self._meta.get((bucket, name))
            if known is not None and known[0] == generation:
                return known[1]
            self._meta[(bucket, name)] = (generation, 1)  # a generation not seen before starts at 1
            return 1

    # --- before forwarding (with the object's lock held) ---------------------------------------

    def check(self, request: Request, name: str) -> tuple[int, int] | None:
        """Raise :class:`Refused` if a precondition of ``request`` on ``name`` does not hold;
        else what the object was, if it was looked up (always, for a patch)."""
        query = request.query
        want_gen, want_meta = query.get("ifGenerationMatch"), query.get("ifMetagenerationMatch")
        current = None
        if want_gen is not None or want_meta is not None or request.op == "patch":
            current = self._lookup(request.bucket, name)
            if current is None and request.op in ("patch", "delete"):
                raise Refused(404, f"No such object: {request.bucket}/{name}")
            if want_gen is not None and int(want_gen) != (current[0] if current else 0):
                self._refuse(name, f"generation is {current[0] if current else 0}, not {want_gen}")
            if want_meta is not None and (current is None or int(want_meta) != current[1]):
                shown = "absent" if current is None else f"at metageneration {current[1]}"
                self._refuse(name, f"{shown}, not at metageneration {want_meta}")
        for source in request.sources:  # GCS: 404 for a missing source (fake-gcs-server: 500)
            if self._lookup(request.bucket, source) is None:
                raise Refused(404, f"No such object: {request.bucket}/{source}")
        want_source = query.get("ifSourceGenerationMatch")
        want_source_meta = query.get("ifSourceMetagenerationMatch")
        if (want_source is not None or want_source_meta is not None) and request.source is not None:
            source = self._lookup(*request.source)
            if source is None:
                raise Refused(404, f"No such object: {request.source[0]}/{request.source[1]}")
            if want_source is not None and int(want_source) != source[0]:
                self._refuse(request.source[1], f"source generation is {source[0]}, not {want_source}")
            if want_source_meta is not None and int(want_source_meta) != source[1]:
                self._refuse(request.source[1], f"source metageneration is {source[1]}, not {want_source_meta}")
        return current

    def _refuse(self, name: str, why: str) -> None:
        with self._lock:
            self.refused += 1
        raise Refused(412, f"At least one of the pre-conditions you specified did not hold. ({name}: {why})")

    # --- after a successful answer -------------------------------------------------------------

    def rewrite(self, request: Request, status: int, body: bytes, before: tuple[int, int] | None = None) -> bytes:
        """Note what a request changed that the server's answer does not say, and return the
        answer's JSON with each object's metageneration as GCS would give it. ``before``: what
        a patched object was (from :meth:`check`)."""
        if not 200 <= status < 300:
            return body
        if request.op == "delete" and request.name is not None:
            with self._lock:
                self._meta.pop((request.bucket, request.name), None)
            return body
        try:
            answer = json.loads(body)
        except ValueError:
            return body
        if not isinstance(answer, dict):
            return body
        resources = answer.get("items") if request.op == "list" else [answer.get("resource", answer)]
        changed = False
        for resource in resources or ():
            if not isinstance(resource, dict) or "generation" not in resource or "name" not in resource:
                continue
            bucket = resource.get("bucket") or request.bucket
            generation = int(resource["generation"])
            if request.op == "patch":
                with self._lock:  # the patch moved it (the same generation on GCS; carried over if not)
                    self._meta[(bucket, resource["name"])] = (generation, (before[1] if before else 1) + 1)
            meta = str(self.metageneration(bucket, resource["name"], generation))
            if resource.get("metageneration") != meta:
                resource["metageneration"] = meta
                changed = True
        return json.dumps(answer).encode() if changed else body
