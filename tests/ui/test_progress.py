"""The staff-only JSON behind the live progress bars (recommender/views.py): training and the
ingestion backlog. What the numbers mean: tests/recommender/selectors/; their wording:
tests/recommender/test_presentation.py."""

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from recommender.models import ModelVersion
from tests.recommender.helpers import ingestion_backlog_with_recent_work
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


@pytest.mark.parametrize("url, permission", [(TRAINING, "view_modelversion"), (INGESTION, "view_productimage")])
def test_progress_needs_the_view_permission_of_what_it_shows(client, url, permission):
    """As in the API: being staff is not enough."""
    from django.contrib.auth.models import Permission

    clerk = User.objects.create_user("clerk", password="pw", is_staff=True)
    client.login(username="clerk", password="pw")
    response = client.get(url)
    assert response.status_code == 403 and permission in response.json()["detail"]
    clerk.user_permissions.add(Permission.objects.get(codename=permission))
    assert client.get(url).status_code == 200


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
    assert t["percent"] == pytest.approx(3 + 75 * 0.5)  # the training phase spans 3-78% of the bar
    assert data["display"]["detail"] == "Epoch 16 of 32 · accuracy 71.2% · validation 65.0% · about 30 s left"

    ModelVersion.objects.filter(pk=running.pk).update(progress={
        "phase": "embedding", "images_embedded": 30, "images_total": 120, "eta_seconds": 90})
    t = admin_client.get(TRAINING).json()["training"]
    assert t["phase_label"] == "Embedding the catalog" and t["percent"] == pytest.approx(88 + 4 * 0.25)  # embedding: 88-92%

    ModelVersion.objects.filter(pk=running.pk).update(progress={
        "phase": "neighbours", "products_listed": 512, "products_total": 1024, "eta_seconds": 20})
    data = admin_client.get(TRAINING).json()
    t = data["training"]
    assert t["phase_label"] == "Precomputing each product's similar items"
    assert t["percent"] == pytest.approx(92 + 3 * 0.5)  # the lists: 92-95%
    assert data["display"]["detail"] == "512 of 1,024 products · about 20 s left"

    ModelVersion.objects.filter(pk=running.pk).update(status="failed", error="Quality gate: worse",
                                                      progress={"phase": "failed"})
    data = admin_client.get(TRAINING).json()
    assert data["training"] is None
    assert data["latest"]["id"] == running.pk and data["latest"]["percent"] is None
    assert data["display"] == {"title": f"Latest: v{running.pk}", "phase": "Failed", "detail": "Quality gate: worse",
                               "percent": None, "state": "failed"}


def test_ingestion_progress_reports_the_backlog_and_its_pace(admin_client):
    ingestion_backlog_with_recent_work(timezone.now())
    data = admin_client.get(INGESTION).json()
    assert data["backlog"] == 5 and data["display"]["summary"] == "5 waiting · 6 ready · 1 failed"
    assert "images/s · about" in data["display"]["detail"]
