"""Reads of stored backbone features: what training, embedding and evaluation run on."""

from __future__ import annotations

import numpy as np

from catalog.models import ProductImage
from recommender import db
from recommender.models import FEATURE_DIM, BackboneFeature, ModelVersion

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
