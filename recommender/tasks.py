"""Celery tasks: thin wrappers that take ids and call one service.

All tasks acknowledge late and are rejected (redelivered) when their worker dies, so a SIGKILL
mid-batch loses nothing; the services are idempotent, so a redelivery changes nothing twice.
Database outages are retried with exponential backoff, a bounded number of times. Queues are
routed in ``settings.CELERY_TASK_ROUTES``; services publish these by name (recommender.publishing).

TensorFlow is not imported here: the services import it lazily, in the worker's child process.
"""

from django.db import DatabaseError, InterfaceError, OperationalError

from catalog import downloads
from config.celery import app
from recommender.services import embeddings, events, features, ingestion, maintenance, neighbours, training

RETRYABLE = (OperationalError, InterfaceError, DatabaseError, ConnectionError)
COMMON = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": RETRYABLE,
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 8,
}


@app.task(bind=True, **COMMON)
def process_images(self, image_ids):
    return ingestion.images_process(image_ids=image_ids, token=self.request.id or "eager")


@app.task(**COMMON)
def download_images(download_ids):
    return downloads.image_downloads_process(download_ids=download_ids)


@app.task(bind=True, **COMMON)
def drain_backlog(self):
    return ingestion.images_drain(token=self.request.id or "eager", eager=bool(self.request.is_eager))


@app.task(**COMMON)
def extract_features(version_id, image_ids):
    return features.features_extract(version_id=version_id, image_ids=image_ids)


@app.task(**COMMON)
def train_model_version(version_id):
    return training.model_version_train(version_id=version_id).status


@app.task(**COMMON)
def embed_missing(version_id):
    return embeddings.embeddings_backfill(version_id=version_id)


@app.task(**COMMON)
def refresh_neighbours(version_id):
    return neighbours.neighbours_refresh(version_id=version_id)


@app.task(**COMMON)
def recover_lost_work():
    return maintenance.recover_lost_work()


@app.task(**COMMON)
def retrain_if_needed():
    version = maintenance.retrain_if_needed()
    return version.pk if version else None


@app.task(**COMMON)
def prune_embeddings():
    return {**embeddings.embeddings_prune(), "features": features.features_prune(),
            "model_files": maintenance.model_files_sweep(), "panel_events": events.panel_events_prune()}


# Every few seconds from the beat; a run that waited longer than a minute in a busy queue is
# dropped (the next one flushes the same buffer).
@app.task(ignore_result=True, expires=60)
def flush_panel_events():
    return events.panel_events_flush()
