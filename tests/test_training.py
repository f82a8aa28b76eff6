"""A tiny real training run: locked EfficientNet-Lite0 + MiniLM, heads trained on a colour corpus.

The ImageNet bridge is blind to colour (tests/test_retr_models.py), so "a red square" finds red
squares no better than chance before training; after a few seconds of training on other images of
the same colours it must find held-out red squares.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from retrieval.encoders import load_encoder
from retrieval.encoders.precision import native_bf16
from retrieval.evaluate import embed_images, text_image_recall
from retrieval.training.config import parse_config, read_config
from retrieval.training.data import _alternatives, load_pairs
from retrieval.training.loop import STATE, train
from retrieval.training.losses import clip_loss, siglip_loss
from tests.conftest import COLOURS, colour_image

pytestmark = pytest.mark.slow


def _colour_manifest(folder: Path, per_colour: int = 6, test_per_colour: int = 2) -> Path:
    folder.mkdir(parents=True)
    rows = []
    for ci, (name, rgb) in enumerate(COLOURS.items()):
        for j in range(per_colour):
            path = folder / f"{name}-{j}.png"
            colour_image(rgb, seed=ci * 100 + j, size=48).save(path)
            split = "test" if j < test_per_colour else "train"
            rows.append({"image": str(path), "caption": f"a {name} square", "key": name, "split": split,
                         "names": f"a {name} square | {name}"})
    manifest = folder / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    return manifest


@pytest.fixture(scope="module")
def bridge():
    return load_encoder("retr:imagenet-bridge")


def test_tiny_training_lowers_loss_and_raises_recall(tmp_path: Path, bridge) -> None:
    manifest = _colour_manifest(tmp_path / "colours")
    config = parse_config({
        "corpora": [str(manifest)], "out": str(tmp_path / "run"), "epochs": 40, "batch_size": 20, "lr": 3e-3,
        "templates": ["{}"], "augment": {"views": 2}, "num_workers": 0, "key_batches": True, "i2i_weight": 0.5,
    })
    report = train(config, bridge, cache=tmp_path / "cache", progress=False)
    assert report.n_pairs == 40 and report.last_loss < 0.5 * report.first_loss

    held_out = load_pairs([str(manifest)], "test")
    before = text_image_recall(bridge, held_out).metrics
    trained = load_encoder(f"retr:{report.out}")
    after = text_image_recall(trained, held_out).metrics
    # 10 colours, 2 held-out images each: chance R@1 ~0.1-0.2. Observed: bridge 0.1-0.3; trained
    # text->image 1.0, image->text 0.85-1.0.
    assert before["t2i_R@1"] <= 0.5
    assert after["t2i_R@1"] >= 0.9 and after["i2t_R@1"] >= 0.8

    # resuming a finished run trains nothing more; a changed config refuses to resume
    again = train(config, bridge, cache=tmp_path / "cache", progress=False)
    assert again.epochs_run == 0
    changed = parse_config({**config.to_json(), "lr": 1e-2, "augment": {"views": 2}, "head": {}})
    with pytest.raises(ValueError, match="different config"):
        train(changed, bridge, cache=tmp_path / "cache", progress=False)
    # same config, other captions: the saved state was trained on other data, so it is not resumed
    table = pq.read_table(manifest)
    recaptioned = [c.replace("square", "tile") for c in table.column("caption").to_pylist()]
    column = table.schema.get_field_index("caption")
    pq.write_table(table.set_column(column, "caption", pa.array(recaptioned)), manifest)
    with pytest.raises(ValueError, match="different config or training data"):
        train(config, bridge, cache=tmp_path / "cache", progress=False)
    assert (report.out / STATE).exists()


def test_bf16_training_features_are_cached_apart_and_train_as_well(tmp_path: Path, bridge) -> None:
    manifest = _colour_manifest(tmp_path / "colours")
    base = {"corpora": [str(manifest)], "epochs": 40, "batch_size": 20, "lr": 3e-3, "templates": ["{}"],
            "augment": {"views": 2}, "num_workers": 0, "key_batches": True, "i2i_weight": 0.5}
    fp32 = train(parse_config({**base, "out": str(tmp_path / "fp32")}), bridge, cache=tmp_path / "cache",
                 progress=False)
    config = parse_config({**base, "out": str(tmp_path / "bf16"), "feature_precision": "bf16"})
    report = train(config, bridge, cache=tmp_path / "cache", progress=False)
    # the tower ran again, in bf16, into a cache folder of its own; its features sit next to fp32's
    folders = list((tmp_path / "cache" / "features").iterdir())
    assert len(folders) == 2
    a, b = (np.load(f / "pooled.npy").astype(np.float32).reshape(-1, 1280) for f in folders)
    assert not np.array_equal(a, b)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert np.median(cos) > 0.99
    held_out = load_pairs([str(manifest)], "test")
    assert text_image_recall(load_encoder(f"retr:{report.out}"), held_out).metrics["t2i_R@1"] >= 0.9
    # a run cannot switch feature precision midway: its saved state was trained on the other features
    with pytest.raises(ValueError, match="different config or training data"):
        train(parse_config({**base, "out": str(fp32.out), "feature_precision": "bf16"}), bridge,
              cache=tmp_path / "cache", progress=False)
    with pytest.raises(ValueError, match="feature_precision must be fp32 or bf16, got 'fp16'"):
        parse_config({**base, "feature_precision": "fp16"})


def test_tiny_training_with_instance_block_and_bridge_ensemble(tmp_path: Path, bridge) -> None:
    manifest = _colour_manifest(tmp_path / "colours")
    config = parse_config({
        "corpora": [str(manifest)], "out": str(tmp_path / "run"), "epochs": 40, "batch_size": 20, "lr": 3e-3,
        "templates": ["{}"], "augment": {"views": 2}, "num_workers": 0, "key_batches": True, "i2i_weight": 0.5,
        "bridge_score_weight": 0.3, "instance_score_weight": 0.5, "head": {"instance_dim": 16},
        "query_expansion": {"weight": 0.5, "neighbours": 3},
    })
    report = train(config, bridge, cache=tmp_path / "cache", progress=False)
    assert report.last_loss < 0.5 * report.first_loss
    trained = load_encoder(f"retr:{report.out}")
    assert trained.dim == 384 + 384 + 16
    # the support set: one entry per colour, with both of its captions; queries get an instance block
    assert sorted(trained.support.keys) == sorted(COLOURS) and len(trained.support.captions) == 2 * len(COLOURS)
    xt = trained.encode_texts(["a red square"])
    assert np.abs(xt[0, 768:]).sum() > 0 and np.isclose(np.linalg.norm(xt[0]), 1, atol=1e-5)
    held_out = load_pairs([str(manifest)], "test")
    metrics = text_image_recall(trained, held_out).metrics
    assert metrics["t2i_R@1"] >= 0.9
    xb, rows = embed_images(trained, held_out)
    keys = np.asarray([held_out[i].key for i in rows])
    scores = xb @ xb.T - 2 * np.eye(len(xb))  # each image's nearest other image
    assert np.mean(keys[scores.argmax(1)] == keys) >= 0.9  # same colour, the other held-out drawing
    # expansion off: the finished run is not retrained (its settings are read after training), and
    # the support files go, so the model scores text queries without them
    plain = parse_config({**config.to_json(), "augment": {"views": 2}, "head": {"instance_dim": 16},
                          "query_expansion": {"weight": 0.0}})
    assert train(plain, bridge, cache=tmp_path / "cache", progress=False).epochs_run == 0
    assert not list(report.out.glob("support.*"))
    assert np.allclose(load_encoder(f"retr:{report.out}").encode_texts(["a red square"])[0, 768:], 0)
    glossed = parse_config({**config.to_json(), "bridge": {"top_k": 10, "glosses": True}, "augment": {"views": 2},
                            "head": {"instance_dim": 16}, "query_expansion": {"weight": 0.5, "neighbours": 3}})
    with pytest.raises(ValueError, match="the bridge was built with .*tower_bridge"):
        train(glossed, bridge, cache=tmp_path / "cache", progress=False)
    framed = parse_config({**plain.to_json(), "trim_border": True})
    with pytest.raises(ValueError, match=r"frames images with trim=False.*trim_border=True"):
        train(framed, bridge, cache=tmp_path / "cache", progress=False)
    other_text = parse_config({**plain.to_json(), "text_tower": "mpnet-base"})
    with pytest.raises(ValueError, match=r"reads text with minilm-l6.*text_tower=mpnet-base"):
        train(other_text, bridge, cache=tmp_path / "cache", progress=False)


def test_tiny_training_on_the_mpnet_text_tower_reuses_the_image_features(tmp_path: Path, bridge) -> None:
    from retrieval.encoders.retr_models import tower_bridge

    manifest = _colour_manifest(tmp_path / "colours")
    # 100 epochs: mpnet's heads fit this tiny set more slowly (40 epochs: R@1 0.4-0.5, 100: 1.0; MiniLM 0.9-1.0)
    common = {"corpora": [str(manifest)], "epochs": 100, "batch_size": 20, "lr": 3e-3, "templates": ["{}"],
              "augment": {"views": 2}, "num_workers": 0, "key_batches": True, "i2i_weight": 0.5,
              "bridge_score_weight": 0.3, "instance_score_weight": 0.5, "head": {"instance_dim": 16}}
    minilm = train(parse_config({**common, "out": str(tmp_path / "minilm")}), bridge, cache=tmp_path / "cache",
                   progress=False)
    [features] = list((tmp_path / "cache" / "features").iterdir())
    pooled_written = (features / "pooled.npy").stat().st_mtime_ns
    config = parse_config({**common, "out": str(tmp_path / "mpnet"), "text_tower": "mpnet-base"})
    report = train(config, tower_bridge("efficientnet-lite0", text_tower="mpnet-base"), cache=tmp_path / "cache",
                   progress=False)
    assert report.last_loss < 0.5 * report.first_loss
    # the same image features, read again; each tower's caption vectors in a file of its own
    assert list((tmp_path / "cache" / "features").iterdir()) == [features]
    assert (features / "pooled.npy").stat().st_mtime_ns == pooled_written
    names = sorted(p.name for p in features.glob("text_vectors*"))
    assert len(names) == 2 and names[0].startswith("text_vectors-mpnet-base-") and names[1] == "text_vectors.npy"
    trained = load_encoder(f"retr:{report.out}")
    assert trained.dim == 768 + 768 + 16 and load_encoder(f"retr:{minilm.out}").dim == 384 + 384 + 16
    assert json.loads((report.out / "head.json").read_text())["train"]["text_tower"] == "mpnet-base"
    held_out = load_pairs([str(manifest)], "test")
    assert text_image_recall(trained, held_out).metrics["t2i_R@1"] >= 0.9


def test_ensemble_members_train_from_their_own_seeds_and_rank_as_their_mean(tmp_path: Path, bridge) -> None:
    import torch.nn.functional as F

    from retrieval.training.model import HeadEnsemble, load_heads

    manifest = _colour_manifest(tmp_path / "colours")
    base = {"corpora": [str(manifest)], "epochs": 20, "batch_size": 20, "lr": 3e-3, "templates": ["{}"],
            "augment": {"views": 2}, "num_workers": 0, "key_batches": True, "i2i_weight": 0.5,
            "bridge_score_weight": 0.3, "instance_score_weight": 0.5,
            "head": {"instance_dim": 16, "text_adapter": False}}
    single = train(parse_config({**base, "out": str(tmp_path / "one")}), bridge, cache=tmp_path / "cache",
                   progress=False)
    pair = train(parse_config({**base, "out": str(tmp_path / "two"), "members": 2}), bridge,
                 cache=tmp_path / "cache", progress=False)
    assert pair.epochs_run == 40 and (pair.out / "state.pt").exists() and (pair.out / "state-1.pt").exists()
    one, _ = load_heads(single.out)
    two, meta = load_heads(pair.out)
    assert isinstance(two, HeadEnsemble) and meta["members"] == 2
    # member 0 is the single-head run (same seed, same batches); member 1 differs and has no instance head
    for (name, a), b in zip(one.state_dict().items(), two.members[0].state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=2e-3), name
    assert two.members[1].instance_head is None
    assert not torch.allclose(two.members[0].image_head[1].weight, two.members[1].image_head[1].weight)

    trained = load_encoder(f"retr:{pair.out}")
    assert trained.dim == 384 + 384 + 16  # members add no dimensions
    held_out = load_pairs([str(manifest)], "test")
    # 20 epochs without a text adapter: observed 0.8 (chance ~0.1-0.2, the bridge <= 0.5)
    assert text_image_recall(trained, held_out).metrics["t2i_R@1"] >= 0.7
    pooled, thumb = torch.randn(4, 1280), torch.randn(4, 192)
    bridge_vec = F.normalize(torch.randn(4, 384), dim=-1)
    mean = two.members[0].image(pooled, bridge_vec, thumb) + two.members[1].image(pooled, bridge_vec, thumb)
    assert torch.allclose(two.image(pooled, bridge_vec, thumb), F.normalize(mean, dim=-1), atol=1e-6)
    with pytest.raises(ValueError, match="text_adapter"):
        parse_config({**base, "members": 2, "head": {"instance_dim": 16, "text_adapter": True}})


def test_unlocking_the_towers_last_layers_trains_them_and_resumes_after_a_kill(
    tmp_path: Path, bridge, monkeypatch
) -> None:
    from retrieval.training import loop
    from retrieval.training.model import load_heads

    manifest = _colour_manifest(tmp_path / "colours")
    base = {"corpora": [str(manifest)], "epochs": 12, "batch_size": 20, "lr": 3e-3, "templates": ["{}"],
            "augment": {"views": 2}, "num_workers": 0, "key_batches": True, "i2i_weight": 0.5,
            "bridge_score_weight": 0.3, "head": {"text_adapter": False}}
    locked = train(parse_config({**base, "out": str(tmp_path / "locked")}), bridge, cache=tmp_path / "cache",
                   progress=False)
    config = parse_config({**base, "out": str(tmp_path / "run"), "unlock": {"layers": 2, "epochs": 4, "lr": 1e-3}})

    # killed during the unlocked epochs (after saving the second of them) ...
    save = loop._save_state

    def save_then_die(path, heads, opt, epoch, *args):
        save(path, heads, opt, epoch, *args)
        if epoch == 14:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config, bridge, cache=tmp_path / "cache", progress=False)
    monkeypatch.setattr(loop, "_save_state", save)
    # ... the rerun trains only the last two, from the saved tail; how the tail computes is not what it
    # learned from, so a rerun in the other precision resumes too
    other = "fp32" if native_bf16("cpu") else "bf16"  # "auto" ran the first part in the other one
    config = parse_config({**config.to_json(), "unlock": {**config.to_json()["unlock"], "precision": other}})
    report = train(config, bridge, cache=tmp_path / "cache", progress=False)
    assert report.epochs_run == 2
    # the locked run's cached features were reused; the cut feature map is an add-on file next to them
    (folder,) = (tmp_path / "cache" / "features").iterdir()
    assert sorted(f.name for f in folder.glob("*.npy")) == [
        "cut-2.npy", "ok.npy", "pooled.npy", "text_vectors.npy", "thumb.npy"]

    heads, meta = load_heads(report.out, tail=bridge.image_tower.tail)
    assert len(meta["losses"]) == 16 and meta["losses"][-1] < meta["losses"][0]
    tower = bridge.image_tower.net
    tuned, original = heads.tail.conv_head.weight, tower._conv_head.weight
    assert tuned.shape == original.shape and not torch.allclose(tuned, original, atol=1e-3)  # it trained
    assert torch.equal(tower._conv_head.weight, load_encoder("retr:imagenet-bridge").image_tower.net._conv_head.weight)
    with pytest.raises(ValueError, match="needs the tower"):
        load_heads(report.out)

    trained = load_encoder(f"retr:{report.out}")
    held_out = load_pairs([str(manifest)], "test")
    assert text_image_recall(trained, held_out).metrics["t2i_R@1"] >= 0.9
    # The bridge block still comes from the untouched tower: it is the bridge's own vector, scaled.
    xb, rows = embed_images(trained, held_out)
    floor, _ = embed_images(bridge, held_out)
    assert np.allclose(xb[:, :384] / 0.3**0.5, floor, atol=1e-4)
    # and the trained block is not the locked run's: the tail moved the heads' features
    xl, _ = embed_images(load_encoder(f"retr:{locked.out}"), held_out)
    assert not np.allclose(xb[:, 384:], xl[:, 384:], atol=1e-2)


def test_tower_split_and_tail_reproduce_the_towers_features(bridge) -> None:
    tower = bridge.image_tower
    pixels = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        features, logits = tower(pixels)
        for layers in (1, 2, 6):
            cut, f, lg = tower.split(pixels, layers)
            assert torch.allclose(f, features, atol=1e-5) and torch.allclose(lg, logits, atol=1e-4)
            assert torch.allclose(tower.tail(layers)(cut), features, atol=1e-4)
            half = tower.tail(layers)
            half.autocast = torch.bfloat16  # how retr train runs it where bf16 is native
            out = half(cut)
            assert out.dtype == torch.float32 and torch.cosine_similarity(out, features).min() > 0.999
    assert tower.tail(2).layers == 2 and cut.shape[1:] == (112, 14, 14)  # six layers back: the 14x14 stage
    with pytest.raises(ValueError, match="layers must be in 1..17"):
        tower.tail(18)
    with pytest.raises(ValueError, match="unlock.layers > 0 and unlock.epochs > 0 go together"):
        parse_config({"corpora": ["x"], "unlock": {"layers": 2}})


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown keys in config: \\['epoch'\\]"):
        parse_config({"epoch": 3})
    with pytest.raises(ValueError, match="unknown keys in config.augment"):
        parse_config({"augment": {"view": 2}})
    with pytest.raises(ValueError, match="loss must be one of"):
        parse_config({"loss": "triplet"})
    with pytest.raises(ValueError, match="text_tower must be one of"):
        parse_config({"text_tower": "bert"})
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read training config"):
        read_config(bad)


def test_alternative_captions_keep_the_caption_prefix() -> None:
    assert _alternatives("flag of Indonesia", "Indonesia | Republic of Indonesia") == (
        "flag of Indonesia", "flag of Republic of Indonesia")
    assert _alternatives("grinning face", "grinning face | grinning") == ("grinning face", "grinning")
    assert _alternatives("thumbs up", None) == ("thumbs up",)
    # Tags that happen to end the caption are names of their own, not a prefix to paste elsewhere
    # (this once turned OpenMoji's "grinning face" + tag "happy" into "grinning happy").
    assert _alternatives("grinning face", "grinning face | face | happy") == ("grinning face", "face", "happy")
    assert _alternatives("face with tears of joy", "face with tears of joy | joy") == ("face with tears of joy", "joy")
    assert _alternatives("Crawfish", "Crawfish | food | fish") == ("Crawfish", "food", "fish")


def test_losses_prefer_aligned_pairs_and_count_shared_keys_as_positives() -> None:
    import torch

    rng = np.random.default_rng(0)
    x = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((6, 16)).astype(np.float32)), dim=-1)
    eye = torch.eye(6, dtype=torch.bool)
    shuffled = x[torch.tensor([1, 0, 3, 2, 5, 4])]
    t, b = torch.tensor(np.log(10.0)), torch.tensor(-5.0)
    assert siglip_loss(x, x, eye, t, b) < siglip_loss(x, shuffled, eye, t, b)
    assert clip_loss(x, x, eye, t) < clip_loss(x, shuffled, eye, t)
    # items 0 and 1 share a key: matching 0's image with 1's text is then not penalised as a negative
    same = eye.clone()
    same[0, 1] = same[1, 0] = True
    assert clip_loss(x, shuffled, same, t) < clip_loss(x, shuffled, eye, t)


def test_config_files_parse_and_name_known_corpora() -> None:
    from indexing.cache import manifest_dir
    from indexing.corpora import list_corpora

    known = {c.name for c in list_corpora(manifest_dir())}
    from retrieval.training.itm_loop import is_itm_config, read_itm_config

    every = sorted((Path(__file__).resolve().parent.parent / "retrieval" / "training" / "configs").glob("*.json"))
    itm = [p for p in every if is_itm_config(p)]
    assert [p.name for p in itm] == ["itm.json"]
    assert set(read_itm_config(itm[0]).corpora) <= known  # the reranker's recipe names known corpora too
    paths = [p for p in every if p not in itm]
    assert [p.name for p in paths] == [
        "default.json", "minilm.json", "more-styles.json", "mpnet.json", "trim.json", "unlock.json"]
    for path in paths:
        config = read_config(path)
        assert json.loads(path.read_text())["corpora"] == list(config.corpora)
        assert set(config.corpora) <= known, path.name


def test_key_batches_keep_each_keys_items_adjacent_and_lose_none() -> None:
    import torch

    from retrieval.training.loop import _epoch_order, key_groups

    class FakeRun:
        keys = torch.tensor([3, 1, 3, 0, 1, 3, 2])
        groups = key_groups(keys.numpy())

    order = _epoch_order(FakeRun(), np.random.default_rng(0), key_batches=True)
    assert sorted(order.tolist()) == list(range(7))
    keys = FakeRun.keys.numpy()[order]
    runs = [k for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    assert len(runs) == len(set(runs)) == 4  # each key appears as one contiguous run
    plain = _epoch_order(FakeRun(), np.random.default_rng(0), key_batches=False)
    assert sorted(plain.tolist()) == list(range(7))


def test_styles_per_key_caps_each_keys_items_per_epoch_and_reaches_them_all_over_epochs() -> None:
    import torch

    from retrieval.training.loop import _epoch_order, _epoch_size, key_groups

    class FakeRun:
        keys = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])  # key 0 in five styles, key 1 in two, key 2 in one
        groups = key_groups(keys.numpy())

    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        order = _epoch_order(FakeRun(), rng, key_batches=True, per_key=2)
        keys = FakeRun.keys.numpy()[order]
        assert sorted(keys.tolist()) == [0, 0, 1, 1, 2]  # two of key 0's five, all of the others
        assert len(set(order.tolist())) == 5
        seen |= set(order.tolist())
    assert seen == set(range(8))  # a fresh choice each epoch: every item is trained on
    config = parse_config({"corpora": ["x"], "key_batches": True, "styles_per_key": 2})
    assert _epoch_size(FakeRun(), config) == 5
    with pytest.raises(ValueError, match="only with key_batches"):
        parse_config({"corpora": ["x"], "styles_per_key": 2})


def test_train_cli_reads_config_and_prints_the_model_spec(monkeypatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app import cli
    from retrieval.training import loop

    seen = {}

    def fake_train(config, bridge, *, cache, progress):
        seen.update(config=config, bridge=bridge)
        return loop.TrainReport(Path(config.out), 10, 20, 1, 2.0, 1.0, 3.0)

    monkeypatch.setattr(loop, "train", fake_train)
    monkeypatch.setattr("retrieval.encoders.retr_models.tower_bridge",
                        lambda tower, device, bridge, trim, text_tower: f"towers:{tower}+{text_tower}@{device}"
                        + ("+trim" * trim))
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"corpora": ["flags"], "out": str(tmp_path / "run"), "epochs": 2,
                               "image_tower": "random-efficientnet-lite0", "trim_border": True,
                               "text_tower": "mpnet-base"}))
    res = CliRunner().invoke(cli.app, ["train", "--config", str(cfg), "--quiet"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == f"retr:{tmp_path / 'run'}"
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"  # --device auto
    assert seen["config"].epochs == 2
    assert seen["bridge"] == f"towers:random-efficientnet-lite0+mpnet-base@{expected_device}+trim"
    res = CliRunner().invoke(cli.app, ["train", "--config", str(cfg), "--device", "tpu"])
    assert res.exit_code == 2 and "device must be 'auto', 'cpu' or 'cuda'" in res.output
    cfg.write_text(json.dumps({"image_tower": "resnet"}))
    res = CliRunner().invoke(cli.app, ["train", "--config", str(cfg)])
    assert res.exit_code == 2 and "image_tower must be one of" in res.output
