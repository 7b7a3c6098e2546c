#!/usr/bin/env python3
"""A disk-backed stand-in for GCS, serving the few JSON API calls octuefs makes to write and read one big file.

It exists only because fake-gcs-server cannot hold a 4 GiB object on this machine (it keeps about
six times what it is sent in RAM), so ``scripts/bench.py --big`` could not measure the daemon's
RSS at the size the issue names. It is a measuring tool for RSS at size, not a test double for
correctness: the test suite runs against fake-gcs-server, and nothing here is checked against GCS.

It serves, on 127.0.0.1: stat, listing (prefix, delimiter, pages), media and multipart uploads,
compose, metadata patch, delete, and ``alt=media`` downloads (Range, ``generation=``), with
``ifGenerationMatch``/``ifMetagenerationMatch`` (412) and GCS's JSON errors; of the bucket calls,
only a get (buckets are directories, made with ``--bucket``). No resumable uploads, copies or
older generations. An object is a content file and a JSON sidecar (its resource). Bodies go
through 1 MiB at a time (downloads by sendfile), never a whole object in memory, the CRC32C (for
uploads also the MD5) computed on the way to disk. A composed object has a CRC32C and no MD5, as
on GCS.

    python scripts/bigserver.py --bucket b      # serves until Ctrl-C; STORAGE_EMULATOR_HOST=<URL printed>
    with BigServer(buckets=["b"]) as server:    # in a program: server.url; server.counts (requests by kind)
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime as dt
import email.message
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from urllib.parse import parse_qsl, unquote, urlsplit

import google_crc32c

CHUNK = 1 << 20
# /storage/v1/b/BUCKET/o[/OBJECT], or the same under /upload or /download
ROUTE = re.compile(r"/(?P<area>upload/|download/)?storage/v1/b/(?P<bucket>[^/]+)(?P<objects>/o(?:/(?P<object>.+))?)?")


class HttpError(Exception):
    def __init__(self, code: int, message: str, reason: str):
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def check(meta: dict | None, query: dict, bucket: str, name: str, creating: bool = False) -> None:
    """404 for a missing object (unless ``creating``); 412 if a precondition in ``query`` fails."""
    generation = int(meta["generation"]) if meta else 0
    if (meta is None and not creating) or int(query.get("generation", generation)) != generation:
        raise HttpError(404, f"No such object: {bucket}/{name}", "notFound")  # (no older generations are kept)
    failed = int(query.get("ifGenerationMatch", generation)) != generation
    if "ifMetagenerationMatch" in query:
        failed |= meta is None or int(query["ifMetagenerationMatch"]) != int(meta["metageneration"])
    if failed:
        raise HttpError(412, "At least one of the pre-conditions you specified did not hold.", "conditionNotMet")


class Sink:
    """A new content file in the server's temporary directory, checksummed as it is written."""

    def __init__(self, tmp: str, md5: bool = True):
        fd, self.path = tempfile.mkstemp(dir=tmp)
        self.file = os.fdopen(fd, "wb")
        self.crc, self.md5, self.size = google_crc32c.Checksum(), hashlib.md5() if md5 else None, 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.crc.update(data)
        if self.md5 is not None:
            self.md5.update(data)
        self.size += len(data)

    def close(self) -> dict:
        self.file.close()
        fields = {"size": str(self.size), "crc32c": b64(self.crc.digest())}
        return fields | ({"md5Hash": b64(self.md5.digest())} if self.md5 is not None else {})

    def discard(self) -> None:  # (after commit: nothing left to remove)
        self.file.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class BigServer(http.server.ThreadingHTTPServer):
    """The server, on ``port`` (default: a free one) of 127.0.0.1; a context manager serving from a
    thread. Without ``root`` its objects are in a temporary directory, removed when it stops."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, root: str | os.PathLike | None = None, buckets=(), port: int = 0, verbose: bool = False):
        self.own_root = root is None
        self.root = tempfile.mkdtemp(prefix="octuefs-bigserver-") if root is None else os.fspath(root)
        self.tmp = os.path.join(self.root, ".tmp")
        for directory in (self.tmp, *(os.path.join(self.root, b) for b in buckets)):
            os.makedirs(directory, exist_ok=True)
        self.verbose = verbose
        self.lock = threading.Lock()  # held to change an object, and to read a resource with its content
        self.counts: collections.Counter[str] = collections.Counter()  # "POST upload 200" -> requests
        self._generation = 0
        super().__init__(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> BigServer:
        threading.Thread(target=self.serve_forever, name="bigserver", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def paths(self, bucket: str, name: str) -> tuple[str, str]:
        """The content file and the sidecar of ``bucket/name``."""
        if bucket.startswith(".") or not os.path.isdir(os.path.join(self.root, bucket)):
            raise HttpError(404, "The specified bucket does not exist.", "notFound")
        stem = os.path.join(self.root, bucket, hashlib.sha256(name.encode()).hexdigest())
        return stem + ".data", stem + ".json"

    def resource(self, bucket: str, name: str) -> dict | None:
        try:
            with open(self.paths(bucket, name)[1]) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def save(self, meta: dict) -> None:
        path = self.paths(meta["bucket"], meta["name"])[1]
        with open(path + ".new", "w") as f:
            json.dump(meta, f)
        os.replace(path + ".new", path)

    def commit(self, bucket: str, name: str, sink: Sink, resource: dict, query: dict) -> dict:
        """Make ``sink`` the content of ``bucket/name`` if the preconditions in ``query`` hold."""
        fields = sink.close()
        with self.lock:
            check(self.resource(bucket, name), query, bucket, name, creating=True)
            self._generation = generation = max(time.time_ns() // 1000, self._generation + 1)
            stamp = now()
            meta = {"kind": "storage#object", "id": f"{bucket}/{name}/{generation}", "bucket": bucket, "name": name,
                    "generation": str(generation), "metageneration": "1", "storageClass": "STANDARD",
                    "contentType": resource.get("contentType") or "application/octet-stream",
                    "metadata": {k: v for k, v in (resource.get("metadata") or {}).items() if v is not None},
                    "timeCreated": stamp, "updated": stamp, **fields, "etag": fields["crc32c"]}  # fmt: skip
            os.replace(sink.path, self.paths(bucket, name)[0])
            self.save(meta)
        return meta


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    server: BigServer

    def log_message(self, format: str, *args) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_request(self) -> None:
        url = urlsplit(self.path)
        match = ROUTE.fullmatch(url.path)
        self.query = dict(parse_qsl(url.query, keep_blank_values=True))
        self.unread = bool(self.headers.get("Transfer-Encoding") or int(self.headers.get("Content-Length") or 0))
        kind = self.classify(match) if match else ""
        try:
            if not kind:
                raise HttpError(501, f"bigserver does not implement {self.command} {url.path}", "notImplemented")
            bucket, name = (match[key] and unquote(match[key]) for key in ("bucket", "object"))
            status = getattr(self, kind)(bucket, name)
        except HttpError as exc:
            errors = [{"message": exc.message, "reason": exc.reason}]
            status = self.reply(exc.code, {"error": {"code": exc.code, "message": exc.message, "errors": errors}})
        except (ConnectionError, TimeoutError):
            status, self.close_connection = "disconnected", True
        except Exception:
            traceback.print_exc()
            status = self.reply(500, {"error": {"code": 500, "message": "bigserver: internal error"}})
        with self.server.lock:
            self.server.counts[f"{self.command} {kind or url.path} {status}"] += 1

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_request

    def classify(self, match: re.Match) -> str:
        """The method that answers this request ("" if none does)."""
        method, area, name = self.command, match["area"] or "", match["object"]
        if match["objects"] is None:
            return "get_bucket" if (method, area) == ("GET", "") else ""
        if name is None:
            return {("POST", "upload/"): "upload", ("GET", ""): "list"}.get((method, area), "")
        if (method, area) == ("POST", "") and name.endswith("/compose"):
            return "compose"
        if method == "GET" and (area == "download/" or self.query.get("alt") == "media" and not area):
            return "media"
        return {"GET": "stat", "PATCH": "patch", "DELETE": "delete"}.get(method, "") if not area else ""

    def body(self):
        """The request body, CHUNK bytes at a time (no chunked transfer encoding: the clients send lengths)."""
        if "Transfer-Encoding" in self.headers:
            raise HttpError(501, "bigserver does not implement Transfer-Encoding", "notImplemented")
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            data = self.rfile.read(min(left, CHUNK))
            if not data:
                raise ConnectionError("the client went away in the middle of its request")
            left -= len(data)
            yield data
        self.unread = False

    def json_body(self) -> dict:  # (small bodies only)
        return json.loads(b"".join(self.body()) or b"{}")

    def reply(self, code: int, payload: dict | None) -> int:
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        if self.unread:  # (an error before the request's body was read: the connection cannot be reused)
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
        return code

    # --- the calls -----------------------------------------------------------------------------

    def get_bucket(self, bucket: str, _name: None) -> int:
        self.server.paths(bucket, "")  # (404 for a missing bucket)
        return self.reply(200, {"kind": "storage#bucket", "id": bucket, "name": bucket, "storageClass": "STANDARD"})

    def stat(self, bucket: str, name: str) -> int:
        with self.server.lock:
            meta = self.server.resource(bucket, name)
            check(meta, self.query, bucket, name)
        return self.reply(200, meta)

    def delete(self, bucket: str, name: str) -> int:
        with self.server.lock:
            check(self.server.resource(bucket, name), self.query, bucket, name)
            for path in self.server.paths(bucket, name):
                os.unlink(path)
        return self.reply(204, None)

    def patch(self, bucket: str, name: str) -> int:
        changes = self.json_body()
        with self.server.lock:
            meta = self.server.resource(bucket, name)
            check(meta, self.query, bucket, name)
            if "metadata" in changes:  # merged; a key set to null is removed; metadata null removes all
                merged = {**meta["metadata"], **changes["metadata"]} if changes["metadata"] else {}
                meta["metadata"] = {k: v for k, v in merged.items() if v is not None}
            meta["contentType"] = changes.get("contentType") or meta["contentType"]
            meta["metageneration"], meta["updated"] = str(int(meta["metageneration"]) + 1), now()
            self.server.save(meta)
        return self.reply(200, meta)

    def list(self, bucket: str, _name: None) -> int:
        prefix, delimiter = self.query.get("prefix", ""), self.query.get("delimiter", "")
        entries: dict[str, dict | None] = {}  # name or prefix -> resource (None for a prefix)
        with self.server.lock:
            directory = os.path.dirname(self.server.paths(bucket, "")[0])
            for entry in os.scandir(directory):
                if entry.name.endswith(".json"):
                    with open(entry.path) as f:
                        meta = json.load(f)
                    name = meta["name"]
                    cut = name.find(delimiter, len(prefix)) if delimiter and name.startswith(prefix) else -1
                    if cut >= 0:
                        entries[name[: cut + len(delimiter)]] = None
                    elif name.startswith(prefix):
                        entries[name] = meta
        keys = [k for k in sorted(entries) if k > self.query.get("pageToken", "")]
        page = keys[: int(self.query.get("maxResults") or 1000)]
        answer = {"kind": "storage#objects", "items": [entries[k] for k in page if entries[k] is not None],
                  "prefixes": [k for k in page if entries[k] is None],
                  "nextPageToken": page[-1] if len(keys) > len(page) else None}  # fmt: skip
        return self.reply(200, {k: v for k, v in answer.items() if v})

    def upload(self, bucket: str, _name: None) -> int:
        self.server.paths(bucket, "")  # (404 for a missing bucket before the body is read)
        sink = Sink(self.server.tmp)
        try:
            kind = self.query.get("uploadType")
            if kind == "media":
                resource = {"name": self.query.get("name"), "contentType": self.headers.get("Content-Type")}
                for data in self.body():
                    sink.write(data)
            elif kind == "multipart":
                resource = self.multipart(sink)
            else:
                raise HttpError(501, f"bigserver does not implement uploadType={kind}", "notImplemented")
            if not resource.get("name"):
                raise HttpError(400, "Required parameter: name", "required")
            if resource.get("crc32c", crc := b64(sink.crc.digest())) != crc:
                raise HttpError(400, f"Provided CRC32C {resource['crc32c']!r} does not match the content's", "invalid")
            return self.reply(200, self.server.commit(bucket, resource["name"], sink, resource, self.query))
        finally:
            sink.discard()

    def multipart(self, sink: Sink) -> dict:
        """The resource of a multipart/related upload; its media part streamed to ``sink``."""
        header = email.message.Message()
        header["Content-Type"] = self.headers.get("Content-Type", "")
        raw = (header.get_param("boundary") or "").encode()
        boundary = re.escape(raw)
        head = re.compile(rb"--%s\r\n.*?\r\n\r\n(.*?)\r\n--%s\r\n(.*?)\r\n\r\n" % (boundary, boundary), re.DOTALL)
        chunks, held, match = self.body(), b"", None
        while match is None:  # up to the media part's first byte
            data = next(chunks, b"")
            if not data or len(held) > CHUNK:
                raise HttpError(400, "Malformed multipart body", "invalid")
            held += data
            match = head.match(held)
        resource, held = json.loads(match[1]), held[match.end() :]
        media_type = re.search(rb"(?im)^content-type:[ \t]*([^\r\n]+)", match[2])
        if media_type and not resource.get("contentType"):  # (the media part's type, if the resource has none)
            resource["contentType"] = media_type[1].decode("latin-1").strip()
        closing = re.compile(rb"\r\n--%s--(\r\n)?" % boundary)
        keep = len(raw) + 8  # the longest closing delimiter: all before the last ``keep`` bytes is content
        for data in chunks:
            held += data
            if len(held) > keep:
                sink.write(held[:-keep])
                held = held[-keep:]
        end = closing.search(held)
        if end is None or end.end() != len(held):
            raise HttpError(400, "Malformed multipart body: no closing boundary", "invalid")
        sink.write(held[: end.start()])
        return resource

    def compose(self, bucket: str, name: str) -> int:
        request, name = self.json_body(), name.removesuffix("/compose")
        sources = request.get("sourceObjects") or []
        if not 1 <= len(sources) <= 32:
            raise HttpError(400, "The number of source components provided must be between 1 and 32", "invalid")
        files, sink = [], Sink(self.server.tmp, md5=False)
        try:
            with self.server.lock:  # each source as it is now, resource and content together
                for source in sources:
                    query = {"generation": source["generation"]} if source.get("generation") else {}
                    check(self.server.resource(bucket, source["name"]), query, bucket, source["name"])
                    files.append(open(self.server.paths(bucket, source["name"])[0], "rb"))  # noqa: SIM115
            for f in files:
                while data := f.read(8 * CHUNK):
                    sink.write(data)
            return self.reply(200, self.server.commit(bucket, name, sink, request.get("destination") or {}, self.query))
        finally:
            sink.discard()
            for f in files:
                f.close()

    def media(self, bucket: str, name: str) -> int:
        with self.server.lock:  # the resource and the content it describes
            meta = self.server.resource(bucket, name)
            check(meta, self.query, bucket, name)
            f = open(self.server.paths(bucket, name)[0], "rb")  # noqa: SIM115
        with f:
            size, start, end, code = int(meta["size"]), 0, int(meta["size"]) - 1, 200
            wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
            if wanted and wanted.groups() != ("", ""):
                first, last = wanted.groups()
                start = int(first) if first else max(size - int(last), 0)
                end = min(int(last), size - 1) if first and last else size - 1
                if start >= size or end < start:
                    raise HttpError(416, "The requested range cannot be satisfied.", "requestedRangeNotSatisfiable")
                code = 206
            self.send_response(code)
            hashes = f"crc32c={meta['crc32c']}" + (f",md5={meta['md5Hash']}" if "md5Hash" in meta else "")
            for key, value in (("Content-Type", meta["contentType"]), ("Content-Length", str(end + 1 - start)),
                               ("x-goog-generation", meta["generation"]), ("x-goog-hash", hashes),
                               ("x-goog-metageneration", meta["metageneration"]),
                               ("x-goog-stored-content-length", meta["size"])):  # fmt: skip
                self.send_header(key, value)
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if end >= start:
                self.connection.sendfile(f, start, end + 1 - start)
        return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", help="directory for the objects (default: a temporary one, removed on exit)")
    p.add_argument("--bucket", action="append", default=[], help="a bucket to serve (repeat)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # killed by PID: clean up as for Ctrl-C
    with BigServer(a.root, a.bucket, a.port, a.verbose) as server:
        print(f"bigserver: {server.url}, objects in {server.root}; STORAGE_EMULATOR_HOST={server.url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    print("bigserver: requests: " + ", ".join(f"{k} x{n}" for k, n in sorted(server.counts.items())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
