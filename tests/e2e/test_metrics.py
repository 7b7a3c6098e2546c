"""``--metrics-port``: Prometheus metrics scraped over HTTP from a real mount, moving as files are
written, read and patched."""

from __future__ import annotations

import os
import re
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import run_octuefs, wait_until

pytestmark = pytest.mark.fuse


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


def test_metrics_move_as_files_are_written_read_and_patched(mount_factory):
    port = _free_port()
    mount = mount_factory("--metrics-port", str(port))
    mount.bucket.upload_bytes("theirs.csv", b"x,y\n1,2\n")  # written elsewhere: the mount must fetch it
    before = _scrape(port)
    assert _total(before, "octuefs_uploads", state="queued") == 0

    data = os.urandom(300_000)
    (mount / "data.bin").write_bytes(data)
    mount.sync()
    after_write = _scrape(port)
    assert _total(after_write, "octuefs_bucket_requests_total", kind="upload", outcome="ok") >= 1
    assert _total(after_write, "octuefs_bucket_written_bytes_total") >= len(data)
    assert _total(after_write, "octuefs_fuse_operations_total", op="write", outcome="ok") >= 1
    assert _total(after_write, "octuefs_fuse_operation_seconds_count", op="create") >= 1

    assert (mount / "theirs.csv").read_bytes() == b"x,y\n1,2\n"
    with open(mount / "theirs.csv", "rb") as f:  # again, past the kernel's page cache: from the mount's cache
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert f.read() == b"x,y\n1,2\n"
    after_read = _scrape(port)
    assert _total(after_read, "octuefs_cache_reads_total", result="miss") >= 1
    assert _total(after_read, "octuefs_cache_reads_total", result="hit") >= 1
    assert _total(after_read, "octuefs_bucket_read_bytes_total") >= 8
    assert _total(after_read, "octuefs_bucket_requests_total", kind="read", outcome="ok") >= 1
    assert _total(after_read, "octuefs_bucket_request_seconds_count", kind="read") >= 1
    # Reads are answered by read_buf (octuefs.fuse.bufreads) and still counted as the reads they are.
    assert _total(after_read, "octuefs_fuse_operations_total", op="read", outcome="ok") >= 2
    assert _total(after_read, "octuefs_fuse_operations_total", op="read_buf", outcome="ok") == 0

    with pytest.raises(FileNotFoundError):
        (mount / "absent.csv").read_bytes()
    os.setxattr(mount / "theirs.csv", "user.octue.labels", b"cleaned")
    os.setxattr(mount / "theirs.csv", "user.octue.tags.site", b"north")  # joins the first: one PATCH
    mount.sync()
    assert wait_until(lambda: _total(_scrape(port), "octuefs_bucket_requests_total", kind="patch", outcome="ok") >= 1,
                      timeout=10)
    last = _scrape(port)
    assert _total(last, "octuefs_fuse_operations_total", op="getattr", outcome="ENOENT") >= 1
    assert _total(last, "octuefs_fuse_operations_total", op="setxattr", outcome="ok") >= 1
    assert _total(last, "octuefs_cache_clean_bytes") > 0
    assert _total(last, "octuefs_cache_limit_bytes") > 0
    assert _total(last, "octuefs_uploads", state="queued") == 0
    assert _total(last, "octuefs_metadata_updates_coalesced_total") >= 1
    assert _total(last, "octuefs_bucket_requests_total", kind="patch") == 1


def test_metrics_listen_on_this_machine_only_by_default_and_a_taken_port_is_a_clear_error(mount_factory, tmp_path):
    port = _free_port()
    mount = mount_factory("--metrics-port", str(port))
    assert re.search(rf"metrics at http://127\.0\.0\.1:{port}/metrics", mount.log_text())
    mp = tmp_path / "second"
    mp.mkdir()
    result = run_octuefs("mount", mount.bucket.name, str(mp), "--cache-dir", str(tmp_path / "c2"),
                         "--metrics-port", str(port), check=False)
    assert result.returncode != 0 and not os.path.ismount(mp)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot serve metrics on 127.0.0.1:{port}" in lines[0], result.stderr
