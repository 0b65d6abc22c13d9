"""The recommender's tables (recommender.models): the vector columns are as wide as what the pure
ML modules produce (models.py repeats the numbers so that Django start-up imports no ML code)."""

from recommender import backbone, head
from recommender.models import EMBEDDING_DIM, FEATURE_DIM, BackboneFeature, Embedding


def test_the_vector_columns_have_the_dimensions_of_the_ml_modules():
    assert FEATURE_DIM == backbone.FEATURE_DIM
    assert EMBEDDING_DIM == head.EMBEDDING_DIM
    assert BackboneFeature._meta.get_field("vector").dimensions == FEATURE_DIM
    assert Embedding._meta.get_field("vector").dimensions == EMBEDDING_DIM
