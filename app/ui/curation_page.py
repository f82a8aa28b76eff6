"""The curation page: `retr ui --curation DIR` runs `streamlit run app/ui/curation_page.py -- --curation DIR`.

DIR is a stage's --out folder (`retr curate STAGE SOURCE --out DIR`) or a run folder (`retr curate run`),
whose stages a picker chooses between. The page shows what the stage did, from its own files only
(indexing/curation/browse.py): the counts, each kept item beside the copies dropped for it, the items
that leaked an evaluation set, the clusters, and the dropped table. Pictures are the paths in those
files, decoded and re-encoded as thumbnails (`render_image`), never served as stored.

Reads are cached per folder and curate.json modification time, so a stage rerun into the same folder
shows its new files on the next interaction.

Testing hook (environment variable):
  RETR_UI_CURATION  the folder when the script gets no `--curation` (AppTest cannot pass script args)
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import streamlit as st
from PIL import Image, ImageDraw

from indexing.curation import browse
from indexing.curation.browse import DuplicateGroup, Item, Leak, StageFolder
from indexing.curation.outputs import RECORD
from indexing.decode import DecodeError
from indexing.item_images import render_image

THUMB_SIDE = 256  # longest side of a thumbnail, as the search page's
GROUPS_PER_PAGE = 10
COPIES_SHOWN = 5  # per group row, after the kept item; the rest are counted
CLUSTERS_PER_PAGE = 10
MEMBERS_SHOWN = 6  # thumbnails per cluster sheet
DROPPED_ROWS = 10_000  # rows of the dropped table sent to the browser


def folder_from(argv: Sequence[str], environ: Mapping[str, str]) -> Path:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--curation", default=environ.get("RETR_UI_CURATION"))
    folder = parser.parse_known_args(list(argv))[0].curation
    if not folder:
        raise ValueError("no folder given: run `retr ui --curation DIR` (or set RETR_UI_CURATION)")
    return Path(folder)


def stamp(folder: Path) -> float:
    """Changes when a stage in `folder` finishes (again): the newest curate.json, or the folder itself."""
    records = [folder / RECORD, *folder.glob(f"*/{RECORD}")]
    return max([folder.stat().st_mtime, *(r.stat().st_mtime for r in records if r.is_file())])


# --- cached reads: keyed by the folder and its stamp, so a rerun stage is read again ---------------

@dataclass(frozen=True)
class StageView:
    """What every tab of one stage needs (they are all drawn on each run), read once per stage and stamp."""

    groups: list[DuplicateGroup]
    leaks: list[Leak]
    levels: list[str]  # kept.parquet's cluster columns
    mtime: float  # the stamp it was read at: the cache key of the reads the tabs make on demand


@st.cache_data(max_entries=16, show_spinner=False)
def stages(folder: str, mtime: float) -> list[StageFolder]:
    return browse.list_stages(folder)


@st.cache_data(max_entries=16, show_spinner="Reading the stage…")
def stage_view(stage_dir: str, mtime: float) -> StageView:
    return StageView(browse.duplicate_groups(stage_dir), browse.eval_leaks(stage_dir),
                     browse.cluster_levels(stage_dir), mtime)


@st.cache_data(max_entries=16, show_spinner="Reading clusters…")
def clusters(stage_dir: str, level: str, mtime: float) -> list[browse.Cluster]:
    return browse.clusters(stage_dir, level)


@st.cache_data(max_entries=16, show_spinner=False)
def dropped(stage_dir: str, reasons: tuple[str, ...], mtime: float) -> pa.Table:
    return browse.read_dropped(stage_dir, reasons)


@st.cache_data(max_entries=4, show_spinner=False)
def placeholder(text: str) -> bytes:
    """A grey square saying why there is no picture, so a row keeps its shape."""
    image = Image.new("RGB", (THUMB_SIDE, THUMB_SIDE), (236, 236, 236))
    draw = ImageDraw.Draw(image)
    draw.text((THUMB_SIDE // 2, THUMB_SIDE // 2), text, fill=(110, 110, 110), anchor="mm", font_size=22)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@st.cache_data(max_entries=4096, show_spinner=False)
def thumbnail(path: str | None) -> bytes:
    """JPEG thumbnail re-encoded by the safe decoder; a placeholder for a missing, remote or unreadable file."""
    if not path or path.startswith(("http://", "https://")):
        return placeholder("no preview")
    try:
        return render_image(path, "thumb", THUMB_SIDE)[0]
    except FileNotFoundError:
        return placeholder("missing file")
    except (OSError, DecodeError, tarfile.TarError):
        return placeholder("unreadable")


def plain(text: str) -> str:
    """`text` shown as written: Markdown punctuation escaped, so a caption cannot become a link or an image."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", " ".join(text.split()))


# --- page sections ---------------------------------------------------------------------------------

def show_item(item: Item, label: str) -> None:
    """A thumbnail, a label line (Markdown), and the item's caption, pool id and file name."""
    st.image(thumbnail(item.image), width="stretch")
    if label:
        st.markdown(label)
    name = Path(item.image).name if item.image else "?"
    pid = f"#{item.pool_id} · " if item.pool_id is not None else ""
    st.caption(f"{plain(item.caption or '')}  \n{pid}{plain(name)}" if item.caption else f"{pid}{plain(name)}")


def page_of(n: int, per_page: int, key: str, noun: str) -> range:
    """A page picker when `n` things need more than one page; the indexes of the things to show."""
    pages = max(1, -(-n // per_page))
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=key) if pages > 1 else 1
    start = (int(page) - 1) * per_page
    shown = range(start, min(n, start + per_page))
    st.caption(f"{noun} {start + 1}–{shown.stop} of {n:,}" if n else f"no {noun}")
    return shown


REASON_HELP = {  # what each drop reason of indexing/curation/result.py means, for the metrics' tooltips
    "exact": "the same bytes as a kept item", "pixel": "the same pixels (perceptual hash) as a kept item",
    "near_dup": "embedding within the threshold of a kept item",
    "eval_leak": "within the threshold of an evaluation item (--against)",
    "not_retrieved": "no seed reached its cluster", "sampled_out": "its cluster's share was full",
    "unreadable": "the file could not be decoded",
}


def show_counts(record) -> None:
    c = record.counts
    by_reason = list(c["dropped"].items())
    cells = [("input", c["input"], None), ("kept", c["kept"], None),
             ("dropped", sum(n for _, n in by_reason), "input − kept; by reason on the right"),
             *((reason, n, f"dropped: {REASON_HELP.get(reason, reason)}") for reason, n in by_reason)]
    for col, (label, n, why) in zip(st.columns(len(cells)), cells, strict=True):
        col.metric(label, f"{n:,}", help=why)


def show_group(number: int, group: DuplicateGroup) -> None:
    st.markdown(f"**Group {number}** · {group.size} items")
    cols = st.columns(COPIES_SHOWN + 1)
    with cols[0], st.container(border=True):
        root = (":green-badge[kept]" if group.kept_dropped_as is None
                else f":red-badge[dropped itself: {group.kept_dropped_as}]")
        show_item(group.kept, root)
    for col, copy in zip(cols[1:], group.copies[:COPIES_SHOWN], strict=False):
        with col:
            sim = f" · cos {copy.similarity:.3f}" if copy.similarity is not None else ""
            via = f" · of #{copy.of_id}" if copy.of_id != group.kept.pool_id else ""
            show_item(copy.item, f":orange-badge[{copy.reason}]{sim}{via}")
    if len(group.copies) > COPIES_SHOWN:
        st.caption(f"… and {len(group.copies) - COPIES_SHOWN} more copies (the Dropped tab lists them all)")


def groups_tab(stage: StageFolder, view: StageView) -> None:
    groups = view.groups
    if not groups:
        st.info("No duplicate groups: this stage dropped no copies.")
        return
    for i in page_of(len(groups), GROUPS_PER_PAGE, f"groups-page-{stage.name}", "groups"):
        show_group(i + 1, groups[i])


def leaks_tab(stage: StageFolder, view: StageView) -> None:
    leaks = view.leaks
    if not leaks:
        asked = bool(stage.record.params.get("against"))
        st.info("No evaluation leaks." if asked else "No evaluation set was given to this stage (`--against`).")
        return
    for i in page_of(len(leaks), GROUPS_PER_PAGE, f"leaks-page-{stage.name}", "leaks"):
        leak = leaks[i]
        pool, evaluation, _ = st.columns([1, 1, COPIES_SHOWN - 1])
        sim = f" · cos {leak.similarity:.3f}" if leak.similarity is not None else ""
        with pool:
            show_item(leak.item, f":red-badge[dropped]{sim}")
        with evaluation:
            show_item(Item(None, leak.eval_image, None), f":blue-badge[evaluation #{leak.eval_id}]")


def clusters_tab(stage: StageFolder, view: StageView) -> None:
    levels = view.levels
    if not levels:
        st.info("No cluster labels in this stage (the cluster, sample and retrieve stages add them).")
        return
    level = st.selectbox("Level", levels, key=f"level-{stage.name}",
                         help="cluster_l1 is the finest level; each higher level groups the one below")
    found = clusters(str(stage.path), level, view.mtime)
    st.bar_chart({"cluster": [str(c.id) for c in found], "items": [c.size for c in found]}, x="cluster",
                 y="items", sort="-items", height=220)
    for i in page_of(len(found), CLUSTERS_PER_PAGE, f"clusters-page-{stage.name}-{level}", "clusters"):
        cluster = found[i]
        st.markdown(f"**Cluster {cluster.id}** · {cluster.size} item{'s' if cluster.size != 1 else ''}")
        for col, item in zip(st.columns(MEMBERS_SHOWN), cluster.members[:MEMBERS_SHOWN], strict=False):
            with col:
                show_item(item, "")


def dropped_tab(stage: StageFolder, view: StageView) -> None:
    reasons = list(stage.record.counts["dropped"])
    if not reasons:
        st.info("Nothing was dropped.")
        return
    chosen = st.multiselect("Reason", reasons, default=reasons, key=f"reasons-{stage.name}")
    table = dropped(str(stage.path), tuple(chosen), view.mtime)
    st.caption(f"{table.num_rows:,} dropped" + (f", the first {DROPPED_ROWS:,} shown" if table.num_rows > DROPPED_ROWS
                                                 else ""))
    st.dataframe(table.slice(0, DROPPED_ROWS), hide_index=True)


def pick_stage(found: list[StageFolder]) -> StageFolder:
    if len(found) == 1:
        return found[0]
    by_name = {s.name: s for s in found}
    with st.sidebar:
        return by_name[st.selectbox("Stage", list(by_name), key="stage")]


def describe(stage: StageFolder) -> None:
    r = stage.record
    with st.sidebar:
        st.subheader(f"{r.stage} stage")
        settings = [f"{k} {plain(str(v))}" for k, v in r.params.items() if v is not None and k != "model"]
        st.caption("  \n".join([f"source {plain(r.source)}", f"model {plain(r.model)} · {r.seconds:.1f} s",
                                *settings]))


def main() -> None:
    st.set_page_config(page_title="retr curation", layout="wide")
    try:
        folder = folder_from(sys.argv[1:], os.environ)
        found = stages(str(folder), stamp(folder))
    except (ValueError, OSError) as e:
        st.error(f"cannot open the curation folder: {e}")
        st.stop()
    stage = pick_stage(found)
    st.title("retr curation")
    where = [folder.resolve().name] + ([stage.name] if stage.path.resolve() != folder.resolve() else [])
    st.caption(" · ".join(plain(w) for w in where))
    describe(stage)
    show_counts(stage.record)
    try:
        view = stage_view(str(stage.path), stamp(stage.path))
    except (ValueError, OSError) as e:  # a damaged or half-copied parquet file
        st.error(f"cannot read {stage.path}: {e}")
        st.stop()
    tabs = st.tabs(["Duplicate groups", "Evaluation leaks", "Clusters", "Dropped"])
    for tab, section in zip(tabs, (groups_tab, leaks_tab, clusters_tab, dropped_tab), strict=True):
        with tab:
            section(stage, view)


if __name__ == "__main__":
    main()
