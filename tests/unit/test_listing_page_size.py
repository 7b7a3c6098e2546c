"""How many entries a listing asks for per page (octuefs.cache.listings: LOOKUP_PAGE, READ_PAGE).

GCS sends at most 1,000 entries a page whatever is asked; fake-gcs-server sends what is asked
(the google-cloud-storage client asks no limit, and gets a whole directory in one answer). A page
that a readdir may read asks for READ_PAGE, so on such a server ``ls -l`` of a directory just
looked up costs one request, as the client's listing does; a page listed for lookups alone asks
for GCS's own 1,000, so a lookup's bounds mean the same on every server."""

from __future__ import annotations

from octuefs.cache import listings
from octuefs.storage import fake
from octuefs.storage.fake import FakeBucket

from .corekit import make_fs


class _AsAsked(FakeBucket):
    """A fake bucket whose pages hold as many entries as asked (fake-gcs-server's way), noting
    ``(prefix, max_results)`` of every list request."""

    def __init__(self, name: str):
        super().__init__(name)
        self.asked: list[tuple[str, int]] = []

    def list_page(self, prefix="", delimiter="/", page_token=None, max_results=1000):
        self.asked.append((prefix, max_results))
        start = max(prefix, fake._decode_token(page_token)) if page_token else prefix
        return self._run("list", lambda: self.server.list(prefix, delimiter, start, max(1, max_results),
                                                          fake._encode_token))

    def reset_calls(self) -> None:
        super().reset_calls()
        self.asked.clear()


def _upload(bucket, names):
    for name in names:
        bucket.upload_bytes(name, name.encode())


def test_ls_l_of_a_directory_just_looked_up_is_one_request_where_the_server_allows(tmp_path):
    bucket = _AsAsked("one-page")
    names = [f"big/o{i:05d}" for i in range(2500)]
    _upload(bucket, names + ["top.txt"])
    fs = make_fs(bucket, tmp_path)
    bucket.reset_calls()
    assert fs.getattr("/big").is_dir  # the kernel's LOOKUP before OPENDIR: its probe is the listing
    entries = fs.readdir("/big")
    assert [n for n, _ in entries] == [n.split("/")[1] for n in names]
    assert [a.size for _, a in entries] == [len(n) for n in names]
    assert [p for p, _ in bucket.asked].count("big/") == 1
    assert ("big/", listings.READ_PAGE) in bucket.asked


def test_a_readdir_asks_for_read_pages_to_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(listings, "READ_PAGE", 1000)  # (a listing of several such pages)
    bucket = _AsAsked("pages")
    names = [f"d/o{i:05d}" for i in range(2500)]
    _upload(bucket, names)
    fs = make_fs(bucket, tmp_path)
    bucket.reset_calls()
    assert [n for n, _ in fs.readdir("/d")] == [n.split("/")[1] for n in names]
    assert [size for p, size in bucket.asked if p == "d/"] == [1000, 1000, 1000]


def test_pages_listed_for_lookups_alone_ask_for_gcs_own_page(tmp_path):
    bucket = _AsAsked("lookups")
    names = [f"d/o{i:05d}" for i in range(2500)]
    _upload(bucket, names)
    fs = make_fs(bucket, tmp_path)
    bucket.reset_calls()
    assert fs.getattr("/d/o00007").size == len("d/o00007")
    fs.fills.settle(10)
    assert [size for p, size in bucket.asked if p == "d/"] and \
        all(size == listings.LOOKUP_PAGE for p, size in bucket.asked if p == "d/")
    assert all(size == listings.READ_PAGE for p, size in bucket.asked if p == "d/o00007/")  # the probe
