"""Embeddings (recommender.services.embeddings): pruning the versions no one is served from, and
backfilling a pruned version that is activated again."""

from datetime import timedelta

import pytest
from django.db.models import Count
from django.utils import timezone

from catalog.models import Product
from recommender.models import Embedding, ModelVersion
from recommender.selectors.similarity import similar_products
from recommender.services.embeddings import embeddings_backfill, embeddings_prune
from recommender.services.evaluation import model_version_evaluate
from recommender.services.versions import model_version_activate
from tests.factories import ProductImageFactory
from tests.recommender.helpers import retired_and_active

pytestmark = pytest.mark.django_db


def test_pruning_keeps_the_served_versions_and_the_last_retired_one():
    images = [ProductImageFactory() for _ in range(5)]
    now = timezone.now()

    def version(status, activated_minutes_ago=None):
        v = ModelVersion.objects.create(
            status=status, backbone="b", weights="random", input_size=32, classes=["a"],
            activated_at=None if activated_minutes_ago is None else now - timedelta(minutes=activated_minutes_ago))
        Embedding.objects.bulk_create(Embedding(image=i, product=i.product, version=v, predicted="a",
                                                vector=[float(v.pk)] * 512) for i in images)
        return v

    oldest, last_retired = version("retired", 30), version("retired", 20)
    failed, active, ready = version("failed"), version("active", 10), version("ready")
    never_served = version("retired")  # a ready version retired without ever being activated
    assert embeddings_prune(keep_retired=1, batch_size=2) == {
        "versions": sorted([oldest.pk, failed.pk, never_served.pk]), "rows": 15}
    left = dict(Embedding.objects.values_list("version_id").annotate(n=Count("id")).values_list("version_id", "n"))
    assert left == {last_retired.pk: 5, active.pk: 5, ready.pk: 5}
    oldest.refresh_from_db()
    assert oldest.metrics["embeddings_pruned"]["rows"] == 5 and oldest.status == "retired"
    assert embeddings_prune(keep_retired=1) == {"versions": [], "rows": 0}  # twice: nothing more
    assert embeddings_prune(keep_retired=0)["versions"] == [last_retired.pk]
    assert set(Embedding.objects.values_list("version_id", flat=True)) == {active.pk, ready.pk}


def test_a_pruned_version_activated_again_is_embedded_again(settings, django_capture_on_commit_callbacks):
    old, new = retired_and_active(settings)
    settings.RECOMMENDER = {**settings.RECOMMENDER, "KEEP_RETIRED_EMBEDDINGS": 0}
    assert embeddings_prune() == {"versions": [old.pk], "rows": 60}
    old.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=False) as published:
        model_version_activate(version=old)  # a rollback to it still works...
    assert len(published) == 1  # ...and sends its re-embedding to a worker
    assert embeddings_backfill(version_id=old.pk) == 60
    old.refresh_from_db()
    assert "embeddings_pruned" not in old.metrics
    assert embeddings_prune() == {"versions": [new.pk], "rows": 60}  # now the retired one
    model_version_evaluate(version=ModelVersion.objects.get(pk=new.pk))  # re-evaluated when pruned
    new.refresh_from_db()
    assert new.metrics["embeddings_pruned"]["rows"] == 60 and new.metrics["hnsw_recall_at_6"] is None
    answer = similar_products(product=Product.objects.order_by("id").first(), k=6, use_cache=False)
    assert answer.version.pk == old.pk and len(answer.items) == 6
