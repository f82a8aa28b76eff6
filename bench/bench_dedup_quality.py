"""Near-duplicate detection quality: precision and recall per edit, per model, on real images.

    python bench/bench_dedup_quality.py [--small] [--models retr:sscd phash ...] [--plot docs/images/dedup_pr.png]
                                        [--failures docs/images/dedup_failures.png] [--pixel-bits 6 8 10]
                                        [--no-colour]   (the pixel step without its colour check)

The labelled set (built once, seeded, cached under ~/.cache/retr/bench/dedup-quality/SET/): originals
drawn from the project's corpora (fetched first when missing) — photos (skimage-photos,
gcompris-photos, tuxpaint-photos), clip-art (openclipart) and emoji (emoji-google) — and one edited
copy of each per edit:

    jpeg    re-encoded at quality 30-90        resize  scaled to 50-200 %
    crop    a window of 80-95 % of the area    flip    mirrored left-right
    colour  hue ±0.06, saturation and brightness ×0.75-1.25
    rotate  2-10° either way, corners white    text    a word drawn in a corner

Hard distractors, which are not duplicates: the same emoji drawn by Twemoji and OpenMoji, other
photos of the same landmark or animal (gcompris and tuxpaint items sharing a key), other drawings with
the same title (openclipart). Each model embeds every image once (cached per model); `phash` is the
64-bit DCT hash (indexing/phash.py) scored as 1 - hamming/64; `retr:default#instance` is
retr:default's instance block alone (its last instance_dim dimensions, re-normalised).

Pairs: an original with its copy is a positive; an original with any other original, another
original's copy or a distractor is a negative. Per edit, P and R count the pairs of originals with
that edit's copies (its own copy positive, everyone else's negative); "pooled" counts every pair,
so its precision also pays for originals and distractors matched to an original, and "hard FP" is
the share of (original, its own distractor) pairs at or above the threshold. Each model's default
threshold maximises min(P, R) pooled (on a plateau, its middle). "pipeline" runs the dedup
stage itself (indexing.curation.dedup.near_duplicates, k 16, keep first) at that threshold over all
images: P = dropped copies whose kept item is their own original's group, R = copies dropped.

"stage" runs the dedup stage's steps as `retr curate dedup` does (indexing/curation/dedup_stage.py):
exact copies (sha256 of the file), then pixel copies (`pixel_duplicates`, pHash of the decoded image
at most N bits apart, N in --pixel-bits), then `near_duplicates` on what is left, keep first
everywhere. P per edit = dropped copies merged into an item of their own original's group, R = copies
dropped, "all" = every drop (an original or a distractor dropped is wrong), "hard" = distractors that
end in one group with their own original. pHash alone is the pixel step without the near one. Each
model's stage threshold is chosen three ways (RULES): maximising the worst min(P, R) over the edits
("edits"), min(P, R) of all drops ("pooled"), or the worse of the two ("both", the one recommended);
"shipped" is the stage at dedup_stage's DEFAULT_THRESHOLDS.
Prints (numbers illustrative):

    set: 200 originals (70 photo, 60 clipart, 70 emoji), 1400 copies, 205 distractors
    model                   thr    jpeg        resize      crop  ...  pooled      hard FP  ms/img
    retr:sscd           0.6210  1.00/1.00  1.00/1.00  0.99/0.98  ...  0.97/0.97    0.4 %    118
    ...
    pipeline            ...
    below the 0.95 bar: phash flip (R 0.00), ...

    stage: exact -> pixel (pHash <= 8 bits) -> near (keep first); P/R per edit, all = every drop, ...
    model                    rule       thr      jpeg    resize  ...       all   hard
    retr:effnet-lite0        edits    0.857 1.00/0.99 1.00/1.00  ... 0.97/0.99   6.7%
    retr:effnet-lite0        pooled   0.903 ...
    retr:effnet-lite0        both     0.864 ...
    retr:effnet-lite0        shipped  0.846 ...
    phash                    pixel        - 1.00/0.99 1.00/1.00  ... 0.99/0.63   2.7%
    ...
    stage below the 0.95 bar, rule both at each model's best pixel_bits (11):
      retr:dinov2-small 6 bits both flip (P 0.90, R 0.89): missed 7 emoji, 6 photo, 2 clipart [mirror]; ...
    best pixel_bits per rule (...), scores at 6 / 8 / 10 bits:
      retr:effnet-lite0        edits 6 (0.979 / 0.979 / 0.950)   pooled 8 (...)   both 8 (0.973 / 0.976 / 0.950)
    thresholds -> ~/.cache/retr/bench/dedup-quality/SET/thresholds.json

A recorded run, and the failures it shows, are in docs/benchmarks.md ("Near-duplicate quality").
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageEnhance, ImageFont
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from indexing.atomic import write_json, write_npy, write_parquet
from indexing.cache import cache_dir
from indexing.curation.colour import colour_agrees, colour_signatures
from indexing.curation.dedup import connected_components, exact_duplicates, near_duplicates, pixel_duplicates
from indexing.curation.dedup_stage import DEFAULT_THRESHOLDS, DedupConfig
from indexing.curation.result import StageResult
from indexing.decode import DecodeError, decode_image
from indexing.phash import HASH_BITS, hamming, phash_file, phash_similarity
from indexing.sources import Item, read_item_bytes
from retrieval.training.data import Pair, load_pairs

TRANSFORMS = ("jpeg", "resize", "crop", "flip", "colour", "rotate", "text")
MODELS = ("retr:default", "retr:default#instance", "retr:minilm", "phash", "retr:sscd", "retr:sscd-student",
          "retr:effnet-lite0", "retr:dinov2-small")
BAR = 0.95  # the precision and recall every edit should reach
INSTANCE = "#instance"  # a model name suffix: that model's instance block alone
PHOTO_CORPORA = ("skimage-photos", "gcompris-photos", "tuxpaint-photos")
EMOJI_STYLES = ("emoji-twitter", "openmoji")  # the same emoji drawn again: hard distractors of emoji-google
# The failures sheet only draws images whose licences let a picture of them sit in docs/ (public domain,
# CC0, Apache-2.0): GCompris' per-image CC-BY-SA photos and Tux Paint's GPL stamps are left out.
SHEET_CORPORA = ("skimage-photos", "openclipart", "emoji-google")
WORDS = ("SALE", "© 2024", "hello", "DRAFT", "photo", "#1", "sample", "www")
# pixel_bits tried for the stage's pixel step (dedup_stage's default is 8). Distances between hashes are
# always even (phash.py), so 7 behaves as 6 and 9 as 8.
PIXEL_BITS = (6, 8, 10)
# Stage thresholds: a coarse pass over every cosine worth trying, then 0.001 steps around the best.
COARSE = np.round(np.arange(0.30, 0.995, 0.01), 3)
FINE_HALF_WIDTH = 0.01
# How a stage threshold is chosen: "edits" maximises the worst min(P, R) over the edits' copies (blind to
# originals and distractors dropped), "pooled" min(P, R) of every drop (blind to which edit is missed),
# "both" the worse of the two.
RULES = ("edits", "pooled", "both")
RECOMMENDED = "both"  # the rule whose failures are listed (docs/benchmarks.md says why)


@dataclass(frozen=True)
class SetConfig:
    photos: int = 50
    clipart: int = 40
    emoji: int = 50
    seed: int = 0
    max_side: int = 384  # originals are shrunk to this first: copies of big photos cost no more to embed

    @property
    def name(self) -> str:
        return f"p{self.photos}-c{self.clipart}-e{self.emoji}-s{self.seed}-m{self.max_side}-v1"


# --- the labelled set: originals, their edited copies, distractors -------------------------------------


@dataclass(frozen=True)
class Original:
    pair: Pair
    kind: str  # photo, clipart, emoji
    distractors: tuple[Pair, ...]  # other images of the same thing that are not copies


def _groups(pairs: Sequence[Pair], key: Callable[[Pair], str]) -> list[list[Pair]]:
    out: dict[str, list[Pair]] = {}
    for p in pairs:
        out.setdefault(key(p), []).append(p)
    return list(out.values())


def _pick(groups: list[list[Pair]], n: int, kind: str, rng: np.random.Generator) -> list[Original]:
    """n originals: up to half from groups with siblings (one is the original, up to two others its
    distractors), the rest from the remaining items."""
    rng.shuffle(groups)
    multi = [g for g in groups if len(g) > 1][: n // 2]
    singles = [g[0] for g in groups if len(g) == 1]
    singles = [singles[i] for i in rng.permutation(len(singles))[: n - len(multi)]]
    return ([Original(g[0], kind, tuple(g[1:3])) for g in multi]
            + [Original(p, kind, ()) for p in singles])


def choose_originals(config: SetConfig) -> list[Original]:
    rng = np.random.default_rng(config.seed)
    photos = load_pairs(PHOTO_CORPORA)
    clipart = load_pairs(["openclipart"])
    emoji = [p for p in load_pairs(["emoji-google"]) if "skin tone" not in p.captions[0]]
    styles = {(p.key, p.corpus): p for p in load_pairs(EMOJI_STYLES)}
    out = _pick(_groups(photos, lambda p: f"{p.corpus}/{p.key}"), config.photos, "photo", rng)
    out += _pick(_groups(clipart, lambda p: p.captions[0].lower()), config.clipart, "clipart", rng)
    drawn = [p for p in emoji if all((p.key, s) in styles for s in EMOJI_STYLES)]
    for i in rng.permutation(len(drawn))[: config.emoji]:
        p = drawn[i]
        out.append(Original(p, "emoji", tuple(styles[(p.key, s)] for s in EMOJI_STYLES)))
    return out


def _load(path: str, max_side: int) -> Image.Image:
    image = decode_image(read_item_bytes(Item(path=path)), name=path).image
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def _jpeg(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    q = int(rng.integers(30, 91))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), f"q{q}"


def _resize(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    s = float(rng.uniform(0.5, 2.0))
    size = (max(8, round(image.width * s)), max(8, round(image.height * s)))
    return image.resize(size, Image.Resampling.BICUBIC), f"{s:.0%}"


def _crop(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    area = float(rng.uniform(0.80, 0.95))
    side = area**0.5
    w, h = round(image.width * side), round(image.height * side)
    x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
    return image.crop((x, y, x + w, y + h)), f"{area:.0%} area"


def _flip(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "mirror"


def _colour(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    hue, sat, bright = float(rng.uniform(-0.06, 0.06)), float(rng.uniform(0.75, 1.25)), float(rng.uniform(0.75, 1.25))
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(hue * 255)) % 256
    out = Image.fromarray(hsv, "HSV").convert("RGB")
    out = ImageEnhance.Brightness(ImageEnhance.Color(out).enhance(sat)).enhance(bright)
    return out, f"h{hue:+.2f} s×{sat:.2f} b×{bright:.2f}"


def _rotate(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    angle = float(rng.uniform(2, 10) * rng.choice([-1, 1]))
    return image.rotate(angle, Image.Resampling.BICUBIC, fillcolor="white"), f"{angle:+.1f}°"


def _text(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    word = str(rng.choice(WORDS))
    out = image.copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(8, image.height // 8))
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font, stroke_width=1)
    corner = int(rng.integers(4))
    pad = max(2, image.height // 40)
    x = pad if corner % 2 == 0 else image.width - (right - left) - pad
    y = pad if corner < 2 else image.height - (bottom - top) - pad
    draw.text((x - left, y - top), word, font=font, fill="white", stroke_width=1, stroke_fill="black")
    return out, f"'{word}' corner {corner}"


EDITS: dict[str, Callable[[Image.Image, np.random.Generator], tuple[Image.Image, str]]] = {
    "jpeg": _jpeg, "resize": _resize, "crop": _crop, "flip": _flip, "colour": _colour, "rotate": _rotate,
    "text": _text,
}


def _digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes() + str(image.size).encode()).hexdigest()


def build_set(config: SetConfig, folder: Path) -> pa.Table:
    """Write the images under folder/images and return (and cache) the item table, ids in row order:
    originals first (id = their group), then their copies, then distractors (group -1)."""
    if (folder / "items.parquet").is_file():
        return pq.read_table(folder / "items.parquet")
    rng = np.random.default_rng(config.seed + 1)
    rows: list[dict] = []
    seen: set[str] = set()
    later: list[tuple[int, str, dict]] = []  # (group, edit, row) for copies, written after all originals
    for o in choose_originals(config):
        try:
            image = _load(o.pair.path, config.max_side)
        except (OSError, DecodeError):
            continue
        if _digest(image) in seen:  # pixel-identical originals would be duplicates of each other
            continue
        seen.add(_digest(image))
        gid = len(rows)
        meta = {"kind": o.kind, "corpus": o.pair.corpus, "caption": o.pair.captions[0]}
        rows.append({"role": "original", "group": gid, "edit": "", "param": "", "image": image, **meta})
        for edit in TRANSFORMS:
            copy, param = EDITS[edit](image, rng)
            later.append((gid, edit, {"role": "copy", "group": gid, "edit": edit, "param": param, "image": copy,
                                      **meta}))
        for d in o.distractors:
            try:
                dimage = _load(d.path, config.max_side)
            except (OSError, DecodeError):
                continue
            if _digest(dimage) not in seen:
                seen.add(_digest(dimage))
                later.append((-1, "", {"role": "distractor", "group": -1, "of": gid, "edit": "", "param": "",
                                       "image": dimage, "kind": o.kind, "corpus": d.corpus,
                                       "caption": d.captions[0]}))
    rows += [r for _, _, r in sorted(later, key=lambda t: (t[2]["role"] != "copy", TRANSFORMS.index(t[1])
                                                           if t[1] else 0, t[0]))]
    return _write_set(rows, folder)


def _write_set(rows: list[dict], folder: Path) -> pa.Table:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rows):
        r["path"] = str(images / f"{i:05d}.png")
        r.pop("image").save(r["path"])  # PNG: a JPEG copy keeps exactly its decoded pixels
        r.setdefault("of", r["group"])  # the original a copy or distractor belongs to
    table = pa.Table.from_pylist([{"id": i, **r} for i, r in enumerate(rows)])
    write_parquet(folder / "items.parquet", table)
    return table


# --- embeddings, cached per model ----------------------------------------------------------------------


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def _encode(spec: str, paths: list[str], batch: int = 32) -> tuple[np.ndarray, float, int]:
    """(vectors, ms per image, instance_dim of the model's packed vectors or 0)."""
    from retrieval.encoders import load_encoder

    encoder = load_encoder(spec)
    heads = getattr(encoder, "heads", None)
    instance_dim = heads.config.instance_dim if heads is not None and getattr(encoder, "c", 0) > 0 else 0
    out, seconds = [], 0.0
    with _progress() as bar:
        task = bar.add_task(f"embed {spec}", total=len(paths))
        for start in range(0, len(paths), batch):
            images = [Image.open(p).convert("RGB") for p in paths[start:start + batch]]
            t = time.perf_counter()
            out.append(encoder.encode_images(images))
            seconds += time.perf_counter() - t
            bar.advance(task, len(images))
    return np.concatenate(out), 1000 * seconds / len(paths), instance_dim


def _phash_all(paths: list[str]) -> tuple[np.ndarray, float]:
    """Hashes of the images decoded as the embed pipeline decodes them (indexing/embed.py), never
    cached: a few seconds, and a cache would outlive a change to the hash (the box reduction did)."""
    t = time.perf_counter()
    hashes = np.array([phash_file(p) for p in paths], np.int64)
    return hashes, 1000 * (time.perf_counter() - t) / len(paths)


def embeddings(model: str, paths: list[str], folder: Path) -> tuple[np.ndarray, float]:
    """(n, d) unit vectors (int64 hashes for phash) and ms per image, from the cache when there."""
    if model == "phash":
        return _phash_all(paths)
    base = model.removesuffix(INSTANCE)
    slug = base.replace(":", "-").replace("/", "_")
    vec_path, meta_path = folder / f"{slug}.npy", folder / f"{slug}.json"
    if not (vec_path.is_file() and meta_path.is_file()):
        x, ms, instance_dim = _encode(base, paths)
        write_npy(vec_path, x)
        write_json(meta_path, {"ms_per_image": ms, "instance_dim": instance_dim, "n": len(paths)})
    x, meta = np.load(vec_path), json.loads(meta_path.read_text())
    if model.endswith(INSTANCE):
        if not meta["instance_dim"]:
            raise ValueError(f"{base} has no instance block")
        block = x[:, -meta["instance_dim"]:]
        x = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    return x, meta["ms_per_image"]


def similarities(model: str, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), n) similarity of the given rows to every item: cosine, or 1 - hamming/64 for phash."""
    if model == "phash":
        return phash_similarity(hamming(x[rows][:, None], x[None, :])).astype(np.float32)
    return x[rows] @ x.T


# --- scoring -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labels:
    """Item columns as arrays; `n_orig` originals come first, and an original's id is its group."""
    role: np.ndarray  # "original" / "copy" / "distractor"
    group: np.ndarray  # the original's id for originals and copies, -1 for distractors
    of: np.ndarray  # the original a copy or distractor belongs to
    edit: np.ndarray
    kind: np.ndarray  # photo / clipart / emoji (a copy's or distractor's: its original's)
    param: np.ndarray  # the edit's parameters ("q41", "63%", ...)

    @property
    def n_orig(self) -> int:
        return int((self.role == "original").sum())


@dataclass(frozen=True)
class PairScores:
    """Similarities of the scored pairs, split by what they are (each sorted, for counting above a threshold)."""
    pos: dict[str, np.ndarray]  # edit -> (original, its copy)
    neg_copies: dict[str, np.ndarray]  # edit -> (original, another original's copy)
    neg_base: np.ndarray  # (original, another original or a distractor)
    hard: np.ndarray  # (original, its own distractors)


def pair_scores(sim: np.ndarray, labels: Labels) -> PairScores:
    n = labels.n_orig
    own = labels.group[None, :] == np.arange(n)[:, None]  # (n_orig, N): the original and its copies
    copy = labels.role == "copy"
    base = ~copy & ~own  # other originals and distractors (each original's own column is in `own`)
    hard = (labels.role == "distractor")[None, :] & (labels.of[None, :] == np.arange(n)[:, None])
    pos, neg = {}, {}
    for edit in TRANSFORMS:
        cols = copy & (labels.edit == edit)
        pos[edit] = np.sort(sim[own & cols[None, :]])
        neg[edit] = np.sort(sim[~own & cols[None, :]])
    return PairScores(pos, neg, np.sort(sim[base]), np.sort(sim[hard]))


def _above(sorted_scores: np.ndarray, thr: np.ndarray) -> np.ndarray:
    return len(sorted_scores) - np.searchsorted(sorted_scores, thr, side="left")


def _pr(tp: np.ndarray, fp: np.ndarray, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    return precision, tp / max(n_pos, 1)


def curves(s: PairScores, thr: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """edit (and "pooled") -> (precision, recall) at each threshold."""
    out = {e: _pr(_above(s.pos[e], thr), _above(s.neg_copies[e], thr), len(s.pos[e])) for e in TRANSFORMS}
    tp = sum(_above(s.pos[e], thr) for e in TRANSFORMS)
    fp = _above(s.neg_base, thr) + sum(_above(s.neg_copies[e], thr) for e in TRANSFORMS)
    out["pooled"] = _pr(tp, fp, sum(len(s.pos[e]) for e in TRANSFORMS))
    return out


def thresholds_for(model: str) -> np.ndarray:
    if model == "phash":  # only k/64 values occur
        return phash_similarity(np.arange(HASH_BITS // 2, -1, -1))
    return np.round(np.arange(0.30, 1.0005, 0.001), 4)


def plateau_middle(score: np.ndarray) -> int:
    """Index of the highest score; on a plateau of equal highest scores, its middle."""
    best = np.flatnonzero(score >= score.max() - 1e-12)
    return int(best[len(best) // 2])


def default_threshold(pr: dict[str, tuple[np.ndarray, np.ndarray]], thr: np.ndarray) -> int:
    """Index of the threshold that maximises min(P, R) pooled; on a plateau, its middle."""
    return plateau_middle(np.minimum(*pr["pooled"]))


def pipeline_scores(model: str, x: np.ndarray, labels: Labels, threshold: float) -> dict[str, tuple[float, float]]:
    """Run the dedup stage; per edit, (P, R) of its copies, and "all" counting every drop
    (originals and distractors dropped are wrong)."""
    if model == "phash":  # ±1/8 per bit: cosine = 1 - 2 hamming/64 = 2 similarity - 1
        bits = np.unpackbits(x.view(np.uint64).astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
        xb, cos = (bits.astype(np.float32) * 2 - 1) / np.sqrt(HASH_BITS), 2 * threshold - 1
    else:
        xb, cos = x.astype(np.float32), threshold
    result = near_duplicates(np.arange(len(labels.role)), xb, float(min(cos, 1.0)), keep="first")
    return drop_scores(Drops.of_steps(result), labels)


@dataclass(frozen=True)
class Drops:
    """What the dedup steps dropped: row ids, and the row each one was merged into."""
    ids: np.ndarray
    of: np.ndarray

    @staticmethod
    def of_steps(*steps: StageResult) -> Drops:
        return Drops(*(np.concatenate([s.dropped.column(c).to_numpy() for s in steps]).astype(np.int64)
                       for c in ("id", "of_id")))


def _truth(labels: Labels) -> np.ndarray:
    """Each row's true group: its original's id, and a group of its own for a distractor."""
    return np.where(labels.group >= 0, labels.group, -1 - np.arange(len(labels.group)))


def drop_scores(drops: Drops, labels: Labels) -> dict[str, tuple[float, float]]:
    """Per edit, (P, R) of its copies: P the dropped ones merged into their own original's group, R the
    share dropped; "all" counts every drop (an original or a distractor dropped is wrong)."""
    ids, truth = drops.ids, _truth(labels)
    right = truth[ids] == truth[drops.of]
    out = {}
    for edit in TRANSFORMS:
        is_copy = (labels.role[ids] == "copy") & (labels.edit[ids] == edit)
        n_copies = int(((labels.role == "copy") & (labels.edit == edit)).sum())
        out[edit] = (float(right[is_copy].mean()) if is_copy.any() else 1.0, is_copy.sum() / max(n_copies, 1))
    out["all"] = (float(right.mean()) if len(right) else 1.0, (labels.role[ids] == "copy").sum() /
                  max(int((labels.role == "copy").sum()), 1))
    return {k: (float(p), float(r)) for k, (p, r) in out.items()}


# --- the stage as `retr curate dedup` runs it: exact, then pixel, then near ----------------------------


@dataclass
class StageRow:
    model: str
    pixel_bits: int
    # how the threshold was chosen: a rule in RULES, "shipped" (dedup_stage's DEFAULT_THRESHOLDS), "pixel" for
    # pHash alone (no near step)
    rule: str
    threshold: float | None
    scores: dict[str, tuple[float, float]]  # edit / all -> (P, R)
    hard: float  # share of distractors that end in one group with their own original
    misses: list[str]  # edits below the bar, with what was missed or merged wrongly
    curve: list[float] | None = None  # the rule's score at each COARSE threshold, for the plot


def objective(scores: dict[str, tuple[float, float]], rule: str) -> float:
    """The score a rule (RULES) maximises."""
    edits, pooled = min(min(scores[e]) for e in TRANSFORMS), min(scores["all"])
    return {"edits": edits, "pooled": pooled, "both": min(edits, pooled)}[rule]


def file_digests(paths: list[str]) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def pixel_step(digests: list[str], hashes: np.ndarray, bits: int,
               colours: np.ndarray | None = None) -> tuple[np.ndarray, list[StageResult]]:
    """dedup_pool's first steps: exact copies (sha256), then pixel copies among what is left, vetoed by
    the colour check when `colours` (colour_signatures of every image) are given.
    (ids still live, the steps); ids are row numbers, kept first in each group as with --keep first."""
    ids = np.arange(len(hashes))
    exact = exact_duplicates(ids, digests, keep="first")
    agree = None
    if colours is not None:
        sig = colours[exact.kept]

        def agree(q: np.ndarray, b: np.ndarray) -> np.ndarray:
            return colour_agrees(sig[q], sig[b], DedupConfig().pixel_colour)
    pixel = pixel_duplicates(exact.kept, hashes[exact.kept], bits, keep="first", agree=agree)
    return pixel.kept, [exact, pixel]


def hard_merged(drops: Drops, labels: Labels) -> float:
    """Share of distractors whose final group (every drop an edge) holds an item of their original's group."""
    comp = connected_components(len(labels.role), drops.ids, drops.of)
    rows = np.flatnonzero(labels.role == "distractor")
    hit = [bool((comp[labels.group == labels.of[i]] == comp[i]).any()) for i in rows]
    return float(np.mean(hit)) if hit else 0.0


def _summary(rows: np.ndarray, what: Callable[[int], str]) -> str:
    counts: dict[str, int] = {}
    for i in rows:
        counts[what(int(i))] = counts.get(what(int(i)), 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def describe_misses(drops: Drops, labels: Labels, scores: dict[str, tuple[float, float]]) -> list[str]:
    """For each edit below the bar: its copies left in (by kind, with the edit's parameters) and those
    merged into another group (kind -> role and kind of what they were merged into)."""
    truth, out = _truth(labels), []
    of = dict(zip(drops.ids.tolist(), drops.of.tolist(), strict=True))
    for edit in TRANSFORMS:
        p, r = scores[edit]
        if p >= BAR and r >= BAR:
            continue
        copies = np.flatnonzero((labels.role == "copy") & (labels.edit == edit))
        missed = np.setdiff1d(copies, drops.ids)
        wrong = np.array([i for i in copies if i in of and truth[i] != truth[of[i]]], np.int64)
        text = f"{edit} (P {p:.2f}, R {r:.2f})"
        if len(missed):
            text += f": missed {_summary(missed, lambda i: labels.kind[i])}"
            text += f" [{' '.join(sorted(set(labels.param[missed].tolist()))[:8])}]"
        if len(wrong):
            into = _summary(wrong, lambda i: f"{labels.kind[i]} -> {labels.role[of[i]]} {labels.kind[of[i]]}")
            text += f"; merged wrongly {into}"
        out.append(text)
    return out


def _stage_row(model: str, bits: int, rule: str, threshold: float | None, drops: Drops, labels: Labels) -> StageRow:
    scores = drop_scores(drops, labels)
    return StageRow(model, bits, rule, threshold, scores, hard_merged(drops, labels),
                    describe_misses(drops, labels, scores))


def best_threshold(score: Callable[[float], float]) -> float:
    """The threshold that maximises score: the best of COARSE, then 0.001 steps around it (plateau middles)."""
    c = float(COARSE[plateau_middle(np.array([score(float(t)) for t in COARSE]))])
    fine = np.round(np.arange(c - FINE_HALF_WIDTH, c + FINE_HALF_WIDTH + 1e-9, 0.001), 3)
    fine = fine[(fine > 0) & (fine <= 1)]
    return float(fine[plateau_middle(np.array([score(float(t)) for t in fine]))])


def stage_rows(model: str, x: np.ndarray, hashes: np.ndarray, digests: list[str], labels: Labels,
               bits: int, colours: np.ndarray | None = None) -> list[StageRow]:
    """The stage at pixel_bits `bits`: pHash alone (the pixel step), or a model's near step after it
    at the threshold each rule chooses, and at its shipped default threshold."""
    live, first = pixel_step(digests, hashes, bits, colours)
    if model == "phash":
        return [_stage_row(model, bits, "pixel", None, Drops.of_steps(*first), labels)]
    xb = np.ascontiguousarray(x, np.float32)
    runs: dict[float, tuple[Drops, dict[str, tuple[float, float]]]] = {}

    def run(t: float) -> tuple[Drops, dict[str, tuple[float, float]]]:
        t = round(t, 3)
        if t not in runs:
            drops = Drops.of_steps(*first, near_duplicates(live, xb[live], t, keep="first", k=16))
            runs[t] = drops, drop_scores(drops, labels)
        return runs[t]

    chosen = {rule: best_threshold(lambda t, rule=rule: objective(run(t)[1], rule)) for rule in RULES}
    if model in DEFAULT_THRESHOLDS:
        chosen["shipped"] = DEFAULT_THRESHOLDS[model]
    rows = [_stage_row(model, bits, rule, t, run(t)[0], labels) for rule, t in chosen.items()]
    for r in rows:
        if r.rule in RULES:
            r.curve = [objective(run(float(t))[1], r.rule) for t in COARSE]
    return rows


def best_bits(rows: list[StageRow]) -> dict[tuple[str, str], int]:
    """(model, rule) -> the pixel_bits whose row scores best under that rule (the smaller on a tie)."""
    out: dict[tuple[str, str], tuple[float, int]] = {}
    for r in rows:
        for rule in RULES:
            if r.rule in (rule, "pixel"):
                key, value = (r.model, rule), (objective(r.scores, rule), -r.pixel_bits)
                out[key] = max(out.get(key, value), value)
    return {k: -v[1] for k, v in out.items()}


# --- report --------------------------------------------------------------------------------------------


@dataclass
class ModelResult:
    model: str
    threshold: float
    ms_per_image: float
    pairs: dict[str, tuple[float, float]]  # edit / pooled -> (P, R) at the threshold
    pipeline: dict[str, tuple[float, float]]  # edit / all -> (P, R)
    hard_fp: float  # share of (original, its own distractor) pairs at or above the threshold
    curve: dict[str, tuple[list[float], list[float]]]  # for the plot
    thresholds: list[float]


def evaluate(model: str, x: np.ndarray, ms: float, labels: Labels) -> tuple[ModelResult, np.ndarray]:
    sim = similarities(model, x, np.arange(labels.n_orig))
    s = pair_scores(sim, labels)
    thr = thresholds_for(model)
    pr = curves(s, thr)
    k = default_threshold(pr, thr)
    t = float(thr[k])
    pairs = {name: (float(p[k]), float(r[k])) for name, (p, r) in pr.items()}
    hard_fp = float(_above(s.hard, np.array([t]))[0] / max(len(s.hard), 1))
    curve = {name: (p.tolist(), r.tolist()) for name, (p, r) in pr.items()}
    result = ModelResult(model, t, ms, pairs, pipeline_scores(model, x, labels, t), hard_fp, curve, thr.tolist())
    return result, sim


def _cell(pr: tuple[float, float]) -> str:
    return f"{pr[0]:.2f}/{pr[1]:.2f}"


def print_table(results: list[ModelResult]) -> None:
    cols = (*TRANSFORMS, "pooled")
    print(f"\npairs, P/R at each model's default threshold (max min(P, R) pooled); bar {BAR}")
    print(f"{'model':24s} {'thr':>6s} " + " ".join(f"{c:>9s}" for c in cols) + f" {'hard FP':>8s} {'ms/img':>7s}")
    for r in results:
        print(f"{r.model:24s} {r.threshold:6.3f} " + " ".join(f"{_cell(r.pairs[c]):>9s}" for c in cols)
              + f" {r.hard_fp:8.1%} {r.ms_per_image:7.1f}")
    print("\npipeline (near_duplicates at the threshold, keep first): P/R of each edit's copies; all = every drop")
    for r in results:
        print(f"{r.model:24s} {r.threshold:6.3f} " + " ".join(f"{_cell(r.pipeline[c]):>9s}"
                                                           for c in (*TRANSFORMS, "all")))


def print_stage(rows: list[StageRow]) -> None:
    cols = (*TRANSFORMS, "all")
    for bits in sorted({r.pixel_bits for r in rows}):
        print(f"\nstage: exact -> pixel (pHash <= {bits} bits) -> near (keep first); P/R per edit, all = every "
              "drop, hard = distractors merged with their original")
        print(f"{'model':24s} {'rule':7s} {'thr':>6s} " + " ".join(f"{c:>9s}" for c in cols) + f" {'hard':>6s}")
        for r in (r for r in rows if r.pixel_bits == bits):
            thr = "-" if r.threshold is None else f"{r.threshold:.3f}"
            print(f"{r.model:24s} {r.rule:7s} {thr:>6s} " + " ".join(f"{_cell(r.scores[c]):>9s}" for c in cols)
                  + f" {r.hard:6.1%}")
    best = best_bits(rows)
    below = [f"{r.model} {r.pixel_bits} bits {r.rule} {m}" for r in rows if r.rule in (RECOMMENDED, "pixel")
             for m in r.misses if best[(r.model, RECOMMENDED)] == r.pixel_bits]
    print(f"\nstage below the {BAR} bar, rule {RECOMMENDED} at each model's best pixel_bits ({len(below)}):")
    print("\n".join(f"  {line}" for line in below) or "  none")
    print("\nbest pixel_bits per rule (edits: worst min(P, R) over edits; pooled: min(P, R) of every drop; "
          "both: the worse), scores at " + " / ".join(str(b) for b in sorted({r.pixel_bits for r in rows})) + " bits:")
    for model in dict.fromkeys(r.model for r in rows):
        text = []
        for rule in RULES:
            scores = " / ".join(f"{objective(r.scores, rule):.3f}" for r in rows
                                if r.model == model and r.rule in (rule, "pixel"))
            text.append(f"{rule} {best[(model, rule)]} ({scores})")
        print(f"  {model:24s} " + "   ".join(text))


def stage_thresholds(rows: list[StageRow]) -> dict[str, dict]:
    """model -> {"best_pixel_bits": {rule: bits}, "<bits>": {rule: threshold and scores}} for thresholds.json."""
    best = best_bits(rows)
    out: dict[str, dict] = {}
    for r in rows:
        entry = out.setdefault(r.model, {"best_pixel_bits": {rule: best[(r.model, rule)]
                                                             for rule in RULES}})
        entry.setdefault(str(r.pixel_bits), {})[r.rule] = {
            "threshold": r.threshold, "min_over_edits": objective(r.scores, "edits"), "all": r.scores["all"],
            "hard_merged": r.hard}
    return out


def misses(results: list[ModelResult]) -> list[str]:
    out = []
    for r in results:
        for how, table in (("pairs", r.pairs), ("pipeline", r.pipeline)):
            for edit in TRANSFORMS:
                p, rec = table[edit]
                if p < BAR or rec < BAR:
                    out.append(f"{r.model} {edit} {how} (P {p:.2f}, R {rec:.2f})")
    return out


def plot(results: list[ModelResult], path: Path, stage: Sequence[StageRow] = ()) -> None:
    """Pair curves per model; with `stage` rows (one pixel_bits), the stage's RECOMMENDED-rule score too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = (len(results) + 1 + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    ax = axes[0][0]
    for r in results:
        p, rec = r.curve["pooled"]
        (line,) = ax.plot(rec, p, label=r.model)
        ax.plot(*r.pairs["pooled"][::-1], "o", color=line.get_color())
    ax.set(xlabel="recall (pooled)", ylabel="precision (pooled)", title="pooled P-R, dots: default threshold",
           xlim=(0, 1.01), ylim=(0, 1.01))
    ax.legend(fontsize=7)
    for ax, r in zip(axes.flat[1:], results, strict=False):
        thr = np.array(r.thresholds)
        for edit in TRANSFORMS:
            ax.plot(thr, r.curve[edit][1], lw=1, label=f"R {edit}")
        ax.plot(thr, r.curve["pooled"][0], "k", lw=2, label="P pooled")
        ax.axvline(r.threshold, color="grey", ls="--")
        title = f"{r.model} (default {r.threshold:.3f})"
        for row in (row for row in stage if row.model == r.model and row.rule == RECOMMENDED):
            ax.plot(COARSE, row.curve, "k:", lw=2, label=f"stage, pixel ≤ {row.pixel_bits}: {RECOMMENDED}")
            ax.axvline(row.threshold, color="k", ls=":")
            title = f"{r.model} (pairs {r.threshold:.3f}, stage {row.threshold:.3f})"
        ax.axhline(BAR, color="grey", lw=0.5)
        lo = thr[np.argmax(np.array(r.curve["pooled"][1]) < 0.999)] if r.model != "phash" else thr.min()
        ax.set(title=title, xlabel="threshold", xlim=(max(lo - 0.05, thr.min()), 1),
               ylim=(0, 1.01))
    axes.flat[1].legend(fontsize=6, loc="lower left")
    for ax in axes.flat[len(results) + 1:]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    print(f"plot -> {path}")


def draw_failures(result: ModelResult, sim: np.ndarray, items: pa.Table, labels: Labels, path: Path,
                  n_rows: int = 8) -> None:
    """A contact sheet: originals (left) with their missed copies and their false matches (red), the worst first."""
    from retrieval.evaluate import Example, Hit
    from retrieval.sheets import draw_sheet

    paths, captions = items.column("path").to_pylist(), items.column("caption").to_pylist()
    params = items.column("param").to_pylist()
    drawable = np.isin(np.array(items.column("corpus").to_pylist()), SHEET_CORPORA)
    own = labels.group[None, :] == np.arange(labels.n_orig)[:, None]
    copy = (labels.role == "copy")[None, :]
    both = drawable[: labels.n_orig, None] & drawable[None, :]
    missed = own & copy & (sim < result.threshold) & both
    false = ~own & (sim >= result.threshold) & both
    badness = np.where(missed, result.threshold - sim, 0).max(1) + np.where(false, sim - result.threshold, 0).max(1)
    examples = []
    for i in np.argsort(-badness)[:n_rows]:
        if badness[i] <= 0:
            break
        hits = [Hit(paths[j], f"missed {labels.edit[j]} {params[j].replace('×', 'x')} {sim[i, j]:.2f}", False)
                for j in np.flatnonzero(missed[i])]
        hits += [Hit(paths[j], f"false: {captions[j][:24]} {sim[i, j]:.2f}", False)
                 for j in np.argsort(-np.where(false[i], sim[i], -np.inf))[: int(false[i].sum())]]
        examples.append(Example(f"{captions[i][:40]}", paths[i], tuple(hits[:7])))
    if examples:
        draw_sheet(examples, path, title=f"{result.model} at {result.threshold:.3f}: missed copies and false matches")
        print(f"failures -> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a quick smoke run: 10 originals of each kind")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--plot", type=Path, default=None, help="write the threshold curves here (PNG)")
    ap.add_argument("--failures", type=Path, default=None, help="a sheet of the first model's failures (PNG)")
    ap.add_argument("--pixel-bits", type=int, nargs="+", default=list(PIXEL_BITS),
                    help="pixel-step radii for the stage evaluation (pHash bits)")
    ap.add_argument("--no-colour", action="store_true", help="the pixel step without its colour check")
    args = ap.parse_args()
    config = SetConfig(10, 10, 10) if args.small else SetConfig()
    folder = cache_dir() / "bench" / "dedup-quality" / config.name
    t0 = time.perf_counter()
    items = build_set(config, folder)
    labels = Labels(*(np.array(items.column(c).to_pylist()) for c in ("role", "group", "of", "edit", "kind", "param")))
    kinds = [k for k, role in zip(items.column("kind").to_pylist(), labels.role, strict=True) if role == "original"]
    by_kind = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
    print(f"set {config.name}: {labels.n_orig} originals ({by_kind}), "
          f"{(labels.role == 'copy').sum()} copies, {(labels.role == 'distractor').sum()} distractors "
          f"({time.perf_counter() - t0:.0f} s)")
    results, sims, vectors = [], {}, {}
    paths = items.column("path").to_pylist()
    for model in args.models:
        try:
            x, ms = embeddings(model, paths, folder / "embeddings")
        except (ValueError, ImportError, OSError, RuntimeError) as e:
            print(f"{model}: skipped ({type(e).__name__}: {e})")
            continue
        result, sims[model] = evaluate(model, x, ms, labels)
        results.append(result)
        vectors[model] = x
    print_table(results)
    below = misses(results)
    print(f"\nbelow the {BAR} bar ({len(below)}): " + ("; ".join(below) or "none"))
    hashes = vectors["phash"] if "phash" in vectors else embeddings("phash", paths, folder)[0]
    digests = file_digests(paths)
    # the pixel step's colour check, as the stage runs it (DedupConfig.pixel_colour; --no-colour: without)
    colours = None if args.no_colour else colour_signatures(paths, progress=True)
    stage = [row for bits in args.pixel_bits for model, x in vectors.items()
             for row in stage_rows(model, x, hashes, digests, labels, bits, colours)]
    print_stage(stage)
    by_stage = stage_thresholds(stage)
    write_json(folder / "thresholds.json", {
        r.model: {"threshold": r.threshold, "rule": "max min(P, R), all edits pooled", "pooled": r.pairs["pooled"],
                  "pipeline_all": r.pipeline["all"], "stage": by_stage.get(r.model, {})} for r in results})
    write_json(folder / "results.json", [asdict(r) for r in results])
    write_json(folder / "stage.json", [asdict(r) for r in stage])
    print(f"thresholds -> {folder / 'thresholds.json'}  (total {time.perf_counter() - t0:.0f} s)")
    if args.plot and results:
        plot(results, args.plot, [r for r in stage if r.pixel_bits == DedupConfig().pixel_bits])
    if args.failures and results:
        draw_failures(results[0], sims[results[0].model], items, labels, args.failures)


if __name__ == "__main__":
    main()
