"""Publishing background work: the only module that knows about Celery messages.

Services call these after their transaction commits. Tasks are sent by name (their queues are
routed in ``settings.CELERY_TASK_ROUTES``), so nothing outside ``recommender.tasks`` imports it
and ``tasks`` can import the services at the top. A broker outage is logged, never raised: the
rows stay as they are (pending images, a queued training, missing embeddings), and the periodic
``recover_lost_work`` publishes them again once the broker is back.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

PROCESS_IMAGES = "recommender.tasks.process_images"
DRAIN_BACKLOG = "recommender.tasks.drain_backlog"
TRAIN_MODEL_VERSION = "recommender.tasks.train_model_version"
EMBED_MISSING = "recommender.tasks.embed_missing"
EXTRACT_FEATURES = "recommender.tasks.extract_features"
REFRESH_NEIGHBOURS = "recommender.tasks.refresh_neighbours"
DOWNLOAD_IMAGES = "recommender.tasks.download_images"
# Downloads per task: one download takes up to catalog.downloads.DEADLINE_SECONDS (30 s), so a task
# holds a features worker for minutes at most, and a slow host delays only its own chunk.
DOWNLOAD_CHUNK = 8


def publish(task: str, *, args: list, countdown: float = 0, waiting: str) -> bool:
    """Send ``task`` with ``args``; False (and a warning naming ``waiting``) if the broker is down."""
    from config.celery import app

    if app.conf.task_always_eager:
        # Eager (CELERY_TASK_ALWAYS_EAGER): the task runs here, so this process must have it
        # registered; Celery's autodiscovery imports recommender.tasks (this module does not).
        app.loader.import_default_modules()
    try:
        # A signature runs eagerly under CELERY_TASK_ALWAYS_EAGER where the task is registered,
        # and is sent by name (routed by CELERY_TASK_ROUTES) otherwise.
        app.signature(task, args=args).apply_async(countdown=countdown or None, retry=False)
    except Exception as exc:  # kombu raises several types for an unreachable broker
        logger.warning("broker unavailable (%s); %s wait for the periodic recovery", exc, waiting)
        return False
    return True


def downloads_publish(*, download_ids: list[int]) -> int:
    """Send ``download_images`` in chunks of DOWNLOAD_CHUNK; returns how many downloads were sent
    (a broker outage leaves them pending for the periodic recovery)."""
    ids, sent = sorted(set(download_ids)), 0
    for start in range(0, len(ids), DOWNLOAD_CHUNK):
        chunk = ids[start:start + DOWNLOAD_CHUNK]
        if not publish(DOWNLOAD_IMAGES, args=[chunk], waiting=f"{len(chunk)} image downloads"):
            break  # the broker is down: one failed attempt, not one per chunk (the recovery sends the rest)
        sent += len(chunk)
    return sent


def images_publish(*, image_ids: list[int], countdown: float = 0) -> bool:
    return publish(PROCESS_IMAGES, args=[image_ids], countdown=countdown, waiting=f"{len(image_ids)} images")


# The drain's "one is waiting" flag (in the cache, SET NX with a lifetime). A flag without its
# message (a purged or lost one) blocks new wake-ups for at most this long; a message that waits
# longer (a queue full of re-extraction chunks) lets one more through per lifetime: the queue holds
# at most a few drains however many images arrive or the recovery finds.
DRAIN_FLAG = "recommender:drain-waiting"
DRAIN_FLAG_SECONDS = 15


def _publish_once(*, flag: str, seconds: int, task: str, args: list, waiting: str) -> bool:
    """Send ``task`` unless ``flag`` (a cache key, SET NX for ``seconds``) says one is on its way.
    A send that fails clears the flag, so the next ask tries again; a cache outage sends anyway
    (one per call)."""
    from django.core.cache import cache

    try:
        if not cache.add(flag, 1, seconds):
            return True
    except Exception as exc:
        logger.warning("cache unavailable (%s); sending the task for %s without checking for a waiting one", exc, waiting)
    sent = publish(task, args=args, waiting=waiting)
    if not sent:
        _flag_clear(flag)
    return sent


def _flag_clear(flag: str) -> None:
    from django.core.cache import cache

    try:
        cache.delete(flag)
    except Exception:  # the flag expires by itself
        pass


def drain_publish() -> bool:
    """Send one ``drain_backlog`` unless one is already waiting."""
    return _publish_once(flag=DRAIN_FLAG, seconds=DRAIN_FLAG_SECONDS, task=DRAIN_BACKLOG, args=[],
                         waiting="the ingestion backlog")


def drain_taken() -> None:
    """A drain started: the next arrival may send another."""
    _flag_clear(DRAIN_FLAG)


NEIGHBOURS_FLAG = "recommender:neighbours-waiting:{}"
NEIGHBOURS_FLAG_SECONDS = 60


def neighbours_publish(*, version_id: int) -> bool:
    """Send one ``refresh_neighbours`` of a version unless one was sent in the last minute: every
    ingestion batch asks, and a refresh that finds little new does nothing, so one a minute is
    enough (the periodic recovery asks too)."""
    return _publish_once(flag=NEIGHBOURS_FLAG.format(version_id), seconds=NEIGHBOURS_FLAG_SECONDS,
                         task=REFRESH_NEIGHBOURS, args=[version_id], waiting=f"the neighbour lists of v{version_id}")


def training_publish(*, version_id: int) -> bool:
    return publish(TRAIN_MODEL_VERSION, args=[version_id], waiting=f"the training of v{version_id}")


def embedding_publish(*, version_id: int) -> bool:
    return publish(EMBED_MISSING, args=[version_id], waiting=f"v{version_id}'s missing embeddings")


def features_publish(*, version_id: int, image_ids: list[int]) -> bool:
    return publish(EXTRACT_FEATURES, args=[version_id, image_ids],
                   waiting=f"{len(image_ids)} images' features for v{version_id}")
