"""contrib/systemd/octuefs@.service: a unit systemd accepts, with what docs/operations.md promises.
(No mount: a machine without systemd skips it, which CI allows; tests/e2e/test_service.py runs
the daemon as the unit would.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "contrib/systemd/octuefs@.service"


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd is not installed here")
    instance = tmp_path / "octuefs@data.service"  # verify wants an instance of the template
    instance.write_text(UNIT.read_text())
    result = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
    text = UNIT.read_text()
    for needed in ("Type=notify", "After=network-online.target", "Wants=network-online.target",
                   "--config /etc/octuefs/%i.toml", "/var/cache/octuefs/%i", "TimeoutStopSec="):
        assert needed in text
