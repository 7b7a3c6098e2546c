"""How the daemon's log lines look: ``text`` for a person, ``json`` for a log shipper.

A JSON line is one object: ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``,
``message`` (the same sentence the text format shows: it names the object and the cause),
``pid``, and ``error`` (the traceback) when the event carried one. Field names are stable.
"""

from __future__ import annotations

import datetime
import json
import logging

LOG_FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        line = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        # Names from the kernel may hold bytes that are not UTF-8 (surrogate escapes): keep the
        # line valid JSON by escaping everything that is not ASCII.
        return json.dumps(line, ensure_ascii=True)


def formatter(kind: str) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT)
