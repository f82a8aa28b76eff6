"""Split groups (indexing/corpora/split_groups.py): keys that are one picture share a split, held-out
keys never train, and editing the groups file rebuilds a cached manifest."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from indexing.cache import manifest_dir
from indexing.corpora import split_for_key
from indexing.corpora.split_groups import (
    SplitGroups,
    apply_split_groups,
    group_keys,
    load_split_groups,
    parse_split_groups,
)


def _keys_on_both_sides(n: int = 400) -> tuple[str, str]:
    """A test key and a train key, found by hashing."""
    test = next(f"k{i}" for i in range(n) if split_for_key(f"k{i}") == "test")
    train = next(f"k{i}" for i in range(n) if split_for_key(f"k{i}") == "train")
    return test, train


def test_overlapping_groups_join_under_their_smallest_key():
    assert group_keys([["c", "b"], ["d", "c"], ["x", "y"]]) == {"b": "b", "c": "b", "d": "b", "x": "x", "y": "x"}


def test_a_pair_split_across_train_and_test_ends_on_one_side():
    test, train = _keys_on_both_sides()
    groups = parse_split_groups({"groups": [[test, train]]}, "here")
    table = pa.table({"image": ["a.png", "b.png", "c.png"], "key": [test, train, "other"],
                      "split": [split_for_key(test), split_for_key(train), split_for_key("other")]})
    out = apply_split_groups(table, "emoji-google", groups).column("split").to_pylist()
    assert out[0] == out[1] == split_for_key(min(test, train))
    assert out[2] == split_for_key("other")  # keys outside every group keep their own split


def test_held_out_keys_never_train_and_evaluation_only_corpora_stay_as_they_are():
    _, train = _keys_on_both_sides()
    groups = parse_split_groups({"groups": [], "held_out": {"openclipart": [train]}}, "here")
    rows = pa.table({"key": [train], "split": ["train"]})
    assert apply_split_groups(rows, "openclipart", groups).column("split").to_pylist() == ["test"]
    assert apply_split_groups(rows, "emoji-google", groups).column("split").to_pylist() == ["train"]
    holdout = pa.table({"key": [train], "split": ["val"]})
    assert apply_split_groups(holdout, "openclipart", groups).equals(holdout)
    all_test = pa.table({"key": [train], "split": ["test"]})  # skimage-photos: every item is test
    assert apply_split_groups(all_test, "openclipart", groups).equals(all_test)


@pytest.mark.parametrize("raw", [[], {"groups": [["only-one"]]}, {"groups": [["a", 3]]},
                                 {"held_out": {"x": "not-a-list"}}, {"group": []}])
def test_a_malformed_groups_file_is_refused(raw):
    with pytest.raises(ValueError, match="here"):
        parse_split_groups(raw, "here")


def test_the_committed_groups_keep_every_found_leak_on_one_side():
    groups = load_split_groups(manifest_dir())
    assert groups.digest
    raw = json.loads((manifest_dir() / "splits" / "groups.json").read_text())
    for members in raw["groups"]:
        assert len({groups.split("emoji-google", k) for k in members}) == 1, members
    assert groups.split("openclipart", "food/pumpkin2_yemu_01") == "test"  # Tux Paint's jack-o'-lantern stamp
    assert SplitGroups().split("openclipart", "food/pumpkin2_yemu_01") == split_for_key("food/pumpkin2_yemu_01")
