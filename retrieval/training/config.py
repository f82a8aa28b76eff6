"""Training configuration: one JSON file, parsed once into frozen dataclasses.

    retr train --config configs/default.json

Unknown keys are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

LOSSES = ("siglip", "clip")
# Locked image towers heads can be trained on (retrieval.encoders.towers.EFFICIENTNET_LITES); the
# random one is the "untrained tower" ablation.
IMAGE_TOWERS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "random-efficientnet-lite0")
# Locked text towers (retrieval.encoders.text_towers.TEXT_TOWERS); the first is what runs without the key.
TEXT_TOWERS = ("minilm-l6", "mpnet-base")
# retrieval.encoders.precision.PRECISIONS (kept here so that parsing a config imports no torch)
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class AugmentConfig:
    views: int = 3  # image views precomputed per item: view 0 is the clean image, the rest augmented
    min_scale: float = 0.6  # random resized crop keeps at least this fraction of the area
    jitter: float = 0.3  # brightness / contrast / saturation jitter amplitude
    # transparent images are composited on a random one of these (as well as on white for view 0)
    backgrounds: tuple[tuple[int, int, int], ...] = ((255, 255, 255), (0, 0, 0), (128, 128, 128), (240, 230, 200))


@dataclass(frozen=True)
class BridgeConfig:
    """How the ImageNet bridge turns class probabilities into a text tower vector (retr_models.ImageNetBridge)."""

    top_k: int = 5  # classes mixed per image
    template: str = "a photo of a {}"  # CLIP's prompt; MiniLM ranks bare class names worse
    glosses: bool = False  # append each class's WordNet definition: "a photo of a hen, adult female bird"


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 1024  # image head MLP width; 0 = a single linear layer
    dropout: float = 0.2  # on the head's input features: regularises towards the bridge residual
    text_adapter: bool = True  # a zero-initialised linear residual on the MiniLM side
    # An image-only "instance" head (pooled features + thumbnail -> this many dims, 0 = none), trained
    # only with the image<->image term: it keeps what tells two drawings apart, which the text-aligned
    # space compresses away. Text vectors are zero there, so it changes image->image scores only.
    instance_dim: int = 0


@dataclass(frozen=True)
class UnlockConfig:
    """LiT's optional second step: after the locked epochs, fine-tune the image tower's last layers.

    The input of those layers is cached with the other features, so on a CPU an epoch costs the
    unlocked layers' forward and backward passes only (about 1 s per batch of 256 for layers = 2).
    The ImageNet bridge keeps reading the untouched tower: the floor it sets does not move.
    """

    layers: int = 0  # 0 = locked throughout; 1 = the head convolution; n = it and the tower's last n-1 blocks
    epochs: int = 0  # epochs trained after `TrainConfig.epochs` locked ones, with those layers unlocked
    lr: float = 1e-4  # peak learning rate of those epochs, for the unlocked layers and the heads alike
    # How the unlocked layers run while training (retrieval.encoders.precision): "auto" = bfloat16
    # where the device computes it natively (AVX512-BF16 CPUs, CUDA GPUs with bf16), else fp32.
    # Embedding with the trained checkpoint is always fp32.
    precision: str = "auto"


@dataclass(frozen=True)
class ExpansionConfig:
    """Query expansion from the training set (retrieval.training.support); needs an instance head.

    A text query's `neighbours` nearest training keys by caption (text tower cosine, softmax at
    `temperature`) lend it their training images' mean instance vector, which fills the text
    vector's otherwise empty instance block: text->image score += weight * c * (that vector ·
    the image's instance vector). 0 = off, and no support files are written.
    """

    weight: float = 0.0
    neighbours: int = 50
    temperature: float = 0.05


@dataclass(frozen=True)
class TrainConfig:
    corpora: tuple[str, ...] = ("emoji-google", "emoji-twitter", "flags")
    out: str = "out/train/default"
    image_tower: str = "efficientnet-lite0"  # one of IMAGE_TOWERS
    text_tower: str = "minilm-l6"  # one of TEXT_TOWERS: its space is the one the heads align images to
    trim_border: bool = False  # frame images to their content (retrieval.encoders.framing), in training and serving
    loss: str = "siglip"
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    # Batches hold every style of a key together (Noto + Twemoji + OpenMoji of one emoji), and an
    # image<->image SigLIP term with this weight pulls those drawings together (cross-style search).
    key_batches: bool = False
    # With key_batches: at most this many of a key's items per epoch (a fresh random choice each
    # epoch; 0 = all). Keeps batches as varied in keys when many styles of one emoji are trained on.
    styles_per_key: int = 0
    i2i_weight: float = 0.0
    # At inference, score = w * bridge score + (1 - w) * trained score, packed into one vector
    # ([sqrt(w) bridge ; sqrt(1-w) trained]; retr_models.AlignedEncoder). Trained heads alone
    # route photos they never saw to a few hub images; the bridge's ranking still carries them.
    # 0 = trained heads alone.
    bridge_score_weight: float = 0.0
    # Weight of the instance head in image<->image scores (needs head.instance_dim > 0):
    # i2i score = c * instance score + (1 - c) * (the text-aligned score above).
    instance_score_weight: float = 0.0
    # Image heads trained alike from seeds seed, seed+1, ... on the same cached features; an image's
    # trained block is the normalised mean of the members' vectors (the text side is the text tower itself,
    # shared by all), so it ranks like the members' average score. Only member 0 has an instance head.
    members: int = 1
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    # caption templates, one sampled per step for each caption; "{}" is the name
    templates: tuple[str, ...] = ("{}", "an emoji of {}", "an icon of {}", "a picture of {}", "{} symbol")
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    unlock: UnlockConfig = field(default_factory=UnlockConfig)
    query_expansion: ExpansionConfig = field(default_factory=ExpansionConfig)
    feature_batch_size: int = 64
    # How the locked image tower runs when the training features are precomputed: "fp32", or "bf16"
    # (fast on CPUs with AVX512-BF16 and on GPUs; the features land in the cache under their own key).
    feature_precision: str = "fp32"
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.image_tower not in IMAGE_TOWERS:
            raise ValueError(f"image_tower must be one of {IMAGE_TOWERS}, got {self.image_tower!r}")
        if self.text_tower not in TEXT_TOWERS:
            raise ValueError(f"text_tower must be one of {TEXT_TOWERS}, got {self.text_tower!r}")
        if not self.corpora:
            raise ValueError("corpora must name at least one corpus or manifest")
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ValueError("need epochs >= 1, batch_size >= 2, lr > 0")
        if not 0.0 <= self.instance_score_weight < 1.0:
            raise ValueError(f"instance_score_weight must be in [0, 1), got {self.instance_score_weight}")
        if (self.instance_score_weight > 0) != (self.head.instance_dim > 0):
            raise ValueError("instance_score_weight > 0 and head.instance_dim > 0 go together")
        if self.head.instance_dim > 0 and self.i2i_weight <= 0:
            raise ValueError("head.instance_dim > 0 needs i2i_weight > 0: the instance head learns only from that term")
        if self.bridge.top_k < 1 or "{}" not in self.bridge.template:
            raise ValueError("bridge.top_k must be >= 1 and bridge.template needs a '{}'")
        if not 0.0 <= self.bridge_score_weight < 1.0:
            raise ValueError("bridge_score_weight must be in [0, 1)")
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        if self.members > 1 and self.head.text_adapter:
            raise ValueError("members > 1 needs head.text_adapter = false: members must share the text side")
        if self.styles_per_key < 0 or (self.styles_per_key > 0 and not self.key_batches):
            raise ValueError("styles_per_key must be >= 0, and > 0 only with key_batches")
        if (self.unlock.layers > 0) != (self.unlock.epochs > 0) or self.unlock.layers < 0 or self.unlock.lr <= 0:
            raise ValueError("unlock.layers > 0 and unlock.epochs > 0 go together (and unlock.lr > 0)")
        if self.feature_precision not in ("fp32", "bf16"):
            raise ValueError(f"feature_precision must be fp32 or bf16, got {self.feature_precision!r}")
        if self.unlock.precision not in PRECISIONS:
            raise ValueError(f"unlock.precision must be one of {', '.join(PRECISIONS)}, got {self.unlock.precision!r}")
        qe = self.query_expansion
        if qe.weight < 0 or qe.neighbours < 1 or qe.temperature <= 0:
            raise ValueError("query_expansion needs weight >= 0, neighbours >= 1 and temperature > 0")
        if qe.weight > 0 and self.head.instance_dim <= 0:
            raise ValueError("query_expansion.weight > 0 needs an instance head (head.instance_dim > 0)")
        if self.augment.views < 1:
            raise ValueError("augment.views must be >= 1")
        if not all("{}" in t for t in self.templates):
            raise ValueError("every template needs a '{}' for the caption")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type, obj: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(obj) - set(known)
    if unknown:
        raise ValueError(f"unknown keys in {where}: {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in obj.items():
        if name == "augment":
            value = _build(AugmentConfig, value, f"{where}.augment")
        elif name == "head":
            value = _build(HeadConfig, value, f"{where}.head")
        elif name == "bridge":
            value = _build(BridgeConfig, value, f"{where}.bridge")
        elif name == "unlock":
            value = _build(UnlockConfig, value, f"{where}.unlock")
        elif name == "query_expansion":
            value = _build(ExpansionConfig, value, f"{where}.query_expansion")
        elif name == "backgrounds":
            value = tuple(tuple(int(c) for c in rgb) for rgb in value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def parse_config(obj: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, obj, "config")


def read_config(path: Path) -> TrainConfig:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read training config {path}: {e}") from e
    return parse_config(obj)
