"""Setup shared by the recommender's tests: a real catalog imported from Fashion-MNIST, processed
and trained in this process by the real services (no worker), and a training lock held by another
PostgreSQL session (as another worker would hold it)."""

from __future__ import annotations

import io
from datetime import timedelta

from django.core.management import call_command

from catalog.models import ProductImage
from recommender.models import ModelVersion
from recommender.services.ingestion import images_process
from recommender.services.training import model_version_start, model_version_train
from tests.factories import ProductImageFactory


def import_products(count, split="train", offset=0) -> list[int]:
    """Import the first ``count`` images of a split (the importer skips those already imported);
    returns the ids of every image in the catalog."""
    call_command("import_fashion_mnist", count=count, split=split, offset=offset, verbosity=0, stdout=io.StringIO())
    return list(ProductImage.objects.values_list("id", flat=True))


def process_all(token="t") -> dict:
    """Features, thumbnails and (with an active version) embeddings of every image, as one task."""
    return images_process(image_ids=list(ProductImage.objects.values_list("id", flat=True)), token=token)


def train_inline(settings, epochs=3) -> ModelVersion:
    """Train a version in this process; active when it passes the quality gate."""
    settings.RECOMMENDER = {**settings.RECOMMENDER, "EPOCHS": epochs}
    version = model_version_start(trigger="test")
    return model_version_train(version_id=version.pk)


def trained_catalog(settings, count=80, epochs=2) -> ModelVersion:
    """``count`` processed products and an active version trained on them."""
    import_products(count)
    process_all()
    version = train_inline(settings, epochs=epochs)
    assert version.status == "active"
    return version


def retired_and_active(settings):
    """60 processed images and two trained versions: the first retired, the second active."""
    images_process(image_ids=import_products(60), token="t")
    old = train_inline(settings, epochs=2)
    new = train_inline(settings, epochs=2)
    assert (ModelVersion.objects.get(pk=old.pk).status, new.status) == ("retired", "active")
    return old, new


def lock_from_another_session(version_id):
    """Hold the training lock of a version from another PostgreSQL session (another worker); the
    lock goes when the returned connection is closed."""
    import psycopg

    from recommender.locks import TRAINING_LOCK_NAMESPACE
    from tests.conftest import database_url_for_tests

    other = psycopg.connect(database_url_for_tests(), autocommit=True)
    other.execute("SELECT pg_advisory_lock(%s, %s)", [TRAINING_LOCK_NAMESPACE, version_id])
    return other


def ingestion_backlog_with_recent_work(now):
    """12 images: 6 finished over the last 60 s (one every 10 s), 1 failed long ago, 1 processing
    and 4 pending."""
    images = [ProductImageFactory(seed=i) for i in range(12)]
    for n, image in enumerate(images[:6]):
        ProductImage.objects.filter(pk=image.pk).update(status="ready",
                                                        status_changed_at=now - timedelta(seconds=60 - 10 * n))
    ProductImage.objects.filter(pk=images[6].pk).update(status="failed", status_changed_at=now - timedelta(hours=2))
    ProductImage.objects.filter(pk=images[7].pk).update(status="processing")
    return images


def experiment_between_two_versions(settings, *, visitor_prefix="visitor-"):
    """Two trained versions (the first made a ready candidate, the second active), a running
    50/50 experiment between them, and a visitor id that lands in each arm."""
    from recommender.selectors.experiments import arm_assign
    from recommender.services.experiments import experiment_start

    old, new = retired_and_active(settings)
    ModelVersion.objects.filter(pk=old.pk).update(status="ready")
    experiment = experiment_start(candidate=ModelVersion.objects.get(pk=old.pk), split=0.5)
    visitors = {arm: next(v for v in (f"{visitor_prefix}{n:08x}" for n in range(100))
                          if arm_assign(experiment_id=experiment.pk, split=0.5, visitor=v) == arm) for arm in "ab"}
    return old, new, experiment, visitors
