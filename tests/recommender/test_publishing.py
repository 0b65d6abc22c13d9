"""Publishing background work (recommender.publishing): each task is sent by name to its queue on the
real broker (Redis), and a broker outage is a warning and False, never an exception or a hang."""

import time

import pytest

from config.celery import app
from recommender.publishing import (
    DRAIN_BACKLOG,
    EMBED_MISSING,
    EXTRACT_FEATURES,
    PROCESS_IMAGES,
    REFRESH_NEIGHBOURS,
    TRAIN_MODEL_VERSION,
    drain_publish,
    drain_taken,
    embedding_publish,
    features_publish,
    images_publish,
    neighbours_publish,
    training_publish,
)
from tests.recommender.conftest import QUEUES, messages

@pytest.mark.parametrize("publish, kwargs, queue, task, args", [
    (images_publish, {"image_ids": [3, 1]}, "features", PROCESS_IMAGES, [[3, 1]]),
    (training_publish, {"version_id": 7}, "training", TRAIN_MODEL_VERSION, [7]),
    (embedding_publish, {"version_id": 7}, "training", EMBED_MISSING, [7]),
    (features_publish, {"version_id": 7, "image_ids": [4, 2]}, "features", EXTRACT_FEATURES, [7, [4, 2]]),
])
def test_each_task_is_sent_by_name_to_its_queue(broker, publish, kwargs, queue, task, args):
    assert publish(**kwargs) is True
    assert broker.client.llen(queue) == 1  # the Redis list of the queue
    assert {q: len(messages(broker, q)) for q in QUEUES if q != queue} == {q: 0 for q in QUEUES if q != queue}
    [message] = messages(broker, queue)
    assert message.headers["task"] == task
    assert message.payload[0] == args


def test_a_drain_is_sent_once_however_often_it_is_asked_for_until_one_starts(broker):
    """Every commit of new images asks for a drain; the queue holds one, not one per commit."""
    assert all(drain_publish() for _ in range(200))
    assert broker.client.llen("features") == 1
    drain_taken()  # a worker took it: the next arrival sends another
    assert drain_publish() and drain_publish()
    [first, second] = messages(broker, "features")
    assert first.headers["task"] == second.headers["task"] == DRAIN_BACKLOG and first.payload[0] == []


def test_a_neighbour_list_refresh_is_sent_once_a_minute_per_version(broker):
    """Every ingestion batch asks for one; the training queue gets one per version per lifetime."""
    from django.core.cache import cache

    from recommender import publishing

    cache.delete_many([publishing.NEIGHBOURS_FLAG.format(v) for v in (7, 8)])
    assert all(neighbours_publish(version_id=7) for _ in range(50))
    assert neighbours_publish(version_id=8)
    found = messages(broker, "training")
    assert [(m.headers["task"], m.payload[0]) for m in found] == [(REFRESH_NEIGHBOURS, [7]), (REFRESH_NEIGHBOURS, [8])]


def test_a_lost_drain_message_blocks_new_ones_for_the_flag_lifetime_only(broker, monkeypatch):
    from recommender import publishing

    monkeypatch.setattr(publishing, "DRAIN_FLAG_SECONDS", 1)
    assert drain_publish()
    broker.queue_purge("features")  # the message is lost (a broker restart), its flag is not
    assert drain_publish() and broker.client.llen("features") == 0
    time.sleep(1.2)
    assert drain_publish() and broker.client.llen("features") == 1


def test_a_countdown_is_sent_as_an_eta(broker):
    assert images_publish(image_ids=[5], countdown=30) is True
    [message] = messages(broker, "features")
    assert message.headers["eta"] is not None


def test_with_the_broker_down_publishing_warns_and_returns_false(broker_unreachable, caplog):
    started = time.monotonic()
    assert images_publish(image_ids=[1, 2, 3]) is False
    assert training_publish(version_id=7) is False
    assert time.monotonic() - started < 5  # a web request that publishes is not held up
    warnings = [r.getMessage() for r in caplog.records if r.name == "recommender.publishing"]
    assert len(warnings) == 2 and all(w.startswith("broker unavailable (") for w in warnings)
    assert warnings[0].endswith("3 images wait for the periodic recovery")
    assert warnings[1].endswith("the training of v7 wait for the periodic recovery")


@pytest.mark.django_db
def test_eager_mode_runs_the_task_in_this_process(broker, eager):
    from catalog.models import ProductImage
    from tests.factories import ProductImageFactory

    image = ProductImageFactory()
    assert image.status == ProductImage.Status.PENDING
    assert images_publish(image_ids=[image.pk]) is True
    image.refresh_from_db()
    assert image.status == ProductImage.Status.READY and image.thumbnails  # processed here, at once
    assert broker.client.llen("features") == 0  # nothing went to the broker


def test_every_task_has_its_queue_in_the_routes(settings):
    import recommender.tasks  # noqa: F401  (registers them)

    names = sorted(name for name in app.tasks if name.startswith("recommender.tasks."))
    assert names and sorted(settings.CELERY_TASK_ROUTES) == names
    beat = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert beat <= set(names)
    assert {name: route["queue"] for name, route in settings.CELERY_TASK_ROUTES.items()} == {
        PROCESS_IMAGES: "features", DRAIN_BACKLOG: "features", EXTRACT_FEATURES: "features", TRAIN_MODEL_VERSION: "training",
        EMBED_MISSING: "training", REFRESH_NEIGHBOURS: "training",
        "recommender.tasks.prune_embeddings": "training", "recommender.tasks.recover_lost_work": "celery",
        "recommender.tasks.retrain_if_needed": "celery", "recommender.tasks.download_images": "features",
        "recommender.tasks.flush_panel_events": "celery"}
