"""Embeddings: a version's 512-d vectors of the catalog's images, created, backfilled and pruned.

Every function keeps existing rows (``ignore_conflicts``, one row per image and version by a
unique constraint), so a redelivered task or a second run changes nothing.
"""

from __future__ import annotations

import logging
from itertools import batched

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from recommender import db, runtime
from recommender.conf import config
from recommender.models import Embedding, ModelVersion
from recommender.selectors.experiments import experiment_candidate_ids
from recommender.selectors.features import features_load, images_missing_embedding
from recommender.publishing import neighbours_publish
from recommender.services.neighbours import neighbours_delete

logger = logging.getLogger(__name__)

EMBED_CHUNK = 2048  # images per head pass: 2048 x 2048 float32 features = 16 MB read at a time


def embeddings_create(*, version: ModelVersion, image_ids, progress=None, refresh_lists: bool = True) -> int:
    """Embed images with a version's head (batched) and store them; existing rows are kept.
    ``progress(n)`` is called after each chunk of ``n`` images. ``refresh_lists``: ask for the
    version's neighbour lists to take the new rows in, after commit (a training builds its own)."""
    image_ids = list(image_ids)
    if not image_ids:
        return 0  # and no Keras import
    head = runtime.load_head(version)
    created = 0
    for chunk in batched(image_ids, EMBED_CHUNK):
        ids, products, _, features = features_load(backbone=version.backbone, image_ids=chunk, active_only=False)
        if not ids:
            continue
        vectors = head.embed(features)
        proba = head.predict_proba(features)
        classes = head.classes
        db.bulk_insert_binary(
            [Embedding(image_id=i, product_id=p, version=version, vector=v,
                       predicted=classes[int(pr.argmax())], confidence=float(pr.max()))
             for i, p, v, pr in zip(ids, products, vectors, proba)])
        created += len(ids)
        if progress:
            progress(len(ids))
    if created and refresh_lists:
        # The product panel's precomputed lists take the new rows in (in the background: until
        # then the read path scans them, or the index answers).
        transaction.on_commit(lambda: neighbours_publish(version_id=version.pk))
    return created


def embeddings_backfill(*, version_id: int) -> int:
    """Embed the images an active version, or the running experiment's candidate, lacks
    (idempotent: existing embeddings are kept)."""
    serving = Q(status=ModelVersion.Status.ACTIVE) | Q(pk__in=experiment_candidate_ids())
    version = ModelVersion.objects.filter(serving, pk=version_id).first()
    if version is None:
        return 0
    created = embeddings_create(version=version, image_ids=images_missing_embedding(version=version))
    if "embeddings_pruned" in (version.metrics or {}) and not images_missing_embedding(version=version, limit=1):
        ModelVersion.objects.filter(pk=version.pk).update(
            metrics={k: v for k, v in version.metrics.items() if k != "embeddings_pruned"})
    return created


def _prunable_version_ids(keep_retired: int) -> list[int]:
    # Activations are sequential, so the retired version activated last is the one retired last.
    retired = list(ModelVersion.objects.filter(status=ModelVersion.Status.RETIRED)
                   .order_by(F("activated_at").desc(nulls_last=True), "-pk").values_list("pk", flat=True))
    failed = ModelVersion.objects.filter(status=ModelVersion.Status.FAILED).values_list("pk", flat=True)
    return sorted((set(retired[max(keep_retired, 0):]) | set(failed)) - experiment_candidate_ids())


def _version_embeddings_delete(version_id: int, batch_size: int) -> int:
    total = 0
    while True:
        with transaction.atomic():
            # Re-checked in each batch: a version activated meanwhile is not pruned further. The row
            # lock orders this batch against model_version_activate's (which locks the same row): an
            # activation sees the rows gone and has the missing ones re-embedded.
            if not list(ModelVersion.objects.select_for_update().filter(pk=version_id, status__in=[
                    ModelVersion.Status.RETIRED, ModelVersion.Status.FAILED]).values_list("pk", flat=True)):
                return total
            neighbours_delete(version_id=version_id)  # lists of rows about to go (a no-op after the first batch)
            batch = Embedding.objects.filter(version_id=version_id).values("pk")[:batch_size]
            deleted, _ = Embedding.objects.filter(pk__in=batch).delete()
        total += deleted
        if deleted < batch_size:
            return total


def embeddings_prune(*, keep_retired: int | None = None, batch_size: int = 20_000) -> dict:
    """Delete the embeddings no one is served from: failed versions' and those of retired versions
    older than the ``keep_retired`` most recently served ones (RECOMMENDER_KEEP_RETIRED_EMBEDDINGS).

    Every version's rows share the one HNSW index, so a version kept forever makes each query read
    past its rows (the iterative scan goes further for the same k) and grows the table by one 512-d
    vector per image per retraining. The head files stay: activating a pruned version again works
    and a worker re-embeds its images (model_version_activate publishes that). Deleted in batches
    so no statement holds its locks for long; safe to run twice."""
    keep_retired = config().keep_retired_embeddings if keep_retired is None else keep_retired
    pruned: dict[int, int] = {}
    for version_id in _prunable_version_ids(keep_retired):
        total = _version_embeddings_delete(version_id, batch_size)
        if total:
            version = ModelVersion.objects.get(pk=version_id)
            version.metrics = {**(version.metrics or {}), "embeddings_pruned": {
                "at": timezone.now().isoformat(timespec="seconds"), "rows": total}}
            version.save(update_fields=["metrics"])
            pruned[version_id] = total
            logger.info("pruned %s embeddings of v%s (%s)", total, version_id, version.status)
    return {"versions": sorted(pruned), "rows": sum(pruned.values())}
