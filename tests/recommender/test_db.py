"""recommender.db: vectors written and read in psycopg's binary protocol, against the real
PostgreSQL + pgvector."""

import numpy as np
import pytest
from django.db import IntegrityError

from recommender import db
from recommender.models import BackboneFeature, Embedding, ModelVersion
from tests.factories import ProductImageFactory

pytestmark = pytest.mark.django_db


def test_bulk_insert_binary_stores_exact_float32_and_prepares_fields_like_the_orm():
    image = ProductImageFactory()
    vector = np.random.default_rng(3).standard_normal(2048).astype(np.float32) * 1e3
    vector[:3] = [1e-38, -0.0, 3.4e38]  # near the float32 limits: text formatting could round these
    assert db.bulk_insert_binary([BackboneFeature(image=image, backbone="b:1", vector=vector)]) == 1
    row = BackboneFeature.objects.get(image=image, backbone="b:1")
    assert row.created_at is not None  # auto_now_add applied as the ORM would
    np.testing.assert_array_equal(np.asarray(row.vector, dtype=np.float32), vector)


def test_bulk_insert_binary_ignores_conflicts_and_batches():
    images = [ProductImageFactory() for _ in range(5)]
    version = ModelVersion.objects.create(status="active", backbone="b:1", weights="random", input_size=32)
    vectors = np.arange(5 * 512, dtype=np.float32).reshape(5, 512)

    def rows(pick):
        return [Embedding(image=images[i], product=images[i].product, version=version, vector=vectors[i],
                          predicted="x", confidence=0.5) for i in pick]

    assert db.bulk_insert_binary(rows([0, 1]), batch_size=1) == 2
    assert db.bulk_insert_binary(rows(range(5)), batch_size=2) == 3  # the two already there are kept
    stored = {e.image_id: np.asarray(e.vector) for e in Embedding.objects.filter(version=version)}
    assert sorted(stored) == sorted(i.pk for i in images)
    for i, image in enumerate(images):
        np.testing.assert_array_equal(stored[image.pk], vectors[i])
    with pytest.raises(IntegrityError, match="one_embedding_per_version"):  # Django's: tasks retry its kind
        db.bulk_insert_binary(rows([0]), ignore_conflicts=False)


def test_bulk_insert_binary_of_nothing_sends_nothing(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert db.bulk_insert_binary([]) == 0


# --------------------------------------------------------------------------- a damaged HNSW index


@pytest.fixture
def damage_flag():
    from django.core.cache import cache

    cache.delete(db.VECTOR_INDEX_DAMAGED_FLAG)
    yield lambda: cache.get(db.VECTOR_INDEX_DAMAGED_FLAG)
    cache.delete(db.VECTOR_INDEX_DAMAGED_FLAG)  # no later test's recovery meets this test's record


def test_a_zeroed_hnsw_element_is_recorded_for_the_recovery_and_the_error_still_raised(damage_flag):
    """pgvector's insert/vacuum race (recommender.db.VECTOR_INDEXES) leaves an element with 0
    dimensions in the index: its error is recorded, and re-raised (the task retries)."""
    from django.db import DataError

    with pytest.raises(DataError), db.vector_index_watch():
        raise DataError("different vector dimensions 512 and 0")
    assert damage_flag() == 1


def test_other_errors_are_not_taken_for_a_damaged_index(damage_flag):
    from django.db import DataError, connection

    # A real dimension mismatch of two stored-size vectors (no zeroed element): not the index.
    with pytest.raises(DataError, match="different vector dimensions 3 and 2"), db.vector_index_watch(), \
            connection.cursor() as cursor:
        cursor.execute("SELECT '[1,2,3]'::vector <-> '[1,2]'::vector")
    with pytest.raises(DataError), db.vector_index_watch():
        raise DataError("different vector dimensions 512 and 10")
    with pytest.raises(IntegrityError), db.vector_index_watch():
        raise IntegrityError("different vector dimensions 512 and 0")  # not pgvector's DataError
    assert damage_flag() is None
