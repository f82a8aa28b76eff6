"""The HTTP API (`retr serve`) on a real small index with the PixelEncoder: every endpoint, every
validation rule, auth, CORS, micro-batching, hot reload under load, and clip-retrieval's ClipClient."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from app.api import create_app
from app.api.state import ApiSettings
from indexing.build import IndexConfig, add_to_index, build_index
from indexing.embed import EmbedConfig
from indexing.sources import list_items
from retrieval.search import open_index
from retrieval.service import IndexService, ServiceConfig
from tests.conftest import COLOURS, PixelEncoder, colour_image

SMALL = IndexConfig(embed=EmbedConfig(batch_size=8, num_workers=0, chunk_size=8))


def _manifest(folder: Path, colours: list[str], per_colour: int = 2, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for ci, name in enumerate(colours):
        for j in range(per_colour):
            p = folder / f"{name}-{start + j}.png"
            colour_image(COLOURS[name], seed=start + ci * 10 + j).save(p)
            warm = "warm" if name in ("red", "orange", "yellow", "pink") else "cool"
            rows.append({"image": p.name, "caption": f"a {name} square", "warmth": warm, "n": ci})
    path = folder / f"m{start}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _build(tmp: Path, colours=("red", "green", "blue", "yellow", "purple", "cyan")) -> Path:
    out = tmp / "idx"
    build_index(list_items(str(_manifest(tmp / "imgs", list(colours)))), out, PixelEncoder(), SMALL, progress=False)
    return out


def _service(out: Path, **cfg) -> IndexService:
    return IndexService(out, encoder_factory=lambda spec: PixelEncoder(), config=ServiceConfig(**cfg))


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return _build(tmp_path)


@pytest.fixture
def client(index_dir: Path):
    with TestClient(create_app([_service(index_dir)])) as c:
        yield c


def _png(rgb, size=24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_text_search_matches_the_cli_contract(client, index_dir):
    r = client.post("/search", json={"text": "red", "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    lib = open_index(index_dir, encoder_factory=lambda s: PixelEncoder()).search(text="red", k=3).to_json()
    assert body == json.loads(json.dumps(lib))
    assert body["results"][0]["caption"] == "a red square"


def test_image_id_target_text_filter_and_batch(client):
    red = client.post("/search", json={"text": "red", "k": 1}).json()["results"][0]
    same = client.post("/search", json={"image_id": red["id"], "k": 2}).json()
    assert same["results"][0]["id"] == red["id"]
    caps = client.post("/search", json={"image_id": red["id"], "k": 2, "target": "text"}).json()
    assert [h["caption"] for h in caps["results"]] == ["a red square"] * 2
    cool = client.post("/search", json={"text": "red", "k": 20, "where": "warmth = 'cool'"}).json()["results"]
    assert len(cool) == 8 and all(h["caption"] not in ("a red square", "a yellow square") for h in cool)
    batch = client.post("/search/batch", json={"queries": [{"text": "green", "k": 1}, {"image_id": red["id"]}]})
    assert batch.status_code == 200
    assert [r["results"][0]["caption"] for r in batch.json()["results"]] == ["a green square", "a red square"]


def test_multipart_image_upload(client):
    r = client.post("/search", files={"image": ("q.png", _png(COLOURS["blue"]), "image/png")}, data={"k": "2"})
    assert r.status_code == 200, r.text
    assert r.json()["query"] == {"image": "q.png"}
    assert [h["caption"] for h in r.json()["results"]] == ["a blue square"] * 2
    bad = client.post("/search", files={"image": ("x.png", b"not an image at all", "image/png")})
    assert bad.status_code in (415, 422) and bad.json()["error"] in ("unsupported_media_type", "invalid")
    huge = client.post("/search", files={"image": ("big.png", b"\0" * (17 << 20), "image/png")})
    assert huge.status_code == 413
    no_part = client.post("/search", data={"k": "2"}, files={"other": ("a", b"b")})
    assert no_part.status_code == 422 and "image" in no_part.json()["message"]
    bad_k = client.post("/search", files={"image": ("q.png", _png(COLOURS["blue"]), "image/png")}, data={"k": "0"})
    assert bad_k.status_code == 422


@pytest.mark.parametrize("body, status, words", [
    ({"text": "red", "k": 0}, 422, "k"),
    ({"text": "red", "k": 1001}, 422, "k"),
    ({"text": "x" * 1001}, 422, "text"),
    ({"text": "   "}, 422, "blank"),
    ({"text": "red", "image_id": 1}, 422, "exactly one"),
    ({}, 422, "exactly one"),
    ({"text": "red", "target": "audio"}, 422, "target"),
    ({"text": "red", "surprise": 1}, 422, "surprise"),
    ({"image_id": -1}, 422, "image_id"),
    ({"image_id": 2**64}, 422, "image_id"),
    ({"image_id": 999999}, 404, "no indexed item"),
    ({"text": "red", "where": "id IN (SELECT 1 FROM read_csv('/etc/passwd'))"}, 400, "bad --where filter"),
    ({"text": "red", "where": "nope = 1"}, 400, "unknown column"),
    ({"text": "red", "index": "other"}, 404, "no index named"),
])
def test_validation_answers_4xx_with_a_json_body(client, body, status, words):
    r = client.post("/search", json=body)
    assert r.status_code == status, r.text
    err = r.json()
    assert set(err) == {"error", "message"} and words in err["message"]
    assert "root:" not in err["message"]


def test_malformed_bodies(client):
    assert client.post("/search", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/search", content=b"\xff\xfe", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/search", content=b"[1, 2]", headers={"content-type": "application/json"}).status_code == 422
    r = client.post("/search", content=b"text=red", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    assert client.post("/search/batch", json={"queries": []}).status_code == 422
    assert client.post("/search/batch", json={"queries": [{"text": "a"}] * 257}).status_code == 422


def test_items_and_images(client):
    red = client.post("/search", json={"text": "red", "k": 1}).json()["results"][0]
    item = client.get(f"/items/{red['id']}").json()
    assert item["caption"] == "a red square" and item["warmth"] == "warm" and "chunk" not in item
    assert client.get("/items/999999").status_code == 404
    assert client.get("/items/-1").status_code == 422
    assert client.get("/items/abc").status_code == 422
    thumb = client.get(f"/items/{red['id']}/image")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (24, 24)
    full = client.get(f"/items/{red['id']}/image", params={"size": "full"})
    assert full.headers["content-type"] == "image/png"
    assert client.get(f"/items/{red['id']}/image", params={"size": "huge"}).status_code == 422


def test_operations_endpoints(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    client.post("/search", json={"text": "red"})
    client.post("/search", json={"text": "red", "k": 0})
    metrics = client.get("/metrics").text
    assert 'retr_request_seconds_count{route="/search"}' in metrics
    assert 'retr_queries_total{kind="text"}' in metrics and 'retr_errors_total{status="422"}' in metrics
    assert "retr_batch_size_bucket" in metrics
    info = client.get("/indexes").json()
    assert info[0]["n_items"] == 12 and "warmth" in info[0]["columns"]
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["SearchRequest"]["properties"]["k"]["maximum"] == 1000
    assert client.get("/docs").status_code == 200


def test_bearer_token_and_cors(index_dir):
    app = create_app([_service(index_dir)], ApiSettings(token="s3cret"))
    with TestClient(app) as c:
        assert c.post("/search", json={"text": "red"}).status_code == 401
        assert c.post("/search", json={"text": "red"}, headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = c.post("/search", json={"text": "red"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 401
        assert "access-control-allow-origin" not in ok.headers
    cors = create_app([_service(index_dir)], ApiSettings(cors_origins=("https://app.example",)))
    with TestClient(cors) as c:
        r = c.post("/search", json={"text": "red"}, headers={"Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.post("/search", json={"text": "red"}, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_concurrent_text_queries_share_forward_passes(index_dir):
    calls = []

    class Counting(PixelEncoder):
        def encode_texts(self, texts):
            calls.append(len(texts))
            return super().encode_texts(texts)

    service = IndexService(index_dir, encoder_factory=lambda s: Counting(), config=ServiceConfig(max_wait_ms=50))
    app = create_app([service])
    words = ["red", "green", "blue", "yellow", "purple", "cyan"] * 4

    async def run() -> list[dict]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                rs = await asyncio.gather(*(c.post("/search", json={"text": w, "k": 1}) for w in words))
        return [r.json() for r in rs]

    answers = asyncio.run(run())
    assert [a["results"][0]["caption"] for a in answers] == [f"a {w} square" for w in words]
    assert sum(calls) == len(words) and max(calls) > 1, calls  # fewer forward passes than queries


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """uvicorn on a loopback port in a thread, stopped on exit."""

    def __init__(self, app) -> None:
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _top_caption(c: httpx.Client, text: str) -> str:
    return c.post("/search", json={"text": text, "k": 1}).json()["results"][0]["caption"]


@pytest.mark.slow
def test_hot_reload_while_requests_run(tmp_path):
    out = _build(tmp_path, ("red", "green", "blue"))
    service = _service(out, reload_check_s=0.05)
    failures, answered, stop = [], [0], threading.Event()

    def hammer(url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            while not stop.is_set():
                for body in ({"text": "red", "k": 3}, {"image_id": 0, "k": 3}, {"text": "red", "where": "n >= 0"}):
                    r = c.post("/search", json=body)
                    if r.status_code != 200 or not r.json()["results"]:
                        failures.append((r.status_code, r.text))
                    answered[0] += 1

    with _Server(create_app([service])) as url:
        threads = [threading.Thread(target=hammer, args=(url,)) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        add_to_index(list_items(str(_manifest(tmp_path / "more", ["purple"], start=50))), out, PixelEncoder(), SMALL,
                     progress=False)
        deadline = time.monotonic() + 10
        with httpx.Client(base_url=url) as c:
            while time.monotonic() < deadline and _top_caption(c, "purple") != "a purple square":
                time.sleep(0.05)
            assert service.reloads >= 1
            shutil.rmtree(out)  # a rebuild in place: the old index answers until the new one commits
            time.sleep(0.3)
            build_index(list_items(str(_manifest(tmp_path / "new", ["cyan", "red"], start=80))), out, PixelEncoder(),
                        SMALL, progress=False)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _top_caption(c, "cyan") != "a cyan square":
                time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(10)
    assert service.reloads >= 2
    assert answered[0] > 30 and failures == []


@pytest.mark.slow
def test_clip_client_works_unchanged(index_dir, tmp_path):
    """The real ClipClient from the clip-retrieval package (its module loaded by path: the package's
    __init__ imports its Flask server)."""
    import importlib.util
    from importlib import metadata

    try:
        path = metadata.distribution("clip-retrieval").locate_file("clip_retrieval/clip_client.py")
    except metadata.PackageNotFoundError:
        pytest.skip("clip-retrieval is not installed (make setup installs it with --no-deps)")
    spec = importlib.util.spec_from_file_location("clip_client", path)
    clip_client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clip_client)
    query = tmp_path / "q.png"
    query.write_bytes(_png(COLOURS["green"]))
    with _Server(create_app([_service(index_dir)])) as url:
        client = clip_client.ClipClient(url=f"{url}/knn-service", indice_name="idx", num_images=3)
        hits = client.query(text="red")
        assert [h["caption"] for h in hits[:2]] == ["a red square"] * 2
        assert set(hits[0]) == {"id", "similarity", "url", "caption"}
        assert hits[0]["url"] == f"{url}/items/{hits[0]['id']}/image"
        assert httpx.get(hits[0]["url"]).headers["content-type"] == "image/jpeg"
        assert client.query(image=str(query))[0]["caption"] == "a green square"
        vec = PixelEncoder().encode_texts(["blue"])[0].tolist()
        assert client.query(embedding_input=vec)[0]["caption"] == "a blue square"
        texts = clip_client.ClipClient(url=f"{url}/knn-service", indice_name="idx", num_images=2,
                                       modality=clip_client.Modality.TEXT).query(text="yellow")
        assert [h["caption"] for h in texts] == ["a yellow square"] * 2
        assert httpx.get(f"{url}/indices-list").json() == ["idx"]
        refused = httpx.post(f"{url}/knn-service", json={"image_url": f"{url}/items/0/image", "modality": "image",
                                                         "num_images": 2, "indice_name": "idx"})
        assert refused.status_code == 400 and "--allow-image-url" in refused.json()["message"]
    app = create_app([_service(index_dir)], ApiSettings(allow_image_url=True))
    with _Server(app) as url:
        loopback = httpx.post(f"{url}/knn-service", json={"image_url": f"{url}/items/0/image", "num_images": 2})
        assert loopback.status_code == 400 and "not a public address" in loopback.json()["message"]
        two = httpx.post(f"{url}/knn-service", json={"text": "red", "image": base64.b64encode(b"x").decode()})
        assert two.status_code == 422


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(index_dir):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    app = create_app([_service(index_dir)])
    with TestClient(app):  # runs the lifespan: batchers started
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        failures, calls = [], []
        for op in schema.get_all_operations():
            operation = op.ok()

            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=operation.as_strategy())
            def check(case) -> None:
                response = case.call()
                calls.append(response.status_code)
                if response.status_code >= 500:
                    failures.append((case.method, case.path, response.status_code, response.text[:200]))
                case.validate_response(response, checks=[not_a_server_error])

            check()
        assert failures == []
        assert len(calls) > 80 and any(c == 200 for c in calls) and any(400 <= c < 500 for c in calls)
