"""The search UI: `retr ui INDEX` runs `streamlit run app/ui/streamlit_app.py -- --index PATH`
(`retr ui INDEX --reranker SPEC` adds `--reranker SPEC`: a "rerank top K" control for text queries).

A surface like the CLI: widgets in, one library call (`retrieval.search`), a grid out. The index and
its model are opened once per process (`st.cache_resource`) and shared by every browser tab; each
search holds a lock, because the index's DuckDB connection serves one query at a time.

Testing / advanced hooks (environment variables):
  RETR_UI_INDEX    the index folder when the script gets no `--index` (AppTest cannot pass script args)
  RETR_UI_ENCODER  `module:attr`, a zero-argument factory returning an Encoder, used instead of loading
                   the index's own model; the tests name `tests.conftest:PixelEncoder`, a fake model that
                   no registry spec loads.
  RETR_UI_RERANKER `module:attr`, a zero-argument factory returning a Reranker, used instead of
                   `--reranker SPEC` (the tests' fake reranker)
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from app.ui.filter_form import FilterField, filter_fields, where_text
from indexing.decode import DecodeError
from indexing.item_images import render_image
from indexing.sources import IMAGE_EXTENSIONS
from retrieval.encoders.base import Encoder
from retrieval.rerank.rerank import MAX_RERANK
from retrieval.search import Hit, Query, RetrievalIndex, SearchResult, decode_query_image, open_index

THUMB_SIDE = 256  # longest side of a result thumbnail, as the HTTP API's ?size=thumb
GRID_COLUMNS = 5
SAMPLE_ROWS = 10_000  # rows read (evenly spaced by id) to choose each column's filter widget
MAX_UPLOAD_MB = 16  # as the HTTP API's upload limit
RERANK_SLIDER_MAX = min(100, MAX_RERANK)  # the k slider's range; the CLI and API take up to MAX_RERANK


@dataclass(frozen=True)
class UiSource:
    index: Path
    encoder: str | None = None  # RETR_UI_ENCODER's `module:attr`; None loads the index's own model
    reranker: str | None = None  # --reranker SPEC; None: no reranking control
    reranker_factory: str | None = None  # RETR_UI_RERANKER's `module:attr`, used instead of the spec


@dataclass(frozen=True)
class LoadedIndex:
    index: RetrievalIndex
    fields: list[FilterField]  # the sidebar's filter widgets
    lock: threading.Lock
    can_rerank: bool = False  # a reranker was configured: the sidebar shows "rerank top K"


@dataclass(frozen=True)
class ActiveQuery:
    kind: str  # "text", "upload" or "image_id"
    text: str = ""
    image_id: int = -1


@dataclass(frozen=True)
class SearchOptions:
    """What the sidebar sets."""

    k: int = 10
    target: str = "image"
    where: str | None = None
    rerank: int = 0  # text→image queries only


def source_from(argv: Sequence[str], environ: Mapping[str, str]) -> UiSource:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--index")
    parser.add_argument("--reranker")
    known, _ = parser.parse_known_args(list(argv))
    index = known.index or environ.get("RETR_UI_INDEX")
    if not index:
        raise ValueError("no index given: run `retr ui INDEX` (or set RETR_UI_INDEX)")
    return UiSource(Path(index), environ.get("RETR_UI_ENCODER") or None, known.reranker,
                    environ.get("RETR_UI_RERANKER") or None)


def _factory(hook: str, variable: str):
    """The zero-argument factory a `module:attr` test hook names."""
    module, sep, attr = hook.partition(":")
    if not (module and sep and attr):
        raise ValueError(f"{variable} must be module:attr, got {hook!r}")
    return getattr(importlib.import_module(module), attr)


def encoder_factory(spec: str | None) -> Callable[[str], Encoder] | None:
    if spec is None:
        return None
    make = _factory(spec, "RETR_UI_ENCODER")
    return lambda _model_spec: make()


@st.cache_resource(show_spinner="Loading the index and its model…")
def load(index_dir: str, encoder_spec: str | None, reranker: str | None = None,
         reranker_hook: str | None = None) -> LoadedIndex:
    chosen = _factory(reranker_hook, "RETR_UI_RERANKER")() if reranker_hook else reranker
    idx = open_index(index_dir, encoder_factory(encoder_spec), reranker=chosen)
    _ = idx.encoder  # load the model now, so the first query pays nothing
    if chosen is not None:
        _ = idx.reranker  # and the reranker
    types = idx.meta.column_types()
    ids = idx.meta.all_ids()
    picks = np.unique(np.linspace(0, len(ids) - 1, min(len(ids), SAMPLE_ROWS)).astype(np.int64))
    sample = list(idx.meta.rows(ids[picks].tolist(), list(types)).values()) if len(ids) else []
    return LoadedIndex(idx, filter_fields(types, sample), threading.Lock(), can_rerank=chosen is not None)


@st.cache_data(max_entries=4096, show_spinner=False)
def thumbnail(path: str) -> bytes | None:
    """JPEG thumbnail of an indexed item, re-encoded by the safe decoder; None for remote or unreadable ones."""
    if path.startswith(("http://", "https://")):
        return None
    try:
        return render_image(path, "thumb", THUMB_SIDE)[0]
    except (OSError, DecodeError, tarfile.TarError):
        return None


def plain(text: str) -> str:
    """`text` shown as typed: Markdown punctuation escaped, so a caption cannot become a link or an image."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", " ".join(text.split()))


# --- query state: set by widget callbacks, read by the page ---------------------------------------

def _on_text() -> None:
    text = st.session_state.get("q_text", "")
    st.session_state.active = ActiveQuery("text", text=text) if text.strip() else None


def _on_upload() -> None:
    if st.session_state.get("q_upload") is not None:
        st.session_state.active = ActiveQuery("upload")
        st.session_state.q_text = ""  # the text box shows the text query only while it is the one shown
    elif getattr(st.session_state.get("active"), "kind", None) == "upload":
        st.session_state.active = None


def _more_like(item_id: int) -> None:
    st.session_state.active = ActiveQuery("image_id", image_id=item_id)
    st.session_state.q_text = ""


def run_query(
    loaded: LoadedIndex, q: ActiveQuery, upload, *, k: int, where: str | None, target: str, rerank: int = 0
) -> SearchResult:
    """rerank: text queries only (the page says so for image queries)."""
    idx = loaded.index
    with loaded.lock:
        if q.kind == "upload":
            xq = idx.embed_image_bytes(upload.getvalue(), upload.name)
            return idx.search_embedded([Query(image=upload.name)], xq, k=k, where=where, target=target)[0]
        if q.kind == "image_id":
            return idx.search(image_id=q.image_id, k=k, where=where, target=target)
        return idx.search(text=q.text, k=k, where=where, target=target, rerank=rerank)


# --- page sections ---------------------------------------------------------------------------------

def filter_widget(field: FilterField) -> object:
    key = f"filter-{field.column}"
    if field.kind == "choice":
        return st.multiselect(field.column, field.options, key=key, placeholder="any")
    if field.kind == "range":
        low, high = field.options
        return st.slider(field.column, low, high, (low, high), key=key)
    if field.kind == "contains":
        return st.text_input(f"{field.column} contains", key=key, help="% and _ are wildcards")
    return st.radio(field.column, ("any", "yes", "no"), horizontal=True, key=key)


def sidebar(loaded: LoadedIndex) -> SearchOptions:
    """k, target, the filter text and (with a reranker) how many text→image hits to rerank."""
    with st.sidebar:
        k = st.slider("Results (k)", 1, 100, 10, key="k")
        has_captions = loaded.index.manifest.text is not None
        to_text = st.toggle("Image → text: find captions", key="to_text", disabled=not has_captions,
                            help=None if has_captions else "this index has no caption vectors")
        rerank = 0
        if loaded.can_rerank:
            rerank = st.slider("Rerank top K (ITM)", 0, RERANK_SLIDER_MAX, 0, key="rerank", disabled=to_text,
                               help="re-score the top K text→image hits with the reranker; 0: off")
        st.subheader("Filters")
        choices = {f.column: filter_widget(f) for f in loaded.fields}
        extra = st.text_input("Filter expression", key="where_extra", placeholder="width >= 64 AND format = 'PNG'")
        where = where_text(loaded.fields, choices, extra)
        if where:
            st.code(where, language="sql", wrap_lines=True)
    return SearchOptions(k, "text" if to_text else "image", where, 0 if to_text else rerank)


def query_inputs():
    """The text box and the image upload; returns the uploaded file, if any."""
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    with left, st.form("text-query", border=False):
        st.text_input("Search by text", key="q_text", placeholder="a red heart")
        st.form_submit_button("Search", on_click=_on_text, type="primary")
    with right:
        types = [e.lstrip(".") for e in IMAGE_EXTENSIONS]
        upload = st.file_uploader("…or by image", type=types, key="q_upload", on_change=_on_upload,
                                  max_upload_size=MAX_UPLOAD_MB)
        if upload is not None and getattr(st.session_state.get("active"), "kind", None) != "upload":
            st.button("Search with this image", on_click=_on_upload)
    return upload


def describe_query(loaded: LoadedIndex, q: ActiveQuery, upload) -> None:
    if q.kind == "text":
        st.markdown(f"Text: **{plain(q.text)}**")
        return
    if q.kind == "upload":
        image, label = decode_query_image(upload.getvalue(), upload.name), f"Like your image **{plain(upload.name)}**"
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        thumb = buf.getvalue()
    else:
        with loaded.lock:
            row = loaded.index.meta.rows([q.image_id], ("id", "path")).get(q.image_id)
        thumb, label = (thumbnail(str(row["path"])) if row else None), f"More like item **#{q.image_id}**"
    pic, text = st.columns([1, 11], vertical_alignment="center")
    if thumb is not None:
        pic.image(thumb, width="stretch")
    text.markdown(label)


def show_hit(hit: Hit, position: int, target: str) -> None:
    thumb = thumbnail(hit.path)
    if thumb is not None:
        st.image(thumb, width="stretch")
    else:
        st.caption("remote image (not fetched)" if hit.path.startswith(("http://", "https://")) else "no preview")
    caption = plain(hit.caption or "(no caption)")
    st.markdown(f"**{caption}**" if target == "text" else caption)
    if hit.itc is None:
        st.caption(f"score {hit.score:.3f} · #{hit.id}")
    else:
        itm = "unreadable" if hit.itm is None else f"{hit.itm:.3f}"
        st.caption(f"score {hit.score:.3f} · #{hit.id} · itm {itm} · itc {hit.itc:.3f}")
    st.button("More like this", key=f"more-{position}-{hit.id}", on_click=_more_like, args=(hit.id,))


def show_results(result: SearchResult, elapsed_ms: float, target: str) -> None:
    hits = result.results
    noun = "captions" if target == "text" else "results"
    st.caption(f"{len(hits)} {noun} in {elapsed_ms:.1f} ms")
    if not hits:
        st.info("Nothing matches this filter.")
    for start in range(0, len(hits), GRID_COLUMNS):
        for col, (i, hit) in zip(st.columns(GRID_COLUMNS), enumerate(hits[start:start + GRID_COLUMNS], start),
                             strict=False):  # the last row may be short
            with col:
                show_hit(hit, i, target)


def main() -> None:
    st.set_page_config(page_title="retr search", layout="wide")
    try:
        source = source_from(sys.argv[1:], os.environ)
        loaded = load(str(source.index), source.encoder, source.reranker, source.reranker_factory)
    except (ValueError, OSError, ImportError, AttributeError) as e:
        st.error(f"cannot open the index: {e}")
        st.stop()
    m = loaded.index.manifest
    st.title("retr")
    reranked = f" · reranker {plain(loaded.index.reranker.name)}" if loaded.can_rerank else ""
    st.caption(f"{m.n_items} images · model {plain(m.model)} · index {plain(source.index.resolve().name)}{reranked}")
    opts = sidebar(loaded)
    upload = query_inputs()
    q: ActiveQuery | None = st.session_state.get("active")
    if q is None or (q.kind == "upload" and upload is None):
        st.info("Type a query and press Enter, or upload an image. Every result has a *More like this* button.")
        return
    rerank = opts.rerank if q.kind == "text" else 0
    try:
        describe_query(loaded, q, upload)
        if opts.rerank and not rerank:
            st.caption("Reranking scores a text against images: this image query is not reranked.")
        t0 = time.perf_counter()
        result = run_query(loaded, q, upload, k=opts.k, where=opts.where, target=opts.target, rerank=rerank)
        elapsed_ms = (time.perf_counter() - t0) * 1000
    except ValueError as e:  # bad filter, undecodable upload, unknown id: the library says why
        st.error(str(e))
        return
    show_results(result, elapsed_ms, opts.target)


if __name__ == "__main__":
    main()
