"""The shape of indexing/corpora/: one parser table (indexing/corpora/parsers.py) covers every spec in
data_manifests/, each entry comes from a source module of its own, and nothing but the table (and the
package's re-exports) imports a source module, so the table is the one place to add a source."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from indexing import corpora
from indexing.cache import manifest_dir
from indexing.corpora import parsers

PACKAGE = Path(corpora.__file__).parent
# Modules every source may use; all others in the package are source modules.
SHARED = {"__init__", "core", "parsers", "rows", "emoji_entries", "split_groups"}
SOURCES = {p.stem for p in PACKAGE.glob("*.py")} - SHARED


def _imported_modules(path: Path) -> set[str]:
    """The indexing.corpora.* modules that PATH imports (by absolute or relative import)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # from .flags import ... / from . import flags
                found |= {module} if module else {a.name for a in node.names}
            elif module.startswith("indexing.corpora."):
                found.add(module.removeprefix("indexing.corpora.").split(".")[0])
            elif module == "indexing.corpora":
                found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("indexing.corpora.")}
    return found


def test_the_parser_table_covers_every_spec():
    named = {json.loads(p.read_text(encoding="utf-8"))["parser"] for p in manifest_dir().glob("*.json")}
    assert named <= set(parsers.PARSERS), named - set(parsers.PARSERS)
    assert set(parsers.UNPACKERS) <= set(parsers.PARSERS)


def test_each_table_entry_lives_in_a_source_module_and_each_source_module_has_one():
    defined_in = {f.__module__.removeprefix("indexing.corpora.") for f in parsers.PARSERS.values()}
    unpackers_in = {f.__module__.removeprefix("indexing.corpora.") for f in parsers.UNPACKERS.values()}
    assert defined_in == SOURCES, "every source module is in the table, and the table holds only sources"
    assert unpackers_in <= SOURCES
    for name, parse in parsers.PARSERS.items():  # a parser's unpacker sits beside it
        if name in parsers.UNPACKERS:
            assert parsers.UNPACKERS[name].__module__ == parse.__module__, name


def test_source_modules_are_imported_only_by_the_table_and_the_package_exports():
    for path in PACKAGE.glob("*.py"):
        if path.stem in ("parsers", "__init__"):
            continue
        reached = _imported_modules(path) & SOURCES
        assert not reached, f"{path.name} imports source module(s) {sorted(reached)}: go through parsers.PARSERS"
    core_imports = _imported_modules(PACKAGE / "core.py")
    assert "parsers" in core_imports and not core_imports & SOURCES
