#!/usr/bin/env python3
"""Long runs of the stress tests: many more hypothesis examples than CI's bounded ones.

    scripts/stress.py                       # 500 examples of 30 steps, differential + hostile
    scripts/stress.py -n 2000 -s 40 -k differential
    scripts/stress.py --loop 10             # ten runs, each with fresh random seeds
    scripts/stress.py --model --minutes 30  # the model-based state machine, for 30 minutes
    scripts/stress.py --model --minutes 10 --findings-off 8    # with finding 8's checks left out

``--model`` runs tests/unit/test_model.py (two mounts, an outside writer, gates, faults and
crashes on the in-memory bucket; no FUSE) in its long profile, run after run with fresh seeds
until the time is up, and writes what it found (each distinct failure, its shrunk steps and
how often it came up) to ``--out`` (default stress-model-<time>.md; each failing run's whole
output beside it, ``.runN.log``). ``--findings-off`` leaves out the rules and checks of chosen
findings (tests/unit/test_model.py, FINDINGS: all on, since all are fixed), to bisect a failure.

The e2e tests read OCTUEFS_STRESS_EXAMPLES / OCTUEFS_STRESS_STEPS; pytest's per-test timeout is
lifted, since a long run of one test function is expected. A failing run prints hypothesis's
shrunk falsifying sequence of steps; the daemon log of the failing mount is in pytest's tmp dir.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ["tests/e2e/test_differential.py", "tests/e2e/test_hostile.py"]
MODEL = "tests/unit/test_model.py::TestModel"


def run_e2e(args, env) -> int:
    env = dict(env, OCTUEFS_STRESS_EXAMPLES=str(args.examples), OCTUEFS_STRESS_STEPS=str(args.steps))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=0", "-x", *TESTS]
    if args.keyword:
        cmd += ["-k", args.keyword]
    for i in range(args.loop):
        print(f"stress run {i + 1}/{args.loop}: {args.examples} examples, {args.steps} steps", flush=True)
        rc = subprocess.call(cmd, cwd=HERE, env=env)
        if rc != 0:
            return rc
    return 0


def failures_in(output: str) -> list[tuple[str, str]]:
    """(first line of the error, the shrunk steps) of each failure hypothesis reported."""
    found = []
    for block in re.split(r"\n(?=\s*(?:\||E)?\s*Falsifying example:)", output)[1:]:
        steps = []
        for line in block.splitlines()[1:]:
            line = re.sub(r"^\s*(\||E\s)?\s*", "", line).strip()
            if line.startswith(("state", "state.")):
                if "reads_are_explained" not in line:
                    steps.append(line)
            elif steps:
                break
        found.append(steps)
    errors = [m.group(1).strip() for m in re.finditer(r"(?:^|\|)\s*(?:E\s+)?AssertionError: (.+)", output, re.M)]
    out = []
    for i, steps in enumerate(found):
        out.append((errors[min(i, len(errors) - 1)] if errors else "(see the output)", "\n".join(steps)))
    if not out and errors:
        out.append((errors[0], "(no shrunk example in the output)"))
    return out


def run_model(args, env) -> int:
    env = dict(env, OCTUEFS_MODEL_PROFILE="long", OCTUEFS_MODEL_EXAMPLES=str(args.examples),
               OCTUEFS_MODEL_STEPS=str(args.steps))
    if args.findings_off:
        env["OCTUEFS_MODEL_FINDINGS_OFF"] = args.findings_off
    out_path = args.out or os.path.join(HERE, time.strftime("stress-model-%Y%m%dT%H%M%S.md"))
    end = time.monotonic() + args.minutes * 60
    seen: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    runs = failed = 0
    while runs == 0 or time.monotonic() < end:
        runs += 1
        print(f"model run {runs}: {args.examples} examples of up to {args.steps} steps "
              f"({max(0, end - time.monotonic()) / 60:.1f} min left)", flush=True)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=0",
               "--hypothesis-seed", str(int.from_bytes(os.urandom(4), "big")), MODEL]
        proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            failed += 1
            with open(f"{out_path}.run{runs}.log", "w") as f:  # the whole output: a Flaky report needs it
                f.write(proc.stdout + proc.stderr)
            for error, steps in failures_in(proc.stdout + proc.stderr) or [("(unparsed failure)", proc.stdout[-3000:])]:
                key = re.sub(r"\d{6,}|[0-9a-f]{6}\.|\d{8}T\d{6}Z", "#", error)[:200]
                seen[key] += 1
                examples.setdefault(key, f"{error}\n\n{steps}")
                print(f"  found: {error[:160]}", flush=True)
        write_report(out_path, args, runs, failed, seen, examples)
    print(f"{runs} run(s), {failed} failing; report in {out_path}")
    return 1 if failed else 0


def write_report(path, args, runs, failed, seen, examples) -> None:
    lines = [f"# Model-based stress run, {time.strftime('%Y-%m-%d %H:%M:%S')}", "",
             f"{runs} run(s) of up to {args.examples} examples of up to {args.steps} steps; {failed} failed.",
             f"Findings' checks left out: {args.findings_off or 'none'}.", ""]
    if not seen:
        lines.append("Nothing found.")
    for key, count in seen.most_common():
        lines += [f"## {key} ({count}x)", "", "```", examples[key], "```", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--examples", type=int, default=None,
                   help="hypothesis examples per test run (default 500; --model: 2000)")
    p.add_argument("-s", "--steps", type=int, default=None, help="most steps per example (default 30; --model: 50)")
    p.add_argument("-k", dest="keyword", help="only tests matching this pytest -k expression")
    p.add_argument("--loop", type=int, default=1, help="repeat the whole run this many times (default 1)")
    p.add_argument("--model", action="store_true", help="run the model-based state machine instead")
    p.add_argument("--minutes", type=float, default=10.0, help="--model: keep running for this long (default 10)")
    p.add_argument("--findings-off", default="", help="--model: findings whose checks to leave out, e.g. 1,3,8")
    p.add_argument("--out", help="--model: where to write what was found")
    args = p.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if args.model:
        args.examples = args.examples or 2000
        args.steps = args.steps or 50
        return run_model(args, env)
    args.examples = args.examples or 500
    args.steps = args.steps or 30
    return run_e2e(args, env)


if __name__ == "__main__":
    sys.exit(main())
