"""Ingestion (recommender.services.ingestion): claims under a task's token, redeliveries, workers
lost mid-batch, images that always fail, and a broker outage while enqueueing."""

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.storage import FileSystemStorage
from django.utils import timezone

from catalog.models import ProductImage
from recommender.conf import config
from recommender.models import BackboneFeature
from recommender.services.ingestion import images_claim, images_drain, images_enqueue, images_process
from tests.factories import ProductImageFactory, png_bytes
from tests.recommender.helpers import import_products

pytestmark = pytest.mark.django_db


class BrokerQueue:
    """The real broker's ``features`` queue (a Redis list), read without consuming it."""

    def __init__(self, channel):
        self.channel = channel

    def purge(self):
        from recommender.publishing import drain_taken

        self.channel.queue_purge("features")
        drain_taken()  # a purged drain's flag too

    def tasks(self) -> list[str]:
        import json

        return [json.loads(raw)["headers"]["task"] for raw in self.channel.client.lrange("features", 0, -1)]


@pytest.fixture
def broker_queue():
    from config.celery import app

    with app.connection_for_write() as conn:
        queue = BrokerQueue(conn.default_channel)
        queue.purge()
        yield queue
        queue.purge()


def import_category():
    from catalog.services import category_get_or_create

    return category_get_or_create(name="Bulk")


def break_image_file(image_id):
    """A file the decoder fails on every time."""
    Path(ProductImage.objects.get(pk=image_id).image.path).write_bytes(b"\x89PNG\r\n\x1a\ngarbage")


def test_the_same_task_twice_changes_nothing():
    ids = import_products(40)
    first = images_process(image_ids=ids, token="task-1")
    assert first == {"claimed": 40, "ready": 40, "errors": 0, "extracted": 40}
    snapshot = list(ProductImage.objects.order_by("id").values_list("id", "status", "attempts", "thumbnails"))
    again = images_process(image_ids=ids, token="task-1")  # redelivery of the same task
    assert again == {"claimed": 0}
    assert list(ProductImage.objects.order_by("id").values_list("id", "status", "attempts", "thumbnails")) == snapshot
    assert BackboneFeature.objects.count() == 40


def test_a_second_worker_does_not_take_an_image_that_is_being_processed():
    ids = import_products(5)
    claimed = images_claim(image_ids=ids, token="worker-a")
    assert sorted(claimed) == sorted(ids)
    assert images_claim(image_ids=ids, token="worker-b") == []  # still fresh: it belongs to worker-a
    assert images_claim(image_ids=ids[:1], token="worker-a") == ids[:1]  # redelivery of a's (single-image) task
    ProductImage.objects.update(status_changed_at=timezone.now() - timedelta(hours=1))
    assert images_claim(image_ids=ids[:1], token="worker-b") == ids[:1]  # a's claim went stale


def test_a_batch_whose_worker_died_is_split_into_single_image_tasks(django_capture_on_commit_callbacks):
    """One image that kills its worker must not use up the attempts of its whole batch."""
    ids = import_products(4)
    assert sorted(images_claim(image_ids=ids, token="crashed")) == sorted(ids)  # this run dies mid-batch
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert images_claim(image_ids=ids, token="crashed") == []  # its redelivery: split, not processed
    rows = ProductImage.objects.filter(id__in=ids)
    assert {(r.status, r.attempts, r.processing_token) for r in rows} == {("pending", 1, "")}
    assert all("worker was lost" in r.last_error for r in rows)
    assert len(callbacks) == 1  # publishes one task per image after commit
    break_image_file(ids[0])
    for image_id in ids:  # the single-image tasks
        images_process(image_ids=[image_id], token=f"single-{image_id}")
    assert ProductImage.objects.filter(id__in=ids[1:], status="ready", attempts=2).count() == 3
    poison = ProductImage.objects.get(pk=ids[0])
    assert poison.status == "pending" and poison.attempts == 2 and "Could not decode" in poison.last_error


def test_an_image_that_always_fails_stops_after_the_attempt_limit():
    ids = import_products(3)
    broken = ProductImage.objects.get(pk=ids[0])
    break_image_file(broken.pk)
    limit = config().max_attempts
    for attempt in range(1, limit + 1):
        result = images_process(image_ids=ids, token=f"t{attempt}")
        broken.refresh_from_db()
        assert broken.attempts == attempt
    assert broken.status == "failed" and "Could not decode" in broken.last_error
    assert ProductImage.objects.filter(status="ready").count() == 2  # the others were not held up
    assert images_process(image_ids=[broken.pk], token="again") == {"claimed": 0}
    assert result["errors"] == 1


def test_a_worker_lost_mid_batch_too_often_is_given_up():
    ids = import_products(2)
    ProductImage.objects.filter(pk=ids[0]).update(status="processing", attempts=5, last_error="",
                                                  status_changed_at=timezone.now() - timedelta(hours=1))
    images_process(image_ids=ids, token="t")
    lost = ProductImage.objects.get(pk=ids[0])
    assert lost.status == "failed" and "Gave up after 5 attempts" in lost.last_error


def test_enqueueing_while_the_broker_is_down_sends_nothing_and_leaves_the_rows_pending(broker_unreachable, caplog):
    ids = import_products(3)
    assert images_enqueue(image_ids=ids) == 0  # nothing raised: the periodic recovery sends them later
    assert set(ProductImage.objects.values_list("status", flat=True)) == {"pending"}
    assert "broker unavailable" in caplog.text


# --------------------------------------------------------------------------- drains


def fresh_pending(ids):
    ProductImage.objects.filter(id__in=ids).update(status="pending", attempts=0, processing_token="", thumbnails={})


def test_a_drain_claims_a_full_batch_however_the_images_arrived(settings):
    """import_fashion_mnist commits one product at a time; the drain still extracts INGEST_CHUNK at once."""
    settings.RECOMMENDER = {**settings.RECOMMENDER, "INGEST_CHUNK": 16}
    ids = import_products(20)
    first = images_drain(token="drain-1")
    assert first == {"claimed": 16, "ready": 16, "errors": 0, "extracted": 16}
    assert list(ProductImage.objects.filter(status="ready").order_by("id").values_list("id", flat=True)) == ids[:16]
    assert images_drain(token="drain-2")["extracted"] == 4  # the rest (after one linger)
    assert images_drain(token="drain-3") == {"claimed": 0}  # nothing left: no-op


def test_a_drain_that_leaves_work_behind_wakes_one_more(settings, broker_queue):
    settings.RECOMMENDER = {**settings.RECOMMENDER, "INGEST_CHUNK": 8}
    import_products(12)
    broker_queue.purge()
    images_drain(token="drain-1")
    assert broker_queue.tasks() == ["recommender.tasks.drain_backlog"]
    images_drain(token="drain-2")  # takes the last 4 and finds nothing more: wakes no one
    assert broker_queue.tasks() == ["recommender.tasks.drain_backlog"]


def test_a_drain_takes_an_image_due_for_a_retry_alone_and_first(settings):
    ids = import_products(6)
    now = timezone.now()
    ProductImage.objects.filter(pk=ids[0]).update(attempts=2, status_changed_at=now - timedelta(seconds=30))  # due (4 s)
    ProductImage.objects.filter(pk=ids[1]).update(attempts=5 - 1, status_changed_at=now)  # backoff 16 s: not due
    assert images_drain(token="d1") == {"claimed": 1, "ready": 1, "errors": 0, "extracted": 1}
    assert ProductImage.objects.get(pk=ids[0]).status == "ready"
    assert images_drain(token="d2")["claimed"] == 4  # the fresh ones; the one in backoff waits
    assert ProductImage.objects.get(pk=ids[1]).status == "pending"


def test_a_redelivered_drain_splits_its_own_batch(django_capture_on_commit_callbacks):
    ids = import_products(3)
    ProductImage.objects.filter(id__in=ids).update(status="processing", processing_token="drain-x", attempts=1)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert images_drain(token="drain-x") == {"claimed": 0}
    assert set(ProductImage.objects.values_list("status", "attempts")) == {("pending", 1)}
    assert len(callbacks) == 1  # one single-image task per image, after commit


def test_an_eager_drain_empties_the_backlog(settings):
    settings.RECOMMENDER = {**settings.RECOMMENDER, "INGEST_CHUNK": 8}
    import_products(20)
    assert images_drain(token="eager", eager=True)["ready"] == 20
    assert set(ProductImage.objects.values_list("status", flat=True)) == {"ready"}


def test_a_backlog_of_thousands_costs_the_broker_one_message_per_recovery(settings, broker_queue):
    """Before drains, every recovery run published every image pending for STALE_SECONDS, 64 per
    message, and again on the next run while they still waited: the queue grew with the backlog."""
    from catalog.models import Product
    from recommender.services.maintenance import recover_lost_work

    product = Product.objects.create(sku="BULK", title="bulk", category=import_category())
    old = timezone.now() - timedelta(hours=1)
    ProductImage.objects.bulk_create([ProductImage(product=product, image=f"x/{i}.png", content_hash=f"{i:064d}")
                                      for i in range(5000)], batch_size=2000)
    ProductImage.objects.update(status_changed_at=old)
    broker_queue.purge()
    for _ in range(3):
        assert recover_lost_work()["requeued"] == 5000
    assert broker_queue.tasks() == ["recommender.tasks.drain_backlog"]


def test_staff_retry_sends_a_drain_not_one_task_per_image(django_capture_on_commit_callbacks, broker_queue):
    from recommender.services.ingestion import images_retry

    ids = import_products(5)
    ProductImage.objects.filter(id__in=ids).update(status="failed", attempts=5)
    broker_queue.purge()
    with django_capture_on_commit_callbacks(execute=True):
        assert images_retry(image_ids=ids) == 5
    assert broker_queue.tasks() == ["recommender.tasks.drain_backlog"]
    assert images_drain(token="d")["claimed"] == 5  # a fresh set of attempts: one batch


# --------------------------------------------------------------------------- thumbnails


def with_features(image):
    """The serving backbone's features of ``image`` (so no backbone runs: only thumbnails are made)."""
    import numpy as np

    from recommender.selectors.versions import serving_backbone

    BackboneFeature.objects.create(image=image, backbone=serving_backbone()[1],
                                   vector=np.random.default_rng(image.pk).random(2048, dtype=np.float32))
    return image


def test_a_full_disk_is_recorded_on_the_image_and_retried_until_the_attempt_limit(settings):
    from tests.catalog.test_thumbnails import FullDiskStorage, thumbnail_files

    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "tests.catalog.test_thumbnails.FullDiskStorage"}}
    settings.RECOMMENDER = {**settings.RECOMMENDER, "MAX_ATTEMPTS": 2}
    FullDiskStorage.room = 1  # a 900 px source wants three sizes: the second one fills the disk
    image = with_features(ProductImageFactory(data=png_bytes(size=(900, 700), seed=1)))
    assert images_process(image_ids=[image.pk], token="t1") == {"claimed": 1, "ready": 0, "errors": 1, "extracted": 0}
    image.refresh_from_db()
    assert (image.status, image.attempts, image.processing_token, image.thumbnails) == ("pending", 1, "", {})
    assert "Could not write the thumbnails" in image.last_error and "No space left on device" in image.last_error
    assert thumbnail_files(settings) == []  # the 128 px file it did write is gone
    FullDiskStorage.room = 0
    images_process(image_ids=[image.pk], token="t2")  # the last attempt
    image.refresh_from_db()
    assert image.status == "failed" and "No space left on device" in image.last_error
    assert thumbnail_files(settings) == [] and Path(image.image.path).is_file()


class GatedStorage(FileSystemStorage):
    """A real FileSystemStorage that holds a named thread's thumbnail writes until it is let go."""

    gates: dict = {}  # thread name -> (arrived, proceed)

    def _save(self, name, content):
        gate = self.gates.get(threading.current_thread().name)
        if gate and name.startswith("thumbs/"):
            arrived, proceed = gate
            arrived.set()
            assert proceed.wait(60), "the test never let this write go"
        return super()._save(name, content)


def _in_thread(name, **kwargs):
    from django.db import connection

    def run():
        try:
            images_process(**kwargs)
        finally:
            connection.close()

    GatedStorage.gates[name] = (threading.Event(), threading.Event())
    thread = threading.Thread(target=run, name=name)
    thread.start()
    assert GatedStorage.gates[name][0].wait(60), f"{name} never reached its thumbnail write"
    return thread


def _let_go(thread):
    GatedStorage.gates[thread.name][1].set()
    thread.join(60)
    assert not thread.is_alive()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("tokens, first_done", [
    (("task-1", "task-1"), "old"),  # the broker redelivered the task while its first run still worked
    (("task-1", "task-2"), "new"),  # the first run's claim went stale and another drain took the image
])
def test_two_claims_writing_thumbnails_at_once_leave_one_set_of_files(settings, tokens, first_done):
    from tests.catalog.test_thumbnails import thumbnail_files

    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": f"{__name__}.GatedStorage"}}
    GatedStorage.gates.clear()
    image = with_features(ProductImageFactory(data=png_bytes(size=(200, 150), seed=2)))
    old = _in_thread("old", image_ids=[image.pk], token=tokens[0])  # claimed, holding its first write
    ProductImage.objects.filter(pk=image.pk).update(status_changed_at=timezone.now() - timedelta(hours=1))
    new = _in_thread("new", image_ids=[image.pk], token=tokens[1])  # claimed again, holding its write
    for thread in (old, new) if first_done == "old" else (new, old):
        _let_go(thread)
    image.refresh_from_db()
    assert image.status == "ready" and image.attempts == 2 and len(image.thumbnails) == 2  # 128 and 256 px
    assert thumbnail_files(settings) == sorted(image.thumbnails.values())  # the later claim's, and only those


def test_a_batchs_thumbnails_are_recorded_in_one_update_and_vectors_sent_in_binary():
    """Issue 14: one UPDATE per image (a tenth of a 64 px batch's time) and vectors formatted as
    text (a fifth) are gone: the batch's thumbnails are one statement and no vector literal is sent."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    images = [ProductImageFactory(data=png_bytes(size=(90, 60), seed=40 + i)) for i in range(6)]
    with CaptureQueriesContext(connection) as queries:
        result = images_process(image_ids=[i.pk for i in images], token="one-update")
    assert result["ready"] == 6
    thumbnail_writes = [q["sql"] for q in queries if q["sql"].startswith("UPDATE") and "thumbnails" in q["sql"]]
    assert len(thumbnail_writes) == 1
    assert not [q for q in queries if "'[" in q["sql"]]  # ORM-formatted vector literals ('[0.1,...]')
    for image in ProductImage.objects.filter(pk__in=[i.pk for i in images]):
        assert set(image.thumbnails) == {"128"}
        assert image.image.storage.exists(image.thumbnails["128"])
    assert BackboneFeature.objects.filter(image_id__in=[i.pk for i in images]).count() == 6
