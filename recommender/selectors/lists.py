"""The SQL of a panel's filters, and the panel answered from its precomputed neighbour list
(recommender.services.neighbours); recommender.selectors.similarity chooses between the list, the
HNSW index and the exact scan."""

from __future__ import annotations

from decimal import Decimal

from django.db import connection

from recommender.models import NEIGHBOURS_DELTA_MAX


def exclusions_sql(*, exclude_products=(), exclude_categories=()) -> tuple[list[str], list]:
    """WHERE clauses (on ``p``, catalog_product) and their parameters that leave out the product's
    duplicates, blocked and pinned products (catalog.duplicates, catalog.merchandising) and the
    categories staff's rules hide."""
    where, params = [], []
    if exclude_products:
        where.append("p.id <> ALL(%s)")
        params.append(list(exclude_products))
    if exclude_categories:
        where.append("p.category_id <> ALL(%s)")
        params.append(list(exclude_categories))
    return where, params


def filter_sql(*, exclude_product=None, category=None, min_price=None, max_price=None, predicted=None,
                exclude_products=(), exclude_categories=()):
    where, params = ["p.is_active"], []
    if exclude_product is not None:
        where.append("e.product_id <> %s")
        params.append(exclude_product)
    clauses, values = exclusions_sql(exclude_products=exclude_products, exclude_categories=exclude_categories)
    where += clauses
    params += values
    if category is not None:
        where.append("p.category_id = %s")
        params.append(category.pk if hasattr(category, "pk") else int(category))
    if min_price is not None:
        where.append("p.price >= %s")
        params.append(Decimal(min_price))
    if max_price is not None:
        where.append("p.price <= %s")
        params.append(Decimal(max_price))
    if predicted is not None:
        where.append("e.predicted = %s")
        params.append(predicted)
    return " AND ".join(where), params


# The product panel from its precomputed list (recommender.services.neighbours): the list of the
# query image's product, built from that very image (a product whose first image changed has no
# list until the next fold), merged with the version's embeddings stored since, scanned exactly.
# Any product missing from the list is farther than all of it, so once k listed products pass the
# filters the answer is exact. The query vector stays in the database (no 512-float literal to
# format and parse: 0.35 ms of Python a query).
_LISTED_SQL = """
    WITH list AS (
        SELECT n.neighbour_ids, n.distances, s.upto, q.vector FROM recommender_neighbours n
        JOIN recommender_neighbours_state s ON s.version_id = n.version_id
        JOIN recommender_embedding q ON q.image_id = n.image_id AND q.version_id = n.version_id
        WHERE n.version_id = %s AND n.product_id = %s AND n.image_id = %s
    ), fresh AS (
        SELECT e.product_id, e.vector <-> list.vector AS distance FROM list, recommender_embedding e
        WHERE e.version_id = %s AND e.id > list.upto AND e.product_id <> %s LIMIT %s
    ), candidates AS (
        SELECT u.product_id, u.distance, true AS listed
        FROM list, unnest(list.neighbour_ids, list.distances) AS u(product_id, distance)
        UNION ALL SELECT product_id, distance, false FROM fresh
    )
    SELECT c.product_id, MIN(c.distance) AS distance,
           sum(CASE WHEN bool_or(c.listed) THEN 1 ELSE 0 END) OVER () AS listed,
           (SELECT count(*) FROM fresh) AS fresh
    FROM candidates c
    CROSS JOIN LATERAL (SELECT 1 FROM catalog_product p WHERE p.id = c.product_id AND {where} OFFSET 0) passes
    GROUP BY c.product_id ORDER BY distance, c.product_id LIMIT %s"""
# LATERAL ... OFFSET 0 keeps the product lookups by primary key: joined plainly, the planner hashed
# all of catalog_product (57 ms at 100,000 products against 3 ms). The newer rows are capped
# (NEIGHBOURS_DELTA_MAX; folded in well before that) so the estimate stays below jit_above_cost:
# JIT compilation alone cost ~10 ms a query.


def listed_products(*, version_id, image, k, exclude_product, **filters) -> list[tuple[int, float]] | None:
    """The k nearest from the product's list, or None when the list cannot answer exactly (none
    built, more newer rows than the cap, fewer than k listed products passing the filters)."""
    where, params = filter_sql(**filters)
    pid = int(exclude_product)
    with connection.cursor() as cursor:
        cursor.execute(_LISTED_SQL.format(where=where),
                       [version_id, pid, int(image), version_id, pid, NEIGHBOURS_DELTA_MAX + 1, *params, k])
        found = cursor.fetchall()
    if found and found[0][2] >= k and found[0][3] <= NEIGHBOURS_DELTA_MAX:
        return [(row[0], float(row[1])) for row in found]
    return None
