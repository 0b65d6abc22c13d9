"""Model versions after training (recommender.services.versions): the quality gate and activation."""

import re

import pytest

from catalog.models import ProductImage
from recommender.models import BackboneFeature, Embedding, ModelVersion
from recommender.services.embeddings import embeddings_backfill
from recommender.services.ingestion import images_process
from recommender.services.versions import GATE_MIN_IMAGES, model_version_activate, model_version_gate
from tests.recommender.helpers import import_products, process_all, retired_and_active, train_inline

pytestmark = pytest.mark.django_db


def test_activating_a_version_leaves_the_missing_embeddings_to_a_worker(settings, django_capture_on_commit_callbacks):
    old, new = retired_and_active(settings)
    later = import_products(70)[60:]
    images_process(image_ids=later, token="t2")  # embedded by the active (new) version only
    assert not Embedding.objects.filter(version=old, image_id__in=later).exists()
    old.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=False) as published:
        model_version_activate(version=old)  # in a web request: must not embed here
    assert ModelVersion.objects.get(pk=old.pk).status == "active"
    assert not Embedding.objects.filter(version=old, image_id__in=later).exists()
    assert len(published) == 1  # the embedding task, sent after commit
    assert embeddings_backfill(version_id=old.pk) == 10  # what that task runs on a worker
    assert Embedding.objects.filter(version=old, image_id__in=later).count() == 10
    assert embeddings_backfill(version_id=old.pk) == 0  # idempotent


def test_the_quality_gate_compares_on_images_neither_version_trained_on(settings):
    import_products(100)
    process_all()
    first = train_inline(settings, epochs=4)
    ids = import_products(300)
    images_process(image_ids=[i for i in ids if ProductImage.objects.get(pk=i).status == "pending"], token="t2")
    second = train_inline(settings, epochs=4)
    gate = second.progress.get("gate") or second.error
    assert "neither version trained on" in gate, gate
    unseen = int(re.search(r"\(on (\d+) held-out images neither", gate).group(1))
    holdout = set(second.metrics["holdout_image_ids"])
    seen_by_first = set(BackboneFeature.objects.filter(image_id__in=holdout, created_at__lte=first.started_at)
                        .values_list("image_id", flat=True)) - set(first.metrics["holdout_image_ids"])
    assert unseen == len(holdout - seen_by_first) >= GATE_MIN_IMAGES


def test_the_gate_lets_a_version_through_when_nothing_comparable_is_served():
    def version(status, **fields):
        return ModelVersion.objects.create(status=status, backbone="resnet50:x", weights="random", input_size=32,
                                           **{"classes": ["a", "b"], **fields})

    candidate = version("ready")
    assert model_version_gate(version=candidate) == (True, "no active version to compare with")
    version("active", classes=["a", "b", "c"])  # the catalog gained a category since
    assert model_version_gate(version=candidate) == (
        True, "catalog categories changed; versions are not comparable")
