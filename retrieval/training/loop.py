"""`retr train`: align the locked towers on corpus pairs by training the heads (LiT recipe).

Each step samples, per training image, one precomputed view and one caption x template string,
and applies the SigLIP or CLIP loss with shared-key positives. State (heads, optimiser, epoch, RNG)
is saved atomically after every epoch, so a killed run continues where it stopped; a run whose
config changed refuses to resume. With `members` > 1 the members train one after another, each
from its own seed and with its own state file, and are saved as one HeadEnsemble.

With `unlock` (LiT's optional second step), each member then trains `unlock.epochs` more epochs
with its own copy of the tower's last `unlock.layers` layers unlocked, from the cached feature
map at their input, at the smaller `unlock.lr`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from indexing.atomic import atomic_path
from indexing.manifest import git_sha
from retrieval.encoders.precision import autocast_dtype
from retrieval.encoders.towers import EfficientNetLite
from retrieval.training.config import TrainConfig
from retrieval.training.data import Pair, load_pairs
from retrieval.training.features import Features, compute_features
from retrieval.training.losses import clip_loss, siglip_loss
from retrieval.training.model import AlignedHeads, HeadEnsemble, member_heads, save_heads
from retrieval.training.support import SUPPORT_META, SUPPORT_WEIGHTS, build_support, save_support

STATE = "state.pt"
WARMUP_FRACTION = 0.05  # of all steps, linear warm-up before the cosine decay


@dataclass(frozen=True)
class TrainReport:
    out: Path
    n_pairs: int
    n_texts: int
    epochs_run: int  # epochs trained by this call, summed over members (0 when the run was already complete)
    first_loss: float
    last_loss: float
    seconds: float


def caption_table(pairs: Sequence[Pair], templates: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """Unique training strings, and for each pair the indices of the strings it may be trained on."""
    index: dict[str, int] = {}
    per_pair = []
    for p in pairs:
        rows = [index.setdefault(t.format(c), len(index)) for c in p.captions for t in templates]
        per_pair.append(np.asarray(sorted(set(rows)), np.int64))
    return list(index), per_pair


def _run_hash(config: TrainConfig, data_key: str) -> str:
    """What a saved state must have been trained on to be resumed: this config and these features.

    data_key is the feature cache's key (pairs, caption strings, augmentation, towers): a state
    trained on other data, e.g. before a corpus or caption change, is refused rather than resumed.
    """
    # query_expansion is read after training (the support set): changing it does not retrain the heads
    skip = ("out", "num_workers", "feature_batch_size", "feature_precision", "query_expansion")  # data_key has it
    obj = {k: v for k, v in config.to_json().items() if k not in skip}
    obj["unlock"].pop("precision")  # how the unlocked layers compute, like the device: not what they learn from
    obj["data"] = data_key
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _lr_at(step: int, total: int, base: float) -> float:
    warm = max(1, int(WARMUP_FRACTION * total))
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _loss(heads: AlignedHeads, batch: tuple[torch.Tensor, ...], i2i: float) -> torch.Tensor:
    pooled, bridge, thumb, cut, txt, same = batch
    pooled = heads.features(pooled, cut)  # through the unlocked tail, once unlocked
    img, txt = heads.image(pooled, bridge, thumb), heads.text(txt)
    if heads.loss == "siglip":
        loss = siglip_loss(img, txt, same, heads.log_t, heads.bias)
    else:
        loss = clip_loss(img, txt, same, heads.log_t)
    if i2i > 0:
        # other drawings of the same key are positives; an image's similarity to itself says nothing
        off_diagonal = ~torch.eye(len(img), dtype=torch.bool, device=img.device)
        loss = loss + i2i * siglip_loss(img, img, same, heads.log_t_i2i, heads.bias_i2i, mask=off_diagonal)
        if heads.instance_head is not None:
            inst = heads.instance(pooled, thumb)
            loss = loss + i2i * siglip_loss(inst, inst, same, heads.log_t_inst, heads.bias_inst, mask=off_diagonal)
    return loss


def key_groups(keys: np.ndarray) -> list[np.ndarray]:
    """Item indices per key, in key order (each group ascending)."""
    order = np.argsort(keys, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(keys[order])) + 1)


def _epoch_order(run: _Run, rng: np.random.Generator, key_batches: bool, per_key: int = 0) -> np.ndarray:
    """Item order for one epoch: shuffled items, or shuffled keys with each key's items adjacent.

    per_key > 0 (with key_batches): a key with more items than that brings a fresh random
    per_key of them each epoch, so a batch holds as many different keys however many styles
    the corpora draw one emoji in.
    """
    if not key_batches:
        return rng.permutation(len(run.keys))
    groups = run.groups
    if per_key > 0:
        groups = [g if len(g) <= per_key else rng.choice(g, per_key, replace=False) for g in groups]
    return np.concatenate([groups[g] for g in rng.permutation(len(groups))])


def _epoch_size(run: _Run, config: TrainConfig) -> int:
    if not (config.key_batches and config.styles_per_key > 0):
        return len(run.keys)
    return sum(min(len(g), config.styles_per_key) for g in run.groups)


class _Run:
    """Everything one training run samples from, as tensors on the device the heads train on."""

    def __init__(self, feats: Features, pairs: Sequence[Pair], per_pair: list[np.ndarray], bridge) -> None:
        keep = np.flatnonzero(feats.ok)
        self.device = torch.device(bridge.device)
        self.pooled = torch.from_numpy(feats.pooled[keep]).to(self.device)  # (N, V, 1280) fp16
        with torch.no_grad():  # (N, V, D) fp16: this run's bridge settings applied to the cached features
            flat = bridge.bridge_from_pooled(self.pooled.flatten(0, 1)).half()
        self.bridge = flat.reshape(*self.pooled.shape[:2], -1)
        self.thumb = torch.from_numpy(feats.thumb[keep]).to(self.device)  # (N, V, 192) fp16
        # (N, V, C, h, w) fp16: the input of the unlocked layers, for runs that unlock some
        self.cut = torch.from_numpy(feats.cut[keep]).to(self.device) if feats.cut is not None else None
        self.texts = torch.from_numpy(feats.text_vectors).to(self.device)  # (T, D)
        self.per_pair = [per_pair[i] for i in keep]
        _, key_ids = np.unique([pairs[i].key for i in keep], return_inverse=True)
        self.keys = torch.from_numpy(key_ids)  # CPU: epoch order is drawn with numpy
        self.groups = key_groups(key_ids)  # items per key, for key batches

    def batch(self, idx: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        """Sampling stays on the CPU (numpy RNG), so a run draws the same batches on any device."""
        views = torch.from_numpy(rng.integers(self.pooled.shape[1], size=len(idx))).to(self.device)
        t = torch.from_numpy(np.array([rng.choice(self.per_pair[i]) for i in idx])).to(self.device)
        rows = torch.from_numpy(idx)
        keys, i = self.keys[rows].to(self.device), rows.to(self.device)
        same = keys[:, None] == keys[None, :]
        cut = self.cut[i, views] if self.cut is not None else None
        return self.pooled[i, views], self.bridge[i, views], self.thumb[i, views], cut, self.texts[t], same


def _state_path(out: Path, member: int) -> Path:
    return out / (STATE if member == 0 else f"state-{member}.pt")


def _save_state(path: Path, heads: AlignedHeads, opt: torch.optim.Optimizer, epoch: int, rng, h: str, losses) -> None:
    state = {"heads": heads.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "rng": rng.bit_generator.state,
             "config_hash": h, "losses": losses}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _optimizer(heads: AlignedHeads, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    scalars = heads.scalars()  # temperatures and biases: no decay
    decay = [p for p in heads.parameters() if all(p is not q for q in scalars)]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": scalars, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def _resume(
    path: Path, heads: AlignedHeads, opt, rng: np.random.Generator, h: str, unlock: Callable[[], torch.optim.Optimizer]
) -> tuple[int, list[float], torch.optim.Optimizer]:
    """(first epoch to run, per-epoch losses so far, optimiser); loads the saved state into heads / opt / rng.

    A state saved during the unlocked epochs holds the tail too: `unlock()` attaches it (and returns
    the optimiser over it) before the state is loaded.
    """
    if not path.exists():
        return 0, [], opt
    state = torch.load(path, weights_only=False, map_location=next(heads.parameters()).device)
    if state["config_hash"] != h:
        raise ValueError(
            f"{path.parent} holds a run with a different config or training data; use another `out` or delete {path}"
        )
    if any(k.startswith("tail.") for k in state["heads"]):
        opt = unlock()
    heads.load_state_dict(state["heads"])
    opt.load_state_dict(state["opt"])
    rng.bit_generator.state = state["rng"]
    return state["epoch"], state["losses"], opt


def _train_member(
    config: TrainConfig, run: _Run, member: int, h: str, bar: tqdm, tower: EfficientNetLite
) -> tuple[AlignedHeads, list[float], int]:
    """Train (or resume, or reload when finished) ensemble member `member`: (heads, losses, epochs run now).

    Epochs 0 .. config.epochs - 1 train the heads on the locked tower; with config.unlock, the
    next unlock.epochs also train a copy of `tower`'s last unlock.layers layers (the tail).
    """
    torch.manual_seed(config.seed + member)  # member 0 is exactly the single-head run
    heads = member_heads(config.head, config.loss, member, run.texts.shape[1]).to(run.device)

    def unlock() -> torch.optim.Optimizer:
        tail = tower.tail(config.unlock.layers)
        tail.autocast = autocast_dtype(config.unlock.precision, run.device)  # while training only
        heads.attach_tail(tail)
        return _optimizer(heads, config, config.unlock.lr)

    opt = _optimizer(heads, config, config.lr)
    rng = np.random.default_rng(config.seed + member)
    path = _state_path(Path(config.out), member)
    start, losses, opt = _resume(path, heads, opt, rng, h, unlock)
    steps_per_epoch = _epoch_size(run, config) // config.batch_size
    phases = [(0, config.epochs, config.lr)]
    if config.unlock.layers:
        phases.append((config.epochs, config.epochs + config.unlock.epochs, config.unlock.lr))
    bar.update(start * steps_per_epoch)
    if config.members > 1:
        bar.set_description(f"train member {member + 1}/{config.members}")
    heads.train()
    for first, end, lr in phases:
        if start >= end:
            continue
        if first > 0 and heads.tail is None:  # entering the unlocked epochs
            opt = unlock()
        total = steps_per_epoch * (end - first)  # each phase has its own warm-up and cosine decay
        for epoch in range(max(start, first), end):
            perm = _epoch_order(run, rng, config.key_batches, config.styles_per_key)
            epoch_losses = []
            for s in range(steps_per_epoch):
                step = (epoch - first) * steps_per_epoch + s
                for g in opt.param_groups:
                    g["lr"] = _lr_at(step, total, lr)
                rows = perm[s * config.batch_size:(s + 1) * config.batch_size]
                loss = _loss(heads, run.batch(rows, rng), config.i2i_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                epoch_losses.append(float(loss.detach()))
                bar.update(1)
                pairs_per_s = (bar.format_dict["rate"] or 0) * config.batch_size
                bar.set_postfix(loss=f"{loss.item():.3f}", pairs_s=f"{pairs_per_s:.0f}")
            losses.append(float(np.mean(epoch_losses)))
            _save_state(path, heads, opt, epoch + 1, rng, h, losses)
    if heads.tail is not None:
        heads.tail.autocast = None  # the support set, and every later embedding, in fp32
    all_epochs = config.epochs + config.unlock.epochs
    return heads.eval(), losses, all_epochs - start


@torch.no_grad()
def _write_support(config: TrainConfig, heads: AlignedHeads | HeadEnsemble, run: _Run, kept: Sequence[Pair],
                   out: Path) -> None:
    """The query-expansion support set (retrieval.training.support) from each image's clean view (view 0);
    with expansion off, any support files an earlier run left in `out` are removed."""
    if config.query_expansion.weight <= 0:
        for name in (SUPPORT_META, SUPPORT_WEIGHTS):  # the meta file first: without it there is no support set
            (out / name).unlink(missing_ok=True)
        return
    heads.eval()
    vectors = []
    for s in range(0, len(kept), 1024):
        rows = slice(s, s + 1024)
        cut = run.cut[rows, 0] if run.cut is not None else None
        _, inst = heads.embed(run.pooled[rows, 0], run.bridge[rows, 0], run.thumb[rows, 0], cut, instance=True)
        vectors.append(inst.float().cpu().numpy())
    support = build_support([p.key for p in kept], [p.captions for p in kept], np.concatenate(vectors),
                            config.query_expansion)
    save_support(out, support)


def train(config: TrainConfig, bridge, *, cache: Path, progress: bool = True) -> TrainReport:
    """Train heads for `config` on top of `bridge` (an ImageNetBridge: its towers are locked)."""
    t0 = time.perf_counter()
    if bridge.config != config.bridge:  # head.json promises config.bridge at inference
        raise ValueError(f"the bridge was built with {bridge.config}, the config asks for {config.bridge}; "
                         "build it with tower_bridge(config.image_tower, device, config.bridge)")
    if bridge.text_tower.spec.name != config.text_tower:  # the heads align to the bridge's text tower
        raise ValueError(f"the bridge reads text with {bridge.text_tower.spec.name}, the config asks for "
                         f"text_tower={config.text_tower}; build it with tower_bridge(..., text_tower=...)")
    if bridge.preprocess.trim != config.trim_border:  # head.json promises it at inference too
        raise ValueError(f"the bridge frames images with trim={bridge.preprocess.trim}, the config asks for "
                         f"trim_border={config.trim_border}; build it with tower_bridge(..., trim=config.trim_border)")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs(config.corpora, split="train", progress=progress)
    if len(pairs) < config.batch_size:
        raise ValueError(f"{len(pairs)} training pairs is fewer than one batch of {config.batch_size}")
    texts, per_pair = caption_table(pairs, config.templates)
    feats = compute_features(pairs, texts, bridge, config.augment, cache=cache, seed=config.seed,
                             batch_size=config.feature_batch_size, num_workers=config.num_workers, progress=progress,
                             cut_layers=config.unlock.layers, precision=config.feature_precision)
    run = _Run(feats, pairs, per_pair, bridge)
    h = _run_hash(config, feats.key)
    n = len(run.keys)
    epochs = config.epochs + config.unlock.epochs
    total = (_epoch_size(run, config) // config.batch_size) * epochs * config.members
    members, histories, epochs_run = [], [], 0
    with tqdm(total=total, unit="step", desc="train", disable=not progress) as bar:
        for k in range(config.members):
            heads, losses, ran = _train_member(config, run, k, h, bar, bridge.image_tower)
            members.append(heads)
            histories.append(losses)
            epochs_run += ran
    heads = members[0] if config.members == 1 else HeadEnsemble(members)
    losses = np.mean(histories, axis=0).tolist()  # per epoch, averaged over members
    save_heads(heads, out, {"train": config.to_json(), "losses": losses, "git_sha": git_sha(), "n_pairs": n,
                            "n_texts": len(texts), "base": bridge.name})
    _write_support(config, heads, run, [pairs[i] for i in np.flatnonzero(feats.ok)], out)
    return TrainReport(out, n, len(texts), epochs_run, losses[0], losses[-1], time.perf_counter() - t0)
