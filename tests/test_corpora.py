"""Registry corpora: the specs in data_manifests/, the pure parsers on small trees laid out like the
real packages, and fetch's cache behaviour and checksum refusal with a stand-in downloader. One slow
test fetches the real `flags` corpus (two small .debs) from Debian. The archive layer itself
(download commands, verification, extraction) is tested in tests/test_archives.py."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from indexing import corpora
from indexing.archives import EXACT_VERSION, ArchiveRef
from indexing.cache import manifest_dir
from indexing.corpora import (
    Corpus,
    country_display_name,
    fetch_corpus,
    find_corpus,
    list_corpora,
    load_corpus,
    parse_emoji_datasource,
    parse_iso_flags,
    split_for_key,
)
from indexing.manifest import file_sha256
from indexing.sources import list_items


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path)


EMOJI_ENTRIES = [  # the shape of emoji-datasource's emoji.json, trimmed to the fields we read
    {
        "name": "THUMBS UP SIGN",
        "unified": "1F44D",
        "image": "1f44d.png",
        "short_names": ["+1", "thumbsup"],
        "category": "People & Body",
        "subcategory": "hand-fingers-closed",
        "sort_order": 170,
        "added_in": "0.6",
        "has_img_google": True,
        "skin_variations": {"1F3FB": {"unified": "1F44D-1F3FB", "image": "1f44d-1f3fb.png"}},
    },
    {
        "name": "GRINNING FACE",
        "unified": "1F600",
        "image": "1f600.png",
        "short_names": ["grinning"],
        "category": "Smileys & Emotion",
        "subcategory": "face-smiling",
        "sort_order": 1,
        "added_in": "1.0",
        "has_img_google": True,
    },
    {
        "name": "Sark Flag",
        "unified": "1F1E8-1F1F6",
        "image": "1f1e8-1f1f6.png",
        "short_names": ["flag-sark"],
        "category": "Flags",
        "subcategory": "country-flag",
        "sort_order": 1700,
        "added_in": "2.0",
        "has_img_google": False,
    },
]

EMOJI_PARAMS = {
    "data_file": "package/emoji.json",
    "image_dir": "package/img/google/64",
    "has_image_field": "has_img_google",
}


def _emoji_tree(root: Path) -> Path:
    (root / "package").mkdir(parents=True)
    (root / "package/emoji.json").write_text(json.dumps(EMOJI_ENTRIES))
    _png(root / "package/img/google/64/1f600.png", (250, 200, 0))
    _png(root / "package/img/google/64/1f44d.png", (250, 180, 20))
    _png(root / "package/img/google/64/1f44d-1f3fb.png", (240, 200, 160))  # a skin tone: not an item
    _png(root / "package/img/google/sheets-256/64.png", (0, 0, 0))  # sprite sheet: never extracted
    return root


def _corpus(parser: str, params: dict, name: str = "tiny") -> Corpus:
    return Corpus(name, "test", "npm", "pkg", "1.0.0", "MIT", "0" * 64, parser, params=params)


# ---------------------------------------------------------------------------------------------------
# data_manifests/


def test_every_spec_parses_with_licence_pinned_version_and_sha256():
    found = list_corpora(manifest_dir())
    assert {"emoji-google", "emoji-twitter", "flags"} <= {c.name for c in found}
    assert (manifest_dir() / "models/imagenet-classes.json").is_file()  # a model side-file, not a corpus
    assert "imagenet-classes" not in {c.name for c in found}
    readme = (manifest_dir() / "README.md").read_text()
    for c in found:
        assert c.licence.strip() and c.description.strip() and c.attribution.strip(), c.name
        for a in c.archives:
            assert EXACT_VERSION.fullmatch(a.version), (c.name, a.version)
            assert len(a.sha256) == 64 and int(a.sha256, 16) >= 0, (c.name, a.sha256)
        assert f"`{c.name}`" in readme and c.version in readme, f"data_manifests/README.md misses {c.name}"


def test_emoji_styles_pin_the_same_emoji_data():
    google, twitter = find_corpus("emoji-google", manifest_dir()), find_corpus("emoji-twitter", manifest_dir())
    # Same data version → same key set, so cross-style pairs match by `key`.
    assert google.version == twitter.version
    assert google.params["data_file"] == twitter.params["data_file"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "^16.0.0"}, "exact version"),
        ({"version": "latest"}, "exact version"),
        ({"version": "16.x"}, "exact version"),
        ({"sha256": "abc"}, "64 lowercase hex"),
        ({"source": "conda"}, "not one of npm, debian, pypi"),
        ({"name": "other"}, "match the file name"),
        ({"parser": "nope"}, "unknown parser"),
        ({"licence": ""}, "'licence' must be a non-empty string"),
    ],
)
def test_load_corpus_rejects_bad_specs(tmp_path, change, message):
    spec = json.loads((manifest_dir() / "emoji-google.json").read_text()) | change
    path = tmp_path / "emoji-google.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=message):
        load_corpus(path)


def test_unknown_corpus_names_the_known_ones():
    with pytest.raises(ValueError, match="known corpora: .*emoji-google"):
        find_corpus("emoji-googel", manifest_dir())
    with pytest.raises(ValueError, match="unknown corpus"):
        find_corpus("../pyproject", manifest_dir())


# ---------------------------------------------------------------------------------------------------
# Pure parsers and heuristics


def test_parse_emoji_datasource_one_item_per_emoji_with_an_image(tmp_path):
    root = _emoji_tree(tmp_path)
    parsed = parse_emoji_datasource(root, _corpus("emoji-datasource", EMOJI_PARAMS))
    rows = parsed.table.to_pylist()
    assert parsed.n_skipped == 1  # Sark Flag: has_img_google is false
    assert [r["caption"] for r in rows] == ["grinning face", "thumbs up sign"]  # in sort_order
    assert [r["key"] for r in rows] == ["1F600", "1F44D"]
    assert [r["split"] for r in rows] == ["train", "test"]
    assert [r["emoji"] for r in rows] == ["\U0001f600", "\U0001f44d"]
    assert rows[1]["names"] == "thumbs up sign | +1 | thumbsup"
    assert rows[1]["short_names"] == "+1 | thumbsup"
    assert rows[1]["n_skin_tones"] == 1
    assert rows[0]["image"] == str(root / "package/img/google/64/1f600.png")
    assert {r["corpus"] for r in rows} == {"tiny"}


def test_parse_emoji_datasource_skips_a_listed_image_that_is_missing(tmp_path):
    root = _emoji_tree(tmp_path)
    (root / "package/img/google/64/1f44d.png").unlink()
    parsed = parse_emoji_datasource(root, _corpus("emoji-datasource", EMOJI_PARAMS))
    assert parsed.table.column("key").to_pylist() == ["1F600"]
    assert parsed.n_skipped == 2


FLAG_PARAMS = {
    "image_dir": "usr/share/iso-flags-png-320x240",
    "countries_file": "usr/share/iso-codes/json/iso_3166-1.json",
}
COUNTRIES = [  # entries copied in shape from iso-codes 4.15's iso_3166-1.json
    {
        "alpha_2": "FR",
        "alpha_3": "FRA",
        "flag": "🇫🇷",
        "name": "France",
        "numeric": "250",
        "official_name": "French Republic",
    },
    {
        "alpha_2": "CD",
        "alpha_3": "COD",
        "flag": "🇨🇩",
        "name": "Congo, The Democratic Republic of the",
        "numeric": "180",
    },
    {"alpha_2": "DE", "alpha_3": "DEU", "flag": "🇩🇪", "name": "Germany", "numeric": "276"},  # no image: not an item
]


def _flags_tree(root: Path) -> Path:
    countries = root / FLAG_PARAMS["countries_file"]
    countries.parent.mkdir(parents=True)
    countries.write_text(json.dumps({"3166-1": COUNTRIES}))
    for stem in ("fr", "cd", "_olympic"):
        _png(root / FLAG_PARAMS["image_dir"] / f"{stem}.png", (0, 0, 200))
    return root


def test_parse_iso_flags_captions_known_codes_and_skips_the_rest(tmp_path):
    parsed = parse_iso_flags(_flags_tree(tmp_path), _corpus("iso-flags", FLAG_PARAMS, name="flags"))
    rows = parsed.table.to_pylist()
    assert parsed.n_skipped == 1  # _olympic.png has no ISO 3166-1 name
    assert [r["caption"] for r in rows] == ["flag of the Democratic Republic of the Congo", "flag of France"]
    assert [r["key"] for r in rows] == ["CD", "FR"]
    assert [r["split"] for r in rows] == ["train", "train"]
    assert rows[1]["names"] == "France | French Republic"
    assert rows[1]["alpha_3"] == "FRA" and rows[1]["emoji"] == "🇫🇷"


@pytest.mark.parametrize(
    ("country", "expected"),
    [
        ({"name": "France"}, "France"),
        ({"name": "Korea, Republic of", "common_name": "South Korea"}, "South Korea"),
        ({"name": "Virgin Islands, British", "official_name": "British Virgin Islands"}, "British Virgin Islands"),
        ({"name": "Congo, The Democratic Republic of the"}, "The Democratic Republic of the Congo"),
        ({"name": "Micronesia, Federated States of"}, "Federated States of Micronesia"),
        # A list, not an inversion: kept as ISO writes it.
        ({"name": "Saint Helena, Ascension and Tristan da Cunha"}, "Saint Helena, Ascension and Tristan da Cunha"),
        (
            {"name": "Bonaire, Sint Eustatius and Saba", "official_name": "Bonaire, Sint Eustatius and Saba"},
            "Bonaire, Sint Eustatius and Saba",
        ),
    ],
)
def test_country_display_name(country, expected):
    assert country_display_name(country) == expected


def test_split_is_a_fixed_function_of_the_key():
    # Golden values: if these change, every corpus' held-out set changes with them.
    assert [split_for_key(k) for k in ("1F600", "2764-FE0F", "FR", "PT", "1F914")] == [
        "train", "test", "train", "test", "test",
    ]  # fmt: skip
    share = sum(split_for_key(f"key-{i}") == "test" for i in range(20_000)) / 20_000
    assert 0.09 < share < 0.11  # observed 0.0986


# ---------------------------------------------------------------------------------------------------
# fetch: cache, idempotence and refusal, with a stand-in for `npm pack`


def _npm_tarball(tmp_path: Path) -> Path:
    tree = _emoji_tree(tmp_path / "tree")
    out = tmp_path / "tiny-1.0.0.tgz"
    with tarfile.open(out, "w:gz") as tf:
        for p in sorted(tree.rglob("*")):
            if p.is_file():
                tf.add(p, arcname=p.relative_to(tree).as_posix())
    return out


def _spec_dir(tmp_path: Path, sha256: str) -> Path:
    spec = {
        "name": "tiny",
        "description": "three emoji",
        "source": "npm",
        "package": "tiny",
        "version": "1.0.0",
        "sha256": sha256,
        "licence": "MIT",
        "parser": "emoji-datasource",
        "extract": ["package/emoji.json", "package/img/google/64/"],
        "params": EMOJI_PARAMS,
    }
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "tiny.json").write_text(json.dumps(spec))
    return folder


class _FakeRegistry:
    """Stands in for `npm pack`: copies a prepared tarball into the download folder."""

    def __init__(self, tarball: Path) -> None:
        self.tarball, self.calls = tarball, 0

    def __call__(self, ref: ArchiveRef, dest: Path) -> Path:
        self.calls += 1
        return Path(shutil.copy(self.tarball, dest / ref.filename))


def _fetch(name: str, manifests: Path, cache: Path, registry: _FakeRegistry) -> corpora.FetchResult:
    return corpora._fetch(find_corpus(name, manifests), cache_dir=cache, progress=False, download=registry)


def test_fetch_writes_a_manifest_list_items_reads_and_reuses_it(tmp_path):
    tarball = _npm_tarball(tmp_path)
    manifests = _spec_dir(tmp_path, file_sha256(tarball))
    registry = _FakeRegistry(tarball)
    first = _fetch("tiny", manifests, tmp_path / "cache", registry)
    assert (first.n_items, first.n_skipped, first.reused) == (2, 1, False)
    items = list_items(str(first.manifest_path))
    assert [(it.caption, it.extra["key"], it.extra["split"]) for it in items] == [
        ("grinning face", "1F600", "train"),
        ("thumbs up sign", "1F44D", "test"),
    ]
    assert all(Path(it.path).is_file() and Path(it.path).is_relative_to(tmp_path / "cache") for it in items)
    assert not (first.root / "package/img/google/sheets-256").exists()  # outside the spec's `extract`
    assert json.loads(pq.read_schema(first.manifest_path).metadata[b"retr.corpus"])["name"] == "tiny"

    second = _fetch("tiny", manifests, tmp_path / "cache", registry)
    assert (second.reused, second.n_items, second.n_skipped, registry.calls) == (True, 2, 1, 1)
    corpus_dir = tmp_path / "cache/corpora/tiny"
    assert sorted(p.name for p in corpus_dir.iterdir()) == [".lock", "archives", "extracted", "manifest.parquet"]

    # A changed spec rebuilds the manifest from the verified cache, without downloading again.
    spec = json.loads((manifests / "tiny.json").read_text()) | {"description": "three emoji, reworded"}
    (manifests / "tiny.json").write_text(json.dumps(spec))
    third = _fetch("tiny", manifests, tmp_path / "cache", registry)
    assert (third.reused, third.n_items, registry.calls) == (False, 2, 1)


def test_fetch_refuses_an_archive_whose_hash_differs_from_the_pin(tmp_path):
    tarball = _npm_tarball(tmp_path)
    manifests = _spec_dir(tmp_path, "f" * 64)
    with pytest.raises(ValueError, match=f"expected {'f' * 64}, got {file_sha256(tarball)}"):
        _fetch("tiny", manifests, tmp_path / "cache", _FakeRegistry(tarball))
    archives = tmp_path / "cache/corpora/tiny/archives"
    assert list(archives.iterdir()) == []  # the unverified download was not kept
    assert not (tmp_path / "cache/corpora/tiny/manifest.parquet").exists()


# ---------------------------------------------------------------------------------------------------
# The real thing


@pytest.mark.slow
def test_fetch_real_flags_corpus_from_debian(tmp_path):
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs apt-get and dpkg-deb (Debian or Ubuntu)")
    result = fetch_corpus("flags", cache_dir=tmp_path, manifest_dir=manifest_dir(), progress=False)
    assert result.n_items > 200  # 249 with iso-flags-png-320x240 1.0.2-2 and iso-codes 4.15.0-1
    assert result.n_skipped == 13  # _olympic, eu, eo, zz, ... have no ISO 3166-1 name
    items = list_items(str(result.manifest_path))
    captions = {it.caption for it in items}
    assert {"flag of France", "flag of Japan", "flag of Brazil"} <= captions
    assert all(Path(it.path).is_file() for it in items)
    with Image.open(io.BytesIO(Path(items[0].path).read_bytes())) as im:
        assert im.size == (320, 240)
    assert fetch_corpus("flags", cache_dir=tmp_path, manifest_dir=manifest_dir(), progress=False).reused
