"""The mount root's first page, listed by the bucket's check before the mount, kept as a fill's
first page (``DirectoryFills.seed``): the first lookups at the root ask the bucket nothing, and
the page is as fresh as any listing: a name it does not show is "does not exist" only within
--negative-ttl of when the check asked, one it shows lasts --list-ttl, and a page with more after
it is gone on from where it stopped. Request counts are the fake bucket's; times a fake clock's."""

from __future__ import annotations

from octuefs.cache.listings import READ_PAGE, DirectoryFills
from octuefs.cache.metacache import DIR, MISSING, MetadataCache
from octuefs.namespace import Namespace
from octuefs.storage.fake import FakeBucket

NEGATIVE_TTL, LIST_TTL = 5.0, 30.0


class _Recording(FakeBucket):
    """Notes (prefix, page_token) of every list request."""

    def __init__(self, name: str):
        super().__init__(name)
        self.listed: list[tuple[str, str | None]] = []

    def list_page(self, prefix="", delimiter="/", page_token=None, max_results=1000):
        self.listed.append((prefix, page_token))
        return super().list_page(prefix, delimiter, page_token, max_results)

    def reset_calls(self) -> None:
        super().reset_calls()
        self.listed.clear()


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _setup(names, prefix="", page_size=READ_PAGE):
    """A bucket holding ``names``, fills over it with the root's first page seeded as the check
    would list it (``page_size`` entries), and the clock; the bucket's counts reset."""
    bucket = _Recording("seeded")
    for name in names:
        bucket.upload_bytes(name, name.encode())
    clock = _Clock()
    metacache = MetadataCache(30.0, LIST_TTL, NEGATIVE_TTL, timer=clock)
    fills = DirectoryFills(bucket, metacache, Namespace(prefix))
    epoch = metacache.epoch(prefix)
    sent = clock.now
    page = bucket.list_page(prefix, "/", max_results=page_size)
    clock.now += 0.05  # the check answered, the mount is built
    bucket.reset_calls()
    return bucket, clock, metacache, fills, page, sent, epoch


def test_the_checks_page_answers_the_roots_names_with_no_request():
    names = [f"f{i:03d}.csv" for i in range(50)] + ["d/inner.txt"]
    bucket, _clock, _mc, fills, page, sent, epoch = _setup(names)
    assert fills.seed(page, sent, epoch)
    assert fills.lookup("f007.csv").size == len(b"f007.csv")
    assert fills.lookup("d") is DIR
    assert fills.lookup("nothing-here") is MISSING  # within --negative-ttl of the check
    whole = list(fills.pages(""))  # ls of the root: the page, whole
    assert [n for n, _ in whole[0].files] == [f"f{i:03d}.csv" for i in range(50)] and whole[0].dirs == ["d"]
    assert len(whole) == 1
    assert bucket.listed == [] and bucket.calls["stat"] == 0


def test_past_negative_ttl_a_name_uploaded_elsewhere_is_found_and_one_deleted_goes_with_the_listing():
    bucket, clock, _mc, fills, page, sent, epoch = _setup(["a.txt", "gone.txt"])
    assert fills.seed(page, sent, epoch)
    bucket.upload_bytes("new.txt", b"uploaded elsewhere")
    bucket.delete("gone.txt")
    bucket.reset_calls()
    assert fills.lookup("new.txt") is MISSING  # the check's page, within --negative-ttl of when it asked
    assert fills.lookup("gone.txt").size == len(b"gone.txt")  # shown: believed for --list-ttl, as any listing
    assert bucket.listed == []
    clock.now = sent + NEGATIVE_TTL  # (absence lasts negative_ttl from when the check *sent* its request)
    assert fills.lookup("new.txt").size == len(b"uploaded elsewhere")
    assert ("", None) in bucket.listed and len(bucket.listed) <= 2  # the root relisted (beside a probe of new.txt/)
    assert fills.lookup("gone.txt") is MISSING  # the relist refreshed every name


def test_a_page_older_than_list_ttl_is_not_kept():
    bucket, clock, _mc, fills, page, sent, epoch = _setup(["a.txt"])
    clock.now = sent + LIST_TTL
    assert not fills.seed(page, sent, epoch)
    assert fills.lookup("a.txt").size == len(b"a.txt")
    assert ("", None) in bucket.listed


def test_a_page_with_more_after_it_is_gone_on_from_where_it_stopped():
    names = [f"f{i:02d}" for i in range(30)]
    bucket, _clock, _mc, fills, page, sent, epoch = _setup(names, page_size=10)
    assert page.next_token
    assert fills.seed(page, sent, epoch)
    assert fills.lookup("f03").size == 3 and bucket.listed == []  # within the page
    assert fills.lookup("f25").size == 3  # past it: the listing goes on from its token
    assert bucket.listed and all(token is not None for _, token in bucket.listed)
    bucket.reset_calls()
    fills.settle(5)
    listed = [n for p in fills.pages("") for n, _ in p.files]
    assert listed == names
    assert all(token is not None for _, token in bucket.listed)  # the first page never asked again


def test_readdir_right_after_the_mount_starts_at_the_second_page():
    names = [f"f{i:02d}" for i in range(30)]
    bucket, _clock, _mc, fills, page, sent, epoch = _setup(names, page_size=10)
    assert fills.seed(page, sent, epoch)
    assert [n for p in fills.pages("") for n, _ in p.files] == names
    assert bucket.listed == [("", page.next_token)]  # the rest in one page (the fake's 1,000)


def test_a_stale_absent_name_within_a_partial_page_is_decided_by_a_new_listing():
    names = [f"f{i:02d}" for i in range(30)]
    bucket, clock, _mc, fills, page, sent, epoch = _setup(names, page_size=10)
    assert fills.seed(page, sent, epoch)
    bucket.upload_bytes("f05x", b"elsewhere")
    clock.now = sent + NEGATIVE_TTL + 1
    assert fills.lookup("f05x").size == len(b"elsewhere")
    assert ("", None) in bucket.listed  # listed anew from the start, not the old listing's rest


def test_the_mounts_changes_since_the_check_are_laid_over_its_page():
    bucket, _clock, metacache, fills, page, sent, epoch = _setup(["a.txt", "b.txt"])
    metacache.wrote(bucket.upload_bytes("mine.txt", b"written through the mount"))
    metacache.removed("b.txt")
    assert fills.seed(page, sent, epoch)
    assert fills.lookup("mine.txt").size == len(b"written through the mount")
    assert fills.lookup("b.txt") is MISSING


def test_a_prefix_mount_keeps_the_page_of_its_prefix():
    bucket, _clock, _mc, fills, page, sent, epoch = _setup(["p/x.txt", "p/sub/y", "other.txt"], prefix="p/")
    assert fills.seed(page, sent, epoch)
    assert fills.lookup("p/x.txt").size == len(b"p/x.txt")
    assert fills.lookup("p/sub") is DIR
    assert fills.lookup("p/other.txt") is MISSING
    assert bucket.listed == []
