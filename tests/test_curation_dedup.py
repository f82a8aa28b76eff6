"""The dedup stage against brute force: exactly one kept per duplicate group (SemDeDup's issue #8 is
to drop them all), kept + dropped = input, the keep policies, and evaluation leaks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.curation import (
    connected_components,
    drop_near,
    exact_duplicates,
    keep_one_per_group,
    near_duplicate_pairs,
    near_duplicates,
    pixel_duplicates,
)
from indexing.curation.dedup import pixel_leaks
from indexing.phash import hamming


def _brute_components(n: int, edges: list[tuple[int, int]]) -> list[set[int]]:
    """Components by depth-first search: the reference the numpy version must match."""
    adj = {i: set() for i in range(n)}
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    seen, comps = set(), []
    for s in range(n):
        if s in seen:
            continue
        stack, comp = [s], set()
        while stack:
            v = stack.pop()
            if v not in comp:
                comp.add(v)
                stack.extend(adj[v] - comp)
        seen |= comp
        comps.append(comp)
    return comps


@settings(max_examples=150, deadline=None, database=None)
@given(n=st.integers(1, 40), data=st.data())
def test_components_match_depth_first_search(n, data):
    edges = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=60))
    a = np.array([e[0] for e in edges], np.int64)
    b = np.array([e[1] for e in edges], np.int64)
    labels = connected_components(n, a, b)
    got = {}
    for i, lab in enumerate(labels):
        got.setdefault(int(lab), set()).add(i)
    assert sorted(map(sorted, got.values())) == sorted(map(sorted, _brute_components(n, edges)))
    assert all(lab == min(members) for lab, members in got.items())  # the label is the smallest member


@settings(max_examples=60, deadline=None, database=None)
@given(n=st.integers(2, 60), threshold=st.floats(0.5, 0.99), seed=st.integers(0, 10_000),
       policy=st.sampled_from(["first", "largest", "central"]))
def test_exactly_one_kept_per_group_against_brute_force(n, threshold, seed, policy):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((max(1, n // 3), 8)).astype(np.float32)
    xb = base[rng.integers(0, len(base), n)] + 0.3 * rng.standard_normal((n, 8)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    pixels = rng.integers(1, 5, n) * 100
    res = near_duplicates(ids, xb, threshold, keep=policy, k=n, pixels=pixels)
    sims = xb @ xb.T
    edges = [(i, j) for i in range(n) for j in range(i + 1, n) if sims[i, j] >= threshold]
    comps = _brute_components(n, edges)
    kept = set(res.kept.tolist())
    dropped = res.dropped.to_pylist()
    assert res.n == n and len(kept) + len(dropped) == n  # kept + dropped = input
    assert len(kept) == len(comps)
    for comp in comps:
        members = {int(ids[i]) for i in comp}
        assert len(members & kept) == 1, "exactly one kept per group"
        (winner,) = members & kept
        if policy == "first":
            assert winner == min(members)
        elif policy == "largest":
            best = max(pixels[i] for i in comp)
            assert winner == min(int(ids[i]) for i in comp if pixels[i] == best)
    for row in dropped:
        assert row["reason"] == "near_dup" and row["of_id"] in kept
        i, j = np.flatnonzero(ids == row["id"])[0], np.flatnonzero(ids == row["of_id"])[0]
        assert row["similarity"] == pytest.approx(float(sims[i, j]), abs=1e-5)


def test_central_keeps_the_member_nearest_the_mean():
    xb = np.array([[1, 0], [0.9, 0.436], [0.6, 0.8]], np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    winner = keep_one_per_group(np.zeros(3, np.int64), np.array([5, 6, 7]), "central", xb=xb)
    assert winner.tolist() == [1, 1, 1]  # the middle vector


def test_exact_duplicates_keep_one_per_hash():
    ids = np.array([10, 11, 12, 13, 14])
    res = exact_duplicates(ids, ["a", "b", "a", "c", "a"])
    assert res.kept.tolist() == [10, 11, 13]
    assert sorted((r["id"], r["of_id"], r["reason"]) for r in res.dropped.to_pylist()) == [
        (12, 10, "exact"), (14, 10, "exact")]


def test_eval_leaks_are_dropped_with_the_evaluation_id():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((50, 16)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    ev = pool[[3, 7]] + 0.01 * rng.standard_normal((2, 16)).astype(np.float32)
    ev /= np.linalg.norm(ev, axis=1, keepdims=True)
    res = drop_near(np.arange(50), pool, np.array([900, 901]), ev, 0.95)
    assert sorted((r["id"], r["of_id"]) for r in res.dropped.to_pylist()) == [(3, 900), (7, 901)]
    assert all(r["reason"] == "eval_leak" for r in res.dropped.to_pylist()) and len(res.kept) == 48


def test_ivf_graph_finds_planted_duplicates():
    """Above exact_below the graph uses IVF; planted copies must still be found."""
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((6000, 32)).astype(np.float32)
    copies = xb[:300] + 0.02 * rng.standard_normal((300, 32)).astype(np.float32)
    xb = np.concatenate([xb, copies])
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    q, b, _ = near_duplicate_pairs(xb, 0.95, k=4, exact_below=1000)
    found = {(min(i, j), max(i, j)) for i, j in zip(q.tolist(), b.tolist(), strict=True)}
    planted = {(i, 6000 + i) for i in range(300)}
    assert len(found & planted) / len(planted) >= 0.97


@pytest.mark.parametrize("bad, message", [
    (dict(threshold=1.5), "between -1 and 1"),
    (dict(keep="random"), "--keep must be one of"),
])
def test_bad_parameters_are_clear_errors(bad, message):
    xb = np.eye(3, dtype=np.float32)
    kwargs = {"threshold": 0.9, "keep": "first", **bad}
    with pytest.raises(ValueError, match=message):
        near_duplicates(np.arange(3), xb, kwargs["threshold"], keep=kwargs["keep"])
    with pytest.raises(ValueError, match="one vector per id"):
        near_duplicates(np.arange(4), xb, 0.9)


@settings(max_examples=40, deadline=None, database=None)
@given(n=st.integers(2, 50), bits=st.integers(0, 12), seed=st.integers(0, 10_000))
def test_pixel_duplicates_keep_one_per_group_of_close_hashes(n, bits, seed):
    """Groups are the components of 'at most `bits` bits apart', checked pair by pair; planted copies
    (a few bits flipped) join their original's group."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)
    for i in range(1, n, 3):  # every third item: a copy of the one before, 0–4 bits flipped
        flips = rng.choice(64, rng.integers(0, 5), replace=False)
        hashes[i] = hashes[i - 1] ^ np.int64(sum(1 << int(f) for f in flips) - (1 << 64 if 63 in flips else 0))
    ids = rng.permutation(n).astype(np.int64) * 3
    result = pixel_duplicates(ids, hashes, bits)
    dist = hamming(hashes[:, None], hashes[None, :])
    edges = [(i, j) for i in range(n) for j in range(i + 1, n) if dist[i, j] <= bits]
    groups = _brute_components(n, edges)
    kept = set(result.kept.tolist())
    assert all(len(kept & {int(ids[i]) for i in g}) == 1 for g in groups)  # exactly one kept per group
    assert len(kept) + result.dropped.num_rows == n
    group_of = {int(ids[i]): gi for gi, g in enumerate(groups) for i in g}
    for row in result.dropped.to_pylist():
        assert row["reason"] == "pixel" and group_of[row["id"]] == group_of[row["of_id"]]


def test_pixel_leaks_drop_pool_items_near_an_evaluation_hash():
    rng = np.random.default_rng(3)
    pool = rng.integers(-(2**62), 2**62, size=20, dtype=np.int64)
    evals = rng.integers(-(2**62), 2**62, size=5, dtype=np.int64)
    pool[4] = evals[2] ^ np.int64(0b1011)  # 3 bits from evaluation item 2
    pool[9] = evals[0]  # the same hash as evaluation item 0
    result = pixel_leaks(np.arange(20) + 100, pool, np.arange(5) + 500, evals, 4)
    rows = sorted((r["id"], r["of_id"], round(r["similarity"], 4)) for r in result.dropped.to_pylist())
    assert rows == [(104, 502, round(1 - 3 / 64, 4)), (109, 500, 1.0)]
    assert set(result.dropped.column("reason").to_pylist()) == {"eval_leak"} and len(result.kept) == 18


def _heart(path, colour, size=128, quality=None):
    """A filled heart-ish shape (two discs and a triangle) on white: one drawing, any colour."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(image)
    s = size / 128
    d.ellipse([20 * s, 20 * s, 68 * s, 68 * s], fill=colour)
    d.ellipse([60 * s, 20 * s, 108 * s, 68 * s], fill=colour)
    d.polygon([(22 * s, 52 * s), (106 * s, 52 * s), (64 * s, 110 * s)], fill=colour)
    if quality:
        image.save(path, quality=quality)
    else:
        image.save(path)
    return str(path)


def test_the_colour_check_tells_a_recoloured_drawing_from_a_copy(tmp_path):
    """A grey-level hash puts a red and a blue heart of one drawing bits apart; the pixel step's colour
    check keeps both, yet still drops a JPEG re-encode and a half-size copy of the red one."""
    from indexing.curation.colour import colour_agrees, colour_signatures
    from indexing.curation.dedup import pixel_duplicates
    from indexing.phash import phash_file

    paths = [_heart(tmp_path / "red.png", (220, 20, 30)), _heart(tmp_path / "blue.png", (30, 60, 220)),
             _heart(tmp_path / "red_q40.jpg", (220, 20, 30), quality=40),
             _heart(tmp_path / "red_small.png", (220, 20, 30), size=64)]
    hashes = np.array([phash_file(p) for p in paths], np.int64)
    assert int(hamming(hashes[0], hashes[1])) <= 8  # the hash alone calls the two hearts one picture
    ids = np.arange(len(paths))
    bare = pixel_duplicates(ids, hashes, 8)
    assert bare.kept.tolist() == [0]
    sig = colour_signatures(paths)
    checked = pixel_duplicates(ids, hashes, 8, agree=lambda q, b: colour_agrees(sig[q], sig[b], 0.1))
    assert checked.kept.tolist() == [0, 1]
    dropped = checked.dropped
    assert sorted(zip(dropped.column("id").to_pylist(), dropped.column("of_id").to_pylist(), strict=True)) == [
        (2, 0), (3, 0)]


def test_an_unreadable_image_never_counts_as_agreeing_in_colour(tmp_path):
    from indexing.curation.colour import colour_agrees, colour_signatures

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    red = _heart(tmp_path / "red.png", (220, 20, 30))
    sig = colour_signatures([red, str(bad)])
    assert np.isnan(sig[1]).all()
    assert colour_agrees(sig[[0, 0]], sig[[0, 1]], 1.0).tolist() == [True, False]
