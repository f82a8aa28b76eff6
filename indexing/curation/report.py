"""report.html: one self-contained page per stage (thumbnails inlined as base64, charts as inline SVG),
so it opens from disk, travels as one file, and needs no server.

What it shows: the counts (input, kept, dropped by reason), the largest duplicate groups and the
evaluation leaks as image rows (kept item first, framed green), cluster sheets (a row of members per
cluster), the cluster sizes before and after balancing, and, when the pool carries ground truth
(`--truth COLUMN`: items with the same value are copies of each other), precision and recall of the
near-duplicate graph against the cosine threshold.

Everything shown is escaped: captions and paths come from data, not from us.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexing.atomic import atomic_path
from indexing.decode import DecodeError, DecodeLimits, decode_image
from indexing.item_images import read_source_bytes

THUMB = 96  # px, the longer side of an inlined thumbnail
GREEN, RED, GREY = "#2ea043", "#cf222e", "#8c959f"


@dataclass(frozen=True)
class Tile:
    path: str  # where the image is (a file or 'shard.tar/member'); URLs are not fetched for a report
    label: str  # one short line under the thumbnail
    kept: bool = False  # framed green


@dataclass(frozen=True)
class Chart:
    title: str
    kind: str  # "bars" (labels, one or two series) or "curve" (x, several series)
    x: Sequence[float | str]
    series: dict[str, Sequence[float]]
    x_label: str = ""
    y_label: str = ""


@dataclass
class Report:
    title: str
    counts: dict  # curate.json counts: input, kept, dropped by reason
    facts: dict[str, str] = field(default_factory=dict)  # model, threshold, parameters…
    rows: list[tuple[str, list[Tile]]] = field(default_factory=list)  # (section heading, tiles) in order
    charts: list[Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_rows(self, heading: str, groups: Sequence[Sequence[Tile]]) -> None:
        for i, tiles in enumerate(groups):
            self.rows.append((heading if i == 0 else "", list(tiles)))


def _thumb_uri(path: str) -> str | None:
    """A small JPEG of the image as a data: URI; None when it cannot be read here (a URL, a moved file)."""
    if path.startswith(("http://", "https://")):
        return None
    try:
        image = decode_image(read_source_bytes(path), name=path, limits=DecodeLimits(max_side=THUMB * 4)).image
    except (OSError, DecodeError):
        return None
    image.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _tile_html(tile: Tile) -> str:
    uri = _thumb_uri(tile.path)
    colour = GREEN if tile.kept else GREY
    img = (f'<img src="{uri}" alt="">' if uri else '<div class="missing">not readable here</div>')
    return (f'<figure style="border-color:{colour}" title="{html.escape(tile.path)}">{img}'
            f"<figcaption>{html.escape(tile.label)}</figcaption></figure>")


def _svg_bars(chart: Chart, width: int = 640, height: int = 220) -> str:
    names = list(chart.series)
    n = len(chart.x)
    top = max((max(v) for v in chart.series.values() if len(v)), default=1) or 1
    slot = (width - 60) / max(n, 1)
    bar = slot / (len(names) + 0.5)
    colours = [GREY, GREEN, RED]
    parts = []
    for s, name in enumerate(names):
        for i, v in enumerate(chart.series[name]):
            h = (height - 40) * float(v) / top
            x = 50 + i * slot + s * bar
            parts.append(f'<rect x="{x:.1f}" y="{height - 20 - h:.1f}" width="{bar * 0.9:.1f}" height="{h:.1f}" '
                         f'fill="{colours[s % 3]}"><title>{html.escape(str(chart.x[i]))}: {v}</title></rect>')
    return _svg_frame(chart, width, height, top, parts, names, colours)


def _svg_curve(chart: Chart, width: int = 640, height: int = 240) -> str:
    xs = np.asarray(chart.x, float)
    lo, hi = (float(xs.min()), float(xs.max())) if len(xs) else (0.0, 1.0)
    span = (hi - lo) or 1.0
    colours = [GREEN, RED, "#0969da", GREY]
    parts = []
    for s, ys in enumerate(chart.series.values()):
        pts = " ".join(f"{50 + (width - 70) * (x - lo) / span:.1f},{height - 20 - (height - 40) * float(y):.1f}"
                       for x, y in zip(xs, ys, strict=True))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colours[s % 4]}" stroke-width="2"/>')
    ticks = "".join(f'<text x="{50 + (width - 70) * (t - lo) / span:.0f}" y="{height - 4}" font-size="10">{t:.2f}'
                    "</text>" for t in np.linspace(lo, hi, 6))
    return _svg_frame(chart, width, height, 1.0, [*parts, ticks], list(chart.series), colours)


def _svg_frame(chart: Chart, width: int, height: int, top: float, parts: list[str], names: list[str],
               colours: list[str]) -> str:
    legend = "".join(f'<text x="{60 + 140 * i}" y="12" font-size="11" fill="{colours[i % len(colours)]}">'
                     f"■ {html.escape(n)}</text>" for i, n in enumerate(names))
    axis = (f'<line x1="48" y1="{height - 20}" x2="{width - 10}" y2="{height - 20}" stroke="#999"/>'
            f'<text x="2" y="24" font-size="10">{top:g}</text><text x="2" y="{height - 22}" font-size="10">0</text>'
            f'<text x="{width // 2}" y="{height}" font-size="10">{html.escape(chart.x_label)}</text>')
    return (f'<h3>{html.escape(chart.title)}</h3><svg width="{width}" height="{height + 6}" '
            f'xmlns="http://www.w3.org/2000/svg">{legend}{axis}{"".join(parts)}</svg>')


_STYLE = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f6f8fa}.row{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0 12px}
figure{margin:0;border:3px solid;width:118px;font-size:10px;overflow:hidden}
figure img{display:block;margin:auto;max-width:96px;max-height:96px}
figcaption{white-space:nowrap;overflow:hidden;text-overflow:ellipsis;padding:1px 2px}
.missing{height:96px;display:flex;align-items:center;justify-content:center;color:#888}"""


def render(report: Report) -> str:
    counts = report.counts
    dropped = counts.get("dropped", {})
    count_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:,}</td></tr>" for k, v in
                         [("input", counts.get("input", 0)), ("kept", counts.get("kept", 0)),
                          *((f"dropped: {r}", n) for r, n in dropped.items())])
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>{html.escape(v)}</td></tr>"
                    for k, v in report.facts.items())
    body = [f"<h1>{html.escape(report.title)}</h1>", f"<table>{count_rows}</table>", f"<p></p><table>{facts}</table>"]
    body += [f"<p>{html.escape(n)}</p>" for n in report.notes]
    body += [_svg_curve(c) if c.kind == "curve" else _svg_bars(c) for c in report.charts]
    for heading, tiles in report.rows:
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append('<div class="row">' + "".join(_tile_html(t) for t in tiles) + "</div>")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(report.title)}</title>'
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(report: Report, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(render(report), encoding="utf-8")
    return path
