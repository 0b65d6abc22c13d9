"""Reads of model versions (recommender.selectors.versions): a training's place on the progress bar,
whether a catalog can be trained, and why it needs retraining."""

from datetime import timedelta

import pytest
from django.utils import timezone

from catalog.models import Product, ProductImage
from catalog.services import category_get_or_create
from recommender.conf import config
from recommender.models import ModelVersion
from recommender.selectors.versions import retrain_reason, training_blocker, version_progress
from recommender.services.ingestion import images_process
from tests.recommender.helpers import import_products, train_inline


def test_bar_never_moves_backwards_through_the_phases():
    version = ModelVersion(status=ModelVersion.Status.TRAINING, progress={})
    steps = [{"phase": "queued"}, {"phase": "loading features"}]
    steps += [{"phase": "training", "epoch": e, "epochs": 5} for e in range(6)]
    steps += [{"phase": "saving"}]
    steps += [{"phase": "extracting", "images_extracted": n, "images_total": 100} for n in (0, 50, 100)]
    steps += [{"phase": "embedding", "images_embedded": n, "images_total": 100} for n in (0, 50, 100)]
    steps += [{"phase": "evaluating"}, {"phase": "activating"}, {"phase": "done"}]
    percents = []
    for step in steps:
        version.progress = step
        percents.append(version_progress(version)["percent"])
    assert percents == sorted(percents) and percents[0] == 0 and percents[-1] == 100


def test_training_blocker_names_the_minimums():
    minimum = config().min_images_to_train
    assert training_blocker(images=minimum, categories=2, backbone="b") == ""
    too_few = training_blocker(images=minimum - 1, categories=2, backbone="b")
    assert too_few.startswith(f"{minimum - 1} images have features for the backbone b; at least {minimum} are needed")
    assert training_blocker(images=minimum, categories=1, backbone="b") == (
        "the processed images are all in one category; training needs at least two.")


@pytest.mark.django_db
def test_retraining_is_triggered_by_new_categories_and_new_images(settings):
    assert retrain_reason() is None  # nothing to train on
    ids = import_products(60)
    assert retrain_reason() is None  # backlog not drained yet
    images_process(image_ids=ids, token="t")
    assert retrain_reason() == "no active version"
    train_inline(settings)
    assert retrain_reason() is None
    ModelVersion.objects.filter(status="active").update(activated_at=timezone.now() - timedelta(days=8))
    assert retrain_reason().startswith("scheduled:")  # the weekly schedule
    ModelVersion.objects.filter(status="active").update(activated_at=timezone.now())
    new = import_products(80)[60:]
    images_process(image_ids=new, token="t2")
    assert "newer than" in retrain_reason()
    Product.objects.filter(pk=ProductImage.objects.get(pk=new[0]).product_id).update(
        category=category_get_or_create(name="Hats"))
    assert retrain_reason() == "new categories: Hats"
