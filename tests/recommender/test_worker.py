"""recommender.worker: a features worker loads its models as it starts (issue 14: the load in a
worker's first batch took ~10 s of an import on 2 cores and made a new worker's first upload wait)."""

import pytest

from catalog.models import ProductImage
from recommender import runtime, worker
from tests.conftest import wait_for
from tests.factories import ProductImageFactory, png_bytes


def test_only_a_worker_of_the_features_queue_preloads():
    assert worker.preload_wanted(queues=["celery", "features", "training"])
    assert worker.preload_wanted(queues={"features": object()})  # Celery's consume_from is a dict
    assert not worker.preload_wanted(queues=["training"])
    assert not worker.preload_wanted(queues=["celery"])


def _recording(monkeypatch):
    # The loads themselves run in the worker test below (a real worker process); here, which
    # loads the preload asks for. Loading in the test process would add native thread pools to it.
    calls = []
    monkeypatch.setattr(runtime, "backbone_of", lambda spec: calls.append(("backbone", spec.identity)))
    monkeypatch.setattr(runtime, "load_head", lambda version: calls.append(("head", version.pk)))
    return calls


@pytest.mark.django_db
def test_the_preload_loads_the_serving_backbone_and_the_active_head(settings, monkeypatch):
    from recommender.models import ModelVersion

    identity = runtime.backbone_spec().identity
    version = ModelVersion.objects.create(status="active", backbone=identity, weights="random", input_size=32)
    calls = _recording(monkeypatch)
    assert worker.models_preload()
    assert calls == [("backbone", identity), ("head", version.pk)]


@pytest.mark.django_db
def test_the_preload_can_be_switched_off_and_a_failure_changes_nothing(settings, monkeypatch):
    calls = _recording(monkeypatch)
    settings.RECOMMENDER = {**settings.RECOMMENDER, "WORKER_PRELOAD": 0}
    assert not worker.models_preload() and calls == []
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
