"""tests/require_all.py, the plugin scripts/test loads: a run in which a test needing FUSE, the
emulator or root was skipped fails, naming it; other skips pass; a run where nothing ran fails."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = str(Path(__file__).resolve().parents[2])

INI = """
[pytest]
markers =
    fuse: mounts
    emulator: needs fake-gcs-server
"""

CONFTEST = '''
import pytest

@pytest.fixture
def emulator():
    pytest.skip("fake-gcs-server not available: no binary for this platform")

@pytest.fixture
def gcs_bucket(emulator):
    return "bucket"
'''


@pytest.fixture
def run(pytester, monkeypatch):
    monkeypatch.delenv("OCTUEFS_ALLOW_SKIPS", raising=False)
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)

    def run(files: dict[str, str], allow: bool = False, workers: int = 0):
        for path, text in files.items():
            target = pytester.path / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(textwrap.dedent(text))
        if allow:
            monkeypatch.setenv("OCTUEFS_ALLOW_SKIPS", "1")
        if workers:  # (its workers are processes of their own: they import the plugin from this checkout)
            monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
            return pytester.runpytest("-p", "tests.require_all", "-p", "no:cacheprovider", "-n", str(workers))
        return pytester.runpytest("-p", "tests.require_all", "-p", "no:cacheprovider")

    return run


PASSING = {"test_ok.py": "def test_ok():\n    pass\n"}


def test_a_skip_that_is_not_about_the_environment_passes(run):
    result = run({**PASSING, "test_x.py": """
        import pytest

        def test_journal():
            pytest.skip("this filesystem keeps no user xattrs")
    """})
    assert result.ret == 0
    assert "need FUSE" not in result.stdout.str()


@pytest.mark.parametrize("test", [
    "import pytest\n\n@pytest.mark.fuse\ndef test_mount():\n    pytest.skip('something else')\n",
    "import pytest\n\n@pytest.mark.emulator\ndef test_contract():\n    pytest.skip('something else')\n",
    "def test_bucket(gcs_bucket):\n    pass\n",  # a fixture that needs the emulator skipped
    "import pytest\n\ndef test_root():\n    pytest.skip('needs root to switch to another user')\n",
    "import pytest\n\ndef test_fuse():\n    pytest.skip('no /dev/fuse')\n",
])
def test_a_skipped_test_that_needs_fuse_the_emulator_or_root_fails_the_run_and_is_named(run, test):
    result = run({**PASSING, "test_needs.py": test})
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "skipped tests that need FUSE, the emulator or root" in out
    assert "SKIPPED test_needs.py::test_" in out and "OCTUEFS_ALLOW_SKIPS=1" in out


def test_under_xdist_workers_a_skipped_test_that_needs_the_environment_still_fails_the_run(run, pytester):
    """scripts/test runs two workers: they collect, the controller gives the verdict."""
    result = run({**PASSING, "test_needs.py": "def test_bucket(gcs_bucket):\n    pass\n",
                  "test_more.py": "def test_more():\n    pass\n"}, workers=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "SKIPPED test_needs.py::test_bucket" in out and "OCTUEFS_ALLOW_SKIPS=1" in out
    (pytester.path / "test_needs.py").unlink()
    assert run({}, workers=2).ret == 0


def test_any_skip_under_tests_e2e_fails_the_run(run):
    result = run({**PASSING, "tests/e2e/test_m.py": "import pytest\n\ndef test_m():\n    pytest.skip('why not')\n"})
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "SKIPPED tests/e2e/test_m.py::test_m: why not" in result.stdout.str()


def test_a_module_skipped_whole_under_tests_e2e_fails_the_run(run):
    result = run({**PASSING, "tests/e2e/test_m.py": """
        import pytest

        pytest.skip("no fusermount", allow_module_level=True)

        def test_m():
            pass
    """})
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "no fusermount" in result.stdout.str()


def test_octuefs_allow_skips_lists_them_instead(run):
    result = run({**PASSING, "test_needs.py": "def test_bucket(gcs_bucket):\n    pass\n"}, allow=True)
    assert result.ret == 0
    out = result.stdout.str()
    assert "SKIPPED test_needs.py::test_bucket: fake-gcs-server not available" in out
    assert "Allowed by OCTUEFS_ALLOW_SKIPS=1" in out


def test_a_run_in_which_nothing_ran_fails_even_when_skips_are_allowed(run):
    allowed_skip = "import pytest\n\ndef test_x():\n    pytest.skip('this filesystem keeps no user xattrs')\n"
    result = run({"test_x.py": allowed_skip}, allow=True)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert "no test ran" in result.stdout.str()


def test_failures_still_fail_and_expected_failures_count_as_run(run):
    failing = run({"test_f.py": "def test_f():\n    assert False\n"})
    assert failing.ret == pytest.ExitCode.TESTS_FAILED
    xfail = run({"test_f.py": "import pytest\n\n@pytest.mark.xfail(strict=True)\ndef test_f():\n    assert False\n"})
    assert xfail.ret == 0
