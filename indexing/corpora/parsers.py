"""The parser table: which function turns an extracted package into manifest rows, by the name a
corpus spec gives in its `parser` field, and which step unpacks images during extraction.

This is the one place that knows every source module. To add a source: write its parser,
`(extracted root, Corpus) -> Parsed`, in a module of its own in this package (pure: it reads files
and writes nothing; build rows with `indexing.corpora.rows`), add it to PARSERS below (and to
UNPACKERS if its images are not plain files in the archive), and name it in the new
data_manifests/NAME.json. Source modules do not import each other; what several share lives in
`rows` and `emoji_entries`. tests/test_corpora_layout.py checks that this table covers every spec
and that no other module reaches a source module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from indexing.corpora.captioned_files import parse_captioned_files, parse_credited_files, unpack_qt_bundles
from indexing.corpora.emoji_codepoint_files import parse_emoji_codepoint_files
from indexing.corpora.emoji_datasource import parse_emoji_datasource
from indexing.corpora.flags import parse_iso_flags
from indexing.corpora.iconify_sets import parse_iconify_emoji, parse_iconify_names, unpack_iconify
from indexing.corpora.openclipart import parse_openclipart
from indexing.corpora.openmoji import parse_openmoji
from indexing.corpora.rows import Parsed
from indexing.corpora.tuxpaint import parse_tuxpaint_stamps

if TYPE_CHECKING:
    from indexing.corpora.core import Corpus

# Bump when a parser's output changes, so cached manifests are rebuilt instead of reused.
MANIFEST_FORMAT = 2  # 2: flags keyed by their emoji (flag_emoji_key)

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
