"""The product panel read from precomputed neighbour lists (recommender.services.neighbours): one
query, exact (the same products as the full scan), kept exact for embeddings stored since
(scanned at read time, then folded in), filtered at read time, and deleted with the version's
embeddings."""

import numpy as np
import pytest

from catalog.models import Product
from recommender.models import Embedding, ModelVersion, NeighbourList, NeighbourListState
from recommender.selectors.similarity import nearest_products
from recommender.services import neighbours
from recommender.services.embeddings import embeddings_prune
from tests.factories import ProductFactory, ProductImageFactory
from tests.recommender.helpers import trained_catalog

pytestmark = pytest.mark.django_db


def _panel(version, product, k=6, **filters):
    """What similar_products asks for: the product's first image, the product excluded."""
    image, vector = (Embedding.objects.filter(version=version, product=product)
                     .order_by("image__position", "image_id").values_list("image_id", "vector").first())
    return vector, nearest_products(version=version, image=image, k=k, exclude_product=product.pk, **filters)


def _exact(version, vector, k, **filters):
    return nearest_products(version=version, vector=vector, k=k, exact=True, **filters)


def _lists(version_id):
    return NeighbourList.objects.filter(version_id=version_id).count()


def _listed_catalog(settings, count):
    """A trained catalog: the training built every product's list before activating the version."""
    version = trained_catalog(settings, count=count)
    assert _lists(version.pk) == Product.objects.count()
    return version


def test_an_embedded_version_gets_lists_and_the_panel_is_one_exact_query(settings, django_assert_num_queries):
    version = _listed_catalog(settings, 60)
    assert _lists(version.pk) == Product.objects.count()
    for product in Product.objects.order_by("id")[:10]:
        image, vector = (Embedding.objects.filter(version=version, product=product)
                         .order_by("image__position", "image_id").values_list("image_id", "vector").first())
        with django_assert_num_queries(1):  # the list: no transaction, no SET LOCAL, no index scan
            rows = nearest_products(version=version, image=image, k=6, exclude_product=product.pk)
        exact = _exact(version, vector, 6, exclude_product=product.pk)
        assert [p for p, _ in rows] == [p for p, _ in exact]
        assert [d for _, d in rows] == pytest.approx([d for _, d in exact], abs=1e-4)


def test_lists_are_filtered_at_read_time_and_fall_back_when_too_few_pass(settings):
    version = _listed_catalog(settings, 60)
    product = Product.objects.order_by("id").first()
    vector, before = _panel(version, product)
    hidden = before[0][0]
    Product.objects.filter(pk=hidden).update(is_active=False)
    vector, after = _panel(version, product)
    assert hidden not in [p for p, _ in after] and len(after) == 6
    assert [p for p, _ in after] == [p for p, _ in _exact(version, vector, 6, exclude_product=product.pk)]
    category = product.category_id
    _, filtered = _panel(version, product, category=category)
    assert [p for p, _ in filtered] == [p for p, _ in _exact(version, vector, 6, exclude_product=product.pk,
                                                              category=category)]
    # k above the list's size: the index answers (still k products).
    _, many = _panel(version, product, k=neighbours.LIST_SIZE + 5)
    assert len(many) == min(neighbours.LIST_SIZE + 5, Product.objects.filter(is_active=True).count() - 1)


def test_embeddings_stored_after_the_lists_are_seen_at_once_and_folded_in(settings):
    version = _listed_catalog(settings, 40)
    product = Product.objects.order_by("id").first()
    vector, _ = _panel(version, product)
    # New products right next to the query, stored without the lists knowing (like ingestion
    # below the fold threshold): the read path scans them.
    rng = np.random.default_rng(0)
    newcomers = []
    for i in range(3):
        other = ProductFactory()
        image = ProductImageFactory(product=other, position=0)
        Embedding.objects.create(image=image, product=other, version=version, predicted="x",
                                 vector=np.asarray(vector) + rng.normal(0, 1e-3 * (i + 1), 512))
        newcomers.append(other.pk)
    _, rows = _panel(version, product)
    assert [p for p, _ in rows][:3] == newcomers
    assert [p for p, _ in rows] == [p for p, _ in _exact(version, vector, 6, exclude_product=product.pk)]
    folded = neighbours.neighbours_fold(version_id=version.pk)
    assert folded["products"] >= 3
    assert NeighbourList.objects.get(version=version, product=product).neighbour_ids[:3] == newcomers
    assert NeighbourList.objects.filter(version=version, product_id__in=newcomers).count() == 3  # lists of their own
    for pid in [product.pk, *newcomers]:
        vector, rows = _panel(version, Product.objects.get(pk=pid))
        assert [p for p, _ in rows] == [p for p, _ in _exact(version, vector, 6, exclude_product=pid)]


def test_pruning_a_version_deletes_its_lists(settings):
    old = _listed_catalog(settings, 40)
    ModelVersion.objects.filter(pk=old.pk).update(status=ModelVersion.Status.FAILED)
    assert _lists(old.pk) > 0
    embeddings_prune(keep_retired=0)
    assert _lists(old.pk) == 0
    assert not NeighbourListState.objects.filter(version_id=old.pk).exists()
