"""R@1 of retr:default's text→image search with and without the ITM reranker, per held-out set (issue #27).

    python bench/bench_rerank_quality.py [--checkpoint retrieval/checkpoints/itm] [--split test] [--json OUT]

For each set `retr eval` reports (emoji-google, flags, openclipart, tuxpaint-photos, gcompris-photos:
their `--split` half; scikit-image: the 30 photo queries), retr:default shortlists each query's top K
by its cosine (ITC) and the checkpoint re-scores them: combine(itc, itm, weight) with the weight the
checkpoint recorded, and ITM alone (weight 1). Tower outputs come from the ITM feature cache
(retrieval.training.itm_features), so a rerun after the first takes seconds. Output:

    set                       n   R@1 ITC   +rerank K=16  +rerank K=32   ITM alone K=16  K=32
    emoji-google (test)     184     0.451         0.xxx         0.xxx            0.xxx   0.xxx
    ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from indexing.cache import cache_dir
from retrieval.encoders import load_encoder
from retrieval.evaluate import read_photo_queries
from retrieval.rerank.fusion import load_fusion
from retrieval.training.data import load_pairs
from retrieval.training.itm_features import tower_outputs
from retrieval.training.itm_loop import itm_shortlist, rerank_r1, rerank_set

SETS = ("emoji-google", "flags", "openclipart", "tuxpaint-photos", "gcompris-photos")
PHOTO_QUERIES = Path("data_manifests/eval/photo-queries.json")
KS = (16, 32)


def held_out_sets(model, encoder, split: str):
    for corpus in SETS:
        pairs = load_pairs([corpus], split)
        feats = tower_outputs(encoder, pairs, [q for p in pairs for q in p.queries], cache=cache_dir())
        yield f"{corpus} ({split})", rerank_set(model, feats, pairs)
    q = read_photo_queries(PHOTO_QUERIES)
    pairs = load_pairs([q.corpus])
    feats = tower_outputs(encoder, pairs, [t for t, _ in q.queries], cache=cache_dir())
    yield "skimage photo queries", rerank_set(model, feats, pairs, q.queries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("retrieval/checkpoints/itm"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--weight", type=float, default=None, help="override the checkpoint's ITM weight")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    model, meta = load_fusion(args.checkpoint)
    weight = meta["weight"] if args.weight is None else args.weight
    encoder = load_encoder(meta.get("base", "retr:default"))
    grid = sorted({0.0, weight, 1.0, *(i / 10 for i in range(11))})
    rows = {}
    print(f"weight {weight} (checkpoint {args.checkpoint})")
    print(f"{'set':30s} {'n':>4s} {'R@1 ITC':>8s} " + " ".join(f"{'+rr K=' + str(k):>10s}" for k in KS)
          + " " + " ".join(f"{'ITM K=' + str(k):>9s}" for k in KS))
    for name, s in held_out_sets(model, encoder, args.split):
        per_k = {k: rerank_r1(s, *itm_shortlist(model, s, k), grid) for k in KS}
        rows[name] = {"n": len(s.queries), **{f"K={k}": r for k, r in per_k.items()}}
        print(f"{name:30s} {len(s.queries):4d} {per_k[KS[0]][0.0]:8.3f} "
              + " ".join(f"{per_k[k][weight]:10.3f}" for k in KS) + " "
              + " ".join(f"{per_k[k][1.0]:9.3f}" for k in KS), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"weight": weight, "split": args.split, "sets": rows}, indent=1))


if __name__ == "__main__":
    main()
