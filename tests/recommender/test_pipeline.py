"""End to end with a real Celery worker process, real Postgres+pgvector and Redis: import, ingest,
train, activate and similar items; and beat's recovery of ingestion whose messages were lost."""

import io
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from catalog.models import Product, ProductImage
from recommender.models import BackboneFeature, Embedding, ModelVersion
from recommender.selectors.similarity import similar_products
from recommender.services.training import model_version_start
from tests.conftest import wait_for
from tests.recommender.helpers import import_products

pytestmark = [pytest.mark.worker]


def all_ready():
    return not ProductImage.objects.exclude(status=ProductImage.Status.READY).exists()


def test_import_ingest_train_activate_and_similar_items(start_worker):
    call_command("import_fashion_mnist", count=300, split="train", verbosity=0, stdout=io.StringIO())
    worker = start_worker()
    wait_for(all_ready, timeout=240, message="every image ready")
    assert ProductImage.objects.count() == 300
    assert BackboneFeature.objects.count() == 300  # exactly one feature row each
    assert all(list(i.thumbnails) == ["128"] for i in ProductImage.objects.all())  # 28x28: one WebP, made once
    # 300 products committed one by one, extracted in full batches (INGEST_CHUNK 64) by drains:
    # before, each commit sent its own task of one image, padded to a batch of 32.
    claimed = [int(n) for n in re.findall(r"drain_backlog\[[^\]]+\] succeeded in [0-9.]+s: \{'claimed': (\d+)",
                                          worker.output())]
    assert sum(claimed) == 300 and max(claimed) == 64 and len([n for n in claimed if n]) <= 6, claimed
    # Cold start: no model yet, similar items come from standardised backbone features.
    product = Product.objects.order_by("id").first()
    cold = similar_products(product=product, k=6, use_cache=False)
    assert cold.source == "backbone" and len(cold.items) == 6

    version = model_version_start(trigger="test")
    # Finished: active or failed ("ready" lasts a moment, between the quality gate and the activation).
    wait_for(lambda: ModelVersion.objects.get(pk=version.pk).status not in ("training", "ready"), timeout=300,
             message="training to finish")
    version.refresh_from_db()
    assert version.status == "active", (version.error, worker.output()[-3000:])
    assert version.weights == "random" and version.backbone == "resnet50:random-seed1234:32"
    assert version.n_train + version.n_val == 300 and len(version.history["loss"]) == 32
    assert Embedding.objects.filter(version=version).count() == 300
    metrics = version.metrics
    assert set(metrics) >= {"accuracy", "precision_at_1", "precision_at_6", "map_at_6", "per_class",
                            "confusion_matrix", "hnsw_recall_at_6"}
    assert metrics["hnsw_recall_at_6"] >= 0.9

    hits = total = 0
    for product in Product.objects.order_by("id")[:60]:
        result = similar_products(product=product, k=6, use_cache=False)
        ids = [item.product.pk for item in result.items]
        assert result.source == "model" and result.version.pk == version.pk
        assert len(ids) == 6 and len(set(ids)) == 6 and product.pk not in ids
        distances = [item.distance for item in result.items]
        assert distances == sorted(distances)
        hits += sum(item.product.category_id == product.category_id for item in result.items)
        total += 6
        same = similar_products(product=product, k=6, same_category=True, use_cache=False)
        mine = Embedding.objects.filter(version=version, product=product).values_list("predicted", flat=True)[0]
        theirs = set(Embedding.objects.filter(version=version, product__in=[i.product for i in same.items])
                     .values_list("predicted", flat=True))
        assert theirs == {mine}  # the same-predicted-category restriction holds
    precision = hits / total
    # Chance is 0.10 (ten balanced classes). Measured 0.80-0.85 with random weights at 32 px on
    # 300 images; the threshold leaves room for seed/platform noise but not for a broken pipeline.
    print(f"same-category precision@6 = {precision:.3f}, stored p@6 = {metrics['precision_at_6']:.3f}")
    assert precision >= 0.6, precision


def test_filters_still_return_k_results(transactional_db, start_worker):
    call_command("import_fashion_mnist", count=200, split="test", verbosity=0, stdout=io.StringIO())
    start_worker()
    wait_for(all_ready, timeout=240, message="every image ready")
    version = model_version_start(trigger="test")
    wait_for(lambda: ModelVersion.objects.get(pk=version.pk).status == "active", timeout=300, message="active")
    product = Product.objects.order_by("id").first()
    other = Product.objects.exclude(category=product.category).first().category
    expected = Product.objects.filter(category=other).count()
    assert expected >= 6
    # A selective filter (about 10% of rows) must still give k results (iterative scan / exact fallback).
    result = similar_products(product=product, k=6, category=other, use_cache=False)
    assert len(result.items) == 6 and {i.product.category_id for i in result.items} == {other.pk}
    prices = sorted(Product.objects.values_list("price", flat=True))
    low, high = prices[len(prices) // 3], prices[len(prices) // 3 + 30]
    ranged = similar_products(product=product, k=6, min_price=low, max_price=high, use_cache=False)
    assert len(ranged.items) == 6 and all(low <= i.product.price <= high for i in ranged.items)
    # Inactive products are never recommended.
    first = similar_products(product=product, k=6, use_cache=False).items[0].product
    Product.objects.filter(pk=first.pk).update(is_active=False)
    again = similar_products(product=product, k=6, use_cache=False)
    assert first.pk not in [i.product.pk for i in again.items] and len(again.items) == 6


def test_the_periodic_task_recovers_lost_jobs(start_worker):
    from config.celery import app

    ids = import_products(30)
    app.control.purge()  # the broker lost the published tasks (e.g. Redis restarted without AOF)
    ProductImage.objects.update(status_changed_at=timezone.now() - timedelta(minutes=10))
    start_worker(beat=True, env_overrides={"RECOVER_EVERY_SECONDS": "2"})
    wait_for(lambda: ProductImage.objects.filter(id__in=ids, status="ready").count() == 30, timeout=180,
             message="beat's recovery to process every lost image")
