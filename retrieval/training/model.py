"""Trainable heads that align locked EfficientNet-Lite features with a locked text tower's space.

    image  = normalise( normalise(bridge) + head([layernorm(pooled), normalise(bridge), thumb]) )   (B, D)
    text   = normalise( t + adapter(t) ),  t = text tower(caption)                              (B, D)
    instance = normalise( linear([layernorm(pooled), thumb]) )     (B, instance_dim), optional, images only

The last image-head layer and the text adapter start at zero, so an untrained model *is* the
ImageNet bridge: training can only add to what the classifier already names, which keeps photo
retrieval at least where the bridge is (the bar of the default-model issue) while icon-specific
knowledge is learned. `thumb` is the image's 8x8 colour thumbnail: ImageNet features are
nearly blind to colour ("a red heart" vs "a blue heart"), and a thumbnail is also what most
distinguishes one emoji drawn by two vendors. A checkpoint is a safetensors file plus the JSON config that rebuilds it.

Heads of a run that unlocked the tower's last layers (TrainConfig.unlock) carry their own
fine-tuned copy of those layers (`tail`): their pooled features come from it, while the bridge
keeps reading the untouched tower.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from indexing.atomic import atomic_path, write_json
from retrieval.encoders.text_towers import DEFAULT_TEXT_TOWER, text_tower_spec
from retrieval.training.config import HeadConfig

POOLED_DIM = 1280
THUMB_SIDE = 8
THUMB_DIM = 3 * THUMB_SIDE * THUMB_SIDE


def colour_thumbnail(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised pixels -> (B, 192): the image averaged down to 8x8, per channel."""
    return F.adaptive_avg_pool2d(pixels.float(), THUMB_SIDE).flatten(1)


WEIGHTS, CONFIG = "head.safetensors", "head.json"


class AlignedHeads(nn.Module):
    def __init__(self, config: HeadConfig = HeadConfig(), loss: str = "siglip", text_dim: int = 384) -> None:
        """`text_dim`: the text tower's width (384 MiniLM, 768 mpnet), which the bridge vectors share."""
        super().__init__()
        self.config, self.loss = config, loss
        d_in = POOLED_DIM + text_dim + THUMB_DIM
        if config.hidden:
            layers = [nn.Linear(d_in, config.hidden), nn.GELU(), nn.Linear(config.hidden, text_dim)]
            self.image_head = nn.Sequential(nn.Dropout(config.dropout), *layers)
        else:
            self.image_head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(d_in, text_dim))
        nn.init.zeros_(self.image_head[-1].weight)
        nn.init.zeros_(self.image_head[-1].bias)
        self.text_adapter = nn.Linear(text_dim, text_dim) if config.text_adapter else None
        if self.text_adapter is not None:
            nn.init.zeros_(self.text_adapter.weight)
            nn.init.zeros_(self.text_adapter.bias)
        # SigLIP's initialisation: t = 10, b = -10 (few positives per row); CLIP's: 1 / 0.07.
        self.log_t = nn.Parameter(torch.tensor(math.log(10.0 if loss == "siglip" else 1 / 0.07)))
        self.bias = nn.Parameter(torch.tensor(-10.0))
        self.log_t_i2i = nn.Parameter(torch.tensor(math.log(10.0)))  # image<->image term (config.i2i_weight)
        self.bias_i2i = nn.Parameter(torch.tensor(-10.0))
        self.instance_head = None
        if config.instance_dim:
            linear = nn.Linear(POOLED_DIM + THUMB_DIM, config.instance_dim)
            self.instance_head = nn.Sequential(nn.Dropout(config.dropout), linear)
            self.log_t_inst = nn.Parameter(torch.tensor(math.log(10.0)))
            self.bias_inst = nn.Parameter(torch.tensor(-10.0))
        self.tail: nn.Module | None = None  # unlocked tower layers (attach_tail), None while locked

    def attach_tail(self, tail: nn.Module) -> None:
        """Give these heads a trainable copy of the tower's last layers (towers.TowerTail)."""
        self.tail = tail.to(next(self.parameters()).device)

    def features(self, pooled: torch.Tensor, cut: torch.Tensor | None) -> torch.Tensor:
        """The pooled features these heads read: the tower's, or their own tail's from the cut feature map."""
        if self.tail is None:
            return pooled
        if cut is None:
            raise ValueError("these heads fine-tuned the tower's last layers: they need the feature map at the cut")
        return self.tail(cut)

    def embed(
        self, pooled: torch.Tensor, bridge: torch.Tensor, thumb: torch.Tensor, cut: torch.Tensor | None = None,
        instance: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(text-aligned image vectors, instance vectors or None), through the tail when there is one."""
        p = self.features(pooled, cut)
        return self.image(p, bridge, thumb), (self.instance(p, thumb) if instance else None)

    def scalars(self) -> list[nn.Parameter]:
        """Temperatures and biases (kept out of weight decay)."""
        extra = [self.log_t_inst, self.bias_inst] if self.instance_head is not None else []
        return [self.log_t, self.bias, self.log_t_i2i, self.bias_i2i, *extra]

    def image(self, pooled: torch.Tensor, bridge: torch.Tensor, thumb: torch.Tensor) -> torch.Tensor:
        """pooled (B, 1280), bridge (B, D), thumb (B, 192) -> (B, D) unit rows."""
        base = F.normalize(bridge.float(), dim=-1)
        x = torch.cat([F.layer_norm(pooled.float(), (POOLED_DIM,)), base, thumb.float()], dim=-1)  # (B, 1472 + D)
        return F.normalize(base + self.image_head(x), dim=-1)

    def instance(self, pooled: torch.Tensor, thumb: torch.Tensor) -> torch.Tensor:
        """pooled (B, 1280), thumb (B, 192) -> (B, instance_dim) unit rows, for image<->image scores."""
        if self.instance_head is None:
            raise ValueError("these heads were trained without an instance head (head.instance_dim = 0)")
        x = torch.cat([F.layer_norm(pooled.float(), (POOLED_DIM,)), thumb.float()], dim=-1)
        return F.normalize(self.instance_head(x), dim=-1)

    def text(self, t: torch.Tensor) -> torch.Tensor:
        """Text tower vectors (B, D) -> (B, D) unit rows."""
        t = t.float()
        if self.text_adapter is not None:
            t = t + self.text_adapter(t)
        return F.normalize(t, dim=-1)


def member_heads(config: HeadConfig, loss: str, member: int, text_dim: int = 384) -> AlignedHeads:
    """Heads for ensemble member `member`: only member 0 has the instance head."""
    return AlignedHeads(config if member == 0 else replace(config, instance_dim=0), loss, text_dim)


class HeadEnsemble(nn.Module):
    """Image heads trained alike from different seeds, used as one (TrainConfig.members).

    image = normalise(mean of the members' image vectors); text and instance vectors are member 0's.
    Members share the text side (no text adapter), so text·image is the members' mean score over
    the norm of their mean vector, which is close to 1 where members agree.
    """

    def __init__(self, members: list[AlignedHeads]) -> None:
        super().__init__()
        if any(m.text_adapter is not None for m in members):
            raise ValueError("ensemble members must not have text adapters: they share the text side")
        self.members = nn.ModuleList(members)
        self.config, self.loss = members[0].config, members[0].loss

    def _locked(self) -> None:
        if any(m.tail is not None for m in self.members):
            raise ValueError("members with unlocked tower layers read the feature map at the cut: use embed()")

    def image(self, pooled: torch.Tensor, bridge: torch.Tensor, thumb: torch.Tensor) -> torch.Tensor:
        self._locked()
        vectors = torch.stack([m.image(pooled, bridge, thumb) for m in self.members])
        return F.normalize(vectors.mean(0), dim=-1)

    def instance(self, pooled: torch.Tensor, thumb: torch.Tensor) -> torch.Tensor:
        self._locked()
        return self.members[0].instance(pooled, thumb)

    def embed(
        self, pooled: torch.Tensor, bridge: torch.Tensor, thumb: torch.Tensor, cut: torch.Tensor | None = None,
        instance: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each member through its own tail; the image vector is their normalised mean, instance is member 0's."""
        outs = [m.embed(pooled, bridge, thumb, cut, instance=instance and k == 0) for k, m in enumerate(self.members)]
        return F.normalize(torch.stack([o[0] for o in outs]).mean(0), dim=-1), outs[0][1]

    def text(self, t: torch.Tensor) -> torch.Tensor:
        return self.members[0].text(t)


def save_heads(heads: AlignedHeads | HeadEnsemble, folder: Path, extra: dict | None = None) -> None:
    """head.safetensors + head.json (config, loss, members, and whatever the trainer records), atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    # float16 on disk halves the committed default checkpoint; cosine error ~1e-4, far below what ranks move by
    state = {k: v.detach().cpu().half().contiguous() for k, v in heads.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    members = len(heads.members) if isinstance(heads, HeadEnsemble) else 1
    write_json(folder / CONFIG, {"head": asdict(heads.config), "loss": heads.loss, "members": members, **(extra or {})})


def unlocked_layers(meta: dict) -> int:
    """How many of the tower's last layers a trained run (its head.json) fine-tuned; 0 = locked."""
    return int(meta.get("train", {}).get("unlock", {}).get("layers", 0))


def read_meta(folder: Path) -> dict:
    """A trained run's head.json, after checking that its weights are there too."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        raise ValueError(f"{folder} is not a trained retr model (needs {WEIGHTS} and {CONFIG})")
    return json.loads((folder / CONFIG).read_text())


def load_heads(
    folder: Path, device: str = "cpu", tail: Callable[[int], nn.Module] | None = None, meta: dict | None = None
) -> tuple[AlignedHeads | HeadEnsemble, dict]:
    """Heads saved by save_heads. `tail(layers)` builds the tower layers a run fine-tuned (their
    weights are then read from the checkpoint): needed for such runs, e.g. EfficientNetLite.tail.
    `meta` is the run's read_meta(), when the caller has read it already."""
    folder = Path(folder)
    meta = read_meta(folder) if meta is None else meta
    config, loss, members = HeadConfig(**meta["head"]), meta["loss"], int(meta.get("members", 1))
    dim = text_tower_spec(meta.get("train", {}).get("text_tower", DEFAULT_TEXT_TOWER)).dim
    singles = [member_heads(config, loss, k, dim) if members > 1 else AlignedHeads(config, loss, dim)
               for k in range(members)]
    if layers := unlocked_layers(meta):
        if tail is None:
            raise ValueError(f"{folder} fine-tuned the tower's last {layers} layers: loading it needs the tower")
        for m in singles:
            m.attach_tail(tail(layers))
    heads = singles[0] if members == 1 else HeadEnsemble(singles)
    saved, expected = load_file(str(folder / WEIGHTS)), heads.state_dict()
    wrong = [k for k, v in saved.items() if k in expected and v.shape != expected[k].shape]
    if wrong:  # e.g. a head.json edited or copied from another run: say so, not a torch size-mismatch dump
        k = wrong[0]
        raise ValueError(f"{folder}: {WEIGHTS} does not fit {CONFIG} ({len(wrong)} tensors differ, e.g. {k}: "
                         f"{tuple(saved[k].shape)} on disk, {tuple(expected[k].shape)} for head {asdict(config)}, "
                         f"text tower {meta.get('train', {}).get('text_tower', DEFAULT_TEXT_TOWER)} ({dim}-d))")
    heads.load_state_dict({k: v.float() for k, v in saved.items()})
    return heads.to(device).eval(), meta
