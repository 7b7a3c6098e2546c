"""pytest plugin for CI: fail the run when a test that needs FUSE, the emulator or root was skipped.

``scripts/test`` (which ``.ci/run`` runs) loads it with ``-p tests.require_all``. Where
``/dev/fuse``, ``fusermount3``, the fake-gcs-server binary or root is missing, every test that
needs them skips itself, and without this plugin such a run passes having checked only the unit
layer. With it, the run fails and names each of those tests and why it skipped.

A skipped test counts when it is marked ``fuse`` or ``emulator``, lives under ``tests/e2e``, uses
a fixture that starts the emulator or a mount, or its skip reason names FUSE, fusermount,
fake-gcs-server, the emulator or root. Any other skip (today: the journal's xattr tests on a
cache filesystem without user xattrs) stays allowed and is only listed. A run in which no test
ran at all fails too.

Under pytest-xdist (``scripts/test`` runs two workers) the workers collect and the controller,
which receives every report, gives the verdict: each test that needs the environment carries the
mark in its reports' ``user_properties``.

A developer who really lacks ``/dev/fuse`` (a container without it, say) opts out with
``OCTUEFS_ALLOW_SKIPS=1``: the skips are then listed, not failed. "No test ran" still fails.
"""

from __future__ import annotations

import os
import re

import pytest

ALLOW_ENV = "OCTUEFS_ALLOW_SKIPS"

NEEDS_MARKERS = ("fuse", "emulator")
# Fixtures that start fake-gcs-server (tests/conftest.py) or a mount (tests/e2e/conftest.py).
NEEDS_FIXTURES = frozenset({"emulator", "_gcs_client", "gcs_bucket", "mount_factory", "mount", "private"})
NEEDS_REASON = re.compile(r"fuse|fusermount|fake-gcs-server|emulator|\broot\b", re.IGNORECASE)
E2E_DIR = "tests/e2e/"
NEEDS_PROPERTY = "octuefs-needs-environment"


def _needs_environment(item: pytest.Item) -> bool:
    return (
        any(item.get_closest_marker(name) is not None for name in NEEDS_MARKERS)
        or item.nodeid.startswith(E2E_DIR)
        or not NEEDS_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
    )


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, lineno, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class RequireAll:
    def __init__(self) -> None:
        self.needs: set[str] = set()  # node ids of collected tests that need FUSE, emulator or root
        self.missed: list[tuple[str, str]] = []  # (node id, reason): skips that fail the run
        self.allowed: list[tuple[str, str]] = []  # other skips
        self.ran = 0  # tests whose body ran (passed, failed, or an expected failure)
        self.verdict: str | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.needs = {item.nodeid for item in items if _needs_environment(item)}
        # Under pytest-xdist the workers collect, and their reports reach the controller, which
        # runs this plugin's verdict: the mark travels with each report.
        for item in items:
            if item.nodeid in self.needs:
                item.user_properties.append((NEEDS_PROPERTY, True))

    def pytest_collectreport(self, report) -> None:
        if report.skipped:  # a whole module skipped at import (pytest.skip(allow_module_level=True))
            self._skipped(report.nodeid, _skip_reason(report), report.nodeid.startswith(E2E_DIR))

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" and not (report.skipped and not hasattr(report, "wasxfail")):
            self.ran += 1
        elif report.skipped and not hasattr(report, "wasxfail"):  # in setup (fixtures, skipif) or call
            needs = report.nodeid in self.needs or (NEEDS_PROPERTY, True) in report.user_properties
            self._skipped(report.nodeid, _skip_reason(report), needs)

    def _skipped(self, nodeid: str, reason: str, needs: bool) -> None:
        (self.missed if needs or NEEDS_REASON.search(reason) else self.allowed).append((nodeid, reason))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if hasattr(session.config, "workerinput"):
            return  # an xdist worker: the controller, which sees every report, decides
        if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            return  # interrupted, a usage error, nothing collected: pytest already fails the run
        if self.ran == 0:
            self.verdict = "no test ran"
            session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
        elif self.missed and os.environ.get(ALLOW_ENV) != "1":
            self.verdict = f"{len(self.missed)} test(s) that need FUSE, the emulator or root were skipped"
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        tr = terminalreporter
        if self.missed:
            failing = self.verdict is not None
            tr.section("octuefs: skipped tests that need FUSE, the emulator or root", sep="=", red=failing,
                       yellow=not failing)
            for nodeid, reason in self.missed:
                tr.line(f"SKIPPED {nodeid}: {reason}")
            if failing:
                tr.line(f"This run does not count: {self.verdict}. Install what is missing (scripts/install, "
                        "as root, with /dev/fuse present), or, where /dev/fuse really cannot be had, "
                        f"run with {ALLOW_ENV}=1 to allow these skips.", red=True, bold=True)
            else:
                tr.line(f"Allowed by {ALLOW_ENV}=1: this run did not check them.", yellow=True)
        elif self.verdict:
            tr.section("octuefs: no test ran", sep="=", red=True)
            tr.line("The run collected tests but none of them ran; it does not count.", red=True, bold=True)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(RequireAll(), "octuefs-require-all")
