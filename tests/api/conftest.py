"""Fixtures of the API tests: clients for the three kinds of caller, and a small real catalog with
features, thumbnails and (optionally) a trained, active model version made by the real services."""

import io
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from catalog.models import Product, ProductImage
from catalog.services import category_get_or_create, files_removed_on_error, product_create, product_image_add
from catalog.validators import normalise_image

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
PASSWORD = "correct horse battery staple"


def grant(user, *names):
    """Give ``user`` the permissions named "app_label.codename" (and nothing else) and return it."""
    from django.contrib.auth.models import Permission

    for name in names:
        app_label, codename = name.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return get_user_model().objects.get(pk=user.pk)  # a fresh object: has_perm caches per instance


def app_permissions(*, prefix=""):
    """Every permission of the catalog and the recommender (those of one action with ``prefix="view_"``)."""
    from django.contrib.auth.models import Permission

    found = Permission.objects.filter(content_type__app_label__in=["catalog", "recommender"],
                                      codename__startswith=prefix).select_related("content_type")
    return [f"{p.content_type.app_label}.{p.codename}" for p in found]


def _client_for(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    client.user = user
    return client


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)


@pytest.fixture
def staff(db):
    """A staff user holding every permission of both apps (an editor of the shop): the API checks
    the model permissions, as the admin does, not only is_staff."""
    user = get_user_model().objects.create_user("sam", "sam@example.com", PASSWORD, is_staff=True)
    return grant(user, *app_permissions())


@pytest.fixture
def viewer(db):
    """A staff user who may only look: the view permission of every model of both apps."""
    user = get_user_model().objects.create_user("vera", "vera@example.com", PASSWORD, is_staff=True)
    return grant(user, *app_permissions(prefix="view_"))


@pytest.fixture
def anon_client():
    return APIClient()


@pytest.fixture
def user_client(user):
    return _client_for(user)


@pytest.fixture
def staff_client(staff):
    return _client_for(staff)


@pytest.fixture
def clients(anon_client, user_client, staff_client):
    return {"anonymous": anon_client, "user": user_client, "staff": staff_client}


def png(array_or_size=(32, 32), colour=(200, 30, 30)) -> bytes:
    """PNG bytes of a uint8 array (e.g. a Fashion-MNIST image) or of a plain colour."""
    buffer = io.BytesIO()
    if isinstance(array_or_size, tuple):
        Image.new("RGB", array_or_size, colour).save(buffer, "PNG")
    else:
        Image.fromarray(array_or_size, mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def media_files(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def fashion_products(fashion_mnist, *, classes=range(10), per_class=5, split="train", offset=0,
                     sku_prefix=None) -> list[Product]:
    """Products with one Fashion-MNIST image each, through the catalog services (as the importer does)."""
    (x_train, y_train), (x_test, y_test) = fashion_mnist
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    wanted = {int(c): per_class for c in classes}
    products = []
    sku_prefix = sku_prefix or f"FM-{split}-"
    with files_removed_on_error():
        for index in range(offset, len(images)):
            label = int(labels[index])
            if wanted.get(label, 0) <= 0:
                continue
            wanted[label] -= 1
            category = category_get_or_create(name=CLASS_NAMES[label])
            product = product_create(sku=f"{sku_prefix}{index:05d}", title=f"{CLASS_NAMES[label]} #{index}",
                                     category=category, price=Decimal(10 + index % 90),
                                     description=f"Fashion-MNIST {split} image {index}.")
            product_image_add(product=product, normalised=normalise_image(io.BytesIO(png(images[index]))),
                              original_name=f"{split}-{index}.png", position=0)
            products.append(product)
            if not any(wanted.values()):
                break
    return products


def process_pending():
    """Extract features and thumbnails of every pending image, in this process (the worker's service)."""
    from recommender.services.ingestion import images_process

    ids = list(ProductImage.objects.filter(status=ProductImage.Status.PENDING).values_list("id", flat=True))
    return images_process(image_ids=ids, token="tests")


def train_and_activate(settings, *, epochs=None):
    """Train a version with the real services and return it (activated when it passes the gate)."""
    from recommender.services.training import model_version_start, model_version_train

    if epochs is not None:
        settings.RECOMMENDER = {**settings.RECOMMENDER, "EPOCHS": epochs}
    version = model_version_start(trigger="tests")
    return model_version_train(version_id=version.pk)


@pytest.fixture
def small_catalog(db, fashion_mnist):
    """Three categories x 8 products, processed (ready, with features and thumbnails), no model yet."""
    products = fashion_products(fashion_mnist, classes=[1, 7, 8], per_class=8)
    process_pending()
    return products


@pytest.fixture
def trained_catalog(small_catalog, settings):
    version = train_and_activate(settings, epochs=4)
    assert version.status == "active", version.error
    return small_catalog, version
