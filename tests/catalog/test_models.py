from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from catalog.models import Category, Product, ProductImage
from catalog.services import category_get_or_create, product_create
from tests.factories import CategoryFactory, ProductFactory, ProductImageFactory, png_bytes, upload

pytestmark = pytest.mark.django_db


def test_sku_is_unique():
    ProductFactory(sku="A-1")
    with pytest.raises(IntegrityError), transaction.atomic():
        ProductFactory(sku="A-1")


def test_category_slug_is_unique():
    Category.objects.create(name="Shoes", slug="shoes")
    with pytest.raises(IntegrityError), transaction.atomic():
        Category.objects.create(name="Shoes 2", slug="shoes")


def test_price_cannot_be_negative_in_the_database():
    product = ProductFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        Product.objects.filter(pk=product.pk).update(price=Decimal("-1"))


def test_image_starts_pending_with_dimensions_and_hash():
    image = ProductImageFactory(data=png_bytes((40, 30), seed=1))
    assert image.status == ProductImage.Status.PENDING
    assert (image.width, image.height) == (40, 30)
    assert len(image.content_hash) == 64
    assert image.attempts == 0 and image.last_error == ""


def test_same_picture_twice_on_a_product_is_one_image():
    product = ProductFactory()
    data = png_bytes(seed=7)
    first = ProductImageFactory(product=product, data=data)
    second = ProductImageFactory(product=product, data=data)
    assert first.pk == second.pk
    assert product.images.count() == 1


def test_category_get_or_create_is_case_insensitive_and_makes_unique_slugs():
    a = category_get_or_create(name="T-shirt/top")
    assert category_get_or_create(name="t-shirt/top") == a
    b = category_get_or_create(name="T shirt top")
    assert a.slug != b.slug


def test_product_create_with_a_bad_image_leaves_nothing(settings):
    category = CategoryFactory()
    media = settings.MEDIA_ROOT
    before = sorted(p for p in media.rglob("*") if p.is_file()) if media.exists() else []
    with pytest.raises(Exception):
        product_create(sku="X-1", title="x", category=category,
                       uploads=[upload(png_bytes(seed=1)), upload(b"<html>not an image</html>", "x.png")])
    assert not Product.objects.filter(sku="X-1").exists()
    assert ProductImage.objects.count() == 0
    after = sorted(p for p in media.rglob("*") if p.is_file()) if media.exists() else []
    assert after == before


def test_deleting_a_product_removes_its_files(django_capture_on_commit_callbacks):
    image = ProductImageFactory()
    path = image.image.path
    with django_capture_on_commit_callbacks(execute=True):
        image.product.delete()
    import os

    assert not os.path.exists(path)
