#!/usr/bin/env python3
"""Run the real-mount differential test (tests/e2e/test_differential.py) long, and report.

    scripts/stress_mount.py --minutes 15                    # every world, rounds until time is up
    scripts/stress_mount.py --minutes 30 -k hostile -s 40   # the hostile world, longer sequences
    scripts/stress_mount.py --minutes 5 --enable 1,9        # also the paths of known findings

Each round is one pytest run of ``-n`` examples per world with fresh random seeds (and a fresh
fault-proxy seed), writing failing examples to the committed database
``tests/e2e/.hypothesis-differential/`` (``OCTUEFS_DIFF_SAVE=1``), so CI replays them. A round
that fails is not retried: its shrunk falsifying sequence, the proxy seed and the last calls
go into the report (``--report``, Markdown), and the next round starts. ``--enable`` turns on
paths kept off for known findings (``KNOWN`` in the test). A separate script from
``scripts/stress.py``, which runs the other stress tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST = "tests/e2e/test_differential.py"


def run_round(args, n: int, trace: str) -> tuple[int, str, float]:
    env = dict(os.environ, OCTUEFS_STRESS_EXAMPLES=str(args.examples), OCTUEFS_STRESS_STEPS=str(args.steps),
               OCTUEFS_DIFF_SAVE="1", OCTUEFS_DIFF_TRACE_FILE=trace)
    env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if args.enable:
        env["OCTUEFS_DIFF_ENABLE"] = args.enable
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", TEST]
    if args.keyword:
        cmd += ["-k", args.keyword]
    start = time.monotonic()
    print(f"round {n}: {' '.join(cmd[3:])}", flush=True)
    result = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr, time.monotonic() - start


def summary(output: str) -> str:
    """The parts of a failing run worth reading: which world, the error, the shrunk steps."""
    keep = []
    for block in re.split(r"\n(?=_{5,} )", output):
        if "Falsifying example" not in block and "Error" not in block:
            continue
        head = block.splitlines()[0] if block else ""
        error = re.findall(r"^E +.*$", block, re.M)
        steps = re.search(r"Falsifying example:.*?(?=\n\S|\Z)", block, re.S)
        keep.append("\n".join([head, *error[:40], steps.group(0) if steps else ""]))
    seeds = re.findall(r"fault proxy seed \d+", output)
    errors = sorted(set(re.findall(r"AssertionError: (?:AssertionError: )?(.*)", output)))
    return "\n".join(["distinct errors:", *errors[:20], *seeds, "", *keep])[:20000]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10, help="keep starting rounds until then (default 10)")
    p.add_argument("-n", "--examples", type=int, default=40, help="examples per world and round (default 40)")
    p.add_argument("-s", "--steps", type=int, default=30, help="most steps per example (default 30)")
    p.add_argument("-k", dest="keyword", help="only the worlds matching this pytest -k expression")
    p.add_argument("--enable", default="", help="known findings whose paths to test too, e.g. 1,9")
    p.add_argument("--report", default="stress-mount-report.md", help="where to write the report")
    args = p.parse_args()
    end = time.monotonic() + args.minutes * 60
    rows, failures, n = [], [], 0
    while time.monotonic() < end:
        n += 1
        with tempfile.NamedTemporaryFile("r", suffix=".trace") as trace:
            rc, output, seconds = run_round(args, n, trace.name)
            calls = sum(1 for line in trace if not line.startswith("==="))
        verdict = "pass" if rc == 0 else "FAIL"
        rows.append(f"| {n} | {verdict} | {seconds:.0f} s | {calls} |")
        print(f"round {n}: {verdict} in {seconds:.0f} s, {calls} calls", flush=True)
        if rc != 0:
            log = f"{args.report}.round-{n}.log"
            with open(log, "w") as f:
                f.write(output)
            failures.append(f"### Round {n} (whole output: {log})\n\n```\n{summary(output)}\n```\n")
    with open(args.report, "w") as f:
        f.write(f"# stress_mount.py, {dt.datetime.now():%Y-%m-%d %H:%M}\n\n")
        f.write(f"{args.minutes:g} minutes, {args.examples} examples of at most {args.steps} steps per world and "
                f"round, worlds: {args.keyword or 'all'}, known findings enabled: {args.enable or 'none'}\n\n")
        f.write("| round | result | time | mount and local calls |\n| --- | --- | --- | --- |\n")
        f.write("\n".join(rows) + "\n\n")
        f.write("## Failures\n\n" + ("\n".join(failures) if failures else "None.\n"))
    print(f"report: {args.report} ({len(failures)} failing round(s) of {n})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
