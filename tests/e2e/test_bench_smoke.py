"""scripts/bench.py keeps working: a tiny run mounts, measures, prints its table and cleans up.

It checks that the benchmark runs, not how fast anything is: no figure is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import _fuse_available

pytestmark = [pytest.mark.fuse, pytest.mark.emulator]

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"
# The kernel's caches kept 1 s, not 30: the stat workload waits them out once per mount pass.
SHORT_KERNEL_CACHES = ["--mount-arg=--attr-timeout=1", "--mount-arg=--entry-timeout=1"]
TINY = ["--quick", "--size-mib", "4", "--random-reads", "50", "--files", "50", "--objects", "200", "--no-drop-caches",
        *SHORT_KERNEL_CACHES]


def test_bench_quick_runs_and_prints_its_table(tmp_path):
    if reason := _fuse_available():
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}  # the bench starts its own
    result = subprocess.run(
        [sys.executable, str(BENCH), *TINY, "--json", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    header = ["Operation", "octuefs", "baseline(s)", "ratio", "target", "result"]
    assert any(line.split() == header for line in result.stdout.splitlines()), result.stdout
    assert (tmp_path / "bench.json").exists()


def test_bench_at_a_distance_runs_through_the_delay_line(tmp_path):
    """--rtt-ms: the same table, with the delay line between the clients and the emulator, and
    the round-trip floors beside the figures. Smaller still: every request pays the RTT."""
    if reason := _fuse_available():
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    tinier = ["--quick", "--size-mib", "2", "--random-reads", "20", "--files", "20", "--objects", "100", "--no-drop-caches",
              *SHORT_KERNEL_CACHES]
    result = subprocess.run(
        [sys.executable, str(BENCH), *tinier, "--rtt-ms", "4", "--json", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "4 ms away" in result.stdout, result.stdout
    assert "(1 list pages)" in result.stdout, result.stdout
    assert "fresh mount, shuffled" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["rtt_ms"] == 4
    # The client's reads one after another cannot beat the round trip: proof they crossed the line.
    m = data["seconds_and_counts"]
    assert m["small_read_client"] >= 20 * 0.004


def test_bench_metrics_cost_runs_pairs_and_scrapes_the_endpoint(tmp_path):
    """--metrics-cost: the mount workloads with metrics off and on (one pair here), the ops each
    costs from a scraped pass, the hooks' own cost, and a bound per workload. No figure is judged."""
    if reason := _fuse_available():
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    tinier = ["--quick", "--size-mib", "2", "--random-reads", "20", "--files", "20", "--objects", "100", "--no-drop-caches",
              *SHORT_KERNEL_CACHES]
    result = subprocess.run(
        [sys.executable, str(BENCH), *tinier, "--metrics-cost", "--pairs", "1", "--json", str(tmp_path / "cost.json")],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    data = json.loads((tmp_path / "cost.json").read_text())
    assert [p["metrics"] for p in data["passes"]] == [False, True]
    assert data["passes"][1]["scraped"]["fuse"] > 0 and data["passes"][0]["scraped"] is None
    assert data["hook_overheads"]["fuse_op_s"] >= 0 and data["hook_overheads"]["bucket_request_s"] >= 0
    rows = {r["key"]: r for r in data["rows"]}
    assert rows["getxattr_mount"]["fuse_ops"] >= 100  # one per call, counted by the metrics themselves
    assert rows["small_all_durable_after_close"]["bucket_requests"] >= 20  # an upload per file
    assert "largest bound" in result.stdout
