"""The validated containers of a Datafile's metadata: :class:`LabelSet` and :class:`TagDict`.

Each checks (through :mod:`octuefs.octue.metadata`) what is put into it, so a bad label or tag
fails where it is set, not when it is sent.
"""

from __future__ import annotations

from typing import Any

from octuefs.errors import InvalidMetadata
from octuefs.octue.metadata import validate_labels, validate_tags


class LabelSet(set):
    """A set of labels that validates (and folds to lower case) what ``add``, ``update`` and ``|=`` put
    into it (a string is space-separated labels); anything else is checked before it is sent."""

    def __init__(self, labels: Any = None):
        super().__init__(validate_labels(labels))

    def add(self, label: str) -> None:
        if not isinstance(label, str):
            raise InvalidMetadata("labels", "each label must be a string", label)
        (folded,) = validate_labels([label])
        super().add(folded)

    def update(self, *others: Any) -> None:
        for other in others:
            super().update(validate_labels(other))

    def __ior__(self, other: Any) -> LabelSet:
        self.update(other)
        return self


class TagDict(dict):
    """A dict of tags that validates every name and value put into it (values are deep-copied)."""

    def __init__(self, tags: Any = None):
        super().__init__(validate_tags(tags))

    def __setitem__(self, name: str, value: Any) -> None:
        ((name, value),) = validate_tags({name: value}).items()
        super().__setitem__(name, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(validate_tags(dict(*args, **kwargs)))

    def setdefault(self, name: str, default: Any = None) -> Any:
        if name not in self:
            self[name] = default
        return self[name]

    def __ior__(self, other: Any) -> TagDict:
        self.update(other)
        return self
