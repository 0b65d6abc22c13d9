"""The recommender dashboard in the admin: versions, metrics, curves, and the train / activate /
retire buttons (which call recommender.services)."""

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from catalog.models import ProductImage
from recommender.models import ModelVersion
from tests.ui.data import add_embeddings, add_features, catalog, fast_passwords, model_version  # noqa: F401

pytestmark = pytest.mark.django_db

DASHBOARD = "admin:recommender_modelversion_changelist"


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def test_dashboard_lists_versions_with_progress_and_buttons(admin_client, django_assert_max_num_queries):
    products = catalog(per_category=12)
    add_features(products)
    ProductImage.objects.filter(pk__in=[p.images.first().pk for p in products[:3]]).update(status="pending")
    active = model_version()
    retired = model_version(status=ModelVersion.Status.RETIRED, artifacts="/nowhere")
    failed = model_version(status=ModelVersion.Status.FAILED, error="Quality gate: worse than active v1")
    training = model_version(status=ModelVersion.Status.TRAINING, metrics={}, history={}, val_accuracy=None,
                             progress={"phase": "training", "epoch": 8, "epochs": 32, "accuracy": 0.61,
                                       "val_accuracy": 0.58, "eta_seconds": 75})

    with django_assert_max_num_queries(20):
        response = admin_client.get(reverse(DASHBOARD))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Recommender dashboard" in html
    for version in (active, retired, failed, training):
        assert f">v{version.pk}<" in html
    assert "random" in html and "resnet50:random" in html
    # The running training: epoch, accuracy so far and ETA, in a live bar.
    assert 'id="training-progress"' in html and f"Training v{training.pk}" in html
    assert "Epoch 8 of 32 · accuracy 61.0% · validation 58.0% · about 1 min 15 s left" in html
    assert re.search(r'aria-valuenow="2[0-9.]+"', html)  # 3 + 75 * 8/32 = 21.75
    # The ingestion backlog with its own bar.
    assert 'id="ingestion-progress"' in html and "3 waiting · 21 ready · 0 failed" in html
    assert "catalog/admin-progress.js" in html
    # One training at a time: the button is disabled while one runs; the retired one can come back.
    assert re.search(r'id="train-button"\s+disabled', html)
    assert reverse("admin:recommender_modelversion_activate", args=[retired.pk]) in html
    assert reverse("admin:recommender_modelversion_retire", args=[active.pk]) in html
    assert reverse("admin:recommender_modelversion_activate", args=[failed.pk]) not in html


def test_version_page_shows_metrics_curves_and_confusion_matrix(admin_client):
    version = model_version(classes=["Bags", "Shoes", "Tops"], metrics={
        "accuracy": 0.9, "precision_at_1": 0.85, "precision_at_6": 0.8, "map_at_6": 0.75, "hnsw_recall_at_6": 0.99,
        "classes": ["Bags", "Shoes", "Tops"],
        "per_class": {"Bags": {"precision": 1.0, "recall": 0.5, "support": 4},
                      "Shoes": {"precision": 0.8, "recall": 1.0, "support": 4},
                      "Tops": {"precision": 0.9, "recall": 0.95, "support": 20}},
        "confusion_matrix": [[2, 2, 0], [0, 4, 0], [0, 1, 19]], "holdout_image_ids": list(range(28))})
    response = admin_client.get(reverse("admin:recommender_modelversion_change", args=[version.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert f"Model version v{version.pk}" in html and "Active" in html
    for label, value in [("Accuracy", "90.0%"), ("Precision@6", "80.0%"), ("mAP@6", "75.0%"),
                         ("HNSW recall@6", "99.0%")]:
        assert re.search(rf"{re.escape(label)}</span>\s*<span class=\"lk-card-value\">{re.escape(value)}", html)
    assert "seeded random weights" in html and "resnet50:random-seed1234:32" in html
    # Training curves: accuracy and loss, training and validation, one point per epoch.
    charts = re.findall(r'<svg[^>]*data-chart="(\w+)"', html)
    assert charts == ["accuracy", "loss"]
    lines = re.findall(r'<polyline class="series (train|val)" points="([^"]+)"', html)
    assert [kind for kind, _ in lines] == ["train", "val", "train", "val"]
    assert all(len(points.split()) == 4 for _, points in lines)
    assert "training 80.0%" in html and "validation 75.0%" in html  # last epoch in the legend
    # Per-class table and confusion matrix.
    per_class = html.split('id="per-class"', 1)[1].split("</table>", 1)[0]
    assert re.search(r"Bags</th>.*?1\.00.*?0\.50.*?>4<", per_class, re.S)
    confusion = html.split('id="confusion"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<td class="([^"]*)"[^>]*>(\d+)</td>', confusion)[:3] == [("diag", "2"), ("", "2"), ("", "0")]
    assert 'title="19 of 20"' in confusion and 'class="diag dark"' in confusion
    # An active version can be retired, not activated.
    assert reverse("admin:recommender_modelversion_retire", args=[version.pk]) in html
    assert reverse("admin:recommender_modelversion_activate", args=[version.pk]) not in html


def test_failed_and_training_versions_render(admin_client):
    failed = model_version(status=ModelVersion.Status.FAILED, metrics={}, history={},
                           error="ValueError: only 3 images have features")
    html = admin_client.get(reverse("admin:recommender_modelversion_change", args=[failed.pk])).content.decode()
    assert "ValueError: only 3 images have features" in html and "Not evaluated yet." in html
    training = model_version(status=ModelVersion.Status.TRAINING, metrics={}, history={},
                             progress={"phase": "embedding", "images_embedded": 500, "images_total": 1000,
                                       "eta_seconds": 4})
    html = admin_client.get(reverse("admin:recommender_modelversion_change", args=[training.pk])).content.decode()
    assert "500 of 1,000 images embedded · about 4 s left" in html and "data-reload-on-finish" in html
    assert admin_client.get(reverse("admin:recommender_modelversion_change", args=[99999])).status_code == 302


def test_train_button_starts_one_training_at_a_time(admin_client, settings):
    products = catalog(per_category=12)
    add_features(products)
    url = reverse("admin:recommender_modelversion_train")
    assert admin_client.get(url).status_code == 405

    response = admin_client.post(url, follow=True)
    version = ModelVersion.objects.get()
    assert version.status == "training" and version.trigger == "manual (admin)"
    assert f"Training of v{version.pk} queued" in " ".join(messages_of(response))
    assert f"Training v{version.pk}" in response.content.decode()

    response = admin_client.post(url, follow=True)
    assert f"Version v{version.pk} is already training" in " ".join(messages_of(response))
    assert ModelVersion.objects.count() == 1


def test_train_button_refuses_without_enough_processed_images(admin_client):
    add_features(catalog(per_category=3))  # 6 < MIN_IMAGES_TO_TRAIN (20)
    response = admin_client.post(reverse("admin:recommender_modelversion_train"), follow=True)
    assert "Not enough to train on yet: 6 images have features" in " ".join(messages_of(response))
    assert not ModelVersion.objects.exists()
    assert re.search(r'id="train-button"\s+disabled', response.content.decode())


def test_buttons_need_the_change_permission(client):
    version = model_version(status=ModelVersion.Status.READY)
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_modelversion"))
    client.login(username="viewer", password="pw")
    assert client.get(reverse(DASHBOARD)).status_code == 200
    assert 'id="train-button"' not in client.get(reverse(DASHBOARD)).content.decode()
    for name in ("train", "activate", "retire"):
        args = [] if name == "train" else [version.pk]
        assert client.post(reverse(f"admin:recommender_modelversion_{name}", args=args)).status_code == 403
    assert ModelVersion.objects.get(pk=version.pk).status == "ready"


def test_activate_refuses_a_version_without_model_files(admin_client):
    failed = model_version(status=ModelVersion.Status.FAILED)
    ready = model_version(status=ModelVersion.Status.READY, artifacts="/nonexistent/v0")
    url = reverse("admin:recommender_modelversion_activate", args=[failed.pk])
    assert "can be activated" in " ".join(messages_of(admin_client.post(url, follow=True)))
    url = reverse("admin:recommender_modelversion_activate", args=[ready.pk])
    assert "has no model files" in " ".join(messages_of(admin_client.post(url, follow=True)))
    assert ModelVersion.objects.filter(status="active").count() == 0
    retire = reverse("admin:recommender_modelversion_retire", args=[failed.pk])
    assert "can be retired" in " ".join(messages_of(admin_client.post(retire, follow=True)))


def test_train_activate_and_retire_real_versions_from_the_admin(admin_client, settings, client):
    """Real heads (Keras, a few epochs on synthetic features): train twice, switch back to the
    first version with its button, then retire it; the shop's similar items follow each step."""
    from recommender.services.training import model_version_train

    settings.RECOMMENDER = {**settings.RECOMMENDER, "EPOCHS": 3}
    products = catalog(per_category=12)
    add_features(products)
    train = reverse("admin:recommender_modelversion_train")

    admin_client.post(train)
    first = model_version_train(version_id=ModelVersion.objects.get(status="training").pk)
    assert first.status == "active", first.error
    admin_client.post(train)
    second = model_version_train(version_id=ModelVersion.objects.get(status="training").pk)
    assert second.status == "active", second.error
    first.refresh_from_db()
    assert first.status == "retired"
    product_page = products[0].get_absolute_url()
    assert f"Model v{second.pk}" in client.get(product_page).content.decode()

    page = admin_client.get(reverse("admin:recommender_modelversion_change", args=[first.pk])).content.decode()
    assert f"Activate v{first.pk}" in page and 'data-chart="accuracy"' in page
    # Its files: where they are stored, and which ones have a recorded checksum.
    files = page[page.index(f"<code>v{first.pk}</code> (3 files, SHA-256 recorded: "):].split(")", 1)[0]
    assert {"head.keras", "meta.json", "preprocessing.joblib"} <= set(files.split(": ", 1)[1].split(", "))
    response = admin_client.post(reverse("admin:recommender_modelversion_activate", args=[first.pk]), follow=True)
    assert f"Version v{first.pk} is now active" in " ".join(messages_of(response))
    assert dict(ModelVersion.objects.values_list("pk", "status")) == {first.pk: "active", second.pk: "retired"}
    assert f"Model v{first.pk}" in client.get(product_page).content.decode()  # not the cached v2 answer

    response = admin_client.post(reverse("admin:recommender_modelversion_retire", args=[first.pk]), follow=True)
    assert "No version is active now" in " ".join(messages_of(response))
    assert not ModelVersion.objects.filter(status="active").exists()
    html = client.get(product_page).content.decode()
    assert 'data-source="backbone"' in html  # back to raw features, still a panel


def test_a_pruned_version_says_so_and_activating_it_says_it_is_re_embedded(admin_client, tmp_path):
    pruned = model_version(status=ModelVersion.Status.RETIRED, artifacts=str(tmp_path),
                           metrics={"embeddings_pruned": {"at": "2026-11-27T03:00:00+00:00", "rows": 1234}})
    html = admin_client.get(reverse("admin:recommender_modelversion_change", args=[pruned.pk])).content.decode()
    assert "Its 1234 embeddings were deleted on 2026-11-27T03:00" in html
    response = admin_client.post(reverse("admin:recommender_modelversion_activate", args=[pruned.pk]), follow=True)
    assert ModelVersion.objects.get(pk=pruned.pk).status == "active"
    assert any("a worker is embedding the catalog again" in m for m in messages_of(response))
