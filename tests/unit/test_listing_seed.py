"""The mount root's first page, listed by the bucket's check before the mount, kept for the
names it shows (``DirectoryFills.seed``): the first lookups of the root's names ask the bucket
nothing, for --list-ttl (none once it has passed since the check asked); a name it does not show
is looked up, and a readdir lists, as on a mount without it (an object uploaded elsewhere since
shows at once), and one deleted elsewhere goes with the next listing of the root. Request counts
are the fake bucket's; times a fake clock's."""

from __future__ import annotations

from octuefs.cache.listings import LOOKUP_PAGE, DirectoryFills
from octuefs.cache.metacache import DIR, MISSING, MetadataCache
from octuefs.namespace import Namespace
from octuefs.storage.fake import FakeBucket

STAT_TTL, LIST_TTL, NEGATIVE_TTL = 20.0, 30.0, 5.0


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


def _setup(names, prefix="", page_size=LOOKUP_PAGE):
    """A bucket holding ``names``; fills over it; the root's first page as the check lists it
    (``page_size`` entries), when it was asked for and the root's epoch from before; the bucket's
    counts reset."""
    bucket = _Recording("seeded")
    for name in names:
        bucket.upload_bytes(name, name.encode())
    clock = _Clock()
    metacache = MetadataCache(STAT_TTL, LIST_TTL, NEGATIVE_TTL, timer=clock)
    fills = DirectoryFills(bucket, metacache, Namespace(prefix))
    epoch = metacache.epoch(prefix)
    sent = clock.now
    page = bucket.list_page(prefix, "/", max_results=page_size)
    clock.now += 0.05  # the check answered, the mount is built
    bucket.reset_calls()
    return bucket, clock, metacache, fills, page, sent, epoch


def _lookup(fills, name):
    """As fs/lookups.py does: what the metadata cache knows, else the fills."""
    return fills.metacache.lookup(name) or fills.lookup(name)


def test_the_checks_page_answers_the_roots_names_with_no_request():
    names = [f"f{i:03d}.csv" for i in range(50)] + ["d/inner.txt"]
    bucket, _clock, _mc, fills, page, sent, epoch = _setup(names)
    assert fills.seed(page, sent, epoch)
    assert [_lookup(fills, n).size for n in ("f000.csv", "f007.csv", "f049.csv")] == [len(b"f000.csv")] * 3
    assert _lookup(fills, "d") is DIR
    assert bucket.listed == [] and bucket.calls["stat"] == 0


def test_a_name_it_does_not_show_is_looked_up_and_one_deleted_elsewhere_goes_with_the_next_listing():
    bucket, _clock, _mc, fills, page, sent, epoch = _setup(["a.txt", "gone.txt"])
    fills.seed(page, sent, epoch)
    bucket.upload_bytes("new.txt", b"uploaded elsewhere after the check")
    bucket.delete("gone.txt")
    bucket.reset_calls()
    assert _lookup(fills, "new.txt").size == len(b"uploaded elsewhere after the check")  # at once
    assert ("", None) in bucket.listed  # the root listed, as on a mount without the page
    assert _lookup(fills, "gone.txt") is MISSING  # that listing decides every name in it


def test_a_readdir_lists_the_root_rather_than_show_the_checks_page():
    bucket, _clock, metacache, fills, page, sent, epoch = _setup(["a.txt"])
    fills.seed(page, sent, epoch)
    bucket.upload_bytes("new.txt", b"uploaded elsewhere after the check")
    assert metacache.listing("") is None  # what readdir (fs/directories.py) would show whole: none
    assert [n for p in fills.pages("") for n, _ in p.files] == ["a.txt", "new.txt"]
    assert bucket.listed == [("", None)]
    assert metacache.listing("").files.keys() == {"a.txt", "new.txt"}  # the listing replaced the page


def test_the_prefetcher_gets_the_roots_order_from_the_page():
    bucket, _clock, metacache, fills, page, sent, epoch = _setup(["a.txt", "b.txt", "d/c"])
    fills.seed(page, sent, epoch)
    shown = metacache.listing("", names_shown=True)
    assert sorted(shown.files) == ["a.txt", "b.txt"] and shown.dirs == {"d"}


def test_names_it_shows_are_kept_for_list_ttl_from_when_the_check_asked():
    bucket, clock, _mc, fills, page, sent, epoch = _setup(["a.txt"])
    fills.seed(page, sent, epoch)
    clock.now = sent + LIST_TTL - 0.01
    assert _lookup(fills, "a.txt").size == len(b"a.txt") and bucket.listed == []
    clock.now = sent + LIST_TTL  # (though kept 0.05 s after)
    assert _lookup(fills, "a.txt").size == len(b"a.txt")
    assert ("", None) in bucket.listed  # asked again: the page is too old


def test_a_page_older_than_list_ttl_is_not_kept():
    bucket, clock, metacache, fills, page, sent, epoch = _setup(["a.txt"])
    clock.now = sent + LIST_TTL
    assert not fills.seed(page, sent, epoch)
    assert metacache.lookup("a.txt") is None and not metacache.knows_listing("")


def test_a_page_with_more_after_it_decides_the_names_up_to_its_horizon():
    """Its last file may be hidden by a directory of its name on the next page ("x" < "x/" <
    "x0"): the page does not decide it; a name past the page is looked up by a listing."""
    names = [f"f{i:02d}" for i in range(10)] + ["f09/inner"] + [f"g{i:02d}" for i in range(10)]
    bucket, _clock, metacache, fills, page, sent, epoch = _setup(names, page_size=10)
    assert page.next_token and page.objects[-1].name == "f09"
    assert fills.seed(page, sent, epoch)
    assert metacache.lookup("f08").size == 3 and bucket.listed == []
    assert metacache.lookup("f09") is None and metacache.lookup("g05") is None
    assert _lookup(fills, "f09") is DIR  # (listed: the directory hides the file)
    assert _lookup(fills, "g05").size == 3


def test_the_mounts_changes_since_the_check_are_laid_over_its_page():
    bucket, _clock, metacache, fills, page, sent, epoch = _setup(["a.txt", "b.txt"])
    metacache.wrote(bucket.upload_bytes("a.txt", b"written through the mount"))
    metacache.removed("b.txt")
    fills.seed(page, sent, epoch)
    assert _lookup(fills, "a.txt").size == len(b"written through the mount")
    assert _lookup(fills, "b.txt") is MISSING


def test_a_prefix_mount_keeps_the_page_of_its_prefix_and_sees_its_markers():
    bucket, _clock, _mc, fills, page, sent, epoch = _setup(["p/", "p/x.txt", "p/sub/", "p/sub/y", "other.txt"],
                                                           prefix="p/")
    seen = {}
    fills.on_marker = lambda prefix, marker: seen.setdefault(prefix, marker.name if marker else None)
    assert fills.seed(page, sent, epoch)
    assert _lookup(fills, "p/x.txt").size == len(b"p/x.txt")
    assert _lookup(fills, "p/sub") is DIR
    assert bucket.listed == []
    assert seen["p/"] == "p/"  # the root's own marker, from its listing's first page
    assert _lookup(fills, "p/other.txt") is MISSING and ("p/", None) in bucket.listed  # (asked)
