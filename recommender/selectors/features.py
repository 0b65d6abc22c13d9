"""Reads of stored backbone features: what training, embedding and evaluation run on, and the cold
start's exact nearest products (similar items before any version is trained).

Cold start runs in PostgreSQL: standardised features compared by L2 are the raw features compared
by a weighted L2, ``||x*w - q*w||`` with ``w = 1/std`` (the mean cancels out), so each answer is
one scan of the backbone's features with the stored scaler (``FeatureScale``, fitted by
recommender.services.features with :data:`SCALE_SQL`) and no row is left out. Memory per answer:
k rows in Python; in PostgreSQL one row's two 8 KB temporaries at a time and the per-product
minimum (a hash aggregate, bounded by ``work_mem``, spilled past it), per parallel worker.
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
from django.db import connection

from catalog.models import ProductImage
from recommender import db
from recommender.models import FEATURE_DIM, BackboneFeature, FeatureScale, ModelVersion
from recommender.selectors.lists import exclusions_sql

_FEATURES_SQL = """SELECT f.image_id, i.product_id, c.name, f.vector
                   FROM recommender_backbonefeature f
                   JOIN catalog_productimage i ON i.id = f.image_id
                   JOIN catalog_product p ON p.id = i.product_id
                   JOIN catalog_category c ON c.id = p.category_id
                   WHERE f.backbone = %s"""


def features_load(*, backbone: str, image_ids=None, active_only: bool = True):
    """(image ids, product ids, category names, features matrix) of a backbone identity, in image id
    order, read in binary (see :func:`recommender.db.fetch_binary`). ``active_only``: only images of
    products shown to shoppers (what a training learns from)."""
    sql, params = _FEATURES_SQL, [backbone]
    if image_ids is not None:
        sql += " AND f.image_id = ANY(%s)"
        params.append(list(image_ids))
    if active_only:
        sql += " AND p.is_active"
    rows = db.fetch_binary(sql + " ORDER BY f.image_id", params)
    if not rows:
        return [], [], [], np.empty((0, FEATURE_DIM), np.float32)
    ids, products, labels, vectors = zip(*rows)
    return list(ids), list(products), list(labels), db.to_matrix(vectors, FEATURE_DIM)


def images_missing_embedding(*, version: ModelVersion, limit: int | None = None, ready_only: bool = False) -> list[int]:
    """Images with features of ``version``'s backbone that it has not embedded. ``ready_only``: not
    those a running ingestion task is about to embed."""
    qs = BackboneFeature.objects.filter(backbone=version.backbone)
    if ready_only:
        qs = qs.filter(image__status=ProductImage.Status.READY)
    qs = qs.exclude(image__embeddings__version=version).values_list("image_id", flat=True)
    return list(qs[:limit] if limit else qs)


def images_trained_on(*, version: ModelVersion, image_ids) -> set[int]:
    """Which of ``image_ids`` ``version`` trained on: recorded by the backbone kind; for a head, the
    images that had features when it started, less its held-out ones."""
    if "trained_image_ids" in (version.metrics or {}):
        return set(version.metrics["trained_image_ids"]) & set(image_ids)
    had_features = BackboneFeature.objects.filter(
        backbone=version.backbone, image_id__in=list(image_ids),
        created_at__lte=version.started_at or version.created_at).values_list("image_id", flat=True)
    return set(had_features) - set(version.metrics.get("holdout_image_ids", []))


def images_missing_features(*, backbone: str, limit: int | None = None, ready_before=None) -> list[int]:
    """Ready images without features of ``backbone`` (what a re-extraction still has to do), in id
    order; ``ready_before``: only those ready since before then (not a chunk still queued)."""
    qs = ProductImage.objects.filter(status=ProductImage.Status.READY).exclude(features__backbone=backbone)
    if ready_before is not None:
        qs = qs.filter(status_changed_at__lt=ready_before)
    qs = qs.order_by("id").values_list("id", flat=True)
    return list(qs[:limit] if limit else qs)


def images_with_categories() -> list[tuple[int, str]]:
    """(image id, category name) of the ready images of categorised active products, in id order:
    what a backbone training learns from (pixels, not stored features)."""
    qs = ProductImage.objects.filter(status=ProductImage.Status.READY, product__category__isnull=False,
                                     product__is_active=True)
    return list(qs.order_by("id").values_list("id", "product__category__name"))


# (n, w): the number of active products' features of backbone %s and the inverse of their standard
# deviation per dimension (numpy's population std + 1e-6, as the former scaler), in two passes
# (mean, then squared deviations: E[x^2] - E[x]^2 in float4 loses the small variances), pgvector
# accumulating in double precision. NOT MATERIALIZED: referenced twice, the rows would otherwise be
# copied into a 400 MB tuplestore at 50,000 features.
SCALE_SQL = """
    WITH active AS NOT MATERIALIZED (
        SELECT f.vector FROM recommender_backbonefeature f
        JOIN catalog_productimage i ON i.id = f.image_id JOIN catalog_product p ON p.id = i.product_id
        WHERE f.backbone = %s AND p.is_active),
    mean AS (SELECT avg(vector) AS m, count(*) AS n FROM active),
    var AS (SELECT avg((a.vector - mean.m) * (a.vector - mean.m)) AS v FROM active a, mean)
    SELECT mean.n AS n, (SELECT array_agg(1 / (sqrt(greatest(x, 0)) + 1e-6) ORDER BY o)
                         FROM unnest(var.v::real[]) WITH ORDINALITY AS u(x, o))::vector AS w
    FROM mean, var"""

_NEAREST_SQL = """
    WITH s AS ({scale}), q AS ({query})
    SELECT i.product_id, MIN((f.vector * s.w) <-> q.v) AS distance
    FROM s, q, recommender_backbonefeature f
    JOIN catalog_productimage i ON i.id = f.image_id JOIN catalog_product p ON p.id = i.product_id
    WHERE f.backbone = %s AND {where}
    GROUP BY i.product_id ORDER BY distance, i.product_id LIMIT %s"""
_STORED_SCALE = "SELECT inverse_std AS w FROM recommender_featurescale WHERE backbone = %s"
_FITTED_SCALE = "SELECT w FROM (" + SCALE_SQL + ") fit"  # no scaler stored yet: fitted in the query
_QUERY_IMAGE = ("SELECT f.vector * s.w AS v FROM recommender_backbonefeature f, s "
                "WHERE f.image_id = %s AND f.backbone = %s")
_QUERY_VECTOR = "SELECT %s::vector * s.w AS v FROM s"


def feature_scale_state(*, backbone: str) -> tuple[int, str] | None:
    """What the stored scaler of ``backbone`` was fitted on (features, time), or None: an answer
    computed with it holds until it is refitted (not its 8 KB vector: it stays in the database)."""
    row = FeatureScale.objects.filter(backbone=backbone).values_list("features", "fitted_at").first()
    return None if row is None else (row[0], row[1].isoformat())


def features_nearest_products(*, backbone: str, k: int, image=None, vector=None, stored_scale: bool = True,
                              exclude_product=None, category=None, min_price=None,
                              max_price=None, exclude_products=(), exclude_categories=()) -> list[tuple[int, float]]:
    """The k nearest active products (product id, standardised distance of its nearest image) of
    ``image``'s features or of ``vector``, over every feature of ``backbone``; filters apply to the
    candidates, never to the scaler. ``stored_scale``: False when none is stored (fitted here)."""
    where, params = ["p.is_active"], []
    for clause, value in (("i.product_id <> %s", exclude_product), ("p.price >= %s", min_price),
                          ("p.price <= %s", max_price), ("p.category_id = %s", getattr(category, "pk", category))):
        if value is not None:
            where.append(clause)
            params.append(int(value) if "price" not in clause else Decimal(value))
    clauses, values = exclusions_sql(exclude_products=exclude_products, exclude_categories=exclude_categories)
    where += clauses
    params += values
    if image is not None:
        query, query_params = _QUERY_IMAGE, [int(image), backbone]
    else:
        from pgvector import Vector

        query, query_params = _QUERY_VECTOR, [Vector(np.asarray(vector, dtype=np.float32).ravel()).to_text()]
    sql = _NEAREST_SQL.format(scale=_STORED_SCALE if stored_scale else _FITTED_SCALE, query=query,
                              where=" AND ".join(where))
    with connection.cursor() as cursor:
        cursor.execute(sql, [backbone, *query_params, backbone, *params, k])
        return [(row[0], float(row[1])) for row in cursor.fetchall()]
