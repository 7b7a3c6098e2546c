"""A listing asks only for the fields it reads (``fields=``, GCS's partial response): what
object_info makes of an entry cut to those fields is what it makes of the whole entry."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from octuefs.storage.jsonapi import LIST_FIELDS, OBJECT_FIELDS, JsonApi, object_info

FULL = {
    "kind": "storage#object", "id": "b/d/f.csv/1", "selfLink": "http://x/storage/v1/b/b/o/d%2Ff.csv",
    "mediaLink": "http://x/download/storage/v1/b/b/o/d%2Ff.csv?alt=media", "name": "d/f.csv", "bucket": "b",
    "generation": "1700000000000001", "metageneration": "3", "contentType": "text/csv", "storageClass": "STANDARD",
    "size": "123", "md5Hash": "A1AGk+Y22NBuB/mRtdt7xg==", "crc32c": "nYdZ1w==", "etag": "CNGz",
    "timeCreated": "2026-01-02T03:04:05.678Z", "updated": "2026-01-02T03:04:06.789Z",
    "timeStorageClassUpdated": "2026-01-02T03:04:05.678Z",
    "metadata": {"goog-reserved-posix-mode": "640", "octue__tags": "{}"},
}


def test_an_entry_cut_to_the_listed_fields_reads_as_the_whole_entry():
    cut = {k: v for k, v in FULL.items() if k in OBJECT_FIELDS}
    assert object_info(cut) is not None and object_info(cut) == object_info(FULL)
    assert object_info(cut).metadata == FULL["metadata"]


def test_a_listing_request_asks_for_those_fields_prefixes_and_the_next_token(monkeypatch):
    api = JsonApi(None, "http://127.0.0.1:1", "b", http=object())
    urls = []

    class _Answer:
        data = b'{"items": []}'

    monkeypatch.setattr(JsonApi, "_request", lambda self, method, url, timeout, **kw: urls.append(url) or _Answer())
    assert api.list_objects("d/", "/", "tok", 1000, 5.0) == b'{"items": []}'
    query = parse_qs(urlsplit(urls[0]).query)
    assert query["fields"] == [LIST_FIELDS]
    assert LIST_FIELDS.startswith("items(") and LIST_FIELDS.endswith("),prefixes,nextPageToken")
    assert query["prefix"] == ["d/"] and query["pageToken"] == ["tok"] and query["maxResults"] == ["1000"]
