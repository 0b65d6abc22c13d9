"""The backbone kind of training with real worker processes: a worker trains a backbone version,
the features queue re-extracts the catalog under the trained backbone's identity, the version
passes the gate and serves similar items, search by photo and new uploads; a worker killed while
it trains the backbone leaves the active version serving and no files behind."""

import signal
from pathlib import Path

import pytest

from catalog.models import ProductImage
from recommender.locks import training_alive
from recommender.models import BackboneFeature, Embedding, ModelVersion
from recommender.selectors.similarity import similar_products
from recommender.services.features import features_prune
from recommender.services.maintenance import recover_lost_work
from recommender.services.training import model_version_start
from tests.conftest import wait_for
from tests.factories import png_bytes, upload
from tests.recommender.helpers import import_products, process_all, train_inline

pytestmark = [pytest.mark.worker, pytest.mark.slow]
WORKER = {"RECOMMENDER_TRAINING": "backbone", "RECOMMENDER_BACKBONE_EPOCHS": "2",
          "RECOMMENDER_BACKBONE_BATCH_SIZE": "16", "RECOMMENDER_BACKBONE_INPUT_SIZE": "32",
          "RECOMMENDER_BACKBONE_MIN_STEPS": "0"}


def test_a_worker_trains_a_backbone_version_that_serves_everything(settings, start_worker, client):
    import_products(60)
    process_all()
    settings.RECOMMENDER = {**settings.RECOMMENDER, "TRAINING": "backbone"}
    worker = start_worker(env_overrides=WORKER, concurrency=2)  # one trains, the other extracts
    version = model_version_start(trigger="test")
    wait_for(lambda: ModelVersion.objects.get(pk=version.pk).status in ("active", "failed"), timeout=600,
             interval=1, message="the backbone version to be trained and activated")
    version.refresh_from_db()
    assert version.status == "active", version.error
    assert version.kind == "backbone" and version.backbone.startswith(f"resnet50:ft-v{version.pk}-")
    assert "no features worker" not in worker.output()  # the features queue did it, not the fallback
    images = ProductImage.objects.count()
    assert BackboneFeature.objects.filter(backbone=version.backbone).count() == images
    product = ProductImage.objects.first().product
    page = client.get(product.get_absolute_url()).content.decode()
    assert f"Model v{version.pk} (backbone trained on this catalog)" in page
    found = client.post("/api/v1/search/image/", {"image": upload(png_bytes(seed=3))})
    assert found.status_code == 200, found.content
    assert found.json()["model_version"]["id"] == version.pk and found.json()["model_version"]["kind"] == "backbone"
    import_products(63)  # three uploads after it serves: the worker extracts them with its backbone
    wait_for(lambda: not ProductImage.objects.exclude(status="ready").exists(), timeout=120,
             message="the new images to be processed")
    assert BackboneFeature.objects.filter(backbone=version.backbone).count() == images + 3
    assert Embedding.objects.filter(version=version).count() == images + 3


def test_a_killed_backbone_training_leaves_the_active_version_serving_and_no_files(settings, start_worker):
    import_products(60)
    process_all()
    active = train_inline(settings, epochs=2)
    assert active.status == "active"
    settings.RECOMMENDER = {**settings.RECOMMENDER, "TRAINING": "backbone"}
    # One worker process: while the training waits for the features queue, nothing else takes its
    # chunks, so it sits in the re-extraction with its files written (for up to 120 s).
    worker = start_worker(env_overrides={**WORKER, "RECOMMENDER_BACKBONE_EPOCHS": "1"})
    version = model_version_start(trigger="test")
    wait_for(lambda: ModelVersion.objects.get(pk=version.pk).progress.get("phase") == "extracting", timeout=300,
             message="the backbone to be trained and saved")
    folder = Path(settings.MODELS_ROOT, f"v{version.pk}")
    assert (folder / "backbone.weights.h5").is_file()
    worker.kill(signal.SIGKILL)
    assert ModelVersion.objects.get(status="active").pk == active.pk
    wait_for(lambda: not training_alive(version.pk), timeout=30, message="the lock to be released")
    settings.RECOMMENDER = {**settings.RECOMMENDER, "TRAINING_STALE_SECONDS": 0}
    assert version.pk in recover_lost_work()["dead_trainings"]
    version.refresh_from_db()
    assert version.status == "failed" and "heartbeats" in version.error
    assert ModelVersion.objects.get(status="active").pk == active.pk
    assert not folder.exists()
    assert not list(Path(settings.MODELS_ROOT).glob(".*"))  # no temporary folder or file
    features_prune()
    assert set(BackboneFeature.objects.values_list("backbone", flat=True)) == {active.backbone}
    assert similar_products(product=ProductImage.objects.first().product, use_cache=False).version == active
