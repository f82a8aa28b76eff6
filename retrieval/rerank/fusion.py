"""`retr:itm`: a small fusion encoder over retr:default's locked towers that says whether a text matches
an image (image-text matching, ITM; ALBEF / BLIP's reranker, at a CPU's size). Issue #27.

    image patch tokens  (B, N, Di)   EfficientNet-Lite0's last feature map, 7x7 x 1280 (tapped, locked)
    text token states   (B, T, Dt)   mpnet's last hidden states, 768-d (locked)
        -> project both to `width`, a learned [CLS] in front of the text
        -> `layers` x [ text self-attention -> text->image cross-attention -> MLP ]   (pre-norm, residual)
        -> [CLS] -> LayerNorm -> Linear(width, 2): logits of [no match, match]

Only the projections, the fusion layers and the head train (retrieval.training.itm_loop). The
reranker re-scores the dual encoder's top K with combine(itc, P(match), weight) (retrieval.rerank.base).
A checkpoint folder holds itm.safetensors (float16) and itm.json (FusionConfig, the ITM weight chosen
on validation splits, the training config and log).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from indexing.atomic import atomic_path, write_json
from retrieval.rerank.base import Reranker, check_weight

WEIGHTS, META = "itm.safetensors", "itm.json"


@dataclass(frozen=True)
class FusionConfig:
    image_dim: int = 1280  # channels of the patch tokens (1280: Lite0's last map; 112: its 14x14 stage)
    image_tokens: int = 49  # patches per image (7x7), each with a learned position embedding
    # Patch tokens are first reduced to this many principal components of the training tokens (a fixed
    # linear map fitted once, `fit_reduction`): projecting 1280 channels was most of a training step on
    # a CPU, and the reduced tokens are what a cache stores (49 x 256 float16 = 25 KB per image). 0 = off.
    image_rank: int = 256
    text_dim: int = 768  # the text tower's width (mpnet 768, MiniLM 384)
    width: int = 256
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.1
    feature: str = "tokens"  # which tapped map the tokens are (retrieval.training.itm_features): tokens / fine

    def __post_init__(self) -> None:
        if self.width % self.heads or min(self.width, self.layers, self.heads, self.image_tokens) < 1:
            raise ValueError(f"need width divisible by heads and positive sizes, got {self}")
        if not 0 <= self.image_rank <= self.image_dim:
            raise ValueError(f"image_rank must be in 0..image_dim ({self.image_dim}), got {self.image_rank}")
        if self.feature not in ("tokens", "fine"):
            raise ValueError(f"feature must be 'tokens' or 'fine', got {self.feature!r}")


class Attention(nn.Module):
    """Multi-head attention of queries x over a source; the source's keys and values are computed once
    per distinct source row and gathered by `index`, so B pairs over U images project U images."""

    def __init__(self, c: FusionConfig) -> None:
        super().__init__()
        self.heads, self.dropout = c.heads, c.dropout
        self.q, self.proj = nn.Linear(c.width, c.width), nn.Linear(c.width, c.width)
        self.kv = nn.Linear(c.width, 2 * c.width)

    def forward(self, x: torch.Tensor, source: torch.Tensor, index: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, T, W); source (U, S, W), row index[b] for pair b (U = B when None); mask (B, S) True = attend
        B, T, W = x.shape
        nh, hs = self.heads, W // self.heads
        q = self.q(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        kv = self.kv(source).view(len(source), -1, 2, nh, hs)  # (U, S, 2, nh, hs)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # (U, nh, S, hs)
        if index is not None:
            k, v = k[index], v[index]  # (B, nh, S, hs)
        bias = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, W))  # (B, T, W)


class FusionBlock(nn.Module):
    """Pre-norm [self-attention over text -> cross-attention text->image -> MLP], residual around each."""

    def __init__(self, c: FusionConfig) -> None:
        super().__init__()
        self.ln_self, self.ln_cross, self.ln_image, self.ln_mlp = (nn.LayerNorm(c.width) for _ in range(4))
        self.self_attn, self.cross_attn = Attention(c), Attention(c)
        self.mlp = nn.Sequential(nn.Linear(c.width, c.mlp_ratio * c.width), nn.GELU(),
                                 nn.Linear(c.mlp_ratio * c.width, c.width), nn.Dropout(c.dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # x (B, 1+T, W) text, mask (B, 1+T) True = a real token, image (U, N, W), index (B,) into image
        h = self.ln_self(x)
        x = x + self.self_attn(h, h, mask=mask)
        x = x + self.cross_attn(self.ln_cross(x), self.ln_image(image), index)  # each text token reads patches
        return x + self.mlp(self.ln_mlp(x))


class FusionEncoder(nn.Module):
    """(text states (B, T, Dt), text mask (B, T) bool, reduced patch tokens (U, N, R), index (B,) into them)
    -> ITM logits (B, 2). index None: pair b is image b (U = B). `reduce` turns tapped tokens into R-d ones."""

    def __init__(self, config: FusionConfig = FusionConfig()) -> None:
        super().__init__()
        c = self.config = config
        reduced = c.image_rank or c.image_dim
        self.register_buffer("image_mean", torch.zeros(c.image_dim))  # (Di,)
        self.register_buffer("image_basis", torch.eye(c.image_dim)[:, :reduced].clone())  # (Di, R)
        self.image_in = nn.Sequential(nn.LayerNorm(reduced), nn.Linear(reduced, c.width))
        self.text_in = nn.Sequential(nn.LayerNorm(c.text_dim), nn.Linear(c.text_dim, c.width))
        self.image_pos = nn.Parameter(torch.randn(1, c.image_tokens, c.width) * 0.02)  # (1, N, W)
        self.cls = nn.Parameter(torch.randn(1, 1, c.width) * 0.02)  # (1, 1, W)
        self.blocks = nn.ModuleList(FusionBlock(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(c.width)
        self.itm_head = nn.Linear(c.width, 2)  # [no match, match]

    @torch.no_grad()
    def fit_reduction(self, sample: torch.Tensor) -> None:
        """Fix the reduction to the top principal components of a sample of tokens (M, Di)."""
        if not self.config.image_rank:
            return
        x = sample.float()
        mean = x.mean(0)
        _, vectors = torch.linalg.eigh((x - mean).T @ (x - mean))  # ascending eigenvalues
        self.image_mean.copy_(mean)
        self.image_basis.copy_(vectors[:, -self.config.image_rank:].flip(1))

    @torch.no_grad()
    def reduce(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tapped patch tokens (U, N, Di) -> (U, N, R) float32: the locked part, cacheable per image."""
        if not self.config.image_rank:
            return tokens.float()
        return (tokens.float() - self.image_mean) @ self.image_basis

    def forward(self, text: torch.Tensor, mask: torch.Tensor, image: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
        if image.shape[1] != self.config.image_tokens:
            raise ValueError(f"expected {self.config.image_tokens} patch tokens, got {image.shape[1]}")
        image = self.image_in(image.float()) + self.image_pos  # (U, N, W)
        x = self.text_in(text.float())  # (B, T, W)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)  # (B, 1+T, W)
        mask = torch.cat([mask.new_ones(len(x), 1), mask], dim=1)  # (B, 1+T), [CLS] is always real
        for block in self.blocks:
            x = block(x, mask, image, index)
        return self.itm_head(self.ln_f(x[:, 0]))  # (B, 2) from [CLS]


def match_probability(logits: torch.Tensor) -> torch.Tensor:
    """ITM logits (B, 2) -> P(match) (B,) float32."""
    return F.softmax(logits.float(), dim=-1)[:, 1]


def save_fusion(model: FusionEncoder, folder: Path, weight: float, extra: dict | None = None) -> None:
    """itm.safetensors (float16) + itm.json (config, weight, whatever the trainer records), atomically."""
    state = {k: v.detach().cpu().half().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(Path(folder) / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(Path(folder) / META, {"fusion": asdict(model.config), "weight": check_weight(weight), **(extra or {})})


def load_fusion(folder: Path, device: str = "cpu") -> tuple[FusionEncoder, dict]:
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() or not (folder / META).is_file():
        raise ValueError(f"{folder} is not an ITM checkpoint (needs {WEIGHTS} and {META})")
    meta = json.loads((folder / META).read_text())
    model = FusionEncoder(FusionConfig(**meta["fusion"]))
    model.load_state_dict({k: v.float() for k, v in load_file(str(folder / WEIGHTS)).items()})
    return model.to(device).eval(), meta


class FusionReranker(Reranker):
    """retr:default's towers (for tokens) + a trained FusionEncoder, as a `Reranker`."""

    def __init__(self, name: str, folder: Path, device: str = "cpu", encoder=None) -> None:
        """`encoder`: an already loaded AlignedEncoder of the checkpoint's base model (else loaded here)."""
        from retrieval.encoders import load_encoder
        from retrieval.training.itm_features import tapped_feature_maps

        self.folder = Path(folder)
        self.model, self.meta = load_fusion(folder, device)
        self.name, self.device, self.weight = name, device, check_weight(self.meta["weight"])
        self.encoder = encoder if encoder is not None else load_encoder(self.meta.get("base", "retr:default"), device)
        self.preprocess = self.encoder.preprocess
        self._tap = tapped_feature_maps

    def cache_key(self) -> str:
        from indexing.manifest import file_sha256

        if not hasattr(self, "_key"):
            self._key = f"{self.name}@{file_sha256(self.folder / WEIGHTS)[:16]}"
        return self._key

    @torch.inference_mode()
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> (B, 49, R) float16 reduced tokens of the tapped map: cacheable per item."""
        from retrieval.training.itm_features import patch_tokens

        tower = self.encoder.bridge.image_tower
        with self._tap(tower) as maps:
            tower.net.extract_features(pixels.to(self.device).contiguous(memory_format=torch.channels_last))
        return self.model.reduce(patch_tokens(maps[self.model.config.feature])).half()

    @torch.inference_mode()
    def match_probability(self, text: str, tokens: torch.Tensor) -> np.ndarray:
        from retrieval.training.itm_features import token_states

        if len(tokens) == 0:
            return np.zeros(0, np.float32)
        states = token_states(self.encoder.bridge.text_tower, [text])[0].to(self.device)  # (T, Dt)
        t = states[None].expand(len(tokens), -1, -1)  # (B, T, Dt): one text, B images
        mask = torch.ones(t.shape[:2], dtype=torch.bool, device=self.device)
        return match_probability(self.model(t, mask, tokens)).cpu().numpy().astype(np.float32)


def load(folder: Path, name: str, device: str = "cpu") -> FusionReranker:
    """The reranker in a checkpoint folder (retrieval/checkpoints/itm/ for `retr:itm`)."""
    return FusionReranker(name, Path(folder), device)
