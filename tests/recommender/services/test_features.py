"""The cold start's scaler (recommender.services.features): fitted in PostgreSQL as numpy would,
refitted only when the backbone's features have moved by more than SCALE_REFIT_SHARE."""

import importlib

import numpy as np
import pytest
from django.db import connection

from catalog.models import Product, ProductImage
from recommender import runtime
from recommender.models import BackboneFeature, FeatureScale
from recommender.services.features import SCALE_REFIT_SHARE, feature_scale_fit, feature_scale_refresh
from recommender.services.ingestion import images_process
from tests.recommender.helpers import import_products, process_all

pytestmark = pytest.mark.django_db


def numpy_inverse_std(backbone):
    vectors = BackboneFeature.objects.filter(backbone=backbone, image__product__is_active=True).values_list(
        "vector", flat=True)
    matrix = np.stack([np.asarray(v, dtype=np.float32) for v in vectors])
    return 1 / (matrix.std(axis=0) + 1e-6)


def test_the_scaler_is_numpys_over_the_active_products_only():
    import_products(30)
    process_all()
    Product.objects.filter(pk__in=Product.objects.order_by("id").values("pk")[:5]).update(is_active=False)
    backbone = runtime.backbone_spec().identity
    scale = feature_scale_fit(backbone=backbone)
    assert (scale.features, scale.rows) == (30, 25)
    stored = np.asarray(FeatureScale.objects.get(pk=backbone).inverse_std)
    expected = numpy_inverse_std(backbone)
    constant = expected > 1e5  # dimensions with no variance (1/1e-6): their weight multiplies zeros
    assert np.allclose(stored[~constant], expected[~constant], rtol=1e-3)
    assert (stored[constant] > 1e5).all()


def test_the_scaler_is_refitted_only_when_the_features_moved_by_more_than_the_share():
    assert SCALE_REFIT_SHARE == 0.05
    import_products(40)
    process_all()  # the ingestion fitted it
    backbone = runtime.backbone_spec().identity
    first = FeatureScale.objects.get(pk=backbone)
    assert first.features == first.rows == 40

    def ingest(count, token):
        import_products(count)
        images_process(image_ids=list(ProductImage.objects.filter(status="pending").values_list("id", flat=True)),
                       token=token)
        return FeatureScale.objects.get(pk=backbone)

    assert ingest(42, "two-more").fitted_at == first.fitted_at  # 5% more: the scaler holds
    assert ingest(43, "one-more").features == 43  # 7.5% more than its fit: refitted
    assert not feature_scale_refresh(backbone=backbone)  # nothing moved since


def test_another_backbones_features_are_not_fitted():
    import_products(3)
    process_all()
    BackboneFeature.objects.update(backbone="trained:v9")  # a trained backbone's re-extraction
    FeatureScale.objects.all().delete()
    assert not feature_scale_refresh(backbone="trained:v9")
    assert not FeatureScale.objects.exists()


def test_the_migration_fits_the_catalogs_ingested_before_it():
    import_products(20)
    process_all()
    backbone = runtime.backbone_spec().identity
    fitted = np.asarray(FeatureScale.objects.get(pk=backbone).inverse_std)
    FeatureScale.objects.all().delete()  # as before migration 0006
    migration = importlib.import_module("recommender.migrations.0006_feature_scale")
    with connection.cursor() as cursor:
        cursor.execute(migration.FIT_ALL)
    again = FeatureScale.objects.get(pk=backbone)
    assert (again.features, again.rows) == (20, 20)
    assert np.allclose(np.asarray(again.inverse_std), fitted, rtol=1e-6)


def test_refits_are_at_most_one_per_window_and_the_recovery_makes_the_one_skipped(settings):
    """Issue 14: 5% steps on a small catalog meant a refit every batch (~54 for 4,000 photos onto
    300, most of PostgreSQL's CPU in the import); now one per SCALE_REFIT_MIN_SECONDS per backbone."""
    from django.core.cache import cache

    from recommender.services.features import SCALE_REFIT_FLAG
    from recommender.services.maintenance import recover_lost_work

    import_products(20)
    process_all()  # the first fit: no window needed
    backbone = runtime.backbone_spec().identity
    cache.delete(SCALE_REFIT_FLAG.format(backbone=backbone))

    def grow(count, token):
        import_products(count)
        images_process(image_ids=list(ProductImage.objects.filter(status="pending").values_list("id", flat=True)),
                       token=token)
        return FeatureScale.objects.get(pk=backbone).features

    assert grow(25, "a") == 25  # 25% more: refitted, and the window taken
    assert grow(30, "b") == 25  # 20% more inside the window: skipped
    assert recover_lost_work()["scale_refitted"] is False  # the window holds for the recovery too
    cache.delete(SCALE_REFIT_FLAG.format(backbone=backbone))  # the window passed
    assert recover_lost_work()["scale_refitted"] is True
    assert FeatureScale.objects.get(pk=backbone).features == 30
