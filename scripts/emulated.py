"""fake-gcs-server (memory backend) for the A/B scripts, behind the delay line when ``rtt_ms`` > 0."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from octuefs.local.emulator import Emulator, _free_port
from tests.delayline import DelayLineProcess


def start(rtt_ms: float) -> tuple[Emulator, DelayLineProcess | None, str]:
    """The emulator, the delay line before it (None at 0 ms) and the URL clients use. The line
    starts first: the emulator must know its URL (``-external-url``), so that media links and
    upload sessions go through it too. Loopback is taken out of any proxy."""
    line = None
    if rtt_ms > 0:
        port = _free_port("127.0.0.1")
        line = DelayLineProcess(("127.0.0.1", port), rtt_ms).start()
        emulator = Emulator(port=port, kill_with_parent=True, external_url=line.url).start()
    else:
        emulator = Emulator(data_dir=None, kill_with_parent=True).start()
    os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    return emulator, line, line.url if line is not None else emulator.url


def finish(emulator: Emulator, line: DelayLineProcess | None, work: Path) -> None:
    """Clear any mount left under ``work`` (``mnt-*``, lazily), stop the emulator and the line,
    and remove ``work``."""
    for mountpoint in work.glob("mnt-*"):
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
    emulator.stop()
    if line is not None:
        line.stop()
    shutil.rmtree(work, ignore_errors=True)
