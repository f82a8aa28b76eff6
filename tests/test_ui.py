"""The search UI: filter widgets → filter text (table-tested), the page through streamlit's AppTest, and
one real browser (Debian's chromium, headless, driven by Playwright) against `streamlit run`.

The index is 20 colour squares (two per colour, ids in manifest order) with a `warmth` column
('warm' / 'cool') and a number `n` (= the id), embedded by tests.conftest.PixelEncoder, which the app
loads through its RETR_UI_ENCODER hook.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.ui.filter_form import FilterField, field_clause, filter_fields, quote_string, where_text
from indexing.build import IndexConfig, build_index
from indexing.embed import EmbedConfig
from indexing.filters import compile_filter
from indexing.sources import list_items
from tests.conftest import COLOURS, PixelEncoder, colour_image, write_colour_folder

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "app" / "ui" / "streamlit_app.py"
ENCODER = "tests.conftest:PixelEncoder"
WARM = {"red", "orange", "yellow", "pink"}
SCORE_LINE = re.compile(r"score (-?[0-9.]+) · #(\d+)")


@pytest.fixture(scope="module")
def colour_index(tmp_path_factory) -> tuple[Path, dict[int, str]]:
    """(index folder, id → colour name)."""
    root = tmp_path_factory.mktemp("ui")
    paths = write_colour_folder(root / "colours", per_colour=2, bad=False)
    colours = {i: p.stem.split("-")[0] for i, p in enumerate(paths)}
    manifest = root / "items.jsonl"
    manifest.write_text("".join(
        json.dumps({"image": str(p), "caption": f"a {colours[i]} square", "n": i,
                    "warmth": "warm" if colours[i] in WARM else "cool"}) + "\n"
        for i, p in enumerate(paths)))
    config = IndexConfig(embed=EmbedConfig(batch_size=8, num_workers=0, chunk_size=16))
    build_index(list_items(str(manifest)), root / "colour-squares", PixelEncoder(), config, progress=False)
    return root / "colour-squares", colours


def png_bytes(colour: str, seed: int = 7) -> bytes:
    buf = io.BytesIO()
    colour_image(COLOURS[colour], seed=seed).save(buf, format="PNG")
    return buf.getvalue()


# --- filter widgets → filter text ------------------------------------------------------------------

TYPES = {"id": "BIGINT", "path": "VARCHAR", "caption": "VARCHAR", "sha256": "VARCHAR", "width": "INTEGER",
         "height": "INTEGER", "format": "VARCHAR", "chunk": "BIGINT", "row": "BIGINT", "segment": "VARCHAR",
         "my col": "VARCHAR", "score": "DOUBLE", "ok": "BOOLEAN", "tags": "VARCHAR[]"}


def test_filter_fields_follow_column_types():
    sample = [{"id": i, "path": f"p{i}", "caption": "c", "sha256": "h", "width": 10 + i, "height": 5,
               "format": "PNG" if i % 2 else "JPEG", "chunk": 0, "row": i, "segment": "s", "my col": "it's",
               "score": i / 2, "ok": i % 2 == 0, "tags": ["x"]} for i in range(4)]
    fields = {f.column: f for f in filter_fields(TYPES, sample)}
    assert fields == {
        "path": FilterField("path", "contains"),  # free text, however few values
        "caption": FilterField("caption", "contains"),
        "width": FilterField("width", "range", (10, 13)),
        "format": FilterField("format", "choice", ("JPEG", "PNG")),
        "my col": FilterField("my col", "choice", ("it's",)),
        "score": FilterField("score", "range", (0.0, 1.5)),
        "ok": FilterField("ok", "flag"),
    }  # no widget: internal columns, height (one value), a list column


def test_many_distinct_strings_get_a_contains_box():
    sample = [{"label": f"v{i}"} for i in range(31)]
    assert filter_fields({"label": "VARCHAR"}, sample) == [FilterField("label", "contains")]
    assert filter_fields({"label": "VARCHAR"}, sample[:30])[0].kind == "choice"


RANGE = FilterField("n", "range", (0, 100))


@pytest.mark.parametrize(("field", "choice", "expected"), [
    (FilterField("my col", "choice", ("it's", "b")), ["it's"], "\"my col\" IN ('it''s')"),
    (FilterField("format", "choice", ("JPEG", "PNG")), [], None),
    (RANGE, (0, 100), None),  # the sample's ends mean "no bound"
    (RANGE, (5, 100), '"n" >= 5'),  # items above the sample's maximum stay in
    (RANGE, (0, 7), '"n" <= 7'),
    (RANGE, (5, 7), '"n" BETWEEN 5 AND 7'),
    (FilterField("s", "range", (0.0, 1.0)), (0.25, 0.5), '"s" BETWEEN 0.25 AND 0.5'),
    (FilterField("caption", "contains"), " o'k ", "\"caption\" ILIKE '%o''k%'"),
    (FilterField("caption", "contains"), "  ", None),
    (FilterField("ok", "flag"), "no", '"ok" = FALSE'),
    (FilterField("ok", "flag"), "any", None),
])
def test_field_clause(field, choice, expected):
    assert field_clause(field, choice) == expected


def test_where_text_compiles_and_binds_values_as_parameters():
    fields = [FilterField("my col", "choice", ("it's", "x')) OR TRUE --")), RANGE]
    choices = {"my col": ["x')) OR TRUE --", "it's"], "n": (1, 100)}
    where = where_text(fields, choices, extra="format = 'PNG' OR n = 3")
    assert where == ("\"my col\" IN ('x'')) OR TRUE --', 'it''s') AND \"n\" >= 1 AND (format = 'PNG' OR n = 3)")
    compiled = compile_filter(where, {"my col": "VARCHAR", "n": "BIGINT", "format": "VARCHAR"})
    assert compiled.params == ("x')) OR TRUE --", "it's", 1, "PNG", 3)
    assert where_text(fields, {}) is None
    assert quote_string("") == "''"


# --- the page, through AppTest ---------------------------------------------------------------------

@pytest.fixture
def app(colour_index, monkeypatch) -> AppTest:
    monkeypatch.setenv("RETR_UI_INDEX", str(colour_index[0]))
    monkeypatch.setenv("RETR_UI_ENCODER", ENCODER)
    at = AppTest.from_file(str(SCRIPT), default_timeout=30).run()
    assert not at.exception and not at.error
    return at


def hits(at: AppTest) -> list[tuple[float, int]]:
    """(score, id) of each result, in rank order."""
    return [(float(m[1]), int(m[2])) for c in at.caption if (m := SCORE_LINE.fullmatch(c.value))]


def search_text(at: AppTest, text: str) -> AppTest:
    at.text_input(key="q_text").input(text)
    return next(b for b in at.button if b.label == "Search").click().run()


def test_text_query_shows_red_first_with_captions_scores_and_time(app, colour_index):
    colours = colour_index[1]
    search_text(app, "red")
    got = hits(app)
    assert len(got) == 10 and len(app.image) == 10
    assert [colours[i] for _, i in got[:2]] == ["red", "red"]
    assert [s for s, _ in got] == sorted((s for s, _ in got), reverse=True)
    assert [m.value for m in app.markdown][1:3] == ["a red square", "a red square"]
    assert any(re.fullmatch(r"10 results in [0-9.]+ ms", c.value) for c in app.caption)


def test_k_slider_sets_the_number_of_results(app):
    app.slider(key="k").set_value(3).run()
    search_text(app, "blue")
    assert len(hits(app)) == 3


def test_more_like_this_runs_an_image_id_query(app, colour_index):
    colours = colour_index[1]
    search_text(app, "green")
    third = hits(app)[2][1]
    [b for b in app.button if b.label == "More like this"][2].click().run()
    got = hits(app)
    assert got[0] == (pytest.approx(1.0, abs=1e-3), third)  # the item itself ranks first
    assert colours[got[1][1]] == colours[third]
    assert any(f"More like item **#{third}**" == m.value for m in app.markdown)
    assert app.text_input(key="q_text").value == ""  # the box no longer claims a text query


def test_upload_searches_by_image(app, colour_index):
    app.file_uploader(key="q_upload").upload("query.png", png_bytes("purple"), "image/png").run()
    assert not app.error
    assert [colour_index[1][i] for _, i in hits(app)[:2]] == ["purple", "purple"]


def test_image_to_text_shows_captions(app):
    app.toggle(key="to_text").set_value(True).run()
    app.file_uploader(key="q_upload").upload("query.png", png_bytes("cyan"), "image/png").run()
    assert any(re.fullmatch(r"10 captions in [0-9.]+ ms", c.value) for c in app.caption)
    assert [m.value for m in app.markdown if m.value.startswith("**")][:2] == ["**a cyan square**"] * 2


def test_filter_keeps_only_matching_items(app, colour_index):
    colours = colour_index[1]
    app.multiselect(key="filter-warmth").select("cool").run()
    search_text(app, "red")
    got = hits(app)
    assert len(got) == 10 and all(colours[i] not in WARM for _, i in got)
    assert app.sidebar.code[0].value == "\"warmth\" IN ('cool')"
    app.slider(key="filter-n").set_value((0, 5)).run()
    assert {i for _, i in hits(app)} <= {0, 1, 2, 3, 4, 5}
    assert app.sidebar.code[0].value == "\"n\" <= 5 AND \"warmth\" IN ('cool')"


def test_bad_upload_and_bad_filter_are_errors_not_tracebacks(app):
    app.file_uploader(key="q_upload").upload("broken.png", b"\x89PNG\r\n\x1a\nnot really", "image/png").run()
    assert not app.exception and "cannot decode query image broken.png" in app.error[0].value
    app.file_uploader(key="q_upload").set_value(None).run()
    search_text(app, "red")
    app.text_input(key="where_extra").input("colour = 'red'").run()
    assert not app.exception and "colour" in app.error[0].value and not hits(app)


def test_missing_index_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RETR_UI_INDEX", str(tmp_path / "nowhere"))
    monkeypatch.setenv("RETR_UI_ENCODER", ENCODER)
    at = AppTest.from_file(str(SCRIPT), default_timeout=30).run()
    assert not at.exception and "cannot open the index" in at.error[0].value


# --- one real browser ------------------------------------------------------------------------------

def _chromium() -> str | None:
    return next((p for p in ("/usr/bin/chromium", shutil.which("chromium")) if p and os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"streamlit did not listen on port {port} within {timeout_s} s")


def _shown_ids(page) -> list[int]:
    text = page.locator('[data-testid="stMain"]').inner_text()
    return [int(m[2]) for m in SCORE_LINE.finditer(text)]


def _until(page, what: str, check, timeout_s: float = 45) -> None:
    """Poll until the rerun an action started has finished (no element left stale) and `check()` holds."""
    deadline = time.monotonic() + timeout_s
    while page.locator('[data-stale="true"]').count() or not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"the page never showed {what}")
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_real_browser(colour_index, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium browser installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    index, colours = colour_index
    port = _free_port()
    env = {**os.environ, "RETR_UI_ENCODER": ENCODER, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "streamlit", "run", str(SCRIPT), "--server.port", str(port), "--server.address",
           "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal", "--", "--index", str(index)]
    log = tmp_path / "streamlit.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, log)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"http://127.0.0.1:{port}/")

            page.get_by_placeholder("a red heart").fill("red")
            page.get_by_placeholder("a red heart").press("Enter")
            page.locator('[data-testid="stMain"] img[src*="/media/"]').nth(9).wait_for()
            _until(page, "red first", lambda: [colours[i] for i in _shown_ids(page)[:2]] == ["red", "red"])

            upload = tmp_path / "query.png"
            upload.write_bytes(png_bytes("blue"))
            page.locator('input[type="file"]').set_input_files(upload)
            page.get_by_text("Like your image").wait_for()
            _until(page, "blue first", lambda: [colours[i] for i in _shown_ids(page)[:2]] == ["blue", "blue"])

            third = _shown_ids(page)[2]
            page.get_by_role("button", name="More like this").nth(2).click()
            page.get_by_text(f"More like item #{third}").wait_for()
            _until(page, f"item {third} first", lambda: _shown_ids(page)[:1] == [third])

            assert {colours[i] for i in _shown_ids(page)} & WARM  # unfiltered, red ranks among purple's neighbours
            page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"]').filter(has_text="warmth").click()
            page.get_by_role("option", name="cool", exact=True).click()
            page.keyboard.press("Escape")
            page.get_by_text("\"warmth\" IN ('cool')").wait_for()
            _until(page, "cool items only",
                   lambda: len(ids := _shown_ids(page)) == 10 and not {colours[i] for i in ids} & WARM)
            assert _shown_ids(page)[0] == third

            page.set_viewport_size({"width": 1400, "height": 1250})  # the page scrolls inside: show the whole grid

            update = os.environ.get("RETR_UPDATE_SCREENSHOT") == "1"
            shot = REPO / "docs" / "images" / "ui.png" if update else tmp_path / "ui.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert shot.stat().st_size > 10_000
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
