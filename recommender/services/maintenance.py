"""The periodic healers (Celery beat): publish work that a crash or a broker outage lost, finish
trainings a lost worker left behind, and start a retraining when the catalog has moved on. Both
are safe to run at any time, any number of times: they publish idempotent tasks (the ingestion
drain at most once per STALE_SECONDS), change only versions no live process holds (under the
transitions' own locks), or start a version under the one-training constraint.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from django.core.cache import cache
from django.db import DatabaseError, connection
from django.utils import timezone

from catalog import duplicates
from catalog.downloads import downloads_due, downloads_resent
from catalog.models import ProductImage
from recommender import artifacts, db, publishing, runtime
from recommender.conf import config
from recommender.locks import training_alive, vector_index_lock
from recommender.models import ModelVersion
from recommender.selectors.experiments import experiment_candidate_ids
from recommender.selectors.features import images_missing_embedding, images_missing_features
from recommender.selectors.versions import active_version, retrain_reason, serving_backbone, training_version
from recommender.services.experiments import experiments_heal
from recommender.services.features import feature_scale_refresh, features_enqueue
from recommender.services.ingestion import ingestion_wake
from recommender.services.training import model_version_fail, model_version_finish, model_version_start

logger = logging.getLogger(__name__)
Status = ProductImage.Status
RECOVER_BATCH = 5000  # rows looked at per run: a long outage is healed over several runs


# The recovery's own record that it sent a drain for the stale backlog (SET NX, STALE_SECONDS):
# the drain's flag (publishing.DRAIN_FLAG_SECONDS, 15 s) has expired by the next run (every 60 s,
# 30 s in the demo), so without this record every run sent one more drain while the first still
# waited in a busy queue: one per run for as long as the backlog lasted.
RECOVERY_DRAIN_FLAG = "recommender:recovery-drain-sent"


def _lost_images_requeue(stale) -> int:
    # Images untouched for STALE_SECONDS (pending, or processing under a lost claim): their wake-up
    # may have been lost with the broker. One drain is sent, never one message per image: it
    # claims them itself (and wakes more drains while work is left), and at most one per stale
    # period (RECOVERY_DRAIN_FLAG), so a backlog of any size, waiting however long, costs the
    # queue one message per STALE_SECONDS.
    lost = ProductImage.objects.filter(status__in=[Status.PENDING, Status.PROCESSING],
                                       status_changed_at__lt=stale)[:RECOVER_BATCH].count()
    if lost and _first_republish_this_period() and not ingestion_wake():
        _republish_forget()  # not sent (the broker is down): the next run tries again
    return lost


def _first_republish_this_period() -> bool:
    try:
        return cache.add(RECOVERY_DRAIN_FLAG, 1, max(config().stale_seconds, 1))
    except Exception as exc:  # the cache is the broker's Redis: a drain sent now is lost or harmless
        logger.warning("cache unavailable (%s); sending the recovery's drain unrecorded", exc)
        return True


def _republish_forget() -> None:
    try:
        cache.delete(RECOVERY_DRAIN_FLAG)
    except Exception as exc:
        logger.warning("cache unavailable (%s); the recovery's drain flag stays", exc)


def _lost_downloads_publish(stale) -> int:
    # Pictures to download whose task was lost (pending since before the stale time, or claimed by
    # a worker that died) or whose retry is due (catalog.downloads: the backoff's next_attempt_at).
    # Sending one twice is harmless: a download is claimed once.
    due = downloads_due(stale=stale, limit=RECOVER_BATCH)
    if due:
        publishing.downloads_publish(download_ids=due)
        downloads_resent(download_ids=due)
    return len(due)


def _missing_embeddings_publish() -> int:
    # Ready images that the active version has not embedded yet (ingested during a swap, or an
    # embedding task lost with the broker): embedded by a worker, without touching their status.
    # The running experiment's candidate too: products added during the experiment reach arm B.
    missing = 0
    for version in [active_version(), *ModelVersion.objects.filter(pk__in=experiment_candidate_ids())]:
        found = len(images_missing_embedding(version=version, limit=RECOVER_BATCH, ready_only=True)) if version else 0
        if found:
            publishing.embedding_publish(version_id=version.pk)
        missing += found
    return missing


def _neighbours_publish() -> int | None:
    # The active version's neighbour lists: built if a refresh was lost, folded if ingestion has
    # outgrown them (the task decides, and does nothing when they are current).
    active = active_version()
    if active is None or not config().neighbour_lists_max_rows:
        return None
    publishing.neighbours_publish(version_id=active.pk)
    return active.pk


def _missing_features_publish(stale) -> int:
    # Ready images without the serving backbone's features: ingested while a trained backbone was
    # being activated (extracted with the previous one). Extracted, then embedded, by a worker;
    # only those ready for longer than STALE_SECONDS (sooner, they may be in a queued chunk).
    active = active_version()
    if active is None or active.backbone != serving_backbone(active)[1]:
        return 0
    missing = images_missing_features(backbone=active.backbone, limit=RECOVER_BATCH, ready_before=stale)
    if missing:
        features_enqueue(version=active, image_ids=missing, chunk=config().ingest_chunk)
    return len(missing)


def _lost_trainings_heal(now, stale) -> tuple[list[int], list[int]]:
    dead, republished = [], []
    for version in ModelVersion.objects.filter(status=ModelVersion.Status.TRAINING):
        if training_alive(version.pk):
            continue  # a long epoch, not a dead worker
        if not version.attempts and version.created_at < stale:
            # Queued but never started: the message was lost (e.g. Redis restarted). Send it again;
            # a duplicate delivery is harmless (see model_version_train).
            publishing.training_publish(version_id=version.pk)
            republished.append(version.pk)
        elif version.attempts and version.heartbeat_at and version.heartbeat_at < now - timedelta(
                seconds=config().training_stale_seconds):
            # Started, no process holds it, and no heartbeat: its worker died.
            model_version_fail(version=version, reason="Training stopped sending heartbeats (worker lost).")
            dead.append(version.pk)
    return dead, republished


def _ready_versions_finish() -> dict[str, list[int]]:
    # Ready (passed the gate) and no process holds its training lock: the worker died between the
    # ready commit and the activation (the lock is held until the training returns, and a
    # returning training leaves it active, failed or retired). Newest first, so that an older one
    # finds itself superseded (model_version_finish).
    outcomes: dict[str, list[int]] = {"activated": [], "retired": [], "failed": []}
    candidates = experiment_candidate_ids()  # kept ready on purpose, for an A/B experiment
    for version in ModelVersion.objects.filter(status=ModelVersion.Status.READY).order_by("-pk"):
        if training_alive(version.pk) or version.pk in candidates:
            continue  # its worker is activating it right now
        outcomes.setdefault(model_version_finish(version=version), []).append(version.pk)
    return outcomes


def vector_index_rebuild() -> list[str]:
    """Rebuild the vector indexes with REINDEX CONCURRENTLY (inserts and searches are not blocked;
    ~10 min at 1,000,000 embeddings on 2 cores, bench/query_speed.py's build time), and drop what
    an interrupted rebuild left (an invalid ``<name>_ccnew`` or ``<name>_ccold`` copy). Outside any
    transaction (PostgreSQL refuses it inside one). Returns the indexes rebuilt."""
    if connection.in_atomic_block:
        raise RuntimeError("vector_index_rebuild runs outside any transaction (REINDEX CONCURRENTLY)")
    rebuilt = []
    with connection.cursor() as cursor:
        for index, table in db.VECTOR_INDEXES.items():
            cursor.execute(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = %s::regclass AND NOT i.indisvalid", [table])
            for (leftover,) in cursor.fetchall():
                if leftover.startswith((f"{index}_ccnew", f"{index}_ccold")):
                    cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {connection.ops.quote_name(leftover)}")
            cursor.execute(f"REINDEX INDEX CONCURRENTLY {connection.ops.quote_name(index)}")
            rebuilt.append(index)
    return rebuilt


def _damaged_vector_index_heal() -> list[str]:
    # A zeroed HNSW element was met (recommender.db.VECTOR_INDEXES): every insert reaching it
    # fails until the index is rebuilt. The record is cleared once the rebuild is done (errors met
    # meanwhile came from the old index), so a rebuild that fails or whose worker dies is tried
    # again on the next run; the advisory lock keeps a second recovery (a long rebuild outlasts
    # the 60 s period) from starting another.
    try:
        if not cache.get(db.VECTOR_INDEX_DAMAGED_FLAG):
            return []
    except Exception as exc:
        logger.warning("cache unavailable (%s); the vector index's health is not checked", exc)
        return []
    if connection.in_atomic_block:  # called inside a transaction (not by the task): a later run rebuilds
        logger.warning("the damaged vector index is rebuilt by the recovery task, not inside a transaction")
        return []
    try:
        with vector_index_lock() as acquired:
            if not acquired:
                return []
            rebuilt = vector_index_rebuild()
    except DatabaseError as exc:  # the next run tries again (the record stays)
        logger.error("rebuilding the damaged vector index failed: %s", exc)
        return []
    try:
        cache.delete(db.VECTOR_INDEX_DAMAGED_FLAG)
    except Exception as exc:  # the next run rebuilds once more: harmless
        logger.warning("cache unavailable (%s); the vector index's damage record stays", exc)
    logger.warning("rebuilt the vector index(es) %s after a zeroed element was met", ", ".join(rebuilt))
    return rebuilt


def model_files_publish_legacy() -> list[int]:
    """Versions saved before the models storage existed (``artifacts`` a folder of one host): the
    host that has the folder checks its files against the recorded checksums, publishes them, and
    points the row at the storage (``v<N>``, its trained backbone recorded by version), so every host
    can load the version and its cache may trim it. Files that do not match stay unpublished (the
    version keeps refusing to load: logged). Idempotent: publishing is content-addressed."""
    done = []
    legacy = (ModelVersion.objects.exclude(artifacts="").exclude(artifacts__regex=r"^v[0-9]+$")
              .exclude(status=ModelVersion.Status.FAILED))
    for version in legacy:
        folder = Path(version.artifacts)
        if not folder.is_dir():
            continue  # another host's, or lost: left as it is
        checksums = artifacts.files_publish(version_id=version.pk, folder=folder)
        changed = {n for n, digest in (version.checksums or {}).items() if checksums.get(n) != digest}
        if changed:
            logger.error("v%s: %s in %s do not match the checksums recorded when they were saved: not published",
                         version.pk, ", ".join(sorted(changed)), folder)
            continue
        ModelVersion.objects.filter(pk=version.pk, artifacts=version.artifacts).update(
            artifacts=f"v{version.pk}", checksums=checksums, weights=runtime.weights_portable(version.weights))
        runtime.forget_head(version.pk)
        done.append(version.pk)
    return done


def model_files_sweep() -> list[int]:
    """Remove the stored files of versions that failed or no longer exist (artifacts.storage_sweep)."""
    return artifacts.storage_sweep()


def recover_lost_work() -> dict:
    """Rebuild a damaged vector index; publish versions saved before the models storage; re-publish lost ingestion, missing embeddings and lost
    trainings; fail dead trainings;
    finish versions a lost worker left ready; check images for duplicates that no worker checked;
    refit the cold start's scaler when its window skipped a refit."""
    now = timezone.now()
    stale = now - timedelta(seconds=config().stale_seconds)
    reindexed = _damaged_vector_index_heal()  # first: until then every embedding insert may fail
    published = model_files_publish_legacy()
    requeued = _lost_images_requeue(stale)
    downloads = _lost_downloads_publish(stale)
    dead, republished = _lost_trainings_heal(now, stale)
    ready = _ready_versions_finish()  # before the healers below, which follow the active version
    experiments = experiments_heal()
    reembed = _missing_embeddings_publish()
    reextract = _missing_features_publish(stale)
    neighbours = _neighbours_publish()
    try:
        duplicates_checked = duplicates.duplicates_backlog_check(before=stale)
    except DatabaseError as exc:  # the rest of the healing must not wait for it
        logger.warning("duplicate check of the backlog failed: %s", exc)
        duplicates_checked = 0
    # Last: a refit the ingestion skipped inside its window (services.features.SCALE_REFIT_MIN_SECONDS).
    scale = feature_scale_refresh(backbone=runtime.backbone_spec().identity)
    return {"requeued": requeued, "reembed": reembed, "reextract": reextract, "dead_trainings": dead,
            "republished_trainings": republished, "ready_versions": ready, "neighbours": neighbours,
            "scale_refitted": scale, "vector_indexes_rebuilt": reindexed, "model_files_published": published,
            "downloads": downloads, "duplicates_checked": duplicates_checked, "experiments_ended": experiments}


def retrain_if_needed(*, force_reason: str | None = None) -> ModelVersion | None:
    """Start a version when :func:`retrain_reason` (or ``force_reason``) says so and none trains."""
    if training_version() is not None:
        return None
    reason = force_reason or retrain_reason()
    if not reason:
        return None
    return model_version_start(trigger=f"automatic: {reason}")
