"""`retr curate dedup` on the project's own corpora: duplicate groups across all of them, and leaks
from the training splits into the evaluation splits.

    python bench/curate_findings.py [--out DIR] [--sheet docs/images/curation-groups.png]

~20 min the first time (embedding 26,844 images with retr:sscd-student on 2 shared cores), ~8 min
after (the stages, the sweep, and decoding the candidate pairs). Each step resumes: a finished stage
folder is reused, and the corpora are embedded once per model (OUT/embeddings/MODEL/SOURCE).
1. `all.parquet`: every fetched corpus' manifest in one (`image`, `caption`, `key`, `split`, `corpus`,
   `licence`, `category`, `subcategory`, `names`), sorted by corpus.
2. `retr curate dedup all.parquet --model M` four ways: the model's shipped threshold (`--threshold`) with
   the default pixel step (perceptual hashes ≤ 8 bits apart whose colour grids agree), with the hash
   alone (`--pixel-colour 0`, the step before the colour check), with `--no-pixel`, and at cosine STRICT
   with `--pixel-bits 0 --pixel-colour 0`. Counts per reason and the largest group; then, for a seeded
   sample of each run's drops per reason, how often the dropped item is the same picture as the item
   kept for it (pixel difference, `picture_difference`) or has its key (the same emoji, flag, icon).
3. A threshold sweep of the k-NN graph (k 16) on the same vectors (edges, share joining one key, groups,
   largest), and the same key drawn by two corpora: how alike the model finds the two drawings.
4. The STRICT run's groups: by corpus combination, the largest, the cross-corpus ones.
5. Leaks: the train split of each corpus retr:default trains on (retrieval/training/configs/default.json)
   `--against` every evaluation item (those corpora's test splits and the evaluation-only photo corpora),
   `--no-exact --no-pixel --no-near` so every train item is compared, at STRICT and at `--threshold`.
   Each leak is labelled with its evidence: identical bytes, same picture, both blank, or different
   pixels. Both sides are kept.parquet-shaped subsets of step 2's vectors (`write_subset`).
6. `--sheet PATH`: the STRICT run's groups as a contact sheet, and the same-picture leaks beside it
   (`curation-leaks.png`), only from corpora whose licence lets a committed picture show them.

Prints (shape; numbers from a run):
    all corpora: 26844 items from 17 corpora -> OUT/all.parquet
    | run | kept | exact | pixel | near_dup | unreadable | largest group | dropped with the kept item's key |
    | retr:sscd-student @ 0.712 --threshold 0.712 --pixel | 12561 | 129 | 703 | 13448 | 3 | 9549 | 0.103 |
    | run | reason | drops | sampled | same picture | pixel difference < 0.02 | same key |
    | threshold | edges (k 16) | same key | same corpus | groups | items in groups | largest |
    | corpus A | corpus B | shared keys | median cosine | ≥ 0.712 | ≥ 0.95 |
    groups: 1096 (2+ members, 2843 items); spanning 2+ corpora 100 ...
    leaks at cosine ≥ 0.95:
    | evaluation set | items | with a neighbour in train | identical bytes | same picture | both blank | ...
    | similarity | evidence | train item | evaluation item |
"""

from __future__ import annotations

import argparse
import json
import shutil
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexing.cache import cache_dir
from indexing.curation.dedup import connected_components, near_duplicate_pairs
from indexing.curation.dedup_stage import DEFAULT_THRESHOLDS
from indexing.curation.pool import CURATE_KEY, POOL_ID, VectorSource, read_embeddings
from indexing.curation.stages import StageSpec, run_stage
from indexing.embed import EmbedConfig
from indexing.phash import hamming

TRAINED = ("emoji-google", "emoji-twitter", "openmoji", "flags", "openclipart")  # configs/default.json
EVAL_ONLY = ("tuxpaint-photos", "gcompris-photos", "skimage-photos")  # never trained on
COLUMNS = ("image", "caption", "key", "split", "corpus", "licence", "category", "subcategory", "names")
# Other names a corpus gives the two label columns (OpenMoji's Unicode group / subgroup).
ALIASES = {"category": ("category", "group"), "subcategory": ("subcategory", "subgroup")}
# Corpora whose images may go on a committed sheet without binding it or needing per-image credit
# (Apache-2.0, MIT, public domain; data_manifests/README.md): not Twemoji / EmojiOne / game-icons (CC-BY),
# OpenMoji / EmojiOne v1 (CC-BY-SA), Tux Paint (GPL) or GCompris (mixed).
SHEET_CORPORA = ("emoji-google", "emoji-noto-v1", "emoji-fluent3d", "emoji-fluent-flat", "emoji-fluent-color",
                 "icons-icon-park", "icons-mdi", "flags", "openclipart")
STRICT = 0.95  # cosine for "the same picture, maybe recoloured or re-rendered" (the sweep in step 3)
# Mean absolute RGB difference (0-1) of two images squashed to 64 x 64 on white under which they are "the
# same picture": re-exports and flags that are one flag measured <= 0.0016, the smallest real difference
# among the leak candidates (a clock's hands) 0.0029, a recoloured heart or square 0.03-0.3.
SAME_PICTURE = 0.002
SWEEP = (0.6, 0.66, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98)


def default_out() -> Path:
    return cache_dir() / "bench" / "curate-findings"


def corpus_table(path: Path) -> pa.Table:
    """One corpus manifest reduced to COLUMNS (strings; absent ones null; flags labelled as the flag emoji)."""
    t = pq.read_table(path)
    cols = {}
    for name in COLUMNS:
        source = next((a for a in ALIASES.get(name, (name,)) if a in t.column_names), None)
        cols[name] = pc.cast(t.column(source), pa.string()) if source else pa.nulls(t.num_rows, pa.string())
    table = pa.table(cols)
    if path.parent.name == "flags":  # the ISO flags are one concept with the country-flag emoji
        table = table.set_column(COLUMNS.index("subcategory"), "subcategory",
                                 pa.array(["country-flag"] * t.num_rows, pa.string()))
    return table


def build_manifest(out: Path, corpora_root: Path | None = None) -> Path:
    """OUT/all.parquet: every fetched corpus, sorted by corpus name (so pool ids are stable)."""
    root = corpora_root or cache_dir() / "corpora"
    paths = sorted(root.glob("*/manifest.parquet"))
    if not paths:
        raise SystemExit(f"no corpora under {root}: run `retr data fetch NAME` first (`retr data list`)")
    table = pa.concat_tables([corpus_table(p) for p in paths])
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "all.parquet"
    if not dest.is_file() or not pq.read_table(dest).equals(table):
        pq.write_table(table, dest)
    print(f"all corpora: {table.num_rows} items from {len(paths)} corpora -> {dest}")
    return dest


def embed_config(workers: int) -> EmbedConfig:
    return EmbedConfig(batch_size=32, num_workers=workers)


def slug(model: str) -> str:
    return model.replace(":", "-").replace("/", "-")


def embeddings_dir(out: Path, model: str, source: Path) -> Path:
    """One embedding job per model and source, shared by every stage folder that asks for it."""
    return out / "embeddings" / slug(model) / source.stem


def loader(spec: str):
    from retrieval.encoders import load_encoder

    return load_encoder(spec, device="cpu")


def pool_meta(kept: Path) -> tuple[VectorSource, pa.Table]:
    """The vectors a stage's kept.parquet names and the metadata of every item embedded there
    (dropped ones too): ids, paths, hashes and the source's columns."""
    vectors = VectorSource.from_json(pq.read_schema(kept).metadata[CURATE_KEY])
    meta, _, _ = read_embeddings(vectors)
    return vectors, meta


def write_subset(vectors: VectorSource, meta: pa.Table, mask: np.ndarray, dest: Path) -> Path:
    """A kept.parquet-shaped SOURCE of the rows `mask` picks: the next stage reuses their stored vectors."""
    rows = meta.filter(pa.array(mask))
    table = pa.table({"image": rows.column("path"), "caption": rows.column("caption"), POOL_ID: rows.column("id")})
    dest.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({CURATE_KEY: vectors.to_json().encode()}), dest)
    return dest


def column(meta: pa.Table, name: str) -> np.ndarray:
    return np.asarray(meta.column(name).to_pylist(), dtype=object)


def rows_by_id(meta: pa.Table) -> dict[int, int]:
    return {int(i): r for r, i in enumerate(meta.column("id").to_numpy())}


# ---- step 2: dedup over everything, four ways --------------------------------------------------------

def dedup_runs(threshold: float) -> dict[str, dict]:
    """The pixel step with its colour check (as `--pixel` runs it), with the hash alone (`--pixel-colour 0`,
    as it ran before the check existed), without it, and the STRICT run the groups and leaks come from."""
    return {"dedup-all-colour": {"threshold": threshold, "pixel": True},
            "dedup-all-hash": {"threshold": threshold, "pixel": True, "pixel_colour": 0.0},
            "dedup-all-nopixel": {"threshold": threshold, "pixel": False},
            "dedup-all-strict": {"threshold": STRICT, "pixel": True, "pixel_bits": 0, "pixel_colour": 0.0}}


def cli_flags(params: dict) -> str:
    flags = {"threshold": "--threshold {}", "pixel_bits": "--pixel-bits {}", "pixel_colour": "--pixel-colour {}"}
    out = [flags[k].format(v) for k, v in params.items() if k in flags]
    out += [f"--{k}" for k, v in params.items() if v is True]
    out += [f"--no-{k}" for k, v in params.items() if v is False]
    return " ".join(out)


def dedup_all(out: Path, manifest: Path, model: str, threshold: float, workers: int) -> dict[str, Path]:
    folders = {}
    print("\n| run | kept | exact | pixel | near_dup | unreadable | largest group | "
          "dropped with the kept item's key |\n|---|---|---|---|---|---|---|---|")
    for name, params in dedup_runs(threshold).items():
        folder = out / name
        print(f"$ retr curate dedup {manifest} --out {folder} --model {model} {cli_flags(params)}", flush=True)
        record = run_stage(StageSpec("dedup", str(manifest), folder, model, params, embed=embed_config(workers),
                                     embeddings=embeddings_dir(out, model, manifest)), loader)
        folders[name] = folder
        _, meta = pool_meta(folder / "kept.parquet")
        groups = groups_of(folder)
        key = column(meta, "key")
        at = rows_by_id(meta)
        same = [key[at[m]] == key[at[lead]] for lead, members in groups.items() for m in members[1:]]
        d = record.counts["dropped"]
        print(f"| {model} @ {params['threshold']} {cli_flags(params)} | {record.counts['kept']} | "
              + " | ".join(str(d.get(r, 0)) for r in ("exact", "pixel", "near_dup", "unreadable"))
              + f" | {max(map(len, groups.values()), default=0)} | {np.mean(same):.3f} |", flush=True)
    return folders


def drop_checks(folders: dict[str, Path], n: int = 150, seed: int = 0) -> None:
    """For a seeded sample of each run's drops per reason: the share that are the same picture as the
    item kept for them (pixel difference < SAME_PICTURE), nearly so (< 10x that) or of the same key."""
    print("\n| run | reason | drops | sampled | same picture | pixel difference < 0.02 | same key |")
    print("|---|---|---|---|---|---|---|")
    for name, folder in folders.items():
        _, meta = pool_meta(folder / "kept.parquet")
        at, key, path = rows_by_id(meta), column(meta, "key"), column(meta, "path")
        dropped = pq.read_table(folder / "dropped.parquet").filter(pc.field("reason") != "unreadable")
        reasons = column(dropped, "reason")
        for reason in sorted(set(reasons)):
            rows = np.flatnonzero(reasons == reason)
            pick = np.random.default_rng(seed).choice(rows, min(n, len(rows)), replace=False)
            pairs = [(at[dropped.column(POOL_ID)[int(i)].as_py()], at[dropped.column("of_id")[int(i)].as_py()])
                     for i in pick]
            diffs = np.array([picture_difference(path[a], path[b])[0] for a, b in pairs])
            same_key = np.mean([key[a] == key[b] for a, b in pairs])
            print(f"| {name} | {reason} | {len(rows)} | {len(pick)} | {np.mean(diffs < SAME_PICTURE):.2f} | "
                  f"{np.mean(diffs < 10 * SAME_PICTURE):.2f} | {same_key:.2f} |", flush=True)


def groups_of(folder: Path) -> dict[int, list[int]]:
    """Kept id -> every pool id of its group (itself first), following chains of of_id."""
    dropped = pq.read_table(folder / "dropped.parquet").filter(pc.field("reason") != "unreadable")
    rep = dict(zip(dropped.column(POOL_ID).to_pylist(), dropped.column("of_id").to_pylist(), strict=True))
    groups: dict[int, list[int]] = {}
    for start in rep:
        node = start
        while node in rep:
            node = rep[node]
        groups.setdefault(node, [node]).append(start)
    return groups


# ---- step 3: what the threshold does to the graph ------------------------------------------------------

def sweep(kept: Path) -> None:
    vectors, meta = pool_meta(kept)
    _, xb, _ = read_embeddings(vectors)
    key, corpus = column(meta, "key"), column(meta, "corpus")
    q, b, s = near_duplicate_pairs(xb, min(SWEEP), k=16)
    print("\n| threshold | edges (k 16) | same key | same corpus | groups | items in groups | largest |")
    print("|---|---|---|---|---|---|---|")
    for t in SWEEP:
        on = s >= t
        labels = connected_components(len(xb), q[on], b[on])
        sizes = np.bincount(labels)
        sizes = sizes[sizes > 1]
        print(f"| {t} | {int(on.sum())} | {np.mean(key[q[on]] == key[b[on]]):.3f} | "
              f"{np.mean(corpus[q[on]] == corpus[b[on]]):.3f} | {len(sizes)} | {int(sizes.sum())} | "
              f"{int(sizes.max()) if len(sizes) else 0} |")


def style_pairs(kept: Path, threshold: float) -> None:
    """The same key drawn by two corpora (one emoji in two styles, one flag, one icon name): how alike
    the model finds them, per pair of corpora with 50+ shared keys."""
    vectors, meta = pool_meta(kept)
    _, xb, _ = read_embeddings(vectors)
    key, corpus = column(meta, "key"), column(meta, "corpus")
    print(f"\n| corpus A | corpus B | shared keys | median cosine | ≥ {threshold} | ≥ {STRICT} |")
    print("|---|---|---|---|---|---|")
    names = sorted(set(corpus))
    lines = []
    for i, a in enumerate(names):
        rows_a = {k: r for r, k in zip(np.flatnonzero(corpus == a), key[corpus == a], strict=True)}
        for b in names[i + 1:]:
            pairs = [(rows_a[k], r) for r, k in zip(np.flatnonzero(corpus == b), key[corpus == b], strict=True)
                     if k in rows_a]
            if len(pairs) < 50:
                continue
            ra, rb = map(np.array, zip(*pairs, strict=True))
            cos = np.einsum("ij,ij->i", xb[ra].astype(np.float32), xb[rb].astype(np.float32))
            lines.append((float(np.median(cos)), a, b, len(pairs), float(np.mean(cos >= threshold)),
                          float(np.mean(cos >= STRICT))))
    for med, a, b, n, loose, strict in sorted(lines, reverse=True):
        print(f"| {a} | {b} | {n} | {med:.3f} | {loose:.2f} | {strict:.2f} |")


# ---- step 4: the groups of the strict run ---------------------------------------------------------------

def group_summary(folder: Path, top: int) -> list[dict]:
    """Groups (2+ members) with their corpora, keys and captions, largest first; prints the tables."""
    _, meta = pool_meta(folder / "kept.parquet")
    at = rows_by_id(meta)
    corpus, key, caption = column(meta, "corpus"), column(meta, "key"), column(meta, "caption")
    groups = []
    for lead, members in groups_of(folder).items():
        rows = [at[m] for m in members]
        groups.append({"lead": lead, "members": members, "corpora": sorted(set(corpus[rows])),
                       "keys": sorted(set(key[rows])), "captions": sorted(set(caption[rows]))})
    groups.sort(key=lambda g: (-len(g["members"]), g["lead"]))
    cross = [g for g in groups if len(g["corpora"]) > 1]
    print(f"\ngroups: {len(groups)} (2+ members, {sum(len(g['members']) for g in groups)} items); "
          f"spanning 2+ corpora {len(cross)} (of them one key: {sum(len(g['keys']) == 1 for g in cross)}); "
          f"within one corpus {len(groups) - len(cross)} (of them 2+ keys: "
          f"{sum(len(g['keys']) > 1 for g in groups if len(g['corpora']) == 1)})")
    pairs = Counter(" + ".join(g["corpora"]) if len(g["corpora"]) <= 3 else f"{len(g['corpora'])} corpora"
                    for g in groups)
    print("\n| corpora in the group | groups |\n|---|---|")
    for name, n in pairs.most_common(20):
        print(f"| {name} | {n} |")
    print("\n| group size | corpora | keys | captions (first 4) |\n|---|---|---|---|")
    for g in groups[:top] + [g for g in cross if g not in groups[:top]][:top]:
        print(f"| {len(g['members'])} | {', '.join(g['corpora'])} | {len(g['keys'])} | "
              f"{'; '.join(g['captions'][:4])} |")
    return groups


# ---- step 5: leaks from train into evaluation sets ------------------------------------------------------

def current_splits(meta: pa.Table, corpora_root: Path | None = None) -> np.ndarray:
    """Each embedded item's split in the corpus manifests as fetched now (after data_manifests/splits/
    groups.json), not as it was when the pool was embedded."""
    root = corpora_root or cache_dir() / "corpora"
    split_of = {}
    for path in sorted(root.glob("*/manifest.parquet")):
        t = pq.read_table(path, columns=["image", "split"])
        split_of.update(zip(t.column("image").to_pylist(), t.column("split").to_pylist(), strict=True))
    return np.asarray([split_of.get(p, s) for p, s in zip(column(meta, "path"), column(meta, "split"), strict=True)],
                      dtype=object)


def leak_runs(out: Path, kept: Path, thresholds: tuple[float, ...]) -> dict[float, list[dict]]:
    """Per training corpus and threshold: its train split --against every evaluation item; the dedup steps
    inside the train split are off, so every train item is compared."""
    vectors, meta = pool_meta(kept)
    corpus, split = column(meta, "corpus"), current_splits(meta)
    shutil.rmtree(out / "leaks", ignore_errors=True)  # cheap to redo, and the splits may have moved
    evaluation = (np.isin(corpus, TRAINED) & (split == "test")) | np.isin(corpus, EVAL_ONLY)
    evals = write_subset(vectors, meta, evaluation, out / "leaks" / "eval.parquet")
    rows: dict[float, list[dict]] = {}
    for t in thresholds:
        rows[t] = []
        for name in TRAINED:
            train = write_subset(vectors, meta, (corpus == name) & (split == "train"),
                                 out / "leaks" / f"{name}-train.parquet")
            folder = out / "leaks" / f"{name}-{t}"
            params = {"threshold": t, "exact": False, "pixel": False, "near": False}
            print(f"$ retr curate dedup {train} --against {evals} --out {folder} {cli_flags(params)}", flush=True)
            run_stage(StageSpec("dedup", str(train), folder, None, params, {"against": [str(evals)]},
                                progress=False), loader)
            rows[t].extend(leak_rows(folder, meta, name))
    return rows


def picture_difference(a: str, b: str, side: int = 64) -> tuple[float, bool]:
    """Mean absolute RGB difference (0-1) of two images decoded onto white and squashed to side x side,
    and whether both are blank (one colour all over: a white or empty drawing on a transparent canvas)."""
    from PIL import Image

    from indexing.decode import decode_image
    from indexing.sources import Item, read_item_bytes

    def small(path: str) -> np.ndarray:
        image = decode_image(read_item_bytes(Item(path=path)), name=path).image
        return np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255

    xa, xb = small(a), small(b)
    return float(np.abs(xa - xb).mean()), bool(xa.std() < 1e-3 and xb.std() < 1e-3)


def evidence(sha: tuple[str, str], phash: tuple[str, str], paths: tuple[str, str], sim: float) -> str:
    """The strongest sign that two items are one picture: identical bytes, both blank, the same pixels at
    64 x 64 (a re-export), else what the hashes and the embedding say."""
    if sha[0] == sha[1]:
        return "identical bytes"
    diff, blank = picture_difference(*paths)
    if blank:
        return "both blank once decoded"
    if diff < SAME_PICTURE:
        return f"same picture (pixel difference {diff:.3f})"
    bits = int(hamming(np.int64(int(phash[0])), np.int64(int(phash[1]))))
    return f"different pixels ({diff:.2f}); cosine {sim:.3f}, pHash {bits} bits"


def leak_rows(folder: Path, meta: pa.Table, train_corpus: str) -> list[dict]:
    dropped = pq.read_table(folder / "dropped.parquet").filter(pc.field("reason") == "eval_leak")
    at = rows_by_id(meta)
    cols = {n: column(meta, n) for n in ("corpus", "key", "caption", "split", "path", "sha256", "phash")}
    out = []
    for pid, of, sim in zip(dropped.column(POOL_ID).to_pylist(), dropped.column("of_id").to_pylist(),
                            dropped.column("similarity").to_pylist(), strict=True):
        a, b = at[pid], at[of]
        why = evidence(*[(cols[n][a], cols[n][b]) for n in ("sha256", "phash", "path")], sim)
        out.append({"train_corpus": train_corpus, "train_id": pid, "test_id": of, "similarity": round(sim, 4),
                    "evidence": why, **{f"train_{n}": cols[n][a] for n in ("corpus", "key", "caption", "path")},
                    **{f"test_{n}": cols[n][b] for n in ("corpus", "key", "caption", "split", "path")}})
    return out


def split_groups(leaks: dict[float, list[dict]]) -> dict:
    """data_manifests/splits/groups.json from the leaks: keys that are one picture (identical bytes or the
    same pixels) join one group, so they share a split; a training item alike to an evaluation-only
    corpus' item at cosine >= STRICT (and not blank) is held out of training."""
    groups, held = set(), {}
    for rows in leaks.values():
        for r in rows:
            one_picture = r["evidence"].startswith(("identical bytes", "same picture"))
            if r["test_corpus"] in EVAL_ONLY:
                if one_picture or (r["similarity"] >= STRICT and not r["evidence"].startswith("both blank")):
                    held.setdefault(r["train_corpus"], set()).add(r["train_key"])
            elif one_picture:
                groups.add(tuple(sorted((r["train_key"], r["test_key"]))))
    return {"about": "Keys that are one picture share a split; held_out keys are never trained on. Written by "
                     "`python bench/curate_findings.py --write-split-groups data_manifests/splits/groups.json` "
                     "from the leaks `retr curate dedup --against` found (indexing/corpora/split_groups.py).",
            "groups": [list(g) for g in sorted(groups)],
            "held_out": {c: sorted(k) for c, k in sorted(held.items())}}


def groups_json(data: dict) -> str:
    """The groups file with one group per line, so a diff shows which keys moved."""
    groups = ",\n".join(f"  {json.dumps(g)}" for g in data["groups"])
    return (f'{{\n "about": {json.dumps(data["about"])},\n "groups": [\n{groups}\n ],\n'
            f' "held_out": {json.dumps(data["held_out"])}\n}}\n')


def leak_summary(rows: list[dict], meta: pa.Table, threshold: float, examples: int) -> None:
    corpus, split = column(meta, "corpus"), column(meta, "split")
    print(f"\nleaks at cosine ≥ {threshold}:")
    print("| evaluation set | items | with a neighbour in train | identical bytes | same picture | both blank | "
          "different pixels | train corpora |\n|---|---|---|---|---|---|---|---|")
    for te in TRAINED + EVAL_ONLY:
        total = int(((corpus == te) & ((split == "test") | np.isin(corpus, EVAL_ONLY))).sum())
        mine = [r for r in rows if r["test_corpus"] == te]
        by = {}
        for r in mine:  # the strongest evidence per evaluation item
            rank = next(i for i, p in enumerate(("identical", "same", "both", "different"))
                        if r["evidence"].startswith(p))
            by[r["test_id"]] = min(by.get(r["test_id"], 3), rank)
        counts = Counter(by.values())
        print(f"| {te} | {total} | {len(by)} | {counts[0]} | {counts[1]} | {counts[2]} | {counts[3]} | "
              f"{', '.join(sorted({r['train_corpus'] for r in mine}))} |")
    dropped = Counter(r["train_corpus"] for r in rows)
    print("train items a `--against` run drops as eval_leak: "
          + ", ".join(f"{c} {dropped[c]} of {int(((corpus == c) & (split == 'train')).sum())}" for c in TRAINED))
    if examples:
        print("\n| similarity | evidence | train item | evaluation item |\n|---|---|---|---|")
        same = sorted((r for r in rows if not r["evidence"].startswith("different")),
                      key=lambda r: (r["test_corpus"], r["test_key"], r["train_key"]))
        other = sorted((r for r in rows if r["evidence"].startswith("different")), key=lambda r: -r["similarity"])
        for r in same + other[:examples]:
            print(f"| {r['similarity']:.3f} | {r['evidence']} | {r['train_corpus']} `{r['train_key']}` "
                  f"{r['train_caption']} | {r['test_corpus']} ({r['test_split']}) `{r['test_key']}` "
                  f"{r['test_caption']} |")


# ---- step 6: contact sheets ------------------------------------------------------------------------

def plain(text: str) -> str:
    """ASCII for the sheet's built-in font, which has no accented letters ("Réunion" -> "Reunion")."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def save_sheet(examples: list, path: Path, title: str) -> Path:
    """retrieval.sheets' contact sheet, saved as a small palette PNG."""
    from PIL import Image

    from retrieval.sheets import draw_sheet

    tmp = draw_sheet(examples, path.with_suffix(".full.png"), title=title)
    Image.open(tmp).convert("RGB").quantize(96).save(path, optimize=True)
    tmp.unlink()
    print(f"sheet: {len(examples)} rows -> {path}")
    return path


def draw_groups(groups: list[dict], meta: pa.Table, path: Path, rows: int = 8, per_row: int = 7) -> Path:
    """One row per group, one group per kind (its corpora; one key or several), cross-corpus first: its
    kept item, then other members (green frame: the kept item's key, red: another key). Members from
    corpora outside SHEET_CORPORA are left out, and groups left with fewer than two."""
    from retrieval.evaluate import Example, Hit

    at = rows_by_id(meta)
    cols = {n: column(meta, n) for n in ("corpus", "key", "caption", "path")}
    label = lambda r: plain(f"{cols['corpus'][r]}: {cols['caption'][r]}")  # noqa: E731
    examples, seen = [], set()
    for g in sorted(groups, key=lambda g: (len(g["corpora"]) == 1, len(g["keys"]) == 1, -len(g["members"]))):
        members = [at[m] for m in g["members"] if cols["corpus"][at[m]] in SHEET_CORPORA]
        kind = (tuple(sorted({cols["corpus"][r] for r in members})), len({cols["key"][r] for r in members}) > 1)
        if len(members) < 2 or kind in seen:
            continue
        seen.add(kind)
        lead = members[0]
        examples.append(Example(f"{label(lead)} ({len(g['members'])} in group)", cols["path"][lead],
                                tuple(Hit(cols["path"][r], label(r), cols["key"][r] == cols["key"][lead])
                                      for r in members[1:per_row + 1])))
        if len(examples) == rows:
            break
    return save_sheet(examples, path, f"retr curate dedup, cosine >= {STRICT}: groups "
                                      "(first = kept; green = same key, red = another key)")


def draw_leaks(rows: list[dict], path: Path, per_row: int = 6) -> Path:
    """One row per evaluation item that is the same picture as training items of other keys (red)."""
    from retrieval.evaluate import Example, Hit

    by_test: dict[int, list[dict]] = {}
    for r in rows:
        shareable = {r["train_corpus"], r["test_corpus"]} <= set(SHEET_CORPORA)
        if shareable and r["evidence"].startswith(("identical", "same")):
            by_test.setdefault(r["test_id"], []).append(r)
    examples = [Example(plain(f"{rs[0]['test_corpus']} ({rs[0]['test_split']}): {rs[0]['test_caption']}"),
                        rs[0]["test_path"],
                        tuple(Hit(r["train_path"], plain(r["train_caption"]), False) for r in rs[:per_row]))
                for _, rs in sorted(by_test.items(), key=lambda kv: (kv[1][0]["test_corpus"], kv[0]))]
    return save_sheet(examples, path, "evaluation items (left) that are the same picture as training items "
                                      "(red, their training captions)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--model", default="retr:sscd-student")
    ap.add_argument("--threshold", type=float, default=None,
                    help="near-duplicate cosine (default: the model's shipped one, dedup_stage.DEFAULT_THRESHOLDS)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--top", type=int, default=15, help="largest groups listed")
    ap.add_argument("--sheet", type=Path, default=None, help="write a contact sheet of groups here")
    ap.add_argument("--write-split-groups", type=Path, default=None,
                    help="write the split groups the leaks call for here (data_manifests/splits/groups.json)")
    ap.add_argument("--leaks-only", action="store_true",
                    help="only step 5, on the vectors of an earlier run, with the splits fetched now")
    args = ap.parse_args()
    args.threshold = args.threshold or DEFAULT_THRESHOLDS[args.model]
    out = args.out or default_out()
    if args.leaks_only:
        strict = out / "dedup-all-strict"
        _, meta = pool_meta(strict / "kept.parquet")
        leaks = leak_runs(out, strict / "kept.parquet", (STRICT, args.threshold))
        for t, rows in leaks.items():
            leak_summary(rows, meta, t, examples=40 if t == STRICT else 0)
        return
    manifest = build_manifest(out)
    folders = dedup_all(out, manifest, args.model, args.threshold, args.workers)
    drop_checks(folders)
    strict = folders["dedup-all-strict"]
    sweep(strict / "kept.parquet")
    style_pairs(strict / "kept.parquet", args.threshold)
    groups = group_summary(strict, args.top)
    (out / "groups.json").write_text(json.dumps(groups, indent=1))
    _, meta = pool_meta(strict / "kept.parquet")
    leaks = leak_runs(out, strict / "kept.parquet", (STRICT, args.threshold))
    (out / "leaks.json").write_text(json.dumps({str(t): r for t, r in leaks.items()}, indent=1))
    if args.write_split_groups:
        args.write_split_groups.parent.mkdir(parents=True, exist_ok=True)
        args.write_split_groups.write_text(groups_json(split_groups(leaks)))
    for t, rows in leaks.items():
        leak_summary(rows, meta, t, examples=40 if t == STRICT else 0)
    if args.sheet:
        draw_groups(groups, meta, args.sheet)
        draw_leaks(leaks[STRICT], args.sheet.with_name(args.sheet.stem.replace("groups", "leaks") + ".png"))


if __name__ == "__main__":
    main()
