"""A panel's nearest products re-ranked for variety under a model version (recommender.diversity,
over the products' embeddings): maximal marginal relevance with RECOMMENDER["DIVERSITY_LAMBDA"] as
its trade-off, and at most RECOMMENDER["DIVERSITY_VARIANTS_MAX"] products of a variant group
(near-identical products, closer than ["DIVERSITY_VARIANT_CLOSENESS"] times the pool's median
distance to the query; the product's own variants form its group).

Contract: :func:`panel_reranker` gives None when neither is asked for (lambda 1.0, cap 0: the panel
is the nearest first) and otherwise a re-ranker for recommender.selectors.rules.ruled, which
asks the vector query for :func:`pool_size` candidates (still without blocked products, hidden
categories or duplicates: the query leaves them out, so any subset of the pool obeys the rules),
then keeps k of them by MMR under the cap (a capped group's further members come back, in order,
only when too few others are left: k products whenever the pool holds k). Pins are not re-ranked
(ruled puts them first, untouched) nor counted in a group. Every product keeps its real distance to
the query; the panel's order is the re-ranker's, no longer by distance. The distances MMR needs are computed in PostgreSQL (each
candidate at its image nearest the query, as the panel's distance is): no vector is read into
Python.
"""

from __future__ import annotations

from django.db import connection

from recommender.conf import config
from recommender.diversity import NO_CAP, RELEVANCE_ONLY, rerank_order

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


def diversity_setting() -> list:
    """The configured re-ranking, [trade-off, variants per group, closeness] (part of a cached
    panel's key and of a cached answer's version: another setting, another answer). A list, so it
    reads the same after a JSON round trip."""
    settings = config()
    return [float(settings.diversity_lambda), int(settings.diversity_variants_max),
            float(settings.diversity_variant_closeness)]


def diversified(rows, *, version_id: int, image: int, k: int, trade_off: float, per_group: int = NO_CAP,
                closeness: float = 1.0) -> list[tuple[int, float]]:
    """``rows`` (product id, distance to the query image), nearest first, re-ranked by MMR with at
    most ``per_group`` of a variant group: k of them in panel order. (A candidate without an
    embedding under the version would count as identical to every other: rows of the version's own
    query always have one.)"""
    rows = list(rows)
    if (trade_off >= RELEVANCE_ONLY and per_group == NO_CAP) or len(rows) <= 1:
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
    order = rerank_order(relevance=[d for _, d in rows], pairwise=pairwise, k=k, trade_off=trade_off,
                         per_group=per_group, closeness=closeness)
    return [rows[i] for i in order]


def panel_reranker(*, version, image):
    """None when the panel is the nearest first (lambda 1.0 and no variant cap); else
    ``rerank(rows, k)`` for ruled, over the embeddings of ``version`` around the query ``image``."""
    trade_off, per_group, closeness = diversity_setting()
    if trade_off >= RELEVANCE_ONLY and per_group == NO_CAP:
        return None

    def rerank(rows, k):
        return diversified(rows, version_id=version.pk, image=image, k=k, trade_off=trade_off,
                           per_group=per_group, closeness=closeness)

    return rerank
