"""The file object ``Datafile.open`` returns (:class:`DatafileIO`), and the open modes and keywords
it takes.

It is the local file (the user's, or the private copy of a cloud object), and on close hands
back to its :class:`~octuefs.octue.datafile.Datafile` (``_closed``), which sends what changed.
"""

from __future__ import annotations

from typing import Any

_WRITE_MODE_CHARS = frozenset("wax+")
_OPEN_KEYWORDS = frozenset({"buffering", "encoding", "errors", "newline", "closefd", "opener"})


def writes(mode: str) -> bool:
    return bool(_WRITE_MODE_CHARS & set(mode))


def check_open_kwargs(kwargs: dict[str, Any]) -> None:
    unknown = sorted(set(kwargs) - _OPEN_KEYWORDS)
    if unknown:
        accepted = ", ".join(sorted(_OPEN_KEYWORDS))
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}; open() takes {accepted}")


class DatafileIO:
    """The file object ``Datafile.open`` returns: the local file, plus the cloud sync on close."""

    def __init__(self, datafile: Any, mode: str, kwargs: dict[str, Any]):
        self._datafile = datafile
        self._file = datafile._open_local(mode, kwargs)
        self._mode = mode
        self._finished = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __iter__(self):
        return iter(self._file)

    def __next__(self):
        return next(self._file)

    def __enter__(self) -> DatafileIO:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._finish(ok=exc_type is None)
        return False

    def close(self) -> None:
        self._finish(ok=True)

    def _finish(self, ok: bool) -> None:
        if self._finished:
            return
        self._finished = True
        self._file.close()
        self._datafile._closed(self._mode, ok)
