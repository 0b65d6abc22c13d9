"""Celery tasks: thin wrappers that take ids and call one service.

All tasks acknowledge late and are rejected (redelivered) when their worker dies, so a SIGKILL
mid-batch loses nothing; the services are idempotent, so a redelivery changes nothing twice.
Database outages are retried with exponential backoff, a bounded number of times.
"""

from django.db import DatabaseError, InterfaceError, OperationalError

from config.celery import app

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
    from recommender.services import images_process

    return images_process(image_ids=image_ids, token=self.request.id or "eager")


@app.task(bind=True, **COMMON)
def train_model_version(self, version_id):
    from recommender.services import model_version_train

    return model_version_train(version_id=version_id).status


@app.task(queue="training", **COMMON)
def embed_missing(version_id):
    from recommender.services import embeddings_backfill

    return embeddings_backfill(version_id=version_id)


@app.task(**COMMON)
def recover_lost_work():
    from recommender.services import recover_lost_work as recover

    return recover()


@app.task(**COMMON)
def retrain_if_needed():
    from recommender.services import retrain_if_needed as retrain

    version = retrain()
    return version.pk if version else None


@app.task(queue="training", **COMMON)
def prune_embeddings():
    from recommender.services import embeddings_prune

    return embeddings_prune()
