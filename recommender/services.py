"""Writes of the recommender: ingestion, training, activation, evaluation and recovery.

The status columns are the truth about background work (Saleor style): ``ProductImage.status``
for ingestion and ``ModelVersion.status``/``progress`` for training. Every function here is safe
to run twice with the same arguments: a second delivery of a task changes nothing.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from catalog.models import ProductImage
from recommender import db, runtime
from recommender.models import BackboneFeature, Embedding, ModelVersion

logger = logging.getLogger(__name__)
Status = ProductImage.Status


def _chunks(items, size):
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --------------------------------------------------------------------------- enqueueing


def images_enqueue(*, image_ids, countdown: float = 0) -> int:
    """Publish ingestion tasks in chunks. A broker outage is logged, not raised: the rows stay
    pending and ``recover_lost_work`` publishes them once the broker is back."""
    from recommender.tasks import process_images

    sent = 0
    for chunk in _chunks(sorted(set(image_ids)), runtime.conf("INGEST_CHUNK")):
        try:
            process_images.apply_async(args=[chunk], countdown=countdown, retry=False)
            sent += len(chunk)
        except Exception as exc:  # kombu raises several types for an unreachable broker
            logger.warning("broker unavailable (%s); %d images stay pending for the periodic recovery",
                           exc, len(chunk))
    return sent


def _publish_training(version_id: int) -> None:
    from recommender.tasks import train_model_version

    try:
        train_model_version.apply_async(args=[version_id], retry=False)
    except Exception as exc:
        logger.warning("broker unavailable (%s); training v%s will be picked up by the recovery", exc, version_id)


# --------------------------------------------------------------------------- ingestion


def _claim(image_ids, token: str) -> list[int]:
    """Move claimable images to processing under ``token``; give up on those over the limit.

    Claimable: pending; processing under the same token (a redelivery of the same task after a
    worker died); processing for longer than STALE_SECONDS (a lost task). Rows locked by another
    worker are skipped (two workers on one image process it once).

    A batch that holds rows a previous run left in processing (its worker died: perhaps one of
    these images crashes the process) is split: every row goes back to pending, keeping the
    attempt that run cost, and each is sent as its own task, so that an image that kills its
    worker uses up only its own attempts and the others are processed."""
    now = timezone.now()
    stale = now - timedelta(seconds=runtime.conf("STALE_SECONDS"))
    max_attempts = runtime.conf("MAX_ATTEMPTS")
    with transaction.atomic():
        rows = list(
            ProductImage.objects.select_for_update(skip_locked=True)
            .filter(id__in=image_ids)
            .filter(Q(status=Status.PENDING)
                    | Q(status=Status.PROCESSING, processing_token=token)
                    | Q(status=Status.PROCESSING, status_changed_at__lt=stale))
            .only("id", "status", "attempts", "last_error")
        )
        exhausted = [r.id for r in rows if r.attempts >= max_attempts]
        claimed = [r.id for r in rows if r.attempts < max_attempts]
        for row in rows:
            if row.id in exhausted:
                ProductImage.objects.filter(id=row.id).update(
                    status=Status.FAILED, status_changed_at=now, processing_token="",
                    last_error=f"Gave up after {row.attempts} attempts. Last error: {row.last_error or 'worker lost'}")
        interrupted = any(r.status == Status.PROCESSING for r in rows if r.id in claimed)
        if interrupted and len(claimed) > 1:
            ProductImage.objects.filter(id__in=claimed).update(
                status=Status.PENDING, processing_token="", status_changed_at=now,
                last_error="A worker was lost while processing this image's batch; retried on its own.")
            transaction.on_commit(lambda: [images_enqueue(image_ids=[i]) for i in claimed])
            return []
        ProductImage.objects.filter(id__in=claimed).update(
            status=Status.PROCESSING, attempts=F("attempts") + 1, processing_token=token, status_changed_at=now)
    return claimed


def _open_picture(image: ProductImage):
    from PIL import Image

    with image.image.open("rb") as handle:
        picture = Image.open(handle)
        picture.load()
    return picture


def images_process(*, image_ids, token: str) -> dict:
    """Extract features (batched), make thumbnails, embed with the active version, mark ready."""
    claimed = _claim(image_ids, token)
    if not claimed:
        return {"claimed": 0}
    spec = runtime.backbone_spec()
    identity = spec.identity
    images = {img.id: img for img in ProductImage.objects.filter(id__in=claimed)}
    have = set(BackboneFeature.objects.filter(image_id__in=claimed, backbone=identity)
               .values_list("image_id", flat=True))
    pictures, errors = {}, {}
    for image_id, image in images.items():
        if image_id in have and image.thumbnails:
            continue
        try:
            pictures[image_id] = _open_picture(image)
        except Exception as exc:  # damaged file, missing file, decoder error
            errors[image_id] = f"Could not decode the image: {type(exc).__name__}: {exc}"

    need = [i for i in pictures if i not in have]
    if need:
        try:
            features = runtime.backbone().extract([pictures[i] for i in need])
        except Exception as exc:  # weights that cannot be loaded, out of memory...: said on every image
            logger.exception("feature extraction failed for %d images", len(need))
            for image_id in need:
                errors[image_id] = f"Feature extraction failed: {type(exc).__name__}: {exc}"
                pictures.pop(image_id)
        else:
            BackboneFeature.objects.bulk_create(
                [BackboneFeature(image_id=i, backbone=identity, vector=f) for i, f in zip(need, features)],
                ignore_conflicts=True)

    from django.conf import settings

    from catalog.thumbnails import thumbnails_create

    for image_id, picture in pictures.items():
        image = images[image_id]
        if not image.thumbnails:
            thumbs = thumbnails_create(image_field=image.image, picture=picture, sizes=settings.THUMBNAIL_SIZES)
            ProductImage.objects.filter(id=image_id).update(thumbnails=thumbs)

    ok = [i for i in claimed if i not in errors]
    active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
    if active and ok:
        if active.backbone == identity:
            try:
                embeddings_create(version=active, image_ids=ok)
            except DatabaseError:
                raise  # the task retries these with backoff
            except Exception as exc:  # the version's files are missing or damaged
                logger.exception("embedding with v%s failed", active.pk)
                for image_id in ok:
                    errors[image_id] = f"Embedding with model v{active.pk} failed: {type(exc).__name__}: {exc}"
                ok = []
        else:
            logger.warning("active v%s uses backbone %s but workers extract %s; retrain to serve these images",
                           active.pk, active.backbone, identity)

    now = timezone.now()
    ProductImage.objects.filter(id__in=ok, processing_token=token).update(
        status=Status.READY, last_error="", processing_token="", status_changed_at=now)
    retry = []
    for image_id, message in errors.items():
        attempts = images[image_id].attempts  # loaded after the claim counted this attempt
        final = attempts >= runtime.conf("MAX_ATTEMPTS")
        ProductImage.objects.filter(id=image_id, processing_token=token).update(
            status=Status.FAILED if final else Status.PENDING, last_error=message,
            processing_token="", status_changed_at=now)
        if not final:
            retry.append((image_id, attempts))
    for image_id, attempts in retry:  # exponential backoff for per-image errors
        transaction.on_commit(lambda i=image_id, a=attempts: images_enqueue(image_ids=[i], countdown=2 ** a))
    return {"claimed": len(claimed), "ready": len(ok), "errors": len(errors), "extracted": len(need)}


def images_retry(*, image_ids) -> int:
    """Staff action: give failed images a fresh set of attempts."""
    ids = list(ProductImage.objects.filter(id__in=image_ids, status=Status.FAILED).values_list("id", flat=True))
    ProductImage.objects.filter(id__in=ids).update(status=Status.PENDING, attempts=0, last_error="",
                                                   status_changed_at=timezone.now())
    transaction.on_commit(lambda: images_enqueue(image_ids=ids))
    return len(ids)


# --------------------------------------------------------------------------- embeddings


def _load_features(backbone: str, image_ids=None, *, ready_only=True):
    """(image_ids, product_ids, category names, features matrix) for a backbone identity, read in
    binary (see :func:`recommender.db.fetch_binary`)."""
    sql = """SELECT f.image_id, i.product_id, c.name, f.vector
             FROM recommender_backbonefeature f
             JOIN catalog_productimage i ON i.id = f.image_id
             JOIN catalog_product p ON p.id = i.product_id
             JOIN catalog_category c ON c.id = p.category_id
             WHERE f.backbone = %s"""
    params: list = [backbone]
    if image_ids is not None:
        sql += " AND f.image_id = ANY(%s)"
        params.append(list(image_ids))
    if ready_only:
        sql += " AND p.is_active"
    sql += " ORDER BY f.image_id"
    rows = db.fetch_binary(sql, params)
    if not rows:
        return [], [], [], np.empty((0, 2048), np.float32)
    ids, products, labels, vectors = zip(*rows)
    return list(ids), list(products), list(labels), db.to_matrix(vectors, 2048)


def embeddings_create(*, version: ModelVersion, image_ids, progress=None) -> int:
    """Embed images with a version's head (batched) and store them; existing rows are kept."""
    image_ids = list(image_ids)
    if not image_ids:
        return 0  # and no Keras import
    head = runtime.load_head(version)
    created = 0
    for chunk in _chunks(image_ids, 2048):
        ids, products, _, features = _load_features(version.backbone, chunk, ready_only=False)
        if not ids:
            continue
        vectors = head.embed(features)
        proba = head.predict_proba(features)
        classes = head.classes
        Embedding.objects.bulk_create(
            [Embedding(image_id=i, product_id=p, version=version, vector=v,
                       predicted=classes[int(pr.argmax())], confidence=float(pr.max()))
             for i, p, v, pr in zip(ids, products, vectors, proba)],
            ignore_conflicts=True, batch_size=500)
        created += len(ids)
        if progress:
            progress(len(ids))
    return created


def _missing_embedding_ids(version: ModelVersion, limit: int | None = None, ready_only=False) -> list[int]:
    qs = BackboneFeature.objects.filter(backbone=version.backbone)
    if ready_only:  # not those a running ingestion task is about to embed
        qs = qs.filter(image__status=Status.READY)
    qs = qs.exclude(image__embeddings__version=version).values_list("image_id", flat=True)
    return list(qs[:limit] if limit else qs)


# --------------------------------------------------------------------------- training


def model_version_start(*, trigger: str = "manual", publish: bool = True) -> ModelVersion:
    """Create a version in 'training' and enqueue its training after commit (``publish=False``:
    the caller trains it itself). One at a time: when a training is already running, that version
    is returned."""
    spec = runtime.backbone_spec()
    try:
        with transaction.atomic():
            version = ModelVersion.objects.create(
                status=ModelVersion.Status.TRAINING, backbone=spec.identity, weights=spec.weights,
                input_size=spec.input_size, hyperparameters=asdict(runtime.head_config()), trigger=trigger,
                progress={"phase": "queued"}, heartbeat_at=timezone.now())
            if publish:
                transaction.on_commit(lambda: _publish_training(version.pk))
    except IntegrityError:
        return ModelVersion.objects.get(status=ModelVersion.Status.TRAINING)
    return version


def _progress(version: ModelVersion, **progress) -> None:
    version.progress = {**version.progress, **progress}
    version.heartbeat_at = timezone.now()
    ModelVersion.objects.filter(pk=version.pk).update(progress=version.progress, heartbeat_at=version.heartbeat_at)


def _epoch_callback(version: ModelVersion, epochs: int):
    import keras

    class Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            done = epoch + 1
            elapsed = time.monotonic() - self.started
            _progress(version, phase="training", epoch=done, epochs=epochs,
                      accuracy=round(float(logs.get("accuracy", 0)), 4),
                      val_accuracy=round(float(logs.get("val_accuracy", 0)), 4),
                      loss=round(float(logs.get("loss", 0)), 4),
                      eta_seconds=round(elapsed / done * (epochs - done), 1))

    return Progress()


# Session-level advisory locks (namespace, version id): held by the process that trains a version
# for as long as it runs, and released by PostgreSQL when that process's connection dies. So
# "is a training of v<id> alive?" has an exact answer, unlike a heartbeat.
_TRAINING_LOCK_NAMESPACE = 0x4C4B


def _training_lock(version_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_TRAINING_LOCK_NAMESPACE, version_id])
        return bool(cursor.fetchone()[0])


def _training_unlock(version_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_TRAINING_LOCK_NAMESPACE, version_id])


def training_alive(version_id: int) -> bool:
    """Whether some process is training this version right now."""
    if _training_lock(version_id):
        _training_unlock(version_id)
        return False
    return True


def model_version_train(*, version_id: int) -> ModelVersion:
    """Train, persist, embed, evaluate and (if it passes the gate) activate a version.

    Idempotent: a second delivery while the first runs (the broker's visibility timeout, two
    workers) finds the training lock taken and does nothing; a delivery after it finished finds it
    no longer training. A redelivery after the worker that trained it died marks it failed: the
    version is not retried in a loop (an out-of-memory kill would repeat), staff start a new one.
    Failure at any point leaves the active version serving, removes this version's files and
    embeddings, and records the reason on the row."""
    version = ModelVersion.objects.get(pk=version_id)
    if version.status != ModelVersion.Status.TRAINING:
        return version  # a second delivery after it finished: nothing to do
    if not _training_lock(version_id):
        return version  # another process is training it right now
    try:
        version.refresh_from_db()
        if version.status != ModelVersion.Status.TRAINING:
            return version
        if version.attempts:
            model_version_fail(version=version, reason=(
                f"Training was interrupted (worker lost during '{version.progress.get('phase', 'start')}'); "
                "start a new training."))
        else:
            ModelVersion.objects.filter(pk=version.pk).update(attempts=F("attempts") + 1)
            try:
                _train(version)
            except Exception as exc:
                logger.exception("training v%s failed", version.pk)
                model_version_fail(version=version, reason=f"{type(exc).__name__}: {exc}")
    finally:
        _training_unlock(version_id)
    version.refresh_from_db()
    return version


def _train(version: ModelVersion) -> None:
    from recommender.head import train_head

    now = timezone.now()
    ModelVersion.objects.filter(pk=version.pk).update(started_at=now, heartbeat_at=now, error="")
    _progress(version, phase="loading features")
    ids, _, labels, features = _load_features(version.backbone)
    if len(ids) < runtime.conf("MIN_IMAGES_TO_TRAIN"):
        raise ValueError(f"only {len(ids)} images have features for backbone {version.backbone}; "
                         f"at least {runtime.conf('MIN_IMAGES_TO_TRAIN')} are needed")
    if len(set(labels)) < 2:
        raise ValueError("training needs images in at least two categories")
    config = runtime.head_config()
    # The worker's own settings train the model: record those, not the requesting process's.
    version.hyperparameters = asdict(config)
    version.save(update_fields=["hyperparameters"])
    _progress(version, phase="training", epoch=0, epochs=config.epochs, images=len(ids))
    result = train_head(features, labels, config, callbacks=[_epoch_callback(version, config.epochs)])
    head = result.head

    _progress(version, phase="saving")
    path = runtime.artifacts_dir(version.pk)
    head.save(path, meta={"version": version.pk, "backbone": version.backbone, "weights": version.weights,
                          "input_size": version.input_size, "classes": head.classes,
                          "hyperparameters": version.hyperparameters})
    ids_arr = np.asarray(ids)
    version.artifacts = str(path)
    version.classes = head.classes
    version.n_images = len(ids)
    version.n_train = len(result.train_index)
    version.n_val = len(result.val_index)
    version.history = result.history
    version.metrics = {"holdout_image_ids": ids_arr[result.val_index].tolist(),
                       "training_seconds": round(result.seconds, 2)}
    version.save(update_fields=["artifacts", "classes", "n_images", "n_train", "n_val", "history", "metrics"])
    runtime.forget_head(version.pk)

    # Embed the whole catalog with this version (the active version keeps serving meanwhile).
    targets = [i for i in ids]
    total = len(targets)
    started = time.monotonic()
    done = 0

    def embedded(n):
        nonlocal done
        done += n
        rate = done / max(time.monotonic() - started, 1e-6)
        _progress(version, phase="embedding", images_embedded=done, images_total=total,
                  eta_seconds=round((total - done) / rate, 1))

    _progress(version, phase="embedding", images_embedded=0, images_total=total)
    embeddings_create(version=version, image_ids=targets, progress=embedded)

    _progress(version, phase="evaluating")
    model_version_evaluate(version=version)
    version.refresh_from_db()

    passed, reason = _quality_gate(version)
    updated = ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.TRAINING).update(
        status=ModelVersion.Status.READY, finished_at=timezone.now())
    version.refresh_from_db()
    if not updated:
        return  # failed meanwhile (by staff or the recovery): leave it as it is
    if not passed:
        model_version_fail(version=version, reason=f"Quality gate: {reason}")
        return
    _progress(version, phase="activating", gate=reason)
    # Images ingested while it trained were embedded by the old version only: embed them here, on
    # the worker, so that the new version serves the whole catalog from its first request.
    embeddings_create(version=version, image_ids=_missing_embedding_ids(version))
    model_version_activate(version=version)
    _progress(version, phase="done")


def model_version_fail(*, version: ModelVersion, reason: str) -> None:
    """Mark failed, drop its embeddings and files; never touches an active, retired or already
    failed version (only a training, or a ready one that has not been activated)."""
    failable = (ModelVersion.Status.TRAINING, ModelVersion.Status.READY)
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().filter(pk=version.pk).first()
        if locked is None or locked.status not in failable:
            return
        ModelVersion.objects.filter(pk=version.pk).update(
            status=ModelVersion.Status.FAILED, error=reason[:5000], finished_at=timezone.now(),
            progress={**(locked.progress or {}), "phase": "failed"})
    Embedding.objects.filter(version_id=version.pk).delete()
    path = runtime.artifacts_dir(version.pk)
    shutil.rmtree(path, ignore_errors=True)
    for leftover in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    runtime.forget_head(version.pk)


GATE_MIN_IMAGES = 30  # fewer unseen held-out images than this: too noisy, compare on all of them


def _quality_gate(version: ModelVersion) -> tuple[bool, str]:
    """Compare with the active version on held-out images that *neither* version trained on.

    This version's validation split mostly holds images the active version trained on, which
    would score the active version on its own training data. Unseen by it: its own validation
    split, and images whose features arrived after it started training."""
    active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
    if active is None:
        return True, "no active version to compare with"
    if active.backbone != version.backbone or sorted(active.classes) != sorted(version.classes):
        return True, "catalog categories or backbone changed; versions are not comparable"
    tolerance = runtime.conf("GATE_TOLERANCE")
    holdout = version.metrics.get("holdout_image_ids", [])
    trained_by_active = _training_image_ids(active, holdout)
    unseen = [i for i in holdout if i not in trained_by_active]
    if len(unseen) >= GATE_MIN_IMAGES:
        basis = f"on {len(unseen)} held-out images neither version trained on"
        mine = evaluate_head(version=version, image_ids=unseen)
        theirs = evaluate_head(version=active, image_ids=unseen)
    else:
        basis = (f"on all {len(holdout)} held-out images (only {len(unseen)} are unseen by v{active.pk}, "
                 "which favours it)")
        mine = version.metrics
        theirs = evaluate_head(version=active, image_ids=holdout)
    checks = []
    for key in ("accuracy", "precision_at_6"):
        new, old = mine.get(key), theirs.get(key)
        if new is None or old is None:
            continue
        checks.append((key, new, old, new >= old - tolerance))
    failed = [c for c in checks if not c[3]]
    summary = ", ".join(f"{k} {n:.3f} vs active {o:.3f}" for k, n, o, _ in checks) + f" ({basis})"
    if failed:
        return False, f"worse than active v{active.pk} beyond tolerance {tolerance}: {summary}"
    return True, f"passed against v{active.pk}: {summary}"


def model_version_activate(*, version: ModelVersion) -> ModelVersion:
    """Atomically make ``version`` the served one; the previous active version is retired."""
    if version.status not in (ModelVersion.Status.READY, ModelVersion.Status.RETIRED, ModelVersion.Status.ACTIVE):
        raise ValidationError(f"Only a ready or retired version can be activated (v{version.pk} is {version.status}).")
    if not version.artifacts or not Path(version.artifacts).is_dir():
        raise ValidationError(f"v{version.pk} has no model files; it cannot be activated.")
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.status == ModelVersion.Status.ACTIVE:
            return locked
        ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).update(status=ModelVersion.Status.RETIRED)
        locked.status = ModelVersion.Status.ACTIVE
        locked.activated_at = timezone.now()
        locked.save(update_fields=["status", "activated_at"])
        # Images this version has not embedded (ingested after it trained, e.g. a retired version
        # activated again) are embedded by a worker, not in this (web) request: they join its
        # similar items within moments. The periodic recovery repeats this if the broker is down.
        if _missing_embedding_ids(locked, limit=1):
            transaction.on_commit(lambda: _publish_embedding(locked.pk))
    return locked


def _publish_embedding(version_id: int) -> None:
    from recommender.tasks import embed_missing

    try:
        embed_missing.apply_async(args=[version_id], retry=False)
    except Exception as exc:
        logger.warning("broker unavailable (%s); v%s's missing embeddings wait for the recovery", exc, version_id)


def embeddings_backfill(*, version_id: int) -> int:
    """Embed the images an active version lacks (idempotent: existing embeddings are kept)."""
    version = ModelVersion.objects.filter(pk=version_id, status=ModelVersion.Status.ACTIVE).first()
    if version is None:
        return 0
    created = embeddings_create(version=version, image_ids=_missing_embedding_ids(version))
    if "embeddings_pruned" in (version.metrics or {}) and not _missing_embedding_ids(version, limit=1):
        ModelVersion.objects.filter(pk=version.pk).update(
            metrics={k: v for k, v in version.metrics.items() if k != "embeddings_pruned"})
    return created


def model_version_retire(*, version: ModelVersion) -> ModelVersion:
    if version.status not in (ModelVersion.Status.ACTIVE, ModelVersion.Status.READY):
        raise ValidationError(f"Only an active or ready version can be retired (v{version.pk} is {version.status}).")
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.RETIRED)
    version.refresh_from_db()
    return version


def embeddings_prune(*, keep_retired: int | None = None, batch_size: int = 20_000) -> dict:
    """Delete the embeddings no one is served from: failed versions' and those of retired versions
    older than the ``keep_retired`` most recently served ones (RECOMMENDER_KEEP_RETIRED_EMBEDDINGS).

    Every version's rows share the one HNSW index, so a version kept forever makes each query read
    past its rows (the iterative scan goes further for the same k) and grows the table by one 512-d
    vector per image per retraining. The head files stay: activating a pruned version again works
    and a worker re-embeds its images (model_version_activate publishes that). Deleted in batches
    so no statement holds its locks for long; safe to run twice."""
    keep_retired = runtime.conf("KEEP_RETIRED_EMBEDDINGS") if keep_retired is None else keep_retired
    # Activations are sequential, so the retired version activated last is the one retired last.
    retired = list(ModelVersion.objects.filter(status=ModelVersion.Status.RETIRED)
                   .order_by(F("activated_at").desc(nulls_last=True), "-pk").values_list("pk", flat=True))
    failed = ModelVersion.objects.filter(status=ModelVersion.Status.FAILED).values_list("pk", flat=True)
    doomed = sorted(set(retired[max(keep_retired, 0):]) | set(failed))
    pruned: dict[int, int] = {}
    for version_id in doomed:
        total = 0
        while True:
            with transaction.atomic():
                # Re-checked in each batch: a version activated meanwhile is not pruned further.
                # The row lock orders this batch against model_version_activate's (which locks the
                # same row): an activation sees the rows gone and has the missing ones re-embedded.
                if not list(ModelVersion.objects.select_for_update().filter(pk=version_id, status__in=[
                        ModelVersion.Status.RETIRED, ModelVersion.Status.FAILED]).values_list("pk", flat=True)):
                    break
                batch = Embedding.objects.filter(version_id=version_id).values("pk")[:batch_size]
                deleted, _ = Embedding.objects.filter(pk__in=batch).delete()
            total += deleted
            if deleted < batch_size:
                break
        if total:
            version = ModelVersion.objects.get(pk=version_id)
            version.metrics = {**(version.metrics or {}), "embeddings_pruned": {
                "at": timezone.now().isoformat(timespec="seconds"), "rows": total}}
            version.save(update_fields=["metrics"])
            pruned[version_id] = total
            logger.info("pruned %s embeddings of v%s (%s)", total, version_id, version.status)
    return {"versions": sorted(pruned), "rows": sum(pruned.values())}


# --------------------------------------------------------------------------- evaluation


def evaluate_head(*, version: ModelVersion, image_ids, k: int = 6) -> dict:
    """Classification and same-category retrieval of ``version`` on ``image_ids`` (queries),
    retrieving from the rest of the catalog (all other images with features)."""
    from recommender.evaluation import classification_metrics, retrieval_metrics

    head = runtime.load_head(version)
    ids, _, labels, features = _load_features(version.backbone)
    if not ids:
        return {}
    query_set = set(image_ids)
    is_query = np.array([i in query_set for i in ids])
    labels = np.asarray(labels)
    vectors = head.embed(features)
    predicted = head.predict(features[is_query]) if is_query.any() else []
    known = [c for c in head.classes]
    result = classification_metrics(labels[is_query], predicted, known)
    result.update(retrieval_metrics(vectors[is_query], labels[is_query], vectors[~is_query], labels[~is_query], k=k))
    return result


def _training_image_ids(version: ModelVersion, image_ids) -> set[int]:
    """Which of ``image_ids`` this version trained on (had features when it started, not held out)."""
    return set(BackboneFeature.objects.filter(
        backbone=version.backbone, image_id__in=list(image_ids),
        created_at__lte=version.started_at or version.created_at).values_list("image_id", flat=True)) - set(
        version.metrics.get("holdout_image_ids", []))


def model_version_evaluate(*, version: ModelVersion, image_ids=None, k: int = 6, progress=None) -> dict:
    """Evaluate on held-out images and store the results on the version, with the recall of the
    HNSW index against an exact scan.

    By default: its validation split (stored as its metrics and validation accuracy). Given
    ``image_ids`` (e.g. a new batch of products): the images it trained on are left out, and the
    result is kept under ``metrics["custom"]`` without replacing the validation figures.
    ``progress(stage, done, total)`` is called as the work advances."""
    step = progress or (lambda *a: None)
    custom = image_ids is not None
    queries = list(image_ids) if custom else list(version.metrics.get("holdout_image_ids", []))
    excluded = 0
    if custom:
        trained = _training_image_ids(version, queries)
        excluded = len([i for i in queries if i in trained])
        queries = [i for i in queries if i not in trained]
    step("classifying and retrieving", 0, 1)
    metrics = evaluate_head(version=version, image_ids=queries, k=k)
    step("classifying and retrieving", 1, 1)
    metrics["hnsw_recall_at_6"] = hnsw_recall(
        version=version, sample=queries[:100], k=k,
        progress=lambda done, total: step("index recall against an exact scan", done, total))
    metrics["evaluated_at"] = timezone.now().isoformat()
    if custom:
        metrics.update({"images": len(queries), "excluded_training_images": excluded})
        stored = {**version.metrics, "custom": metrics}
        ModelVersion.objects.filter(pk=version.pk).update(metrics=stored)
        return metrics
    metrics["holdout_image_ids"] = queries
    metrics["training_seconds"] = version.metrics.get("training_seconds")
    if "embeddings_pruned" in version.metrics:  # still true after a re-evaluation
        metrics["embeddings_pruned"] = version.metrics["embeddings_pruned"]
    ModelVersion.objects.filter(pk=version.pk).update(metrics=metrics, val_accuracy=metrics.get("accuracy"))
    return metrics


def hnsw_recall(*, version: ModelVersion, sample, k: int = 6, progress=None) -> float | None:
    """Recall@k of the index scan against an exact scan, for up to len(sample) query images."""
    from recommender.evaluation import recall_against_exact
    from recommender.selectors import nearest_images

    queries = list(Embedding.objects.filter(version=version, image_id__in=list(sample)).values_list("image_id", "vector"))
    if not queries:
        return None
    approx, exact = [], []
    for done, (image_id, vector) in enumerate(queries, 1):
        approx.append([i for i, _ in nearest_images(version=version, vector=vector, k=k, exclude_image=image_id)])
        exact.append([i for i, _ in nearest_images(version=version, vector=vector, k=k, exclude_image=image_id,
                                                   exact=True)])
        if progress:
            progress(done, len(queries))
    return recall_against_exact(approx, exact)


# --------------------------------------------------------------------------- recovery & retraining


def recover_lost_work() -> dict:
    """The periodic healer: publish work that a crash or a broker outage lost."""
    now = timezone.now()
    stale = now - timedelta(seconds=runtime.conf("STALE_SECONDS"))
    # Pending rows are published on commit, but may wait behind a long queue: only those pending
    # for longer than STALE_SECONDS count as lost (re-publishing sooner only adds no-op tasks).
    lost = list(ProductImage.objects.filter(status__in=[Status.PENDING, Status.PROCESSING],
                                            status_changed_at__lt=stale).values_list("id", flat=True)[:5000])
    if lost:
        images_enqueue(image_ids=lost)
    # Ready images that the active version has not embedded yet (ingested during a swap, or an
    # embedding task lost with the broker): embedded by a worker, without touching their status.
    active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
    unembedded = len(_missing_embedding_ids(active, limit=5000, ready_only=True)) if active else 0
    if unembedded:
        _publish_embedding(active.pk)
    dead_ids, republished = [], []
    for version in ModelVersion.objects.filter(status=ModelVersion.Status.TRAINING):
        if training_alive(version.pk):
            continue  # a long epoch, not a dead worker
        if not version.attempts and version.created_at < stale:
            # Queued but never started: the message was lost (e.g. Redis restarted). Send it again;
            # a duplicate delivery is harmless (see model_version_train).
            _publish_training(version.pk)
            republished.append(version.pk)
        elif version.attempts and version.heartbeat_at and version.heartbeat_at < now - timedelta(
                seconds=runtime.conf("TRAINING_STALE_SECONDS")):
            # Started, no process holds it, and no heartbeat: its worker died.
            model_version_fail(version=version, reason="Training stopped sending heartbeats (worker lost).")
            dead_ids.append(version.pk)
    return {"requeued": len(lost), "reembed": unembedded, "dead_trainings": dead_ids,
            "republished_trainings": republished}


def retrain_reason() -> str | None:
    """Why the catalog needs a new version, or None."""
    spec = runtime.backbone_spec()
    backlog = ProductImage.objects.filter(status__in=[Status.PENDING, Status.PROCESSING]).count()
    featured = BackboneFeature.objects.filter(backbone=spec.identity, image__product__is_active=True)
    total = featured.count()
    if backlog > 0.1 * (total + backlog):
        return None  # let ingestion drain first: a model trained now would be stale at once
    if total < runtime.conf("MIN_IMAGES_TO_TRAIN"):
        return None
    categories = set(featured.values_list("image__product__category__name", flat=True).distinct())
    if len(categories) < 2:
        return None
    active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
    if active is None:
        return "no active version"
    if active.backbone != spec.identity:
        return f"backbone changed from {active.backbone} to {spec.identity}"
    new_categories = categories - set(active.classes)
    if new_categories:
        return f"new categories: {', '.join(sorted(new_categories))}"
    share = (total - active.n_images) / total
    if share >= runtime.conf("RETRAIN_NEW_SHARE"):
        return f"{share:.0%} of the images are newer than v{active.pk}"
    max_age = runtime.conf("RETRAIN_MAX_AGE_HOURS")
    if max_age and active.activated_at and timezone.now() - active.activated_at > timedelta(hours=max_age):
        return f"scheduled: v{active.pk} is older than {max_age} h"
    return None


def retrain_if_needed(*, force_reason: str | None = None) -> ModelVersion | None:
    if ModelVersion.objects.filter(status=ModelVersion.Status.TRAINING).exists():
        return None
    reason = force_reason or retrain_reason()
    if not reason:
        return None
    return model_version_start(trigger=f"automatic: {reason}")


def ingestion_backlog() -> dict:
    counts = dict(ProductImage.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    return {s.value: counts.get(s.value, 0) for s in Status}
