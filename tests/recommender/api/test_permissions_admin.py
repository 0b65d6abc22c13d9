"""The dashboard's train / activate / retire buttons need the same permissions as the API's actions
(recommender.train_modelversion, recommender.activate_modelversion; tests/api/test_model_permissions.py),
not the change permission: the admin and the API refuse and allow the same staff user."""

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from recommender.models import ModelVersion
from tests.ui.data import add_features, catalog, model_version

pytestmark = pytest.mark.django_db

DASHBOARD = "admin:recommender_modelversion_changelist"


def _staff(client, *codenames):
    user = User.objects.create_user("clerk", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="recommender",
                                                         codename__in=["view_modelversion", *codenames]))
    client.force_login(user)
    return client


def _post(client, name, version=None):
    return client.post(reverse(f"admin:recommender_modelversion_{name}", args=[version.pk] if version else []))


def test_the_change_permission_alone_neither_trains_nor_activates(client, tmp_path):
    add_features(catalog(per_category=12))
    ready = model_version(status=ModelVersion.Status.READY, artifacts=str(tmp_path))
    client = _staff(client, "change_modelversion")
    page = client.get(reverse(DASHBOARD)).content.decode()
    assert 'id="train-button"' not in page and ">Activate</button>" not in page
    detail = client.get(reverse("admin:recommender_modelversion_change", args=[ready.pk])).content.decode()
    assert f"Activate v{ready.pk}" not in detail
    assert [_post(client, "train").status_code, _post(client, "activate", ready).status_code,
            _post(client, "retire", ready).status_code] == [403, 403, 403]
    assert list(ModelVersion.objects.values_list("status", flat=True)) == ["ready"]


def test_the_train_permission_trains(client):
    add_features(catalog(per_category=12))
    client = _staff(client, "train_modelversion")
    assert 'id="train-button"' in client.get(reverse(DASHBOARD)).content.decode()
    assert _post(client, "train").status_code == 302
    assert ModelVersion.objects.get().status == "training"


def test_the_activate_permission_activates_and_retires(client, tmp_path):
    ready = model_version(status=ModelVersion.Status.READY, artifacts=str(tmp_path))
    client = _staff(client, "activate_modelversion")
    page = client.get(reverse(DASHBOARD)).content.decode()
    assert ">Activate</button>" in page and 'id="train-button"' not in page
    assert f"Activate v{ready.pk}" in client.get(
        reverse("admin:recommender_modelversion_change", args=[ready.pk])).content.decode()
    assert _post(client, "activate", ready).status_code == 302
    assert ModelVersion.objects.get(pk=ready.pk).status == "active"
    assert _post(client, "retire", ready).status_code == 302
    assert ModelVersion.objects.get(pk=ready.pk).status == "retired"
    assert _post(client, "train").status_code == 403
