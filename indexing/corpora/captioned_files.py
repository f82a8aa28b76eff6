"""Corpora of a fixed list of pictures whose captions are written in the spec itself
(`params.images`): `captioned-files` takes each picture's licence from the spec too
(skimage-photos); `credited-qt-resources` unpacks the pictures from Qt resource bundles during
extraction and takes each licence and credit from the README beside the picture, as GCompris keeps
them (gcompris-photos; `indexing.qt_resources`, `indexing.credits`). Tested in
tests/test_corpora.py and tests/test_credited_corpus.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from indexing.corpora.rows import BASE_FIELDS, Parsed, base_row, holdout_split, join_names
from indexing.credits import Credit, normalise_licence, read_credits
from indexing.qt_resources import unpack_resources

if TYPE_CHECKING:
    from indexing.corpora.core import Corpus

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
        row = base_row(corpus, Path(spec["file"]).stem, image, caption, join_names([caption, *spec.get("names", [])]))
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
        row = base_row(corpus, key, image, caption, join_names([caption, *spec.get("names", [])]))
        if "val_fraction" in params:  # an evaluation-only corpus: 'val' to choose models, 'test' to report
            row["split"] = holdout_split(key, float(params["val_fraction"]))
        rows.append({**row, "licence": credit.licence, "kind": params.get("kind", ""), "credit": credit.text})
    return Parsed(pa.Table.from_pylist(rows, schema=CAPTIONED_SCHEMA), sum(reasons.values()), dict(reasons))
