"""``octuefs mount --config FILE``: the mount's options in a TOML file, and ``--print-config``.

A key is an option's long name with ``_`` or ``-`` (``list_ttl = 10``, ``cache-dir = "..."``),
plus ``bucket`` and ``mountpoint``, and ``options`` for ``-o`` (a list of strings). The keys and
their types come from the command line's own parser, so a new option is a config key at once.
Flags given on the command line win over the file; ``-o`` options add to the file's. A relative
path in the file is relative to the file's directory. Anything wrong is refused in one line that
names the file and the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tomllib

from octuefs.config import UNLIMITED, MountConfig, format_size

# Options of the mount command that are not settings: a file holding them would be read again
# by the daemon it starts, or would start nothing.
_NOT_KEYS = {"help", "config", "print_config", "ready_fd", "foreground"}
_PATHS = {"cache_dir", "log_file", "local_data_dir", "mountpoint"}
# Option names whose MountConfig field has another name.
_FIELDS = {"attr_timeout": "kernel_attr_ttl", "entry_timeout": "kernel_entry_ttl", "options": "fuse_options"}


class ConfigFileError(ValueError):
    """A config file that cannot be used; the message is the one line a user sees."""


def keys_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every settable key of the mount command's parser, by its argparse dest. Where several
    options set one dest (``--prefetch-files N`` and ``--no-prefetch``), the first one's type holds."""
    keys: dict[str, argparse.Action] = {}
    for a in parser._actions:
        if a.dest not in _NOT_KEYS and a.dest is not argparse.SUPPRESS:
            keys.setdefault(a.dest, a)
    return keys


def field_of(dest: str) -> str:
    """The MountConfig field an option sets (most have the same name)."""
    return _FIELDS.get(dest, dest)


def _kind(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "bool"
    if isinstance(action, argparse._CountAction):
        return "count"
    if isinstance(action, argparse._AppendAction):
        return "list"
    if action.type in (int, float):
        return action.type.__name__
    if action.type is not None and action.type is not str:
        return "text-for-type"  # e.g. an octal mode: written as a string ("644"), parsed by its type
    return "str"


def _convert(where: str, key: str, action: argparse.Action, value, base_dir: str):
    kind = _kind(action)
    bad = f"{where}: {key}: "
    if kind == "bool":
        if type(value) is not bool:
            raise ConfigFileError(bad + f"expected true or false, got {json.dumps(value)}")
        return value
    if kind in ("int", "count"):
        if type(value) is not int or (kind == "count" and value < 0):
            raise ConfigFileError(bad + f"expected a whole number, got {json.dumps(value)}")
        return value
    if kind == "float":
        if type(value) not in (int, float):
            raise ConfigFileError(bad + f"expected a number of seconds, got {json.dumps(value)}")
        return float(value)
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigFileError(bad + f"expected a list of strings like [\"allow_other\"], got {json.dumps(value)}")
        return list(value)
    if action.dest == "cache_size" and type(value) is int:
        value = str(value)  # bytes
    if not isinstance(value, str):
        hint = ' (write a mode as a string, like "644")' if kind == "text-for-type" else ""
        raise ConfigFileError(bad + f"expected a string, got {json.dumps(value)}{hint}")
    if kind == "text-for-type":
        try:
            return action.type(value)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ConfigFileError(bad + str(exc)) from None
    if action.dest in _PATHS:
        return os.path.join(base_dir, os.path.expanduser(value))
    return value


def load(path: str, parser: argparse.ArgumentParser) -> dict:
    """The settings in the TOML file ``path``, by argparse dest, checked against ``parser``."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigFileError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigFileError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config file {path} is not valid TOML: {exc}") from None
    known = keys_of(parser)
    base_dir = os.path.dirname(os.path.abspath(path))
    settings: dict = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in known:
            raise ConfigFileError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        settings[dest] = _convert(path, key, known[dest], value, base_dir)
    return settings


def given_on(argv: list[str], parser: argparse.ArgumentParser) -> set[str]:
    """The dests the command line ``argv`` set itself (a value equal to its default included)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def merge(args: argparse.Namespace, settings: dict, given: set[str]) -> None:
    """Fill ``args`` from ``settings`` where the command line (``given``) did not; ``-o`` adds."""
    for dest, value in settings.items():
        if dest == "options":
            setattr(args, dest, value + list(getattr(args, dest, None) or []))  # the command line's come last, and win
        elif dest not in given:
            setattr(args, dest, value)


def effective(config: MountConfig, args: argparse.Namespace, parser: argparse.ArgumentParser,
              log_file: str | None) -> str:
    """The settings a mount would run with, as a config file (``--print-config``)."""
    fields = {f.name for f in dataclasses.fields(MountConfig)}
    lines = []
    for dest in keys_of(parser):
        field = field_of(dest)
        if dest == "bucket":
            value = f"{config.bucket}/{config.prefix}".rstrip("/")
        elif dest == "log_file":
            value = log_file
        elif dest == "cache_size":
            value = ("unlimited" if config.cache_size == UNLIMITED else
                     format_size(config.cache_size) if config.cache_size is not None else None)
        elif field in fields:
            value = getattr(config, field)
            if dest in ("file_mode", "dir_mode"):
                value = f"{value:o}"
            elif isinstance(value, tuple):
                value = list(value)
        else:
            value = getattr(args, dest, None)
        if value is None:
            lines.append(f"# {dest} = (default)")
        else:
            lines.append(f"{dest} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string
