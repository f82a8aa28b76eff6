"""Iconify icon sets (npm @iconify-json/*): one icons.json holding every icon's SVG body.

Iconify stores an icon as the inside of an <svg> element plus its box (`left`, `top`, `width`,
`height`, defaulting to the set's). `unpack_icons` turns each one into a standalone .svg file, so
the rest of the pipeline (decode, embed, index) sees ordinary image files. It runs inside
extraction, before the extracted tree is renamed into place, so a corpus never points at half of
its icons.

Aliases (other names for an icon, possibly flipped or rotated) are not unpacked: they would be the
same image twice. Icons a set marks `hidden` (kept only for backwards compatibility) are skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Icon names become file names: Iconify allows lowercase letters, digits and single dashes.
_ICON_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_SVG_NS = "http://www.w3.org/2000/svg"
_XLINK_NS = "http://www.w3.org/1999/xlink"
_BOX_DEFAULTS = {"left": 0, "top": 0, "width": 16, "height": 16}  # Iconify's own defaults


def icon_svg(icon: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """One icon as a standalone SVG document, drawn in its viewBox at the box's size."""
    box = {k: float(icon.get(k, defaults.get(k, d))) for k, d in _BOX_DEFAULTS.items()}
    if box["width"] <= 0 or box["height"] <= 0:
        raise ValueError(f"icon box must be positive, got {box['width']}x{box['height']}")
    view_box = " ".join(f"{box[k]:g}" for k in ("left", "top", "width", "height"))
    return (
        f'<svg xmlns="{_SVG_NS}" xmlns:xlink="{_XLINK_NS}" viewBox="{view_box}" '
        f'width="{box["width"]:g}" height="{box["height"]:g}">{icon["body"]}</svg>\n'
    )


def unpack_icons(icons_file: Path, dest: Path) -> int:
    """Write every visible icon of ICONS_FILE as DEST/NAME.svg; returns how many were written.

    Raises ValueError for a file that is not an Iconify icon set or an icon name that is not a safe
    file name (a crafted set must not write outside DEST).
    """
    data = json.loads(Path(icons_file).read_text(encoding="utf-8"))
    icons = data.get("icons") if isinstance(data, dict) else None
    if not isinstance(icons, dict):
        raise ValueError(f"{icons_file}: not an Iconify icon set (no 'icons' object)")
    defaults = {k: data[k] for k in ("left", "top", "width", "height") if k in data}
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, icon in icons.items():
        if not _ICON_NAME.fullmatch(name):
            raise ValueError(f"{icons_file}: icon name {name!r} is not a safe file name")
        if icon.get("hidden"):
            continue
        (dest / f"{name}.svg").write_text(icon_svg(icon, defaults), encoding="utf-8")
        written += 1
    return written
