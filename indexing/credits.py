"""Per-file credits that a package keeps beside its pictures, and licence names made comparable.

GCompris keeps a README in each picture folder, one block per picture or group of pictures:

    Copyright: Stefano Guerrieri
    Source: https://commons.wikimedia.org/wiki/File:Anthias_anthias_Stefano_Guerrieri1.jpg
    License: Public Domain
    Files:
    fish14.webp

`read_credits` maps each listed file to its `Credit`. These upstream READMEs, not Debian's copyright
file, are what a corpus trusts: Debian's file (gcompris-qt-data 3.1-2) still names the pictures an
older GCompris shipped under the same file names (its fish14.webp is a hammerhead shark; the picture
is an anthias), so its licences cannot be matched to the pictures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FIELD = re.compile(r"^(Copyright|Source|License|Licence|Files|Comments?):\s*(.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Credit:
    copyright: str
    source: str
    licence: str  # normalised, see `normalise_licence`

    @property
    def text(self) -> str:
        """One line for a manifest's `credit` column: the author, then where the picture came from."""
        return "; ".join(p for p in (self.copyright, self.source) if p)


def normalise_licence(name: str) -> str:
    """A licence name as an SPDX-style id, so spellings compare equal: 'CC-BY-SA 4.0' and
    'CC-BY-SA-4.0' -> 'CC-BY-SA-4.0', 'Public domain' -> 'public-domain'. Trailing remarks
    ('CC-BY-2.0 Comments: cropping') are dropped."""
    name = re.split(r"\s+Comments?:", name.strip(), maxsplit=1, flags=re.IGNORECASE)[0].strip()
    if name.casefold() in ("public domain", "public-domain"):
        return "public-domain"
    spdx = re.sub(r"[\s_]+", "-", name)
    return spdx.upper() if spdx.upper().startswith("CC") else spdx


def _blocks(text: str) -> list[dict[str, str]]:
    blocks, current, last = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, None
            continue
        match = _FIELD.match(line.strip())
        if match:
            last = match.group(1).lower().replace("licence", "license").rstrip("s")
            current[last] = match.group(2).strip()
        elif last is not None:  # a continuation line: more file names, or a wrapped value
            current[last] = f"{current[last]} {line.strip()}".strip()
    if current:
        blocks.append(current)
    return blocks


def read_credits(readme: Path) -> dict[str, Credit]:
    """File name -> Credit for every file a README block lists. A block without a licence credits
    nothing (its files stay unlicensed, so a corpus skips them). A file listed twice keeps its
    first block."""
    credits: dict[str, Credit] = {}
    for block in _blocks(Path(readme).read_text(encoding="utf-8", errors="replace")):
        licence = normalise_licence(block.get("license", ""))
        if not licence:
            continue
        credit = Credit(block.get("copyright", ""), block.get("source", ""), licence)
        for name in block.get("file", "").split():
            credits.setdefault(name, credit)
    return credits
