"""Idempotency, killed trainings and the periodic recovery, with real processes."""

import io
import re
import signal
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db.models import Count
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


def retired_and_active(settings):
    """60 processed images and two trained versions: the first retired, the second active."""
    services.images_process(image_ids=import_products(60), token="t")
    old = train_inline(settings, epochs=2)
    new = train_inline(settings, epochs=2)
    assert (ModelVersion.objects.get(pk=old.pk).status, new.status) == ("retired", "active")
    return old, new


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
    assert services._claim(ids[:1], token="worker-a") == ids[:1]  # redelivery of a's (single-image) task
    ProductImage.objects.update(status_changed_at=timezone.now() - timedelta(hours=1))
    assert services._claim(ids[:1], token="worker-b") == ids[:1]  # a's claim went stale


@pytest.mark.django_db
def test_a_batch_whose_worker_died_is_split_into_single_image_tasks(django_capture_on_commit_callbacks):
    """One image that kills its worker must not use up the attempts of its whole batch."""
    ids = import_products(4)
    assert sorted(services._claim(ids, token="crashed")) == sorted(ids)  # this run dies mid-batch
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert services._claim(ids, token="crashed") == []  # its redelivery: split, not processed
    rows = ProductImage.objects.filter(id__in=ids)
    assert {(r.status, r.attempts, r.processing_token) for r in rows} == {("pending", 1, "")}
    assert all("worker was lost" in r.last_error for r in rows)
    assert len(callbacks) == 1  # publishes one task per image after commit
    poison = ProductImage.objects.get(pk=ids[0])
    Path(poison.image.path).write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    for image_id in ids:  # the single-image tasks
        services.images_process(image_ids=[image_id], token=f"single-{image_id}")
    assert ProductImage.objects.filter(id__in=ids[1:], status="ready", attempts=2).count() == 3
    poison.refresh_from_db()
    assert poison.status == "pending" and poison.attempts == 2 and "Could not decode" in poison.last_error


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
    assert services.training_alive(version.pk)  # the worker holds the training's lock
    worker.kill(signal.SIGKILL)
    assert ModelVersion.objects.get(status="active").pk == active.pk
    # PostgreSQL releases the lock when it sees the dead process's connection close.
    wait_for(lambda: not services.training_alive(version.pk), timeout=30, message="the lock to be released")
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


def _lock_from_another_session(version_id):
    """Hold the training lock of a version from another PostgreSQL session (another worker)."""
    import psycopg

    from tests.conftest import database_url_for_tests

    other = psycopg.connect(database_url_for_tests(), autocommit=True)
    other.execute("SELECT pg_advisory_lock(%s, %s)", [services._TRAINING_LOCK_NAMESPACE, version_id])
    return other


@pytest.mark.django_db
def test_a_training_delivered_twice_runs_once(settings, django_capture_on_commit_callbacks):
    import_products(60)
    services.images_process(image_ids=list(ProductImage.objects.values_list("id", flat=True)), token="t")
    with django_capture_on_commit_callbacks(execute=False) as published:
        version = services.model_version_start(trigger="test")
    assert len(published) == 1
    other = _lock_from_another_session(version.pk)  # a first delivery is training it right now
    try:
        assert services.training_alive(version.pk)
        again = services.model_version_train(version_id=version.pk)  # the broker delivers it again
        assert (again.status, again.attempts) == ("training", 0)  # it did nothing
        assert not Path(settings.MODELS_ROOT, f"v{version.pk}").exists()
    finally:
        other.close()
    # The first delivery's worker died after starting (attempts 1): a redelivery fails it, for good.
    ModelVersion.objects.filter(pk=version.pk).update(attempts=1, progress={"phase": "training", "epoch": 3})
    lost = services.model_version_train(version_id=version.pk)
    assert lost.status == "failed" and "interrupted" in lost.error and "'training'" in lost.error
    assert services.model_version_train(version_id=version.pk).status == "failed"  # and stays failed


@pytest.mark.django_db
def test_train_model_inline_does_not_also_queue_the_training(settings, django_capture_on_commit_callbacks):
    import_products(60)
    services.images_process(image_ids=list(ProductImage.objects.values_list("id", flat=True)), token="t")
    settings.RECOMMENDER = {**settings.RECOMMENDER, "EPOCHS": 2}
    with django_capture_on_commit_callbacks(execute=False) as published:
        call_command("train_model", inline=True, stdout=io.StringIO())
    assert published == []
    assert ModelVersion.objects.get().status == "active"


@pytest.mark.django_db
def test_the_recovery_resends_a_training_whose_message_was_lost(settings, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        version = services.model_version_start(trigger="test")  # Redis lost the message
    assert services.recover_lost_work()["republished_trainings"] == []  # not stale yet
    ModelVersion.objects.filter(pk=version.pk).update(created_at=timezone.now() - timedelta(hours=1))
    report = services.recover_lost_work()
    assert report["republished_trainings"] == [version.pk] and report["dead_trainings"] == []
    assert ModelVersion.objects.get(pk=version.pk).status == "training"


@pytest.mark.django_db
def test_activating_a_version_leaves_the_missing_embeddings_to_a_worker(settings, django_capture_on_commit_callbacks):
    old, new = retired_and_active(settings)
    later = import_products(70)[60:]
    services.images_process(image_ids=later, token="t2")  # embedded by the active (new) version only
    assert not Embedding.objects.filter(version=old, image_id__in=later).exists()
    old.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=False) as published:
        services.model_version_activate(version=old)  # in a web request: must not embed here
    assert ModelVersion.objects.get(pk=old.pk).status == "active"
    assert not Embedding.objects.filter(version=old, image_id__in=later).exists()
    assert len(published) == 1  # the embedding task, sent after commit
    assert services.embeddings_backfill(version_id=old.pk) == 10  # what that task runs on a worker
    assert Embedding.objects.filter(version=old, image_id__in=later).count() == 10
    assert services.embeddings_backfill(version_id=old.pk) == 0  # idempotent


@pytest.mark.django_db
def test_the_quality_gate_compares_on_images_neither_version_trained_on(settings):
    import_products(100)
    services.images_process(image_ids=list(ProductImage.objects.values_list("id", flat=True)), token="t")
    first = train_inline(settings, epochs=4)
    ids = import_products(300)
    services.images_process(image_ids=[i for i in ids if ProductImage.objects.get(pk=i).status == "pending"],
                            token="t2")
    second = train_inline(settings, epochs=4)
    gate = second.progress.get("gate") or second.error
    assert "neither version trained on" in gate, gate
    unseen = int(re.search(r"\(on (\d+) held-out images neither", gate).group(1))
    holdout = set(second.metrics["holdout_image_ids"])
    seen_by_first = set(BackboneFeature.objects.filter(image_id__in=holdout, created_at__lte=first.started_at)
                        .values_list("image_id", flat=True)) - set(first.metrics["holdout_image_ids"])
    assert unseen == len(holdout - seen_by_first) >= services.GATE_MIN_IMAGES


@pytest.mark.django_db
def test_evaluate_model_on_its_holdout_and_on_new_products(settings, capsys):
    import_products(100)
    services.images_process(image_ids=list(ProductImage.objects.values_list("id", flat=True)), token="t")
    version = train_inline(settings, epochs=3)
    out = io.StringIO()
    call_command("evaluate_model", stdout=out)
    assert '"accuracy"' in out.getvalue() and "precision" in out.getvalue()
    assert "index recall against an exact scan" in capsys.readouterr().err  # the progress bar
    version.refresh_from_db()
    stored = version.val_accuracy
    assert stored == version.metrics["accuracy"]
    # New products plus some it trained on: those are left out, the validation figures stay.
    new = import_products(140)[100:]
    services.images_process(image_ids=new, token="t2")
    out = io.StringIO()
    call_command("evaluate_model", sku_prefix="FMNIST-train-", stdout=out)
    version.refresh_from_db()
    custom = version.metrics["custom"]
    assert custom["images"] == 40 + len(version.metrics["holdout_image_ids"])
    assert custom["excluded_training_images"] == version.n_train
    assert version.val_accuracy == stored and "left out because" in out.getvalue()


@pytest.mark.django_db
def test_pruning_keeps_the_served_versions_and_the_last_retired_one():
    from tests.factories import ProductImageFactory

    images = [ProductImageFactory() for _ in range(5)]
    now = timezone.now()

    def version(status, activated_minutes_ago=None):
        v = ModelVersion.objects.create(
            status=status, backbone="b", weights="random", input_size=32, classes=["a"],
            activated_at=None if activated_minutes_ago is None else now - timedelta(minutes=activated_minutes_ago))
        Embedding.objects.bulk_create(Embedding(image=i, product=i.product, version=v, predicted="a",
                                                vector=[float(v.pk)] * 512) for i in images)
        return v

    oldest, last_retired = version("retired", 30), version("retired", 20)
    failed, active, ready = version("failed"), version("active", 10), version("ready")
    never_served = version("retired")  # a ready version retired without ever being activated
    assert services.embeddings_prune(keep_retired=1, batch_size=2) == {
        "versions": sorted([oldest.pk, failed.pk, never_served.pk]), "rows": 15}
    left = dict(Embedding.objects.values_list("version_id").annotate(n=Count("id")).values_list("version_id", "n"))
    assert left == {last_retired.pk: 5, active.pk: 5, ready.pk: 5}
    oldest.refresh_from_db()
    assert oldest.metrics["embeddings_pruned"]["rows"] == 5 and oldest.status == "retired"
    assert services.embeddings_prune(keep_retired=1) == {"versions": [], "rows": 0}  # twice: nothing more
    assert services.embeddings_prune(keep_retired=0)["versions"] == [last_retired.pk]
    assert set(Embedding.objects.values_list("version_id", flat=True)) == {active.pk, ready.pk}


@pytest.mark.django_db
def test_a_pruned_version_activated_again_is_embedded_again(settings, django_capture_on_commit_callbacks):
    old, new = retired_and_active(settings)
    settings.RECOMMENDER = {**settings.RECOMMENDER, "KEEP_RETIRED_EMBEDDINGS": 0}
    assert services.embeddings_prune() == {"versions": [old.pk], "rows": 60}
    old.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=False) as published:
        services.model_version_activate(version=old)  # a rollback to it still works...
    assert len(published) == 1  # ...and sends its re-embedding to a worker
    assert services.embeddings_backfill(version_id=old.pk) == 60
    old.refresh_from_db()
    assert "embeddings_pruned" not in old.metrics
    assert services.embeddings_prune() == {"versions": [new.pk], "rows": 60}  # now the retired one
    services.model_version_evaluate(version=ModelVersion.objects.get(pk=new.pk))  # re-evaluated when pruned
    new.refresh_from_db()
    assert new.metrics["embeddings_pruned"]["rows"] == 60 and new.metrics["hnsw_recall_at_6"] is None
    from catalog.models import Product
    from recommender import selectors

    answer = selectors.similar_products(product=Product.objects.order_by("id").first(), k=6, use_cache=False)
    assert answer.version.pk == old.pk and len(answer.items) == 6
