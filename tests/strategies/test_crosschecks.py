"""Strategies against brute-force computations on small cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from strategies import PoolOutputs, bald, get_strategy, margin

from .conftest import make_pool, softmax


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------- BatchBALD


def _joint_mi(probs_N_K_C: np.ndarray, batch: list[int]) -> float:
    """I[y_batch; w] by enumerating every label tuple of the batch (float64)."""
    p = probs_N_K_C[batch].astype(np.float64)  # [b, K, C]
    b, _, c = p.shape
    h_joint = 0.0
    for labels in itertools.product(range(c), repeat=b):
        per_k = np.prod(p[np.arange(b), :, labels], axis=0)  # [K]
        pj = per_k.mean()
        if pj > 0:
            h_joint -= pj * np.log(pj)
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = -np.nansum(p * np.log(p), axis=2).mean(axis=1)  # [b]
    return float(h_joint - cond.sum())


def _brute_force_greedy(probs: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    chosen: list[int] = []
    gains: list[float] = []
    base = 0.0
    for _ in range(k):
        best, best_mi = -1, -np.inf
        for cand in range(probs.shape[0]):
            if cand in chosen:
                continue
            mi = _joint_mi(probs, [*chosen, cand])
            if mi > best_mi + 1e-12:
                best, best_mi = cand, mi
        chosen.append(best)
        gains.append(best_mi - base)
        base = best_mi
    return chosen, gains


def _diverse_pool(n: int, k: int, c: int, seed: int) -> np.ndarray:
    rng = _rng(seed)
    logits = rng.normal(0, 2, size=(n, 1, c)) + rng.normal(0, 2, size=(n, k, c))
    return softmax(logits)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batchbald_matches_exact_enumeration(seed: int) -> None:
    probs = _diverse_pool(n=14, k=6, c=3, seed=seed)
    expected, expected_gains = _brute_force_greedy(probs, 4)
    # 3^4 = 81 configurations fit in num_samples: every step is exact.
    sel = get_strategy("batchbald", num_samples=100).select(PoolOutputs(probs), 4, _rng())
    assert sel.info["exact_steps"] == 4
    assert sel.indices.tolist() == expected
    np.testing.assert_allclose(sel.scores, expected_gains, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        sel.info["joint_mutual_information"], _joint_mi(probs, expected), rtol=1e-4
    )


def test_batchbald_first_pick_is_bald_and_gains_never_exceed_bald() -> None:
    probs = _diverse_pool(n=40, k=8, c=4, seed=3)
    sel = get_strategy("batchbald").select(PoolOutputs(probs), 10, _rng())
    b = bald(probs)
    assert sel.indices[0] == int(np.argmax(b))
    assert (sel.scores <= b[sel.indices] + 1e-6).all()
    assert (np.diff(sel.scores[: sel.info["exact_steps"]]) <= 1e-6).all()  # submodular


def test_batchbald_lazy_greedy_equals_plain_greedy() -> None:
    probs = _diverse_pool(n=300, k=10, c=3, seed=4)
    outputs = PoolOutputs(probs.astype(np.float32))
    lazy = get_strategy("batchbald", num_samples=800, chunk_rows=16).select(outputs, 6, _rng(1))
    plain = get_strategy("batchbald", num_samples=800, lazy=False).select(outputs, 6, _rng(1))
    assert lazy.info["exact_steps"] == 6  # 3^6 = 729 <= 800: the bound argument is exact
    np.testing.assert_array_equal(lazy.indices, plain.indices)
    assert lazy.info["evaluations"] < plain.info["evaluations"]


def test_batchbald_sampled_joint_entropy_is_close_to_exact() -> None:
    probs = _diverse_pool(n=30, k=6, c=4, seed=5)
    sel = get_strategy("batchbald", num_samples=2000).select(PoolOutputs(probs), 7, _rng(2))
    assert sel.info["exact_steps"] < 7  # 4^6 > 2000: the last steps are sampled
    exact = _joint_mi(probs, sel.indices.tolist())
    assert abs(sel.info["joint_mutual_information"] - exact) < 0.03 * exact


def test_batchbald_pool_limit_and_its_certificate() -> None:
    probs = _diverse_pool(n=200, k=8, c=3, seed=6)
    outputs = PoolOutputs(probs)
    limited = get_strategy("batchbald", pool_limit=20).select(outputs, 5, _rng())
    full = get_strategy("batchbald", pool_limit=None).select(outputs, 5, _rng())
    b = bald(probs)
    top20 = set(np.argsort(-b, kind="stable")[:20].tolist())
    assert set(limited.indices.tolist()) <= top20
    best_outside = np.sort(b)[-21]
    certified = int((limited.scores >= best_outside).sum())
    assert limited.info["certified_steps"] == certified
    assert full.info["certified_steps"] == 5
    # Certified steps at the start are the full-pool greedy's steps.
    n_prefix = 0
    while n_prefix < 5 and limited.scores[n_prefix] >= best_outside:
        n_prefix += 1
    assert n_prefix >= 1
    np.testing.assert_array_equal(limited.indices[:n_prefix], full.indices[:n_prefix])


# ----------------------------------------------------------------------- core-set


def _brute_force_k_center(emb: np.ndarray, labeled: np.ndarray, k: int) -> list[int]:
    x = emb.astype(np.float64)
    d_pool = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    d_lab = np.sqrt(((x[:, None, :] - labeled.astype(np.float64)[None]) ** 2).sum(-1))
    chosen: list[int] = []
    for _ in range(k):
        best, best_d = -1, -1.0
        for i in range(x.shape[0]):
            if i in chosen:
                continue
            d = min([*d_lab[i].tolist(), *d_pool[i, chosen].tolist()])
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", [0, 1])
def test_coreset_matches_exhaustive_greedy_steps(seed: int) -> None:
    outputs = make_pool(n=50, d=5, m=4, seed=seed, dtype=np.float64)
    assert outputs.emb_N_D is not None and outputs.labeled_emb_M_D is not None
    sel = get_strategy("coreset").select(outputs, 12, _rng())
    assert sel.indices.tolist() == _brute_force_k_center(
        outputs.emb_N_D, outputs.labeled_emb_M_D, 12
    )
    assert (np.diff(sel.scores) <= 1e-9).all()  # the covering radius never grows


def test_coreset_pruning_skips_rows_and_stays_exact() -> None:
    centres = np.array([[0, 0, 0], [20, 0, 0], [0, 20, 0], [0, 0, 20]], dtype=np.float64)
    emb = _blobs(60, centres, 4) + _rng(5).normal(0, 1.0, size=(240, 3))
    labeled = centres[:2] + 0.5
    outputs = PoolOutputs(np.full((240, 1, 2), 0.5), emb, labeled)
    sel = get_strategy("coreset").select(outputs, 40, _rng())
    assert sel.indices.tolist() == _brute_force_k_center(emb, labeled, 40)
    assert sel.info["rows_computed_per_step"] < 0.5 * 240  # the triangle inequality pruned


def test_coreset_cold_start_is_greedy_after_a_random_first_centre() -> None:
    outputs = make_pool(n=40, d=4, m=0, seed=2, dtype=np.float64)
    assert outputs.emb_N_D is not None
    sel = get_strategy("coreset").select(outputs, 6, _rng(9))
    first = int(_rng(9).integers(40))
    assert sel.indices[0] == first
    expected = _brute_force_k_center(outputs.emb_N_D, outputs.emb_N_D[[first]], 5)
    assert sel.indices[1:].tolist() == expected


# -------------------------------------------------------------------------- BADGE


def _badge_reference(outputs: PoolOutputs, k: int, rng: np.random.Generator) -> list[int]:
    """k-means++ on the materialised N x (C*D) gradient embeddings."""
    assert outputs.emb_N_D is not None
    p = outputs.probs_N_K_C.astype(np.float64).mean(axis=1)
    a = p.copy()
    a[np.arange(p.shape[0]), p.argmax(axis=1)] -= 1.0
    g = np.einsum("nc,nd->ncd", a, outputs.emb_N_D.astype(np.float64)).reshape(p.shape[0], -1)
    chosen = [int(np.argmax((g**2).sum(1)))]
    while len(chosen) < k:
        d2 = ((g[:, None, :] - g[None, chosen, :]) ** 2).sum(-1).min(axis=1)
        d2[chosen] = 0.0
        cdf = np.cumsum(d2)
        chosen.append(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")))
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_badge_seeding_matches_materialised_gradient_embeddings(seed: int) -> None:
    outputs = make_pool(n=80, k=3, c=4, d=6, seed=seed, dtype=np.float64)
    sel = get_strategy("badge").select(outputs, 10, _rng(seed))
    assert sel.indices.tolist() == _badge_reference(outputs, 10, _rng(seed))


def test_badge_prefers_uncertain_items() -> None:
    outputs = make_pool(n=300, k=1, c=4, d=6, seed=3)
    sel = get_strategy("badge").select(outputs, 30, _rng())
    s = margin(outputs.probs_N_K_C)
    assert s[sel.indices].mean() > s.mean()


# ------------------------------------------------------- stochastic batch sampling


@pytest.mark.parametrize("mode", ["softmax", "power", "softrank"])
def test_stochastic_first_pick_follows_its_distribution(mode: str) -> None:
    lc = np.array([0.1, 0.3, 0.45])  # least-confidence scores of three items
    probs = np.stack([1 - lc, lc], axis=1)[:, None, :]
    weights = {
        "softmax": np.exp(2.0 * lc),
        "power": lc**2.0,
        "softrank": np.array([3.0, 2.0, 1.0]) ** -2.0,  # ranks 3, 2, 1
    }[mode]
    strategy = get_strategy(mode, base="least_confidence", beta=2.0)
    counts = np.zeros(3)
    rng = _rng(0)
    draws = 3000
    for _ in range(draws):
        counts[strategy.select(PoolOutputs(probs), 1, rng).indices[0]] += 1
    expected = weights / weights.sum() * draws
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 13.8, (counts, expected)  # 99.9% quantile of chi-square with 2 dof


def test_stochastic_beta_zero_is_uniform_and_large_beta_is_top_k() -> None:
    outputs = make_pool(n=200, k=1, seed=1)
    top = get_strategy("entropy").select(outputs, 10, _rng())
    greedy = get_strategy("softmax", base="entropy", beta=1e4).select(outputs, 10, _rng())
    np.testing.assert_array_equal(np.sort(greedy.indices), np.sort(top.indices))
    uniform = get_strategy("power", beta=0.0).select(outputs, 100, _rng())
    assert len(set(uniform.indices.tolist()) & set(top.indices.tolist())) < 10


# ---------------------------------------------------------- clustering strategies


def _blobs(n_per: int, centres: np.ndarray, seed: int) -> np.ndarray:
    rng = _rng(seed)
    return np.concatenate([c + 0.05 * rng.normal(size=(n_per, centres.shape[1])) for c in centres])


def test_kmeans_picks_one_representative_per_blob() -> None:
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float64)
    emb = _blobs(25, centres, 0)
    probs = np.full((100, 1, 2), 0.5)
    sel = get_strategy("kmeans").select(PoolOutputs(probs, emb), 4, _rng())
    assert sorted((sel.indices // 25).tolist()) == [0, 1, 2, 3]
    # The representative is the member nearest its blob's mean.
    for i in sel.indices:
        blob = emb[(i // 25) * 25 : (i // 25 + 1) * 25]
        assert i % 25 == int(np.argmin(((blob - blob.mean(0)) ** 2).sum(1)))


def test_typiclust_covers_uncovered_blobs_with_typical_items() -> None:
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float64)
    emb = _blobs(30, centres, 1)
    emb[29] = [3.0, 3.0]  # an outlier of blob 0: never typical
    probs = np.full((90, 1, 2), 0.5)
    labeled = np.array([[0.0, 0.0]])  # blob 0 is already covered
    sel = get_strategy("typiclust", knn=5).select(PoolOutputs(probs, emb, labeled), 3, _rng())
    blobs = (sel.indices // 30).tolist()
    assert sorted(blobs[:2]) == [1, 2]  # uncovered blobs first
    assert 29 not in sel.indices.tolist()


def test_cluster_margin_takes_uncertain_items_from_distinct_clusters() -> None:
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float64)
    emb = _blobs(50, centres, 2)
    rng = _rng(3)
    p1 = rng.uniform(0.5, 1.0, size=200)
    probs = np.stack([p1, 1 - p1], axis=1)[:, None, :]
    outputs = PoolOutputs(probs, emb)
    sel = get_strategy("cluster_margin", candidates_per_item=10, n_clusters=4).select(
        outputs, 4, _rng()
    )
    s = margin(probs)
    top40 = set(np.argsort(-s, kind="stable")[:40].tolist())
    assert set(sel.indices.tolist()) <= top40
    assert len(set((sel.indices // 50).tolist())) == len({i // 50 for i in top40})
