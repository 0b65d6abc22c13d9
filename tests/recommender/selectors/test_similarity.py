"""Similar products (recommender.selectors.similarity): cached answers stay truthful, the exact
fallback copes with many images per product, and cold start (no trained head yet) is standardised
once, filtered and cached."""

import numpy as np
import pytest

from catalog.models import Product, ProductImage
from recommender.models import Embedding, ModelVersion
from recommender.selectors.similarity import nearest_products, similar_products
from recommender.services.ingestion import images_process
from tests.factories import ProductFactory, ProductImageFactory
from tests.recommender.helpers import import_products, process_all, trained_catalog

pytestmark = pytest.mark.django_db


def test_a_cached_answer_never_shows_a_product_hidden_since(settings):
    trained_catalog(settings)
    product = Product.objects.order_by("id").first()
    first = similar_products(product=product, k=6)  # computed and cached
    assert len(first.items) == 6
    hidden = first.items[0].product
    Product.objects.filter(pk=hidden.pk).update(is_active=False)  # like the admin's bulk action
    again = similar_products(product=product, k=6)
    assert hidden.pk not in [i.product.pk for i in again.items]
    assert len(again.items) == 6  # answered afresh, not one short
    deleted = again.items[1].product
    deleted.delete()
    assert deleted.pk not in [i.product.pk for i in similar_products(product=product, k=6).items]


def test_a_cached_price_filtered_answer_drops_a_product_repriced_out_of_the_range(settings):
    trained_catalog(settings)
    product = Product.objects.order_by("id").first()
    answer = similar_products(product=product, k=6, max_price=200)
    moved = answer.items[0].product
    Product.objects.filter(pk=moved.pk).update(price=300)
    again = similar_products(product=product, k=6, max_price=200)
    assert moved.pk not in [i.product.pk for i in again.items] and len(again.items) == 6


def exact_nearest_products(version, query, k, exclude_product):
    """The k nearest products by a full scan in numpy: each product at its nearest image."""
    rows = Embedding.objects.filter(version=version).exclude(product_id=exclude_product).values_list(
        "product_id", "vector")
    best = {}
    for product_id, vector in rows:
        distance = float(np.linalg.norm(np.asarray(vector) - np.asarray(query)))
        best[product_id] = min(distance, best.get(product_id, np.inf))
    return sorted(best, key=lambda pid: (best[pid], pid))[:k]


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
    rows = nearest_products(version=version, vector=query, k=6, exclude_product=source)
    assert len(rows) == 6 and len({pid for pid, _ in rows}) == 6
    assert {pid for pid, _ in rows} <= set(crowd)  # the genuinely nearest products
    assert exact_nearest_products(version, query, 6, source) == [pid for pid, _ in rows]


def test_cold_start_is_filtered_after_standardising_and_is_cached(settings, django_assert_max_num_queries):
    import_products(120)
    process_all()
    assert not ModelVersion.objects.exists()
    product = Product.objects.order_by("id").first()
    result = similar_products(product=product, k=6, same_category=True)
    assert result.source == "backbone" and len(result.items) == 6
    assert {i.product.category_id for i in result.items} == {product.category_id}
    assert product.pk not in [i.product.pk for i in result.items]
    # The distances use the scaler of the whole catalog, not of the filtered subset.
    unfiltered = similar_products(product=product, k=120, use_cache=False)
    assert unfiltered.source == "backbone"
    distances = {i.product.pk: i.distance for i in unfiltered.items}
    for item in result.items:
        assert item.distance == pytest.approx(distances[item.product.pk], rel=1e-5)
    with django_assert_max_num_queries(8):  # cached: no feature matrix read (three are its duplicates and rules: the product's own row, its rules, the pairs among the answer)
        again = similar_products(product=product, k=6, same_category=True)
    assert [i.product.pk for i in again.items] == [i.product.pk for i in result.items]
    # 8% more features refit the scaler (services.features.SCALE_REFIT_SHARE), which changes the
    # cache key: the answer is recomputed with them.
    import_products(130)
    new = list(ProductImage.objects.filter(status="pending").values_list("id", flat=True))
    images_process(image_ids=new, token="t2")
    fresh = similar_products(product=product, k=6, same_category=True)
    assert len(fresh.items) == 6 and fresh.source == "backbone"
