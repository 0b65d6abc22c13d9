"""Diversity re-ranking of a panel's candidates (pure numpy: no Django).

Six near-identical variants of one product make a poor panel. Maximal marginal relevance (MMR,
Carbonell and Goldstein, 1998) picks the panel one product at a time from a pool of the nearest
candidates, each pick the candidate that maximises

    trade_off * relevance(candidate) + (1 - trade_off) * novelty(candidate)

where relevance is minus its distance to the query and novelty its distance to the nearest product
already picked. Both are Euclidean distances in the same embedding space (the index's L2), so the
two terms share a unit and ``trade_off`` weighs them directly.

Contract:

- candidates come nearest first; the result is a list of positions into them, in panel order;
- ``trade_off`` 1.0 is pure relevance: the first ``k`` candidates, in their given order (today's
  panel, byte for byte); lower values trade relevance for variety; at 0.0 the first pick is still
  the nearest and each next one the farthest from those picked;
- ties go to the nearer candidate (the earlier position), so the order is deterministic;
- ``min(k, len(candidates))`` positions are returned, never a position twice.

Variant cap: MMR barely breaks up a family on a product page (the query is itself a family member,
so for a trade-off above 0.5 a sibling, nearer to both, always outscores a distinct product). The
cap, :func:`variant_groups` and ``per_group``, groups the pool's near-identical variants instead: two
candidates (or a candidate and the query) closer than ``closeness`` times the pool's median
distance to the query are linked, and a group is whatever links join (single linkage; the query's
group holds its own siblings). At most ``per_group`` of a group are picked while others are left;
when only capped candidates remain, they fill the panel back in order, so k whenever k exist.
The threshold is relative to the pool itself, so no calibration per model version is stored.

:func:`intra_list_distance` measures what it buys (the mean pairwise distance of a list), and
:func:`rerank_metrics` what it costs in same-category precision, for the quality benchmark.
"""

from __future__ import annotations

import numpy as np

RELEVANCE_ONLY = 1.0  # the trade-off that leaves the nearest-first order untouched
NO_CAP = 0  # per_group: no variant cap
# Variants are closer than this share of the pool's median distance to the query: measured by
# bench/diversity.py (0.5 to 0.7 tried: 0.6 breaks up the families for little more precision lost).
CLOSENESS = 0.6


def pairwise_distances(vectors) -> np.ndarray:
    """(n, n) Euclidean distances between the rows of ``vectors`` (zeros on the diagonal)."""
    v = np.asarray(vectors, dtype=np.float64)
    squared = (v ** 2).sum(axis=1)
    d2 = squared[:, None] + squared[None, :] - 2.0 * (v @ v.T)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(np.maximum(d2, 0.0))  # rounding can make a tiny distance negative


def variant_groups(*, relevance, pairwise, closeness: float = CLOSENESS) -> np.ndarray:
    """A group number per candidate: candidates closer to each other, or to the query, than
    ``closeness`` times the median of ``relevance`` are linked, and linked candidates share a group
    (single linkage). The query's own group, if any candidate joins it, is number -1."""
    relevance = np.asarray(relevance, dtype=np.float64)
    n = len(relevance)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    threshold = closeness * float(np.median(relevance))
    linked = np.zeros((n + 1, n + 1), dtype=bool)  # the last node is the query
    linked[:n, :n] = np.asarray(pairwise, dtype=np.float64) < threshold
    linked[:n, n] = linked[n, :n] = relevance < threshold
    np.fill_diagonal(linked, True)
    group = np.arange(n + 1)
    while True:  # each node takes the smallest number among its links, until nothing changes
        spread = np.where(linked, group[None, :], n + 1).min(axis=1)
        if np.array_equal(spread, group):
            break
        group = spread
    return np.where(group[:n] == group[n], -1, group[:n])


def mmr_order_from_distances(*, relevance, pairwise, k: int, trade_off: float, groups=None,
                             per_group: int = NO_CAP) -> list[int]:
    """MMR over precomputed distances: ``relevance`` (n,) each candidate's distance to the query,
    ``pairwise`` (n, n) the candidates' distances to each other. Positions, in panel order.
    ``groups`` (n,) and ``per_group`` > 0: at most that many of a group while other candidates are
    left (then the capped ones, best first: k whenever k exist)."""
    if not 0.0 <= trade_off <= 1.0:
        raise ValueError(f"trade_off must be between 0 and 1, not {trade_off!r}")
    relevance = np.asarray(relevance, dtype=np.float64)
    n = len(relevance)
    k = min(int(k), n)
    capped = per_group > NO_CAP and groups is not None
    if (trade_off >= RELEVANCE_ONLY and not capped) or k <= 0:
        return list(range(max(k, 0)))
    pairwise = np.asarray(pairwise, dtype=np.float64)
    groups = np.asarray(groups) if capped else np.zeros(n, dtype=np.int64)
    taken: dict = {}
    chosen, left = [], np.ones(n, dtype=bool)
    novelty = np.zeros(n)  # each candidate's distance to the nearest picked product
    while len(chosen) < k:
        score = -trade_off * relevance + (1.0 - trade_off) * novelty
        if not chosen:  # with nothing picked yet there is no novelty to weigh: the nearest comes first
            score = np.where(np.arange(n) == 0, 0.0, -np.inf)
        score[~left] = -np.inf
        if capped:
            full = np.array([taken.get(g, 0) >= per_group for g in groups.tolist()])
            if (left & ~full).any():
                score[full] = -np.inf
        pick = int(np.argmax(score))  # the first maximum: ties go to the nearer candidate
        chosen.append(pick)
        left[pick] = False
        taken[groups[pick].item()] = taken.get(groups[pick].item(), 0) + 1
        novelty = pairwise[pick].copy() if len(chosen) == 1 else np.minimum(novelty, pairwise[pick])
    return chosen


def rerank_order(*, relevance, pairwise, k: int, trade_off: float = RELEVANCE_ONLY, per_group: int = NO_CAP,
                 closeness: float = CLOSENESS) -> list[int]:
    """MMR at ``trade_off`` with at most ``per_group`` of a variant group (0: no cap)."""
    groups = variant_groups(relevance=relevance, pairwise=pairwise, closeness=closeness) if per_group else None
    return mmr_order_from_distances(relevance=relevance, pairwise=pairwise, k=k, trade_off=trade_off,
                                    groups=groups, per_group=per_group)


def mmr_order(*, query, candidates, k: int, trade_off: float) -> list[int]:
    """MMR of ``candidates`` (n, d), nearest first, for ``query`` (d,). Positions, in panel order."""
    candidates = np.asarray(candidates, dtype=np.float64)
    relevance = np.linalg.norm(candidates - np.asarray(query, dtype=np.float64)[None, :], axis=1)
    return mmr_order_from_distances(relevance=relevance, pairwise=pairwise_distances(candidates), k=k,
                                    trade_off=trade_off)


def intra_list_distance(vectors) -> float:
    """Mean Euclidean distance over the pairs of a list's vectors; 0.0 for fewer than two."""
    n = len(vectors)
    if n < 2:
        return 0.0
    upper = np.triu_indices(n, k=1)
    return float(pairwise_distances(vectors)[upper].mean())


def rerank_metrics(*, query_vectors, query_labels, index_vectors, index_labels, trade_offs, k: int = 6,
                   pool: int = 24, spaces: dict | None = None, per_group: int = NO_CAP,
                   closeness: float = CLOSENESS) -> dict:
    """Per trade-off: same-category P@k of the re-ranked top k of each query's ``pool`` nearest
    index rows (Euclidean, exact), and the mean intra-list distance of those k lists in the
    embedding and in each of ``spaces`` ({name: index rows in another space}, e.g. raw pixels: a
    gain measured only in the space MMR optimises would flatter it). At trade-off 1.0 the lists
    are the plain k nearest, so P@k equals recommender.evaluation.retrieval_metrics' (unless
    ``per_group`` caps the variant groups: :func:`rerank_order`)."""
    from recommender.evaluation import nearest  # pure numpy too

    query_vectors = np.asarray(query_vectors, dtype=np.float64)
    query_labels, index_labels = np.asarray(query_labels), np.asarray(index_labels)
    index_vectors = np.asarray(index_vectors, dtype=np.float64)
    spaces = {"embedding": index_vectors, **{name: np.asarray(v, dtype=np.float64) for name, v in (spaces or {}).items()}}
    neighbours = nearest(query_vectors, index_vectors, pool)
    hits = {t: 0.0 for t in trade_offs}
    distance = {t: {name: 0.0 for name in spaces} for t in trade_offs}
    for query, label, rows in zip(query_vectors, query_labels, neighbours):
        candidates = index_vectors[rows]
        relevance = np.linalg.norm(candidates - query[None, :], axis=1)
        pairwise = pairwise_distances(candidates)
        groups = variant_groups(relevance=relevance, pairwise=pairwise, closeness=closeness) if per_group else None
        for trade_off in trade_offs:
            picked = rows[mmr_order_from_distances(relevance=relevance, pairwise=pairwise, k=k, trade_off=trade_off,
                                                   groups=groups, per_group=per_group)]
            hits[trade_off] += float(np.mean(index_labels[picked] == label))
            for name, space in spaces.items():
                distance[trade_off][name] += intra_list_distance(space[picked])
    n = max(len(query_vectors), 1)
    return {t: {f"precision_at_{k}": hits[t] / n, **{f"intra_list_distance_{name}": total / n
                                                      for name, total in distance[t].items()}}
            for t in trade_offs}
