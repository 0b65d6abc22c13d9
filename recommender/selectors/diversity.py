"""A panel's nearest products re-ranked for variety under a model version: maximal marginal
relevance (recommender.diversity) over the products' embeddings, with RECOMMENDER["DIVERSITY_LAMBDA"]
as its trade-off.

Contract: :func:`panel_reranker` gives None when the setting is 1.0 (the default: the panel is the
nearest first, as before) and otherwise a re-ranker for recommender.selectors.rules.ruled, which
asks the vector query for :func:`pool_size` candidates (still without blocked products, hidden
categories or duplicates: the query leaves them out, so any subset of the pool obeys the rules),
then keeps k of them by MMR. Pins are not re-ranked (ruled puts them first, untouched). Every
product keeps its real distance to the query; the panel's order is MMR's, no longer by distance.
k products whenever the pool holds k. The distances MMR needs are computed in PostgreSQL (each
candidate at its image nearest the query, as the panel's distance is): no vector is read into
Python.
"""

from __future__ import annotations

from django.db import connection

from recommender.conf import config
from recommender.diversity import RELEVANCE_ONLY, mmr_order_from_distances

# Candidates per place re-ranked, and at least POOL_MIN: 24 for a 6-product panel, the pool the
# quality benchmark measured (bench/quality.py, DIVERSITY_POOL), and within a product's precomputed
# list (recommender.services.neighbours.LIST_SIZE, 32), so the panel still reads one list.
POOL_FACTOR = 4
POOL_MIN = 24

# Each candidate at its image nearest the query image (DISTINCT ON keeps that one), then the
# distances between every two candidates: 276 rows for 24 candidates.
_PAIRS_SQL = """
    WITH best AS (
        SELECT DISTINCT ON (e.product_id) e.product_id, e.vector
        FROM recommender_embedding q JOIN recommender_embedding e ON e.version_id = q.version_id
        WHERE q.version_id = %s AND q.image_id = %s AND e.product_id = ANY(%s)
        ORDER BY e.product_id, e.vector <-> q.vector, e.image_id
    )
    SELECT a.product_id, b.product_id, a.vector <-> b.vector FROM best a JOIN best b ON a.product_id < b.product_id"""


def pool_size(k: int) -> int:
    """How many nearest candidates a panel of ``k`` products is re-ranked from."""
    return max(k * POOL_FACTOR, POOL_MIN)


def diversity_setting() -> float:
    """The configured trade-off (part of a cached panel's key: another setting, another answer)."""
    return float(config().diversity_lambda)


def diversified(rows, *, version_id: int, image: int, k: int, trade_off: float) -> list[tuple[int, float]]:
    """``rows`` (product id, distance to the query image), nearest first, re-ranked by MMR: k of
    them in panel order. (A candidate without an embedding under the version would count as
    identical to every other: rows of the version's own query always have one.)"""
    rows = list(rows)
    if trade_off >= RELEVANCE_ONLY or len(rows) <= 1:
        return rows[:k]
    ids = [pid for pid, _ in rows]
    with connection.cursor() as cursor:
        cursor.execute(_PAIRS_SQL, [version_id, image, ids])
        pairs = cursor.fetchall()
    position = {pid: i for i, pid in enumerate(ids)}
    n = len(ids)
    pairwise = [[0.0] * n for _ in range(n)]
    for a, b, distance in pairs:
        pairwise[position[a]][position[b]] = pairwise[position[b]][position[a]] = float(distance)
    order = mmr_order_from_distances(relevance=[d for _, d in rows], pairwise=pairwise, k=k, trade_off=trade_off)
    return [rows[i] for i in order]


def panel_reranker(*, version, image):
    """None when the panel is the nearest first (the setting at 1.0); else ``rerank(rows, k)`` for
    ruled, over the embeddings of ``version`` around the query ``image``."""
    trade_off = diversity_setting()
    if trade_off >= RELEVANCE_ONLY:
        return None

    def rerank(rows, k):
        return diversified(rows, version_id=version.pk, image=image, k=k, trade_off=trade_off)

    return rerank
