"""Ingestion: a new image gets its features, thumbnails and embedding.

``ProductImage.status`` is the truth: pending -> processing (claimed under a task's token) ->
ready, or back to pending with backoff after an error, or failed after MAX_ATTEMPTS. Safe to run
twice with the same arguments: a redelivered task re-claims only what is still its own.

New images are not sent to workers by id. Whatever brought them (an upload, a bulk ZIP, an
import's chunk, the API), their commit sends one ``drain_backlog`` unless one already waits
(:func:`ingestion_wake`), and each drain claims the oldest INGEST_CHUNK fresh images itself, so
workers extract full batches however the images arrived, and a backlog of any size holds a few
messages in the broker, not one per image. A drain that leaves work behind wakes another worker.
Retries (an image that failed, or whose worker was lost) are processed one image per task: an
image that kills its worker uses up only its own attempts.

A claim is (token, attempt): every claim counts an attempt, so a redelivered task (same token)
that re-claims an image while its first run still works holds the next attempt, and the first
run's writes (thumbnails, outcome) no longer apply. Thumbnails are written under the claim's own
names and recorded only while the claim holds; otherwise the claim deletes them. An error writing
them (a full disk) is the image's error like any other: retried with backoff, then failed.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import batched

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Q, Value
from django.db.models.functions import Power
from django.utils import timezone

from catalog import duplicates, perceptual
from catalog.models import ProductImage
from recommender import db, publishing, runtime
from recommender.conf import config
from recommender.models import BackboneFeature
from recommender.backbone import BackboneSpec
from recommender.selectors.versions import active_version, serving_backbone
from recommender.services.embeddings import embeddings_create
from recommender.services.features import feature_scale_refresh, picture_open  # also imported from here

logger = logging.getLogger(__name__)
Status = ProductImage.Status


def ingestion_wake() -> bool:
    """New pending images (or a recovered backlog): make sure a drain is on its way."""
    return publishing.drain_publish()


def images_enqueue(*, image_ids, countdown: float = 0) -> int:
    """Publish ingestion tasks in chunks of INGEST_CHUNK; returns how many images were sent. A
    broker outage leaves the rows pending for the periodic recovery."""
    sent = 0
    for chunk in batched(sorted(set(image_ids)), config().ingest_chunk):
        if publishing.images_publish(image_ids=list(chunk), countdown=countdown):
            sent += len(chunk)
    return sent


def images_claim(*, image_ids, token: str) -> list[int]:
    """Move claimable images to processing under ``token``; give up on those over the limit.

    Claimable: pending; processing under the same token (a redelivery of the same task after a
    worker died); processing for longer than STALE_SECONDS (a lost task). Rows locked by another
    worker are skipped (two workers on one image process it once).

    A batch that holds rows a previous run left in processing (its worker died: perhaps one of
    these images crashes the process) is split: every row goes back to pending, keeping the
    attempt that run cost, and each is sent as its own task, so that an image that kills its
    worker uses up only its own attempts and the others are processed."""
    now = timezone.now()
    stale = now - timedelta(seconds=config().stale_seconds)
    max_attempts = config().max_attempts
    with transaction.atomic():
        rows = list(
            ProductImage.objects.select_for_update(skip_locked=True)
            .filter(id__in=image_ids)
            .filter(Q(status=Status.PENDING)
                    | Q(status=Status.PROCESSING, processing_token=token)
                    | Q(status=Status.PROCESSING, status_changed_at__lt=stale))
            .only("id", "status", "attempts", "last_error")
        )
        claimed = [r.id for r in rows if r.attempts < max_attempts]
        for row in rows:
            if row.attempts >= max_attempts:
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


@dataclass
class _Batch:
    """The claimed images of one task as they go through the steps of :func:`images_process`."""

    images: dict[int, ProductImage]
    spec: BackboneSpec  # the serving backbone (selectors.versions.serving_backbone)
    identity: str
    have: set[int]  # images that already have features of this backbone
    pictures: dict = field(default_factory=dict)  # image id -> decoded PIL image
    errors: dict[int, str] = field(default_factory=dict)  # image id -> what went wrong
    extracted: int = 0
    hashed: dict = field(default_factory=dict)  # image id -> (perceptual hash, mirror hash)

    def fail(self, image_ids, message: str) -> None:
        for image_id in image_ids:
            self.errors[image_id] = message
            self.pictures.pop(image_id, None)

    def drop(self, image_id) -> None:
        """The image is no longer this claim's (re-claimed, or deleted): nothing more is written."""
        self.images.pop(image_id)
        self.pictures.pop(image_id, None)
        self.errors.pop(image_id, None)

    def own(self, image_ids, token: str):
        """The rows of ``image_ids`` still held by this claim: the token and the attempt it counted."""
        by_attempt: dict[int, list[int]] = {}
        for image_id in image_ids:
            by_attempt.setdefault(self.images[image_id].attempts, []).append(image_id)
        held = Q(pk__in=[])
        for attempts, ids in by_attempt.items():
            held |= Q(id__in=ids, attempts=attempts)
        return ProductImage.objects.filter(held, status=Status.PROCESSING, processing_token=token)

    @property
    def ok(self) -> list[int]:
        return [i for i in self.images if i not in self.errors]


def _pictures_open(batch: _Batch) -> None:
    """Decode what still needs features or thumbnails (a redelivery skips finished images)."""
    for image_id, image in batch.images.items():
        if image_id in batch.have and image.thumbnails and image.perceptual_hash is not None:
            continue
        try:
            batch.pictures[image_id] = picture_open(image)
        except Exception as exc:  # damaged file, missing file, decoder error
            batch.fail([image_id], f"Could not decode the image: {type(exc).__name__}: {exc}")


def _features_extract(batch: _Batch) -> None:
    """One batched pass of the backbone over the images that lack features."""
    need = [i for i in batch.pictures if i not in batch.have]
    if not need:
        return
    batch.extracted = len(need)
    try:
        features = runtime.backbone_of(batch.spec).extract([batch.pictures[i] for i in need])
    except Exception as exc:  # weights that cannot be loaded, out of memory...: said on every image
        logger.exception("feature extraction failed for %d images", len(need))
        batch.fail(need, f"Feature extraction failed: {type(exc).__name__}: {exc}")
        return
    db.bulk_insert_binary([BackboneFeature(image_id=i, backbone=batch.identity, vector=f)
                           for i, f in zip(need, features)])
    feature_scale_refresh(backbone=batch.identity)  # the cold start's scaler, when these moved it


def _hashes_make(batch: _Batch) -> None:
    """The perceptual hashes near-duplicate detection compares (~0.4 ms a picture), written with
    the thumbnails (one UPDATE of the rows, not two: each is a new row version in every index)."""
    for image_id, picture in batch.pictures.items():
        if batch.images[image_id].perceptual_hash is None:
            try:
                batch.hashed[image_id] = perceptual.hashes(picture)  # None: a flat picture
            except Exception as exc:  # a decoder quirk must not cost the image its place in search
                logger.warning("image %s could not be hashed: %s", image_id, exc)


def _hashes_rest_record(batch: _Batch, written: set[int]) -> None:
    """The hashes of images whose thumbnails were made earlier (a redelivery; harmless if lost)."""
    duplicates.image_hashes_record(hashes={i: h for i, h in batch.hashed.items() if i not in written})


def _duplicates_check(batch: _Batch) -> None:
    """Pair the ready images with near-duplicates (catalog.duplicates); an error leaves them to the recovery."""
    try:
        duplicates.duplicates_detect(image_ids=batch.ok)
    except DatabaseError as exc:
        logger.warning("duplicate detection of %d image(s) deferred to the recovery: %s", len(batch.ok), exc)


def _thumbnails_make(batch: _Batch, token: str) -> None:
    from catalog.thumbnails import thumbnails_delete

    made: dict[int, dict[str, str]] = {}
    try:
        _thumbnails_write(batch, made)
        recorded = _thumbnails_record(batch, token, made)
        _hashes_rest_record(batch, recorded)
    except DatabaseError:  # the task retries with backoff: nothing of this claim is kept
        for image_id, thumbs in made.items():
            thumbnails_delete(storage=batch.images[image_id].image.storage, names=thumbs.values())
        raise
    for image_id in made.keys() - recorded:
        logger.info("image %s was claimed again while its thumbnails were written; its files removed", image_id)
        thumbnails_delete(storage=batch.images[image_id].image.storage, names=made[image_id].values())
        batch.drop(image_id)


def _thumbnails_write(batch: _Batch, made: dict[int, dict[str, str]]) -> None:
    """Write the thumbnails of the batch's pictures that have none, into ``made`` as they are
    written (so that a caller can remove them); a storage error is that image's error."""
    from catalog.thumbnails import thumbnail_names, thumbnails_create, thumbnails_delete

    for image_id, picture in list(batch.pictures.items()):
        image = batch.images[image_id]
        if image.thumbnails:
            continue
        storage, sizes = image.image.storage, settings.THUMBNAIL_SIZES
        # Earlier claims' files were never recorded (a recorded set is skipped above): a worker
        # that died after writing them left them behind.
        thumbnails_delete(storage=storage, names=[
            name for claim in range(1, image.attempts)
            for name in thumbnail_names(image_field=image.image, source=picture.size, sizes=sizes, claim=claim)])
        try:
            made[image_id] = thumbnails_create(image_field=image.image, picture=picture, sizes=sizes,
                                               claim=image.attempts)
        except DatabaseError:
            raise  # a storage backed by the database: the task retries with backoff
        except Exception as exc:  # disk full, permissions, storage unreachable: nothing was kept
            logger.warning("thumbnails of image %s could not be written: %s", image_id, exc)
            batch.fail([image_id], f"Could not write the thumbnails: {type(exc).__name__}: {exc}")


def _thumbnails_record(batch: _Batch, token: str, made: dict[int, dict[str, str]]) -> set[int]:
    """Record the thumbnails (and perceptual hashes) of the images this claim still holds, in one
    UPDATE (one per image was a tenth of a 64 px batch's time); returns the ids recorded."""
    if not made:
        return set()
    table = connection.ops.quote_name(ProductImage._meta.db_table)
    values = ", ".join(["(%s, %s, %s::jsonb, %s::bit(256), %s::bit(256))"] * len(made))
    params = [p for image_id, thumbs in made.items()
              for p in (image_id, batch.images[image_id].attempts, json.dumps(thumbs),
                        *(batch.hashed.get(image_id) or (None, None)))]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS i SET thumbnails = made.thumbs, perceptual_hash = coalesce(made.h, i.perceptual_hash), "
            "mirror_hash = coalesce(made.m, i.mirror_hash) "
            f"FROM (VALUES {values}) AS made(id, attempts, thumbs, h, m) "
            "WHERE i.id = made.id AND i.attempts = made.attempts AND i.status = %s AND i.processing_token = %s "
            "RETURNING i.id", params + [Status.PROCESSING, token])
        return {image_id for (image_id,) in cursor.fetchall()}


def _embed_with_active(batch: _Batch) -> None:
    """Embed with the served version, so the images join similar items as soon as they are ready."""
    active, ok = active_version(), batch.ok
    if not active or not ok:
        return
    if active.backbone != batch.identity:
        logger.warning("active v%s uses backbone %s but workers extract %s; retrain to serve these images",
                       active.pk, active.backbone, batch.identity)
        return
    try:
        embeddings_create(version=active, image_ids=ok)
    except DatabaseError:
        raise  # the task retries these with backoff
    except Exception as exc:  # the version's files are missing or damaged
        logger.exception("embedding with v%s failed", active.pk)
        batch.fail(ok, f"Embedding with model v{active.pk} failed: {type(exc).__name__}: {exc}")


def _outcome_record(batch: _Batch, token: str) -> None:
    """Ready, or pending again with exponential backoff, or failed after the last attempt."""
    now = timezone.now()
    batch.own(batch.ok, token).update(status=Status.READY, last_error="", processing_token="", status_changed_at=now)
    for image_id, message in batch.errors.items():
        attempts = batch.images[image_id].attempts  # loaded after the claim counted this attempt
        final = attempts >= config().max_attempts
        updated = batch.own([image_id], token).update(
            status=Status.FAILED if final else Status.PENDING, last_error=message,
            processing_token="", status_changed_at=now)
        if updated and not final:
            transaction.on_commit(lambda i=image_id, a=attempts: images_enqueue(image_ids=[i], countdown=2 ** a))


def images_process(*, image_ids, token: str) -> dict:
    """Claim, decode, extract features (one batch), make thumbnails, embed with the active version,
    record the outcome."""
    return _claimed_process(claimed=images_claim(image_ids=image_ids, token=token), token=token)


def _retry_due_claim(*, token: str, now) -> list[int] | None:
    """One image due for another attempt, claimed on its own (None: there is none): pending after
    an error whose backoff (2**attempts s) is over, or processing under a claim gone stale (its
    task was lost without a redelivery). A drain takes these first."""
    stale = now - timedelta(seconds=config().stale_seconds)
    due_at = ExpressionWrapper(F("status_changed_at") + Value(timedelta(seconds=1)) * Power(2, F("attempts")),
                               output_field=DateTimeField())
    with transaction.atomic():
        row = (ProductImage.objects.select_for_update(skip_locked=True).alias(due_at=due_at)
               .filter(Q(status=Status.PENDING, attempts__gt=0, due_at__lte=now)
                       | Q(status=Status.PROCESSING, status_changed_at__lt=stale))
               .order_by("status_changed_at").values_list("id", flat=True).first())
    return None if row is None else images_claim(image_ids=[row], token=token)


def _fresh_claim(*, token: str, limit: int, now) -> list[int]:
    """Up to ``limit`` never-tried pending images, oldest first, skipping rows another drain holds."""
    with transaction.atomic():
        ids = list(ProductImage.objects.select_for_update(skip_locked=True)
                   .filter(status=Status.PENDING, attempts=0).order_by("id").values_list("id", flat=True)[:limit])
        ProductImage.objects.filter(id__in=ids).update(
            status=Status.PROCESSING, attempts=F("attempts") + 1, processing_token=token, status_changed_at=now)
    return ids


def backlog_waiting(*, now=None) -> bool:
    """Is there work a drain would claim now?"""
    now = now or timezone.now()
    stale = now - timedelta(seconds=config().stale_seconds)
    return ProductImage.objects.filter(
        Q(status=Status.PENDING) | Q(status=Status.PROCESSING, status_changed_at__lt=stale)).exists()


def images_drain(*, token: str, eager: bool = False) -> dict:
    """One batch of the backlog (the ``drain_backlog`` task): this task's own rows when it is a
    redelivery, else one image due for a retry, else the oldest INGEST_CHUNK fresh images, waiting
    INGEST_LINGER_MS once for a short batch to fill. Work left behind wakes another drain before
    this one starts extracting; eagerly (no broker), the drain loops until the backlog is empty."""
    publishing.drain_taken()
    totals: dict = {"claimed": 0}
    for round_ in itertools.count():
        # Eagerly, each batch under a token of its own (a token names one claim).
        batch_token = f"{token[:56]}-{round_}" if round_ else token
        claimed = _drain_claim(token=batch_token, eager=eager)
        if not claimed:
            return totals
        if not eager and backlog_waiting():
            ingestion_wake()
        result = _claimed_process(claimed=claimed, token=batch_token)
        totals = {key: totals.get(key, 0) + value for key, value in result.items()}
        if not eager:
            return totals


def _drain_claim(*, token: str, eager: bool) -> list[int]:
    own = list(ProductImage.objects.filter(status=Status.PROCESSING, processing_token=token)
               .values_list("id", flat=True))
    if own:  # a redelivery: this task's worker died mid-batch (images_claim splits the batch)
        return images_claim(image_ids=own, token=token)
    now = timezone.now()
    while (retry := _retry_due_claim(token=token, now=now)) is not None:
        if retry:
            return retry
        # [] : that image was over its attempts and is now failed; look for the next one
    chunk = config().ingest_chunk
    claimed = _fresh_claim(token=token, limit=chunk, now=now)
    linger = config().ingest_linger_ms / 1000
    if claimed and len(claimed) < chunk and linger and not eager:
        # A lone upload pays this once; images arriving one commit at a time (API clients, an
        # importer without chunks) are extracted together instead of one by one.
        time.sleep(linger)
        claimed += _fresh_claim(token=token, limit=chunk - len(claimed), now=timezone.now())
    return claimed


def _claimed_process(*, claimed: list[int], token: str) -> dict:
    if not claimed:
        return {"claimed": 0}
    spec, identity = serving_backbone()  # one read: an activation meanwhile cannot mix two backbones
    batch = _Batch(images={img.id: img for img in ProductImage.objects.filter(id__in=claimed)}, spec=spec,
                   identity=identity,
                   have=set(BackboneFeature.objects.filter(image_id__in=claimed, backbone=identity)
                            .values_list("image_id", flat=True)))
    _pictures_open(batch)
    _features_extract(batch)
    _hashes_make(batch)
    _thumbnails_make(batch, token)
    _embed_with_active(batch)
    _outcome_record(batch, token)
    _duplicates_check(batch)
    return {"claimed": len(claimed), "ready": len(batch.ok), "errors": len(batch.errors),
            "extracted": batch.extracted}


def images_retry(*, image_ids) -> int:
    """Staff action: give failed images a fresh set of attempts."""
    ids = list(ProductImage.objects.filter(id__in=image_ids, status=Status.FAILED).values_list("id", flat=True))
    ProductImage.objects.filter(id__in=ids).update(status=Status.PENDING, attempts=0, last_error="",
                                                   status_changed_at=timezone.now())
    transaction.on_commit(ingestion_wake)
    return len(ids)
