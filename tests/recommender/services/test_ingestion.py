"""Ingestion (recommender.services.ingestion): claims under a task's token, redeliveries, workers
lost mid-batch, images that always fail, and a broker outage while enqueueing."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from catalog.models import ProductImage
from recommender.conf import config
from recommender.models import BackboneFeature
from recommender.services.ingestion import images_claim, images_enqueue, images_process
from tests.recommender.helpers import import_products

pytestmark = pytest.mark.django_db


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
