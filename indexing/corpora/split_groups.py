"""Split groups: keys that are the same picture share one train / test split.

`split_for_key` hashes each key alone, so two keys drawn as one picture (Australia's flag and Heard &
McDonald Islands', "artist" and "man artist" in OpenMoji, a clip-art drawing filed twice) can land on
both sides and put a test image into the training data. `retr curate dedup --against` found such
pairs in the project's corpora (bench/curate_findings.py); `data_manifests/splits/groups.json`
records them as data:

    {"groups": [["1F1E6-1F1FA", "1F1ED-1F1F2"], ...],      every key of a group gets the split of
                                                            its smallest key
     "held_out": {"openclipart": ["food/pumpkin2_yemu_01"]}} never trained on: the same picture as an
                                                            item of an evaluation-only corpus

Groups are by key across corpora, as the split itself is (the emoji styles and the flags share
keys). Applied to a parser's rows at fetch time (`apply_split_groups`), and the file's digest is
part of the manifest fingerprint, so editing it rebuilds the cached manifests. Evaluation-only corpora
(splits `val` / `test`, or all `test`) are left as they are. Tested in tests/test_split_groups.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from indexing.corpora.rows import split_for_key

SPLIT_GROUPS_FILE = Path("splits") / "groups.json"  # under the manifest folder


@dataclass(frozen=True)
class SplitGroups:
    group_of: Mapping[str, str] = field(default_factory=dict)  # key -> its group's key (the smallest)
    held_out: Mapping[str, frozenset[str]] = field(default_factory=dict)  # corpus -> keys never trained on
    digest: str = ""  # sha256 of the canonical JSON; "" for no groups

    def split(self, corpus: str, key: str) -> str:
        """The split of KEY in a train / test corpus once the groups are applied."""
        if key in self.held_out.get(corpus, ()):
            return "test"
        return split_for_key(self.group_of.get(key, key))


def group_keys(pairs: Iterable[Iterable[str]]) -> dict[str, str]:
    """Union of overlapping key sets: every key mapped to the smallest key of its connected group."""
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        parent.setdefault(k, k)
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for members in pairs:
        members = list(members)
        for k in members[1:]:
            a, b = find(members[0]), find(k)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {k: find(k) for k in parent}


def parse_split_groups(raw: object, where: str) -> SplitGroups:
    if not isinstance(raw, dict) or set(raw) - {"about", "groups", "held_out"}:
        raise ValueError(f"{where}: expected an object with 'groups' and 'held_out' (and 'about')")
    groups = raw.get("groups", [])
    if not isinstance(groups, list) or not all(
        isinstance(g, list) and len(g) >= 2 and all(isinstance(k, str) and k for k in g) for g in groups
    ):
        raise ValueError(f"{where}: 'groups' must be a list of lists of two or more keys")
    held = raw.get("held_out", {})
    if not isinstance(held, dict) or not all(
        isinstance(v, list) and all(isinstance(k, str) and k for k in v) for v in held.values()
    ):
        raise ValueError(f"{where}: 'held_out' must map corpus names to lists of keys")
    canonical = json.dumps({"groups": groups, "held_out": held}, sort_keys=True, ensure_ascii=True)
    return SplitGroups(
        group_of=group_keys(groups),
        held_out={c: frozenset(v) for c, v in held.items()},
        digest=hashlib.sha256(canonical.encode("ascii")).hexdigest() if groups or held else "",
    )


def load_split_groups(manifest_dir: Path) -> SplitGroups:
    """The groups of MANIFEST_DIR/splits/groups.json; none when the file does not exist."""
    path = Path(manifest_dir) / SPLIT_GROUPS_FILE
    if not path.is_file():
        return SplitGroups()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read split groups {path}: {e}") from e
    return parse_split_groups(raw, str(path))


def apply_split_groups(table: pa.Table, corpus: str, groups: SplitGroups) -> pa.Table:
    """TABLE with its `split` column regrouped; unchanged for evaluation-only (val / test) corpora."""
    if not groups.digest or "split" not in table.column_names or "key" not in table.column_names:
        return table
    splits = table.column("split").to_pylist()
    if "train" not in splits or not set(splits) <= {"train", "test"}:  # evaluation only: val / test, or all test
        return table
    keys = table.column("key").to_pylist()
    new = [groups.split(corpus, k) for k in keys]
    if new == splits:
        return table
    i = table.column_names.index("split")
    return table.set_column(i, table.schema.field(i), pa.array(new, pa.string()))
