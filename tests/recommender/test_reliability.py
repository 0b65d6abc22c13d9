"""Idempotency, killed trainings and the periodic recovery, with real processes."""

import io
import signal
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from catalog.models import ProductImage
from recommender import services
from recommender.models import BackboneFeature, Embedding, ModelVersion
from tests.conftest import wait_for


def import_products(count, split="train"):
    call_command("import_fashion_mnist", count=count, split=split, verbosity=0, stdout=io.StringIO())
    return list(ProductImage.objects.values_list("id", flat=True))


def train_inline(settings, epochs=3):
    settings.RECOMMENDER = {**settings.RECOMMENDER, "EPOCHS": epochs}
    version = services.model_version_start(trigger="test")
    return services.model_version_train(version_id=version.pk)


@pytest.mark.django_db
def test_the_same_task_twice_changes_nothing(settings):
    ids = import_products(40)
    first = services.images_process(image_ids=ids, token="task-1")
    assert first == {"claimed": 40, "ready": 40, "errors": 0, "extracted": 40}
    snapshot = list(ProductImage.objects.order_by("id").values_list("id", "status", "attempts", "thumbnails"))
    again = services.images_process(image_ids=ids, token="task-1")  # redelivery of the same task
    assert again == {"claimed": 0}
    assert list(ProductImage.objects.order_by("id").values_list("id", "status", "attempts", "thumbnails")) == snapshot
    assert BackboneFeature.objects.count() == 40

    version = train_inline(settings)
    assert version.status == "active"
    count = Embedding.objects.filter(version=version).count()
    assert services.model_version_train(version_id=version.pk).status == "active"  # second delivery: no-op
    assert Embedding.objects.filter(version=version).count() == count == 40


@pytest.mark.django_db
def test_a_second_worker_does_not_take_an_image_that_is_being_processed():
    ids = import_products(5)
    claimed = services._claim(ids, token="worker-a")
    assert sorted(claimed) == sorted(ids)
    assert services._claim(ids, token="worker-b") == []  # still fresh: it belongs to worker-a
    assert sorted(services._claim(ids, token="worker-a")) == sorted(ids)  # redelivery of a's task
    ProductImage.objects.update(status_changed_at=timezone.now() - timedelta(hours=1))
    assert sorted(services._claim(ids, token="worker-b")) == sorted(ids)  # a's claim went stale


@pytest.mark.django_db
def test_an_image_that_always_fails_stops_after_the_attempt_limit(settings):
    ids = import_products(3)
    broken = ProductImage.objects.get(pk=ids[0])
    Path(broken.image.path).write_bytes(b"\x89PNG\r\n\x1a\ngarbage")  # the decoder fails every time
    limit = settings.RECOMMENDER["MAX_ATTEMPTS"]
    for attempt in range(1, limit + 1):
        result = services.images_process(image_ids=ids, token=f"t{attempt}")
        broken.refresh_from_db()
        assert broken.attempts == attempt
    assert broken.status == "failed" and "Could not decode" in broken.last_error
    assert ProductImage.objects.filter(status="ready").count() == 2  # the others were not held up
    assert services.images_process(image_ids=[broken.pk], token="again") == {"claimed": 0}
    assert result["errors"] == 1


@pytest.mark.django_db
def test_a_worker_lost_mid_batch_too_often_is_given_up():
    ids = import_products(2)
    ProductImage.objects.filter(pk=ids[0]).update(status="processing", attempts=5, last_error="",
                                                  status_changed_at=timezone.now() - timedelta(hours=1))
    services.images_process(image_ids=ids, token="t")
    lost = ProductImage.objects.get(pk=ids[0])
    assert lost.status == "failed" and "Gave up after 5 attempts" in lost.last_error


@pytest.mark.django_db
def test_a_training_that_fails_its_quality_gate_keeps_the_active_version(settings):
    import_products(120)
    services.images_process(image_ids=list(ProductImage.objects.values_list("id", flat=True)), token="t")
    good = train_inline(settings, epochs=8)
    assert good.status == "active"
    settings.RECOMMENDER = {**settings.RECOMMENDER, "LEARNING_RATE": 0.0, "GATE_TOLERANCE": 0.0}
    bad = train_inline(settings, epochs=1)  # learns nothing: worse than the active version
    assert bad.status == "failed" and bad.error.startswith("Quality gate:")
    assert ModelVersion.objects.get(status="active").pk == good.pk
    assert not Path(settings.MODELS_ROOT, f"v{bad.pk}").exists()
    assert not list(Path(settings.MODELS_ROOT).glob(".*tmp*"))
    assert not Embedding.objects.filter(version=bad).exists()


@pytest.mark.django_db
def test_retraining_is_triggered_by_new_categories_and_new_images(settings):
    assert services.retrain_reason() is None  # nothing to train on
    ids = import_products(60)
    assert services.retrain_reason() is None  # backlog not drained yet
    services.images_process(image_ids=ids, token="t")
    assert services.retrain_reason() == "no active version"
    train_inline(settings)
    assert services.retrain_reason() is None
    ModelVersion.objects.filter(status="active").update(activated_at=timezone.now() - timedelta(days=8))
    assert services.retrain_reason().startswith("scheduled:")  # the weekly schedule
    ModelVersion.objects.filter(status="active").update(activated_at=timezone.now())
    new = import_products(80)[60:]
    services.images_process(image_ids=new, token="t2")
    assert "newer than" in services.retrain_reason()
    from catalog.services import category_get_or_create
    from catalog.models import Product

    Product.objects.filter(pk=ProductImage.objects.get(pk=new[0]).product_id).update(
        category=category_get_or_create(name="Hats"))
    assert services.retrain_reason() == "new categories: Hats"


@pytest.mark.worker
@pytest.mark.slow
def test_a_killed_training_leaves_the_active_version_serving(settings, start_worker):
    ids = import_products(150)
    services.images_process(image_ids=ids, token="t")
    active = train_inline(settings, epochs=3)
    assert active.status == "active"
    worker = start_worker(env_overrides={"RECOMMENDER_EPOCHS": "400"})
    version = services.model_version_start(trigger="test")
    wait_for(lambda: ModelVersion.objects.get(pk=version.pk).progress.get("epoch", 0) >= 2, timeout=120,
             message="training to be under way")
    worker.kill(signal.SIGKILL)
    assert ModelVersion.objects.get(status="active").pk == active.pk
    # The heartbeat stops; the periodic recovery marks it failed and removes its leftovers.
    settings.RECOMMENDER = {**settings.RECOMMENDER, "TRAINING_STALE_SECONDS": 0}
    report = services.recover_lost_work()
    assert version.pk in report["dead_trainings"]
    version.refresh_from_db()
    assert version.status == "failed" and "heartbeats" in version.error
    assert ModelVersion.objects.get(status="active").pk == active.pk
    assert not Path(settings.MODELS_ROOT, f"v{version.pk}").exists()
    assert not list(Path(settings.MODELS_ROOT).glob(".*tmp*"))


@pytest.mark.worker
def test_the_periodic_task_recovers_lost_jobs(start_worker):
    from config.celery import app

    ids = import_products(30)
    app.control.purge()  # the broker lost the published tasks (e.g. Redis restarted without AOF)
    ProductImage.objects.update(status_changed_at=timezone.now() - timedelta(minutes=10))
    start_worker(beat=True, env_overrides={"RECOVER_EVERY_SECONDS": "2"})
    wait_for(lambda: ProductImage.objects.filter(id__in=ids, status="ready").count() == 30, timeout=180,
             message="beat's recovery to process every lost image")
