"""Building and keeping the neighbour lists (recommender.services.neighbours): exact against a
brute force, sent after embeddings commit, one refresh per version at a time, none above
NEIGHBOUR_LISTS_MAX_ROWS, and rows committed after a build's snapshot are not lost."""

import numpy as np
import pytest

from catalog.models import Product
from recommender.models import Embedding, NeighbourList, NeighbourListState
from recommender.publishing import REFRESH_NEIGHBOURS
from recommender.selectors.similarity import nearest_products
from recommender.services import neighbours
from recommender.services.embeddings import embeddings_create
from tests.factories import ProductFactory, ProductImageFactory
from tests.recommender.conftest import messages
from tests.recommender.helpers import trained_catalog


def _brute_force(matrix, products, row, size):
    d = np.linalg.norm(matrix - matrix[row], axis=1)
    d[products == products[row]] = np.inf
    best = {}
    for i in np.lexsort((products, d)):
        if np.isfinite(d[i]) and int(products[i]) not in best:
            best[int(products[i])] = float(d[i])
    return list(best.items())[:size]


def test_top_lists_are_the_brute_force_answer_with_several_images_per_product():
    rng = np.random.default_rng(3)
    products = np.sort(rng.integers(0, 900, size=3000))  # 1 to ~10 rows per product, grouped
    matrix = rng.standard_normal((3000, 16)).astype(np.float32)
    queries = np.flatnonzero(np.r_[True, products[1:] != products[:-1]])[:200]
    lists = neighbours._top_lists(matrix[queries], products[queries], matrix, products, size=8)
    for row, (ids, distances) in zip(queries, lists):
        expected = _brute_force(matrix, products, row, 8)
        assert ids == [p for p, _ in expected]
        assert distances == pytest.approx([d for _, d in expected], abs=1e-5)


def test_a_row_whose_sample_bound_lets_too_few_through_is_partitioned_in_full():
    d = np.tile(np.arange(1000, dtype=np.float32), (2, 1))
    d[1] = d[1][::-1]
    d[0, ::neighbours.SAMPLE_STRIDE] = -1  # row 0's sampled entries are its smallest: the bound is too tight
    for row, found in enumerate(neighbours._nearest_rows(d, 40)):
        assert sorted(found.tolist()) == sorted(np.argsort(d[row], kind="stable")[:40].tolist())


@pytest.mark.django_db
def test_stored_embeddings_send_one_refresh_after_commit(settings, broker, django_capture_on_commit_callbacks):
    from django.core.cache import cache

    from recommender import publishing

    version = trained_catalog(settings, count=30)
    cache.delete(publishing.NEIGHBOURS_FLAG.format(version.pk))
    broker.queue_purge("training")
    image_ids = list(Embedding.objects.filter(version=version).values_list("image_id", flat=True)[:3])
    Embedding.objects.filter(image_id__in=image_ids).delete()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert embeddings_create(version=version, image_ids=image_ids) == 3
        assert broker.client.llen("training") == 0  # not before the rows are committed
    for callback in callbacks:
        callback()
    [message] = messages(broker, "training")
    assert (message.headers["task"], message.payload[0]) == (REFRESH_NEIGHBOURS, [version.pk])


@pytest.mark.django_db
def test_a_training_builds_the_lists_and_a_refresh_then_does_nothing_until_the_threshold(settings):
    version = trained_catalog(settings, count=30)
    assert NeighbourList.objects.filter(version=version).count() == Product.objects.count()
    assert version.progress["products_listed"] == version.progress["products_total"] == Product.objects.count()
    assert neighbours.neighbours_refresh(version_id=version.pk) is None  # nothing new: nothing done
    neighbours.neighbours_delete(version_id=version.pk)  # lost (say): the next refresh builds them
    assert neighbours.neighbours_refresh(version_id=version.pk)["products"] == Product.objects.count()
    state = NeighbourListState.objects.get(version=version)
    assert state.rows == Embedding.objects.filter(version=version).count()


@pytest.mark.django_db
def test_a_second_refresh_of_the_same_version_does_nothing(settings):
    import psycopg

    from recommender.locks import NEIGHBOURS_LOCK_NAMESPACE
    from tests.conftest import database_url_for_tests

    version = trained_catalog(settings, count=20)
    neighbours.neighbours_delete(version_id=version.pk)
    other = psycopg.connect(database_url_for_tests(), autocommit=True)
    try:
        other.execute("SELECT pg_advisory_lock(%s, %s)", [NEIGHBOURS_LOCK_NAMESPACE, version.pk])
        assert neighbours.neighbours_refresh(version_id=version.pk) is None
        assert not NeighbourList.objects.filter(version=version).exists()
    finally:
        other.execute("SELECT pg_advisory_unlock(%s, %s)", [NEIGHBOURS_LOCK_NAMESPACE, version.pk])
        other.close()
    assert neighbours.neighbours_refresh(version_id=version.pk)["products"] > 0  # once the other one is done


@pytest.mark.django_db
def test_a_version_above_the_limit_has_no_lists_and_the_index_answers(settings):
    version = trained_catalog(settings, count=20)
    assert NeighbourList.objects.filter(version=version).exists()
    settings.RECOMMENDER = {**settings.RECOMMENDER, "NEIGHBOUR_LISTS_MAX_ROWS": 10}
    assert neighbours.neighbours_refresh(version_id=version.pk) is None
    assert not NeighbourList.objects.filter(version=version).exists()
    assert not NeighbourListState.objects.filter(version=version).exists()
    product = Product.objects.order_by("id").first()
    image, vector = Embedding.objects.filter(version=version, product=product).values_list("image_id", "vector").first()
    rows = nearest_products(version=version, image=image, k=6, exclude_product=product.pk)  # the vector read for it
    exact = nearest_products(version=version, vector=vector, k=6, exact=True, exclude_product=product.pk)
    assert [p for p, _ in rows] == [p for p, _ in exact]


@pytest.mark.django_db
def test_a_row_committed_after_the_lists_snapshot_is_folded_in(settings):
    """Its id is below the lists' ``upto`` (drawn before the build read the rows, committed after):
    the next fold looks FOLD_OVERLAP ids back and takes it in."""
    version = trained_catalog(settings, count=20)
    product = Product.objects.order_by("id").first()
    vector = np.asarray(Embedding.objects.filter(version=version, product=product)
                        .order_by("image__position", "image_id").values_list("vector", flat=True).first())
    late = ProductFactory()
    Embedding.objects.create(image=ProductImageFactory(product=late, position=0), product=late, version=version,
                             predicted="x", vector=vector + 1e-3)
    neighbours.neighbours_rebuild(version_id=version.pk)
    # As if the build had not seen it: its product's list and every mention of it are gone.
    NeighbourList.objects.filter(version=version, product=late).delete()
    for row in NeighbourList.objects.filter(version=version):
        keep = [i for i, p in enumerate(row.neighbour_ids) if p != late.pk]
        row.neighbour_ids = [row.neighbour_ids[i] for i in keep]
        row.distances = [row.distances[i] for i in keep]
        row.save()
    other = ProductFactory()  # one more row after the build: a fold runs
    Embedding.objects.create(image=ProductImageFactory(product=other, position=0), product=other, version=version,
                             predicted="x", vector=vector + 50)
    neighbours.neighbours_fold(version_id=version.pk)
    assert NeighbourList.objects.get(version=version, product=product).neighbour_ids[0] == late.pk
    assert NeighbourList.objects.get(version=version, product=late).neighbour_ids[0] == product.pk  # its own list
