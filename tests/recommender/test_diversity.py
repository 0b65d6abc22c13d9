"""MMR re-ranking and intra-list distance (recommender.diversity), pure numpy: near-identical
variants are spread out or replaced, the trade-off 1.0 keeps the nearest-first order, and the
benchmark's measure agrees with retrieval_metrics where it should."""

import ast
from pathlib import Path

import numpy as np
import pytest

from recommender import diversity
from recommender.diversity import (
    intra_list_distance, mmr_order, mmr_order_from_distances, pairwise_distances, rerank_metrics, rerank_order,
    variant_groups)
from recommender.evaluation import retrieval_metrics


def variants_and_others(seed=0):
    """A query at the origin; five near-identical variants of one product at distance ~1 (the
    nearest), then five distinct products at 1.1 to 1.5, each in its own direction."""
    rng = np.random.default_rng(seed)
    dim = 16
    variant = np.zeros(dim)
    variant[0] = 1.0
    variants = sorted((variant + rng.normal(0, 0.003, dim) for _ in range(5)), key=np.linalg.norm)  # nearest first
    others = []
    for i in range(5):
        other = np.zeros(dim)
        other[i + 1] = 1.1 + 0.1 * i
        others.append(other)
    return np.zeros(dim), np.array(variants + others)


def test_the_relevance_only_trade_off_keeps_the_nearest_first_order():
    query, candidates = variants_and_others()
    assert mmr_order(query=query, candidates=candidates, k=6, trade_off=1.0) == [0, 1, 2, 3, 4, 5]
    assert mmr_order_from_distances(relevance=[1, 2, 3], pairwise=np.zeros((3, 3)), k=6, trade_off=1.0) == [0, 1, 2]


@pytest.mark.parametrize("trade_off", [0.7, 0.5])
def test_near_identical_variants_are_replaced_by_distinct_products(trade_off):
    query, candidates = variants_and_others()
    order = mmr_order(query=query, candidates=candidates, k=6, trade_off=trade_off)
    assert order[0] == 0  # the nearest still leads the panel
    assert sorted(order) == [0, 5, 6, 7, 8, 9]  # one variant, then the five distinct products
    assert order[1:] == [5, 6, 7, 8, 9]  # the nearer of them first
    plain = intra_list_distance(candidates[:6])
    assert intra_list_distance(candidates[order]) > 3 * plain  # 1.78 against 0.51


def test_a_strong_relevance_weight_moves_the_nearest_distinct_product_up_and_keeps_some_variants():
    # At 0.9 the novelty term (0.1 x ~1.5) outweighs 0.1 more distance once, not 0.2 or more.
    query, candidates = variants_and_others()
    order = mmr_order(query=query, candidates=candidates, k=6, trade_off=0.9)
    assert order == [0, 5, 1, 2, 3, 4]


def test_ties_go_to_the_nearer_candidate_and_every_position_comes_once():
    order = mmr_order_from_distances(relevance=[1.0, 1.0, 1.0, 1.0], pairwise=np.ones((4, 4)) - np.eye(4),
                                     k=10, trade_off=0.5)
    assert order == [0, 1, 2, 3]
    assert mmr_order_from_distances(relevance=[], pairwise=np.zeros((0, 0)), k=6, trade_off=0.5) == []
    assert mmr_order_from_distances(relevance=[3.0, 4.0], pairwise=[[0, 1], [1, 0]], k=6, trade_off=0.0) == [0, 1]


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_a_trade_off_outside_zero_to_one_is_refused(bad):
    with pytest.raises(ValueError, match="between 0 and 1"):
        mmr_order_from_distances(relevance=[1.0, 2.0], pairwise=np.zeros((2, 2)), k=2, trade_off=bad)


def test_intra_list_distance_is_the_mean_pairwise_distance():
    triangle = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, np.sqrt(3.0)]])  # equilateral, side 2
    assert intra_list_distance(triangle) == pytest.approx(2.0)
    assert intra_list_distance(np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])) == pytest.approx((5 + 0 + 5) / 3)
    assert intra_list_distance(np.zeros((1, 4))) == 0.0 and intra_list_distance(np.zeros((0, 4))) == 0.0


def test_rerank_metrics_match_plain_retrieval_at_one_and_trade_precision_for_variety():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 3, (4, 8))
    index_labels = rng.integers(0, 4, 400)
    index = centres[index_labels] + rng.normal(0, 1, (400, 8))
    query_labels = rng.integers(0, 4, 100)
    queries = centres[query_labels] + rng.normal(0, 1, (100, 8))
    pixels = rng.normal(size=(400, 5))
    found = rerank_metrics(query_vectors=queries, query_labels=query_labels, index_vectors=index,
                           index_labels=index_labels, trade_offs=(1.0, 0.5), k=6, pool=24,
                           spaces={"raw_pixels": pixels})
    plain = retrieval_metrics(queries, query_labels, index, index_labels, k=6)
    assert found[1.0]["precision_at_6"] == pytest.approx(plain["precision_at_6"])
    assert found[0.5]["intra_list_distance_embedding"] > found[1.0]["intra_list_distance_embedding"]
    assert set(found[0.5]) == {"precision_at_6", "intra_list_distance_embedding", "intra_list_distance_raw_pixels"}


def _distances(query, candidates):
    return {"relevance": np.linalg.norm(candidates - query[None, :], axis=1), "pairwise": pairwise_distances(candidates)}


def test_variant_groups_link_near_identical_candidates_relative_to_the_pool_and_chain():
    query, candidates = variants_and_others()
    groups = variant_groups(**_distances(query, candidates))
    assert len(set(groups[:5].tolist())) == 1  # the five variants, one group
    assert len(set(groups[5:].tolist())) == 5 and groups[0] not in groups[5:]  # each distinct product its own
    # The threshold is a share of the pool's median distance to the query: scale-free.
    scaled = variant_groups(**{key: 10 * value for key, value in _distances(query, candidates).items()})
    assert scaled.tolist() == groups.tolist()
    # Single linkage: a chain of near steps is one group; the query's own variants are group -1.
    relevance = [0.1, 0.2, 1.0, 1.0, 1.0]
    pairwise = np.full((5, 5), 2.0) - 2.0 * np.eye(5)
    pairwise[0, 1] = pairwise[1, 0] = 0.1
    pairwise[2, 3] = pairwise[3, 2] = pairwise[3, 4] = pairwise[4, 3] = 0.3  # 2-3-4 a chain (2-4: 2.0)
    assert variant_groups(relevance=relevance, pairwise=pairwise, closeness=0.5).tolist() == [-1, -1, 2, 2, 2]
    assert variant_groups(relevance=[], pairwise=np.zeros((0, 0))).tolist() == []


@pytest.mark.parametrize("per_group, expected", [(1, [0, 5, 6, 7, 8, 9]), (2, [0, 1, 5, 6, 7, 8]), (0, [0, 1, 2, 3, 4, 5])])
def test_the_cap_keeps_at_most_n_of_a_variant_group_nearest_first(per_group, expected):
    query, candidates = variants_and_others()
    assert rerank_order(**_distances(query, candidates), k=6, per_group=per_group) == expected


def test_a_capped_group_fills_the_panel_back_in_order_when_too_few_others_are_left():
    query, candidates = variants_and_others()
    candidates = candidates[:7]  # five variants, two distinct products
    assert rerank_order(**_distances(query, candidates), k=6, per_group=2) == [0, 1, 5, 6, 2, 3]
    assert rerank_order(**_distances(query, candidates), k=10, per_group=1) == [0, 5, 6, 1, 2, 3, 4]
    # With MMR too: the cap holds while others are left.
    order = rerank_order(**_distances(query, candidates), k=6, per_group=2, trade_off=0.9)
    assert sorted(order[:4]) == [0, 1, 5, 6] and len(set(order)) == 6


def test_rerank_metrics_with_the_cap_measure_more_variety_on_variants():
    query, candidates = variants_and_others()
    labels = np.array(["a"] * 10)
    plain, capped = (rerank_metrics(query_vectors=[query], query_labels=["a"], index_vectors=candidates,
                                    index_labels=labels, trade_offs=(1.0,), k=6, pool=10, per_group=n)[1.0]
                     for n in (0, 1))
    assert capped["intra_list_distance_embedding"] > 3 * plain["intra_list_distance_embedding"]


def test_the_module_is_pure_ml_no_django():
    tree = ast.parse(Path(diversity.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "numpy", "recommender.evaluation"}
