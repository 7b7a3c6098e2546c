"""The daemon's log takes whatever names the kernel hands over."""

from __future__ import annotations

import logging

from octuefs.cli import configure_logging


def test_a_name_that_is_not_utf8_is_escaped_in_the_log_file(tmp_path, capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(1, str(tmp_path / "log"))
        # mfusepy decodes names with surrogateescape: b"\xc0" arrives as "\udcc0".
        logging.getLogger("octuefs.test").warning("getxattr(%r): %s", "/f", "user.octue.labels\udcc0")
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = saved
    text = (tmp_path / "log").read_text()
    assert "user.octue.labels\\udcc0" in text
    assert "Logging error" not in capsys.readouterr().err
