"""`retr train --config configs/itm.json`: train the ITM reranker (retrieval.rerank.fusion) on locked towers.

Each step takes a batch of training images with one of their captions each and forms ALBEF's pairs:

    positives            (text i, image i)                                     label 1
    hard text->image     (text i, image j), j drawn by ITC similarity softmax   label 0
    hard image->text     (text j, image i), j likewise, from the image's side   label 0
    random               (text i, image j), j a random other item               label 0 (`random_negatives`)

ITC similarity is retr:default's cosine (its vectors are cached with the tokens); items that share a
key (one emoji in Noto and Twemoji) are never each other's negatives. Tower outputs are precomputed
once (retrieval.training.itm_features), so a step is the fusion layers only. State is saved
atomically after every epoch; rerunning resumes, a changed config refuses to.

After training, the ITM weight of the final score (retrieval.rerank.base.combine) is chosen on
validation data: the photo corpora's `val` halves and `val_fraction` of the training keys (hashed,
kept out of ITM training; the dual encoder did train on them, so its shortlist there is better than
on unseen items). The checkpoint (itm.safetensors + itm.json) records the weight, the per-set
validation R@1 at each weight, the losses, the config and the git SHA.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from indexing.atomic import atomic_path
from indexing.manifest import git_sha
from retrieval.rerank.base import combine
from retrieval.rerank.fusion import FusionConfig, FusionEncoder, match_probability, save_fusion
from retrieval.training.data import Pair, load_pairs
from retrieval.training.itm_features import ItmFeatures, tower_outputs

STATE = "itm-state.pt"
WARMUP_FRACTION = 0.05
SEEN_BY_BASE = "(train keys held out)"  # validation sets of training keys: the base dual encoder trained on them
REDUCTION_SAMPLE = 512  # images whose patch tokens fit the fixed PCA reduction (FusionConfig.image_rank)


@dataclass(frozen=True)
class ItmConfig:
    objective: str = "itm"  # marks the file as an ITM config for `retr train`
    corpora: tuple[str, ...] = ("emoji-google", "emoji-twitter", "openmoji", "flags", "openclipart")
    out: str = "out/train/itm"
    base: str = "retr:default"  # the dual encoder: its locked towers give the tokens, its ITC shortlists
    captions: int = 3  # an item's first this many names are trained on (primary + alternatives)
    val_fraction: float = 0.05  # of training keys (by hash) kept out of ITM training, for the weight choice
    val_sets: tuple[tuple[str, str], ...] = (("tuxpaint-photos", "val"), ("gcompris-photos", "val"))
    fusion: FusionConfig = field(default_factory=FusionConfig)
    epochs: int = 8
    batch_size: int = 256  # hard negatives are mined within the batch: a bigger one has harder ones
    lr: float = 3e-4
    weight_decay: float = 0.05
    seed: int = 0
    hard_temperature: float = 0.05  # hard negatives ~ softmax(ITC cosine / this); small = the nearest one
    random_negatives: int = 1  # random pairs per positive
    rerank: int = 16  # K of the validation rerank that chooses the weight
    # the grid searched; fine near 0, where cosines spread over a few hundredths meet probabilities
    weights: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    feature_precision: str = "fp32"  # the image tower's, for the training features: bf16 only pays with AVX512-BF16

    def __post_init__(self) -> None:
        if self.objective != "itm":
            raise ValueError(f"an ITM config has objective 'itm', got {self.objective!r}")
        if self.epochs < 1 or self.batch_size < 4 or self.lr <= 0 or self.captions < 1:
            raise ValueError("need epochs >= 1, batch_size >= 4, lr > 0, captions >= 1")
        if not 0.0 <= self.val_fraction < 0.5 or self.random_negatives < 0 or self.hard_temperature <= 0:
            raise ValueError("need 0 <= val_fraction < 0.5, random_negatives >= 0, hard_temperature > 0")
        if not self.weights or not all(0.0 <= w <= 1.0 for w in self.weights) or self.rerank < 2:
            raise ValueError("weights must be in [0, 1] and rerank >= 2")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_itm_config(obj: dict[str, Any]) -> ItmConfig:
    """Unknown keys are an error, as in retrieval.training.config."""
    known = {f.name for f in fields(ItmConfig)}
    if unknown := set(obj) - known:
        raise ValueError(f"unknown keys in the ITM config: {sorted(unknown)}; known: {sorted(known)}")
    kwargs = dict(obj)
    if "fusion" in kwargs:
        if unknown := set(kwargs["fusion"]) - {f.name for f in fields(FusionConfig)}:
            raise ValueError(f"unknown keys in the ITM config's fusion: {sorted(unknown)}")
        kwargs["fusion"] = FusionConfig(**kwargs["fusion"])
    for name in ("corpora", "weights"):
        if name in kwargs:
            kwargs[name] = tuple(kwargs[name])
    if "val_sets" in kwargs:
        kwargs["val_sets"] = tuple(tuple(s) for s in kwargs["val_sets"])
    return ItmConfig(**kwargs)


def read_itm_config(path: Path) -> ItmConfig:
    return parse_itm_config(_config_json(path))


def _config_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read ITM config {path}: {e}") from e


def is_itm_config(path: Path) -> bool:
    """Whether a `retr train --config` file is an ITM one (`"objective": "itm"`)."""
    try:
        return _config_json(path).get("objective") == "itm"
    except (ValueError, AttributeError):
        return False


def held_out_key(key: str, fraction: float) -> bool:
    """A key's fixed share of validation: a salted sha256 read as a number in [0, 1). The salt matters: the
    corpora's own train/test split hashes the bare key, so every training key would land above any cut."""
    return int(hashlib.sha256(f"itm-val\0{key}".encode()).hexdigest()[:8], 16) / 2**32 < fraction


@dataclass(frozen=True)
class ItmReport:
    out: Path
    n_pairs: int
    epochs_run: int
    first_loss: float
    last_loss: float
    weight: float
    seconds: float


def tapped_maps(feats: ItmFeatures, feature: str) -> np.ndarray:
    """The tapped feature map a FusionConfig.feature names: (N, 49, 1280) "tokens" or (N, 196, 112) "fine"."""
    return feats.tokens if feature == "tokens" else feats.fine


def reduced_tokens(model: FusionEncoder, feats: ItmFeatures, rows: np.ndarray, chunk: int = 256) -> torch.Tensor:
    """The model's reduced patch tokens (len(rows), N, R) float16 of feats' images `rows`."""
    maps = tapped_maps(feats, model.config.feature)
    return torch.cat([model.reduce(torch.from_numpy(maps[rows[s:s + chunk]])).half()
                      for s in range(0, len(rows), chunk)])


class ItmData:
    """Training items as tensors: reduced tokens, ITC vectors, each item's caption rows and key ids."""

    def __init__(self, feats: ItmFeatures, pairs: Sequence[Pair], keep: np.ndarray, captions: int,
                 model: FusionEncoder) -> None:
        self.feats = feats
        row = {t: i for i, t in enumerate(feats.text.texts)}
        self.items = keep  # rows of feats' images
        self.tokens = reduced_tokens(model, feats, keep)  # (N, n, R) fp16, row i = item i
        self.per_item = [np.asarray([row[c] for c in pairs[i].captions[:captions]]) for i in keep]
        self.image_itc = torch.from_numpy(feats.itc_image[keep])  # (N, D)
        self.text_itc = torch.from_numpy(feats.itc_text)  # (T, D)
        _, self.keys = np.unique([pairs[i].key for i in keep], return_inverse=True)


def _draw(sim: torch.Tensor, blocked: torch.Tensor, temperature: float, gen: torch.Generator) -> torch.Tensor:
    """For each row, a column drawn by softmax(sim / temperature) among the unblocked ones; -1 where none."""
    logits = (sim / temperature).masked_fill(blocked, float("-inf"))
    ok = ~blocked.all(dim=1)
    out = torch.full((len(sim),), -1, dtype=torch.long)
    if ok.any():
        out[ok] = torch.multinomial(F.softmax(logits[ok], dim=1), 1, generator=gen)[:, 0]
    return out


def itm_pairs(
    data: ItmData, rows: np.ndarray, rng: np.random.Generator, gen: torch.Generator, config: ItmConfig
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """One batch's (text rows (P,), image positions in the batch (P,), labels (P,)); see the module docstring."""
    B = len(rows)
    texts = np.array([rng.choice(data.per_item[i]) for i in rows])  # (B,) text row per item
    keys = torch.from_numpy(data.keys[rows])
    same = keys[:, None] == keys[None, :]  # (B, B)
    sim = data.text_itc[texts] @ data.image_itc[rows].T  # (B, B): text i vs image j
    arange = torch.arange(B)
    t_idx, i_idx, labels = [arange], [arange], [torch.ones(B, dtype=torch.long)]
    hard_image = _draw(sim, same, config.hard_temperature, gen)  # text i's nearest other image
    hard_text = _draw(sim.T, same, config.hard_temperature, gen)  # image i's nearest other text
    for t, i in ((arange, hard_image), (hard_text, arange)):
        ok = (t >= 0) & (i >= 0)
        t_idx.append(t[ok]), i_idx.append(i[ok]), labels.append(torch.zeros(int(ok.sum()), dtype=torch.long))
    for _ in range(config.random_negatives):
        j = torch.from_numpy(rng.integers(B, size=B))
        ok = ~same[arange, j]
        t_idx.append(arange[ok]), i_idx.append(j[ok]), labels.append(torch.zeros(int(ok.sum()), dtype=torch.long))
    t_all = torch.cat(t_idx)
    return texts[t_all.numpy()], torch.cat(i_idx), torch.cat(labels)


def _step_loss(model: FusionEncoder, data: ItmData, rows: np.ndarray, rng, gen, config: ItmConfig) -> torch.Tensor:
    text_rows, image_pos, labels = itm_pairs(data, rows, rng, gen, config)
    text, mask = data.feats.text.batch(text_rows.tolist())  # (P, T, Dt), (P, T)
    image = data.tokens[torch.from_numpy(rows)]  # (B, N, R)
    return F.cross_entropy(model(text, mask, image, image_pos), labels)


def _lr_at(step: int, total: int, base: float) -> float:
    warm = max(1, int(WARMUP_FRACTION * total))
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _optimise(opt: torch.optim.Optimizer, lr: float, loss: torch.Tensor) -> float:
    """One optimiser step at learning rate `lr` on `loss`; returns the loss."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _run_hash(config: ItmConfig, data_key: str) -> str:
    obj = {k: v for k, v in config.to_json().items() if k not in ("out", "rerank", "weights", "val_sets")}
    obj["data"] = data_key
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def train_epochs(
    model: FusionEncoder, data: ItmData, config: ItmConfig, state_path: Path, h: str, progress: bool = True
) -> tuple[list[float], int]:
    """Train (or resume) `model` in place: (per-epoch mean losses, epochs run by this call)."""
    torch.manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng, gen = np.random.default_rng(config.seed), torch.Generator().manual_seed(config.seed)
    start, losses = 0, []
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        if state["config_hash"] != h:
            raise ValueError(f"{state_path.parent} holds an ITM run with another config or data; "
                             f"use another `out` or delete {state_path}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state, start, losses = state["rng"], state["epoch"], state["losses"]
        gen.set_state(state["gen"])
    steps = len(data.items) // config.batch_size
    total = steps * config.epochs
    model.train()
    with tqdm(total=total, initial=start * steps, unit="step", desc="train itm", disable=not progress) as bar:
        for epoch in range(start, config.epochs):
            perm, epoch_losses = rng.permutation(len(data.items)), []
            for s in range(steps):
                lr = _lr_at(epoch * steps + s, total, config.lr)
                batch = perm[s * config.batch_size:(s + 1) * config.batch_size]
                epoch_losses.append(_optimise(opt, lr, _step_loss(model, data, batch, rng, gen, config)))
                bar.update(1)
                bar.set_postfix(loss=f"{epoch_losses[-1]:.3f}",
                                items_s=f"{(bar.format_dict['rate'] or 0) * config.batch_size:.0f}")
            losses.append(float(np.mean(epoch_losses)))
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                     "gen": gen.get_state(), "epoch": epoch + 1, "losses": losses, "config_hash": h}
            with atomic_path(state_path) as tmp:
                torch.save(state, tmp)
    return losses, config.epochs - start


@dataclass(frozen=True)
class RerankSet:
    """A held-out set seen through the towers: queries (text rows), gallery (image rows), relevance, ITC."""

    feats: ItmFeatures
    queries: np.ndarray  # (Q,) rows of feats.text
    gallery: np.ndarray  # (G,) rows of feats' images (decodable ones)
    relevant: np.ndarray  # (Q, G) bool
    tokens: torch.Tensor  # (G, N, R) the gallery's reduced patch tokens

    @property
    def itc(self) -> np.ndarray:
        return self.feats.itc_text[self.queries] @ self.feats.itc_image[self.gallery].T  # (Q, G)


def rerank_set(model: FusionEncoder, feats: ItmFeatures, pairs: Sequence[Pair],
               queries: Sequence[tuple[str, frozenset[str]]] | None = None) -> RerankSet:
    """Text->image over `pairs`' images: each pair's queries (relevant: same key), or the given (text, keys)."""
    gallery = np.flatnonzero(feats.ok)
    keys = np.asarray([pairs[i].key for i in gallery])
    if queries is None:
        queries = [(q, frozenset([pairs[i].key])) for i in gallery for q in pairs[i].queries]
    row = {t: i for i, t in enumerate(feats.text.texts)}
    relevant = np.stack([np.isin(keys, list(ks)) for _, ks in queries])
    return RerankSet(feats, np.asarray([row[t] for t, _ in queries]), gallery, relevant,
                     reduced_tokens(model, feats, gallery))


@torch.inference_mode()
def itm_shortlist(model: FusionEncoder, s: RerankSet, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(candidates (Q, K) gallery columns by ITC, their P(match) (Q, K))."""
    model.eval()
    itc = s.itc
    k = min(k, itc.shape[1])
    cand = np.argsort(-itc, axis=1, kind="stable")[:, :k]
    probs = np.zeros(cand.shape, np.float32)
    per = max(1, chunk // k)
    for q0 in range(0, len(cand), per):
        block = cand[q0:q0 + per]  # (q, K)
        text, mask = s.feats.text.batch(np.repeat(s.queries[q0:q0 + per], k).tolist())  # (q*K, T, Dt)
        image = s.tokens[torch.from_numpy(block.ravel())]  # (q*K, N, R)
        probs[q0:q0 + per] = match_probability(model(text, mask, image)).numpy().reshape(block.shape)
    return cand, probs


def rerank_r1(s: RerankSet, cand: np.ndarray, probs: np.ndarray, weights: Sequence[float]) -> dict[float, float]:
    """R@1 after reranking the shortlist by combine(itc, itm, w), for each w (w = 0: the ITC order)."""
    itc = np.take_along_axis(s.itc, cand, axis=1)
    rel = np.take_along_axis(s.relevant, cand, axis=1)
    out = {}
    for w in weights:
        top = np.argmax(combine(itc, probs, w), axis=1)  # first maximum: ties keep the ITC order
        out[float(w)] = float(rel[np.arange(len(rel)), top].mean())
    return out


def _validation_sets(
    config: ItmConfig, model: FusionEncoder, encoder, train_feats: ItmFeatures, pairs: Sequence[Pair],
    val: np.ndarray, cache: Path, progress: bool,
) -> dict[str, RerankSet]:
    sets = {}
    if len(val):
        sub = [pairs[i] for i in val]
        sliced = ItmFeatures(train_feats.tokens[val], train_feats.fine[val], train_feats.itc_image[val],
                             train_feats.ok[val], train_feats.text, train_feats.itc_text)
        for corpus in sorted({p.corpus for p in sub}):
            rows = np.asarray([j for j, p in enumerate(sub) if p.corpus == corpus])
            part = ItmFeatures(sliced.tokens[rows], sliced.fine[rows], sliced.itc_image[rows], sliced.ok[rows],
                               sliced.text, sliced.itc_text)
            sets[f"{corpus} {SEEN_BY_BASE}"] = rerank_set(model, part, [sub[j] for j in rows])
    for corpus, split in config.val_sets:
        vp = load_pairs([corpus], split)
        feats = tower_outputs(encoder, vp, [q for p in vp for q in p.queries], cache=cache, progress=progress)
        sets[f"{corpus} ({split})"] = rerank_set(model, feats, vp)
    return sets


def choose_weight(model: FusionEncoder, sets: dict[str, RerankSet], config: ItmConfig) -> tuple[float, dict]:
    """The grid weight with the best mean R@1 over the validation sets the base model never trained on
    (each set counts once). Held-out training keys are kept out of ITM training only: the dual encoder
    learned them (its R@1 there is ~1.0), so they would always pick weight 0; they are reported, for
    ITM alone on unseen keys, not used."""
    table = {name: rerank_r1(s, *itm_shortlist(model, s, config.rerank), config.weights) for name, s in sets.items()}
    unseen = [t for name, t in table.items() if not name.endswith(SEEN_BY_BASE)] or list(table.values())
    mean = {w: float(np.mean([t[w] for t in unseen])) for w in map(float, config.weights)}
    return max(mean, key=lambda w: (mean[w], -abs(w - 0.5))), {"per_set": table, "mean": mean}


def train_itm(config: ItmConfig, device: str = "cpu", *, cache: Path, progress: bool = True) -> ItmReport:
    from retrieval.encoders import load_encoder

    t0 = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder(config.base, device)
    pairs = load_pairs(config.corpora, split="train", progress=progress)
    feats = tower_outputs(encoder, pairs, [c for p in pairs for c in p.captions[:config.captions]], cache=cache,
                          progress=progress, precision=config.feature_precision)
    held = np.asarray([held_out_key(p.key, config.val_fraction) for p in pairs])
    train_rows, val_rows = np.flatnonzero(feats.ok & ~held), np.flatnonzero(feats.ok & held)
    if len(train_rows) < config.batch_size:
        raise ValueError(f"{len(train_rows)} training pairs is fewer than one batch of {config.batch_size}")
    torch.manual_seed(config.seed)
    model = FusionEncoder(config.fusion)
    sample = np.random.default_rng(config.seed).choice(train_rows, min(REDUCTION_SAMPLE, len(train_rows)), False)
    maps = tapped_maps(feats, config.fusion.feature)
    model.fit_reduction(torch.from_numpy(maps[np.sort(sample)]).flatten(0, 1))  # (sample * N, Di)
    data = ItmData(feats, pairs, train_rows, config.captions, model)
    data_key = hashlib.sha256(np.ascontiguousarray(feats.itc_image[train_rows]).tobytes()).hexdigest()[:16]
    losses, ran = train_epochs(model, data, config, out / STATE, _run_hash(config, data_key), progress)
    sets = _validation_sets(config, model, encoder, feats, pairs, val_rows, cache, progress)
    weight, validation = choose_weight(model, sets, config)
    save_fusion(model, out, weight, {"base": config.base, "train": config.to_json(), "losses": losses,
                                     "validation": validation, "git_sha": git_sha(), "n_pairs": len(train_rows)})
    return ItmReport(out, len(train_rows), ran, losses[0], losses[-1], weight, time.perf_counter() - t0)
