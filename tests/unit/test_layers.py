"""The layering rules of STYLE.md and README's Design, checked by parsing the package (so nobody
has to remember them).

Every import counts, wherever it is written: at module level, inside a function, or under
``if TYPE_CHECKING:``; absolute (``from octuefs.fs.core import x``) and relative (``from ..fs
import core``) alike, each resolved to the module it names.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "octuefs"

# The layers, each a folder, and what each may import besides itself and the foundation. Data
# flows one way: FUSE -> fs -> write-back -> caches -> storage; the Octue model beside them.
# (fuse/ never touches a bucket, a cache or the journal: it may import the filesystem alone.)
MAY_IMPORT = {
    "fuse": {"fs"},
    "storage": set(),
    "octue": {"storage"},
    "local": {"storage", "octue"},
    "cache": {"storage", "octue"},
    "writeback": {"cache", "storage", "octue"},
    "fs": {"writeback", "cache", "storage", "octue"},
}
# Top-level modules every layer may use (errors, the configuration, the names of the mount and
# of its cache directory): they know no layer above storage.
FOUNDATION = {"octuefs.errors", "octuefs.config", "octuefs.durable", "octuefs.namespace", "octuefs.cachedir"}
# Hard limit on a module's length (the aim is ~500: past it a module has two jobs).
MAX_LINES = 520


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PATHS = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, source: str, is_package: bool = False) -> Iterator[str]:
    """Every module ``name`` imports (ours resolved to a module of PATHS; others as written)."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in PATHS else base


IMPORTS = {name: set(_imports(name, path.read_text(), path.name == "__init__.py")) - {name}
           for name, path in PATHS.items()}


def layer(module: str) -> str | None:
    """The layer (folder) of one of our modules; None for a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in MAY_IMPORT) else None


def importers_of(predicate) -> set[str]:
    return {name for name, imported in IMPORTS.items() if any(predicate(i) for i in imported)}


def top_package(module: str) -> str:
    return module.split(".")[0]


def test_the_resolver_sees_absolute_relative_and_deferred_imports():
    """The rules below are only as good as this: a relative import, an absolute one, one inside a
    function and one under TYPE_CHECKING all resolve to the module they name."""
    source = """
from typing import TYPE_CHECKING
from octuefs.storage.base import Bucket
from ..cache import metacache
from . import posixfs as surface
import octuefs.octue.datafile as datafile_module
if TYPE_CHECKING:
    from octuefs.fuse.ops import Operations
def later():
    from ..writeback.givebacks import OwedGiveBacks
"""
    found = set(_imports("octuefs.fs.example", source))
    assert {"octuefs.storage.base", "octuefs.cache.metacache", "octuefs.fs.posixfs", "octuefs.octue.datafile",
            "octuefs.fuse.ops", "octuefs.writeback.givebacks"} <= found
    assert "octuefs.octue.datafile" in IMPORTS["octuefs"]


def test_only_the_fuse_adapter_speaks_fuse():
    assert importers_of(lambda i: top_package(i) in ("mfusepy", "fuse")) == {"octuefs.fuse.ops"}


def test_only_storage_speaks_to_google_or_http_clients():
    speakers = importers_of(lambda i: top_package(i) in ("google", "urllib3", "requests", "google_crc32c"))
    assert speakers and all(layer(m) == "storage" for m in speakers), sorted(speakers)


def test_only_the_metrics_module_speaks_prometheus():
    assert importers_of(lambda i: top_package(i) == "prometheus_client") == {"octuefs.metrics"}


def test_only_cli_parses_arguments():
    # configfile.py reads the command line's own parser: a config key is a long option.
    assert importers_of(lambda i: i == "argparse") == {"octuefs.cli", "octuefs.configfile"}


@pytest.mark.parametrize("name", sorted(n for n in PATHS if layer(n)))
def test_a_layer_imports_only_the_layers_below_it(name):
    allowed = MAY_IMPORT[layer(name)] | {layer(name)}
    ours = {i for i in IMPORTS[name] if top_package(i) == "octuefs"}
    wrong = {i for i in ours if i not in FOUNDATION and layer(i) not in allowed}
    assert not wrong, f"{name} ({layer(name)}) imports {sorted(wrong)}"


def test_the_codecs_know_no_storage():
    codecs = {n for n in PATHS if layer(n) == "octue" and n.rsplit(".", 1)[1] in
              ("metadata", "fields", "json_dialect", "posixmeta", "userxattrs")}
    assert len(codecs) >= 3
    assert not {n for n in codecs if any(layer(i) == "storage" or top_package(i) == "google" for i in IMPORTS[n])}


def test_the_foundation_knows_no_layer_above_storage():
    for name in FOUNDATION:
        ours = {i for i in IMPORTS[name] if top_package(i) == "octuefs"}
        assert all(i in FOUNDATION or layer(i) in ("storage", "octue") for i in ours), (name, sorted(ours))


def test_nothing_below_the_top_knows_fuse_the_cli_or_the_mount():
    top = {"octuefs.mount", "octuefs.cli", "octuefs.control", "octuefs.metrics"}
    assert not {n for n in PATHS if layer(n) and (IMPORTS[n] & top or (layer(n) != "fuse" and any(
        layer(i) == "fuse" for i in IMPORTS[n])))}


def test_no_import_cycles():
    """Tarjan's strongly connected components over our modules: every one must be a single module."""
    graph = {n: {i for i in IMPORTS[n] if i in PATHS and i != "octuefs"} for n in PATHS}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def _string_constants(path: Path) -> list[str]:
    """The string constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def spelling(fragment: str) -> set[str]:
    return {name for name, path in PATHS.items() if any(fragment in c for c in _string_constants(path))}


def test_only_the_octue_model_spells_an_octue_key():
    spelled = spelling("octue__")
    assert spelled and all(layer(m) == "octue" for m in spelled), sorted(spelled)


def test_only_the_posix_codec_spells_the_posix_keys():
    """goog-reserved-*, gcsfuse_symlink_target and octuefs-file-* keys are spelled in posixmeta.py
    alone (a docstring may mention them; a string that is a key may not appear elsewhere)."""
    keys = ("goog-reserved-", "gcsfuse_symlink_target", "octuefs-file-")
    spelled = {name for name, path in PATHS.items() if any(c.startswith(keys) for c in _string_constants(path))}
    assert len(spelled) == 1 and next(iter(spelled)).endswith(".posixmeta"), sorted(spelled)


def test_only_the_cache_directory_layout_names_its_paths():
    """One owner of --cache-dir's layout: its names are spelled in cachedir.py alone."""
    names = ("staging", "lost+found", "givebacks", "conflicts.jsonl", "conflicts.settled", "conflicts.reported",
             "parts", "local-gcs", "octuefs.log")
    spelled = {name for name, path in PATHS.items() if set(_string_constants(path)) & set(names)}
    assert spelled == {"octuefs.cachedir"}, sorted(spelled)


def test_storage_keeps_no_state_on_local_disk():
    """Transport only: nothing in storage/ makes local files durable (a ledger, a journal)."""
    assert not {n for n in PATHS if layer(n) == "storage" and "octuefs.durable" in IMPORTS[n]}


@pytest.mark.parametrize("name", sorted(PATHS))
def test_no_module_has_two_jobs(name):
    lines = PATHS[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{PATHS[name].relative_to(PACKAGE.parent)}: {lines} lines"
    assert ast.get_docstring(ast.parse(PATHS[name].read_text())) or name.endswith("__main__"), \
        f"{name} says nothing of what lives there"
