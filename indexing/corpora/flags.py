"""Debian's iso-flags-png-*: CODE.png named by ISO 3166-1 alpha-2, captioned from iso-codes'
iso_3166-1.json ("flag of Belarus") and keyed like the country's flag emoji, so the flag and the
emoji drawings of it share a key and a split. Tested in tests/test_corpora.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from indexing.corpora.rows import BASE_FIELDS, Parsed, base_row, join_names

if TYPE_CHECKING:
    from indexing.corpora.core import Corpus

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
        **base_row(corpus, flag_emoji_key(country["alpha_2"]), image, flag_caption(country), join_names(names)),
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
