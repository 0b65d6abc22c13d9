"""A version's trigger (``ModelVersion.trigger``, 200 characters) is bounded by model_version_start
whoever builds it: the automatic retraining with a catalog of many new categories, and a staff
user with a long name and reason through the API. Issue 15, item 5: an overflow raised DataError
in the hourly retraining task, which was retried and dropped every hour, for ever."""

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from catalog.models import Category, Product, ProductImage
from recommender.models import FEATURE_DIM, BackboneFeature, ModelVersion
from recommender.selectors.versions import serving_identity
from recommender.services.maintenance import retrain_if_needed
from recommender.services.training import model_version_start
from tests.api.conftest import app_permissions, grant

pytestmark = pytest.mark.django_db
TRIGGER_MAX = ModelVersion._meta.get_field("trigger").max_length


def catalog_with_new_categories(*, known, new):
    """One ready image with the serving backbone's features per category, and an active version
    that knows only ``known``."""
    names = [*known, *new]
    categories = Category.objects.bulk_create(
        [Category(name=name, slug=f"c-{n}") for n, name in enumerate(names)])
    products = Product.objects.bulk_create(
        [Product(sku=f"S-{n}", title=f"P {n}", category=c) for n, c in enumerate(categories)])
    images = ProductImage.objects.bulk_create(
        [ProductImage(product=p, image=f"x/{n}.png", content_hash=f"{n:064d}", status=ProductImage.Status.READY)
         for n, p in enumerate(products)])
    identity = serving_identity()
    BackboneFeature.objects.bulk_create(
        [BackboneFeature(image=i, backbone=identity, vector=np.zeros(FEATURE_DIM, np.float32)) for i in images])
    return ModelVersion.objects.create(status="active", backbone=identity, weights="random", input_size=32,
                                       classes=list(known), n_images=len(names), activated_at=timezone.now())


def test_a_hundred_new_categories_with_long_names_start_a_retraining_that_says_how_many(
        django_capture_on_commit_callbacks):
    new = sorted(f"{n:03d} " + "category with a rather long name of fifty chars"[:46] for n in range(100))
    assert {len(name) for name in new} == {50}
    active = catalog_with_new_categories(known=["known one", "known two"], new=new)
    with django_capture_on_commit_callbacks(execute=False) as published:
        version = retrain_if_needed()
    assert version is not None and version.status == "training" and len(published) == 1
    stored = ModelVersion.objects.get(pk=version.pk).trigger
    assert len(stored) <= TRIGGER_MAX
    assert stored.startswith("automatic: new categories: ")
    # Whole names, then how many were left out: a person can tell it is not the whole list.
    listed, _, rest = stored.removeprefix("automatic: new categories: ").partition(" and ")
    names = listed.split(", ")
    assert names == new[:len(names)] and len(names) >= 1
    assert rest == f"{100 - len(names)} more"
    assert ModelVersion.objects.get(pk=active.pk).status == "active"


def test_any_caller_of_model_version_start_gets_a_bounded_trigger_marked_as_cut(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        version = model_version_start(trigger="manual: " + "x" * 500)
    stored = ModelVersion.objects.get(pk=version.pk).trigger
    assert len(stored) == TRIGGER_MAX and stored.endswith("…") and stored.startswith("manual: xxx")


def test_a_training_started_through_the_api_by_a_long_username_with_a_long_reason(
        django_capture_on_commit_callbacks):
    username = "u" * get_user_model()._meta.get_field("username").max_length  # 150 characters
    user = grant(get_user_model().objects.create_user(username, "long@example.com", "pw", is_staff=True),
                 *app_permissions())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    reason = "r" * 150  # the serializer's limit
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post("/api/v1/model-versions/train/", {"reason": reason}, format="json")
    assert response.status_code == 202, response.content
    stored = ModelVersion.objects.get(pk=response.json()["id"]).trigger
    assert response.json()["trigger"] == stored
    assert len(stored) == TRIGGER_MAX and stored.startswith(f"api ({username}): rrr") and stored.endswith("…")
