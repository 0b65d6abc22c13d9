"""recommender.worker: a features worker loads its models as it starts (issue 14: the load in a
worker's first batch took ~10 s of an import on 2 cores and made a new worker's first upload wait)."""

from types import SimpleNamespace

import pytest

from catalog.models import ProductImage
from recommender import backbone, runtime, worker
from tests.conftest import wait_for
from tests.factories import ProductImageFactory, png_bytes
from tests.recommender.helpers import trained_catalog


def _decided(queues) -> str:
    import os

    instance = SimpleNamespace(app=SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(
        consume_from={name: object() for name in queues}))))
    worker._preload_decide(sender="node", instance=instance)
    return os.environ.pop(worker._PRELOAD_ENV)


def test_only_a_worker_of_the_features_queue_preloads():
    assert _decided(["celery", "features", "training"]) == "1"
    assert _decided(["features"]) == "1"
    assert _decided(["training"]) == "0"
    assert _decided(["celery"]) == "0"


@pytest.mark.django_db(transaction=True)
def test_the_preload_loads_the_serving_backbone_and_the_active_head(settings):
    version = trained_catalog(settings, count=30, epochs=1)
    backbone._cache.clear()
    runtime._heads.clear()
    assert worker.models_preload()
    assert any(key[0].identity == version.backbone for key in backbone._cache)
    assert version.pk in runtime._heads


@pytest.mark.django_db(transaction=True)
def test_the_preload_can_be_switched_off_and_a_failure_changes_nothing(settings, monkeypatch):
    settings.RECOMMENDER = {**settings.RECOMMENDER, "WORKER_PRELOAD": 0}
    backbone._cache.clear()
    assert not worker.models_preload() and not backbone._cache
    settings.RECOMMENDER = {**settings.RECOMMENDER, "WORKER_PRELOAD": 1}
    monkeypatch.setattr(runtime, "backbone_of", lambda spec: (_ for _ in ()).throw(MemoryError("no room")))
    assert not worker.models_preload()


@pytest.mark.worker
def test_a_new_features_worker_has_its_backbone_loaded_before_its_first_image(start_worker):
    process = start_worker(queues="features")
    wait_for(lambda: "preloaded backbone" in process.output(), timeout=180, message="the preload")
    image = ProductImageFactory(data=png_bytes(size=(40, 40), seed=5))
    wait_for(lambda: ProductImage.objects.get(pk=image.pk).status == "ready", timeout=30, message="the image")
    # One load in the process: the batch found the preloaded backbone (no second "backbone runtime" line).
    assert process.output().count("backbone runtime") == 1
