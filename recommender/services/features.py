"""Backbone features of catalog images under a given version's backbone: the re-extraction after a
backbone training (on the ``features`` queue: GPU workers), the healing of images that lack the
serving backbone's features, the pruning of features that no kept version reads, and the cold
start's scaler of the configured backbone (``FeatureScale``), refitted as its features grow.

Idempotent: one row per (image, backbone) by a unique constraint, inserted with
``ignore_conflicts``, so a redelivered or duplicated chunk changes nothing; a scaler is upserted.
"""

from __future__ import annotations

import logging
from itertools import batched

from django.db import connection, transaction
from django.utils import timezone

from catalog.models import ProductImage
from recommender import db, publishing, runtime
from recommender.models import BackboneFeature, Embedding, FeatureScale, ModelVersion
from recommender.selectors.features import SCALE_SQL
from recommender.services.embeddings import embeddings_create

logger = logging.getLogger(__name__)

# Versions whose backbone may still be extracted with: not failed ones (their files are gone).
EXTRACTABLE = (ModelVersion.Status.TRAINING, ModelVersion.Status.READY, ModelVersion.Status.ACTIVE)

# The cold start's scaler is refitted once the backbone's feature count has moved by more than this
# share since its fit. A fit is two scans in PostgreSQL: measured 3.4-5.0 s at 50,000 x 2048
# features (416 MB, 2 shared cores, 4 runs), the check after each batch 8-10 ms; refitting at 5% steps costs
# about 1/0.05 = 20 fits' worth of the final table over a catalog's whole growth (a few seconds per
# 2,500 new images at 50,000), and the scaler always describes at least 95% of the rows it serves.
SCALE_REFIT_SHARE = 0.05
# ...but at most one refit per backbone every SCALE_REFIT_MIN_SECONDS (a cache flag, SET NX). The
# 5% steps are many while a catalog is small: a fresh shop importing 4,000 photos onto 300 refitted
# ~54 times, ~11 s of PostgreSQL's CPU against ~34 s for the extraction itself at 64 px on 2 cores.
# A refit skipped inside the window is made by the next batch after it or by the periodic
# recovery (recover_lost_work), so the scaler is at most this old while features keep arriving.
SCALE_REFIT_MIN_SECONDS = 30
SCALE_REFIT_FLAG = "recommender:scale-refit:{backbone}"
_UPSERT_SCALE = """
    INSERT INTO recommender_featurescale (backbone, features, rows, inverse_std, fitted_at)
    SELECT %s, %s, fit.n, fit.w, now() FROM ({fit}) fit WHERE fit.n > 0
    ON CONFLICT (backbone) DO UPDATE SET features = EXCLUDED.features, rows = EXCLUDED.rows,
        inverse_std = EXCLUDED.inverse_std, fitted_at = EXCLUDED.fitted_at""".format(fit=SCALE_SQL)


def picture_open(image: ProductImage):
    """The decoded picture of an image row (raises on a missing or damaged file)."""
    from PIL import Image

    with image.image.open("rb") as handle:
        picture = Image.open(handle)
        picture.load()
    return picture


def feature_scale_fit(*, backbone: str) -> FeatureScale | None:
    """Fit and store the scaler of ``backbone`` in PostgreSQL (no feature reaches Python); None, and
    no scaler kept, when no active product has its features."""
    features = BackboneFeature.objects.filter(backbone=backbone).count()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_UPSERT_SCALE, [backbone, features, backbone])
        if not cursor.rowcount:
            FeatureScale.objects.filter(backbone=backbone).delete()
    return FeatureScale.objects.filter(backbone=backbone).defer("inverse_std").first()


def feature_scale_refresh(*, backbone: str) -> bool:
    """After features of ``backbone`` were stored: refit its scaler when it is the configured
    backbone (the one cold start reads) and its features moved by more than SCALE_REFIT_SHARE (or
    it has none yet), at most once per SCALE_REFIT_MIN_SECONDS. True when refitted. Two workers refitting at once upsert the same row."""
    if backbone != runtime.backbone_spec().identity:
        return False
    features = BackboneFeature.objects.filter(backbone=backbone).count()
    fitted = FeatureScale.objects.filter(backbone=backbone).values_list("features", flat=True).first()
    if fitted is None and not features:
        return False
    if fitted is not None and abs(features - fitted) <= fitted * SCALE_REFIT_SHARE:
        return False
    if fitted is not None and not _refit_window_open(backbone):
        return False
    feature_scale_fit(backbone=backbone)
    logger.info("cold start scaler of %s refitted (%s features, fitted on %s before)", backbone, features, fitted)
    return True


def _refit_window_open(backbone: str) -> bool:
    """Take this backbone's refit window; with the cache down, refit (as before the window)."""
    from django.core.cache import cache

    try:
        return cache.add(SCALE_REFIT_FLAG.format(backbone=backbone), 1, timeout=SCALE_REFIT_MIN_SECONDS)
    except Exception as exc:
        logger.warning("cache unavailable for the scaler's refit window (%s); refitting", exc)
        return True


def _pictures(image_ids) -> dict:
    """Decoded pictures of ready images; one that no longer decodes (it did at ingestion: its file
    was lost or damaged since) is marked failed with the reason, so that no re-extraction waits for
    it and the recovery does not send it again (staff can retry it once the file is back)."""
    pictures = {}
    for image in ProductImage.objects.filter(id__in=list(image_ids)):
        try:
            pictures[image.id] = picture_open(image)
        except Exception as exc:
            logger.warning("image %s could not be decoded for re-extraction: %s", image.id, exc)
            ProductImage.objects.filter(id=image.id, status=ProductImage.Status.READY).update(
                status=ProductImage.Status.FAILED, status_changed_at=timezone.now(),
                last_error=f"Could not decode the image for the new backbone: {type(exc).__name__}: {exc}")
    return pictures


def features_extract(*, version_id: int, image_ids, progress=None) -> int:
    """Extract and store the features of ``image_ids`` with ``version_id``'s backbone (those that
    lack them), one batched pass per chunk; an active version also embeds them. Returns how many
    were extracted. Nothing to do for a failed or deleted version (a late chunk of a failed
    training)."""
    version = ModelVersion.objects.filter(pk=version_id, status__in=EXTRACTABLE).first()
    if version is None:
        return 0
    spec = runtime.version_spec(version)
    done = 0
    for chunk in batched(list(image_ids), 256):
        have = set(BackboneFeature.objects.filter(image_id__in=chunk, backbone=version.backbone)
                   .values_list("image_id", flat=True))
        pictures = _pictures([i for i in chunk if i not in have])
        if pictures:
            ids = list(pictures)
            vectors = runtime.backbone_of(spec).extract([pictures[i] for i in ids])
            db.bulk_insert_binary(
                [BackboneFeature(image_id=i, backbone=version.backbone, vector=v) for i, v in zip(ids, vectors)])
            if version.status == ModelVersion.Status.ACTIVE:
                embeddings_create(version=version, image_ids=ids)
            done += len(ids)
        if progress:
            progress(len(chunk))
    if done:
        feature_scale_refresh(backbone=version.backbone)
    return done


def features_enqueue(*, version: ModelVersion, image_ids, chunk: int) -> int:
    """Send ``image_ids`` to the features queue in chunks, after commit; returns the chunks sent."""
    chunks = [list(c) for c in batched(list(image_ids), chunk)]
    transaction.on_commit(lambda: [publishing.features_publish(version_id=version.pk, image_ids=c) for c in chunks])
    return len(chunks)


def _kept_backbones() -> set[str]:
    """Identities some version may still read: the configured backbone (cold start, head
    trainings), every version that trains, is ready or serves, and retired ones that kept their
    embeddings (instant rollback)."""
    kept = {runtime.backbone_spec().identity}
    kept |= set(ModelVersion.objects.filter(status__in=EXTRACTABLE).values_list("backbone", flat=True))
    with_embeddings = Embedding.objects.values("version_id").distinct()
    kept |= set(ModelVersion.objects.filter(status=ModelVersion.Status.RETIRED, pk__in=with_embeddings)
                .values_list("backbone", flat=True))
    return kept


def features_prune(*, batch_size: int = 20_000) -> dict:
    """Delete the features of backbones that no kept version reads (a failed backbone training's,
    a retired trained backbone's once its embeddings are pruned), in batches; safe to run twice."""
    # Listed before the kept ones are read: a backbone saved meanwhile (a training that has just
    # started its re-extraction) is not in this list, so its new rows are never taken for orphans.
    present = set(BackboneFeature.objects.values_list("backbone", flat=True).distinct())
    pruned: dict[str, int] = {}
    for identity in present - _kept_backbones():
        while True:
            batch = BackboneFeature.objects.filter(backbone=identity).values("pk")[:batch_size]
            deleted, _ = BackboneFeature.objects.filter(pk__in=batch).delete()
            pruned[identity] = pruned.get(identity, 0) + deleted
            if deleted < batch_size:
                break
        logger.info("pruned %s features of backbone %s", pruned[identity], identity)
    return {"backbones": sorted(pruned), "rows": sum(pruned.values())}
