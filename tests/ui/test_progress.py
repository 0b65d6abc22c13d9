"""The staff-only JSON behind the live progress bars: training and the ingestion backlog."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from catalog.models import ProductImage
from recommender import progress
from recommender.models import ModelVersion
from tests.factories import ProductImageFactory
from tests.ui.data import fast_passwords, model_version  # noqa: F401

pytestmark = pytest.mark.django_db

TRAINING = reverse("recommender:training_progress")
INGESTION = reverse("recommender:ingestion_progress")


@pytest.mark.parametrize("url", [TRAINING, INGESTION])
def test_progress_is_for_staff_only(client, url):
    response = client.get(url)
    assert response.status_code == 403 and response.json() == {"detail": "Staff only."}
    User.objects.create_user("shopper", password="pw")
    client.login(username="shopper", password="pw")
    assert client.get(url).status_code == 403
    assert client.post(url).status_code in (403, 405)


def test_training_progress_reports_epoch_accuracy_and_eta(admin_client):
    assert admin_client.get(TRAINING).json()["display"]["title"] == "No model trained yet"
    active = model_version()
    running = model_version(status=ModelVersion.Status.TRAINING, progress={
        "phase": "training", "epoch": 16, "epochs": 32, "accuracy": 0.712345, "val_accuracy": 0.65,
        "loss": 0.9, "eta_seconds": 30.04})
    response = admin_client.get(TRAINING)
    assert response.status_code == 200 and response["Cache-Control"].startswith("max-age=0")
    data = response.json()
    assert data["active_id"] == active.pk
    t = data["training"]
    assert (t["id"], t["status"], t["running"], t["epoch"], t["epochs"]) == (running.pk, "training", True, 16, 32)
    assert t["accuracy"] == 0.7123 and t["eta_seconds"] == 30.0
    assert t["percent"] == pytest.approx(3 + 77 * 0.5)
    assert data["display"]["detail"] == "Epoch 16 of 32 · accuracy 71.2% · validation 65.0% · about 30 s left"

    ModelVersion.objects.filter(pk=running.pk).update(progress={
        "phase": "embedding", "images_embedded": 30, "images_total": 120, "eta_seconds": 90})
    t = admin_client.get(TRAINING).json()["training"]
    assert t["phase_label"] == "Embedding the catalog" and t["percent"] == pytest.approx(82 + 12 * 0.25)

    ModelVersion.objects.filter(pk=running.pk).update(status="failed", error="Quality gate: worse",
                                                      progress={"phase": "failed"})
    data = admin_client.get(TRAINING).json()
    assert data["training"] is None
    assert data["latest"]["id"] == running.pk and data["latest"]["percent"] is None
    assert data["display"] == {"title": f"Latest: v{running.pk}", "phase": "Failed", "detail": "Quality gate: worse",
                               "percent": None, "state": "failed"}


def test_bar_never_moves_backwards_through_the_phases():
    version = ModelVersion(status=ModelVersion.Status.TRAINING, progress={})
    steps = [{"phase": "queued"}, {"phase": "loading features"}]
    steps += [{"phase": "training", "epoch": e, "epochs": 5} for e in range(6)]
    steps += [{"phase": "saving"}]
    steps += [{"phase": "embedding", "images_embedded": n, "images_total": 100} for n in (0, 50, 100)]
    steps += [{"phase": "evaluating"}, {"phase": "activating"}, {"phase": "done"}]
    percents = []
    for step in steps:
        version.progress = step
        percents.append(progress.version_progress(version)["percent"])
    assert percents == sorted(percents) and percents[0] == 0 and percents[-1] == 100


def test_ingestion_progress_counts_rate_and_eta(admin_client):
    images = [ProductImageFactory(seed=i) for i in range(12)]
    now = timezone.now()
    # 6 finished over the last 60 s (one every 10 s), 1 failed long ago, 5 waiting.
    for n, image in enumerate(images[:6]):
        ProductImage.objects.filter(pk=image.pk).update(status="ready",
                                                        status_changed_at=now - timedelta(seconds=60 - 10 * n))
    ProductImage.objects.filter(pk=images[6].pk).update(status="failed", status_changed_at=now - timedelta(hours=2))
    ProductImage.objects.filter(pk=images[7].pk).update(status="processing")

    status = progress.ingestion_status(now=now)
    assert {k: status[k] for k in ("pending", "processing", "ready", "failed", "backlog", "total")} == {
        "pending": 4, "processing": 1, "ready": 6, "failed": 1, "backlog": 5, "total": 12}
    assert status["rate_per_second"] == pytest.approx(0.1)  # 6 images in 60 s
    assert status["eta_seconds"] == pytest.approx(50)
    assert status["percent"] == pytest.approx(100 * 7 / 12, abs=0.1)

    data = admin_client.get(INGESTION).json()
    assert data["backlog"] == 5 and data["display"]["summary"] == "5 waiting · 6 ready · 1 failed"
    assert "images/s · about" in data["display"]["detail"]


def test_ingestion_without_recent_work_has_no_rate():
    image = ProductImageFactory()
    status = progress.ingestion_status()
    assert status["backlog"] == 1 and status["rate_per_second"] is None and status["eta_seconds"] is None
    assert progress.ingestion_display(status)["detail"] == "Waiting for a worker…"
    ProductImage.objects.filter(pk=image.pk).update(status="ready")
    status = progress.ingestion_status()
    assert status["eta_seconds"] == 0 and progress.ingestion_display(status)["detail"] == "All 1 image processed."
