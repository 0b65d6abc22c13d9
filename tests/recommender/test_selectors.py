"""Similar products: cached answers stay truthful, the exact fallback copes with many images per
product, and cold start (no trained head yet) is standardised once, filtered and cached."""

import io

import numpy as np
import pytest
from django.core.management import call_command

from catalog.models import Product, ProductImage
from recommender import selectors, services
from recommender.models import BackboneFeature, Embedding, ModelVersion
from tests.factories import ProductFactory, ProductImageFactory

pytestmark = pytest.mark.django_db


def trained_catalog(settings, count=80):
    call_command("import_fashion_mnist", count=count, split="train", verbosity=0, stdout=io.StringIO())
    services.images_process(image_ids=list(ProductImage.objects.values_list("id", flat=True)), token="t")
    settings.RECOMMENDER = {**settings.RECOMMENDER, "EPOCHS": 2}
    version = services.model_version_train(version_id=services.model_version_start(trigger="test").pk)
    assert version.status == "active"
    return version


def test_a_cached_answer_never_shows_a_product_hidden_since(settings):
    trained_catalog(settings)
    product = Product.objects.order_by("id").first()
    first = selectors.similar_products(product=product, k=6)  # computed and cached
    assert len(first.items) == 6
    hidden = first.items[0].product
    Product.objects.filter(pk=hidden.pk).update(is_active=False)  # like the admin's bulk action
    again = selectors.similar_products(product=product, k=6)
    assert hidden.pk not in [i.product.pk for i in again.items]
    assert len(again.items) == 6  # answered afresh, not one short
    deleted = again.items[1].product
    deleted.delete()
    assert deleted.pk not in [i.product.pk for i in selectors.similar_products(product=product, k=6).items]


def test_a_cached_price_filtered_answer_drops_a_product_repriced_out_of_the_range(settings):
    trained_catalog(settings)
    product = Product.objects.order_by("id").first()
    answer = selectors.similar_products(product=product, k=6, max_price=200)
    moved = answer.items[0].product
    Product.objects.filter(pk=moved.pk).update(price=300)
    again = selectors.similar_products(product=product, k=6, max_price=200)
    assert moved.pk not in [i.product.pk for i in again.items] and len(again.items) == 6


def test_exact_fallback_returns_k_products_when_each_has_many_near_identical_images(settings):
    version = trained_catalog(settings, count=40)
    source, query = Embedding.objects.filter(version=version).values_list("product_id", "vector").first()
    # Eight products with ten images each, all within a hair of the query: the nearest image rows
    # all belong to the first few products, so a candidate window of image rows covers too few.
    rng = np.random.default_rng(0)
    crowd = []
    for _ in range(8):
        product = ProductFactory()
        crowd.append(product.pk)
        for position in range(10):
            image = ProductImageFactory(product=product, position=position)
            Embedding.objects.create(image=image, product=product, version=version, predicted="x",
                                     vector=np.asarray(query) + rng.normal(0, 1e-4, 512))
    rows = selectors.nearest_products(version=version, vector=query, k=6, exclude_product=source)
    assert len(rows) == 6 and len({pid for pid, _ in rows}) == 6
    assert {pid for pid, _ in rows} <= set(crowd)  # the genuinely nearest products
    exact = selectors._nearest_products_sql(version_id=version.pk, vector=query, k=6, exact=True,
                                            exclude_product=source)
    assert [pid for pid, _ in exact] == [pid for pid, _ in rows]


def test_cold_start_is_filtered_after_standardising_and_is_cached(settings, django_assert_max_num_queries):
    call_command("import_fashion_mnist", count=120, split="train", verbosity=0, stdout=io.StringIO())
    services.images_process(image_ids=list(ProductImage.objects.values_list("id", flat=True)), token="t")
    assert not ModelVersion.objects.exists()
    product = Product.objects.order_by("id").first()
    result = selectors.similar_products(product=product, k=6, same_category=True)
    assert result.source == "backbone" and len(result.items) == 6
    assert {i.product.category_id for i in result.items} == {product.category_id}
    assert product.pk not in [i.product.pk for i in result.items]
    # The distances use the scaler of the whole catalog, not of the filtered subset.
    unfiltered = dict(selectors._cold_start_nearest(
        features_vector=BackboneFeature.objects.filter(image__product=product).values_list("vector", flat=True)[0],
        backbone=BackboneFeature.objects.first().backbone, k=120, exclude_product=product.pk))
    for item in result.items:
        assert item.distance == pytest.approx(unfiltered[item.product.pk], rel=1e-5)
    with django_assert_max_num_queries(5):  # cached: no feature matrix read
        again = selectors.similar_products(product=product, k=6, same_category=True)
    assert [i.product.pk for i in again.items] == [i.product.pk for i in result.items]
    # New features change the cache key: the answer is recomputed with them.
    call_command("import_fashion_mnist", count=130, split="train", verbosity=0, stdout=io.StringIO())
    new = list(ProductImage.objects.filter(status="pending").values_list("id", flat=True))
    services.images_process(image_ids=new, token="t2")
    fresh = selectors.similar_products(product=product, k=6, same_category=True)
    assert len(fresh.items) == 6 and fresh.source == "backbone"
