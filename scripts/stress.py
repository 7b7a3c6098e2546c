#!/usr/bin/env python3
"""Long runs of the stress tests: many more hypothesis examples than CI's bounded ones.

    scripts/stress.py                       # 500 examples of 30 steps, differential + hostile
    scripts/stress.py -n 2000 -s 40 -k differential
    scripts/stress.py --loop 10             # ten runs, each with fresh random seeds

The tests read OCTUEFS_STRESS_EXAMPLES / OCTUEFS_STRESS_STEPS; pytest's per-test timeout is
lifted, since a long run of one test function is expected. A failing run prints hypothesis's
shrunk falsifying sequence of steps; the daemon log of the failing mount is in pytest's tmp dir.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ["tests/e2e/test_differential.py", "tests/e2e/test_hostile.py"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--examples", type=int, default=500, help="hypothesis examples per test (default 500)")
    p.add_argument("-s", "--steps", type=int, default=30, help="most steps per differential example (default 30)")
    p.add_argument("-k", dest="keyword", help="only tests matching this pytest -k expression")
    p.add_argument("--loop", type=int, default=1, help="repeat the whole run this many times (default 1)")
    args = p.parse_args()
    env = dict(os.environ, OCTUEFS_STRESS_EXAMPLES=str(args.examples), OCTUEFS_STRESS_STEPS=str(args.steps))
    env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=0", "-x", *TESTS]
    if args.keyword:
        cmd += ["-k", args.keyword]
    for i in range(args.loop):
        print(f"stress run {i + 1}/{args.loop}: {args.examples} examples, {args.steps} steps", flush=True)
        rc = subprocess.call(cmd, cwd=HERE, env=env)
        if rc != 0:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
