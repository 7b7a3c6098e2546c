"""The layering rules of STYLE.md, checked by parsing imports (so nobody has to remember them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "octuefs"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
            found.update(f"{base}.{alias.name}" if node.module else f"{base}{alias.name}" for alias in node.names)
    return found


MODULES = {p.relative_to(PACKAGE).as_posix(): imports_of(p) for p in PACKAGE.rglob("*.py")}


def modules_importing(predicate) -> set[str]:
    return {name for name, imported in MODULES.items() if any(predicate(i) for i in imported)}


def test_only_the_fuse_adapter_speaks_fuse():
    assert modules_importing(lambda i: i.split(".")[0] in ("mfusepy", "fuse")) == {"fuse_ops.py"}


def test_only_the_metrics_module_speaks_prometheus():
    assert modules_importing(lambda i: i.split(".")[0] == "prometheus_client") == {"metrics.py"}


def test_only_cli_parses_arguments():
    # configfile.py reads the command line's own parser: a config key is a long option.
    assert modules_importing(lambda i: i == "argparse") == {"cli.py", "configfile.py"}


@pytest.mark.parametrize("module", ["fs/core.py", "fs/files.py", "fs/xattrs.py", "fs/posixfs.py",
                                    "cache/content.py", "cache/metacache.py", "fs/namespace.py"])
def test_the_core_knows_nothing_of_fuse_or_the_cli(module):
    banned = ("fuse_ops", "mount", "cli", "mfusepy")
    assert not [i for i in MODULES[module] if any(i.lstrip(".").split(".")[0] == b for b in banned)]


def test_datafile_stands_on_storage_and_metadata_only():
    banned = ("core", "files", "xattrs", "cache", "fuse_ops", "mount", "cli", "mfusepy")
    assert not [i for i in MODULES["octue/datafile.py"] if i.lstrip(".").split(".")[0] in banned]


def test_metadata_codec_knows_no_storage():
    for module in ("octue/metadata.py", "octue/fields.py", "octue/json_dialect.py", "fs/posixmeta.py"):
        assert not [i for i in MODULES[module] if "storage" in i or "google" in i]


def _string_constants(path: Path) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and not n.value.startswith(("\n", " "))]


def test_only_the_posix_codec_names_the_posix_keys():
    """goog-reserved-*, gcsfuse_symlink_target and octuefs-file-* keys are spelled in posixmeta.py
    alone (a docstring may mention them; a string that is a key may not appear elsewhere)."""
    keys = ("goog-reserved-", "gcsfuse_symlink_target", "octuefs-file-")
    spelled = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
               if any(c.startswith(keys) for c in _string_constants(p))}
    assert spelled == {"fs/posixmeta.py"}
