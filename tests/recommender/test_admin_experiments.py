"""The dashboard's experiment panel and clicks per version (recommender/admin_experiments.py):
start, follow and end an experiment from the admin; the numbers shown; permissions."""

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from recommender.models import Experiment, ModelVersion
from recommender.services.events import panel_events_write

pytestmark = pytest.mark.django_db
DASHBOARD = "admin:recommender_modelversion_changelist"


def versions(*statuses):
    return [ModelVersion.objects.create(status=s, trigger="test", input_size=32, metrics={"precision_at_6": 0.5},
                                         artifacts={"head": "stored"})
            for s in statuses]


def views_and_clicks(*, version, experiment=None, arm="", views, clicks):
    common = {"at": 1.7e9, "channel": "page", "visitor": "v", "product_id": 1, "version_id": version.pk,
              "experiment_id": experiment.pk if experiment else None, "arm": arm, "rules": "", "target_id": None,
              "position": None}
    panel_events_write([{**common, "kind": 1, "shown": [1, 2, 3]} for n in range(views)]
                       + [{**common, "kind": 2, "shown": [], "target_id": 2, "position": 1} for n in range(clicks)])


def test_start_follow_and_drop_an_experiment(admin_client):
    active, candidate = versions("active", "ready")
    page = admin_client.get(reverse(DASHBOARD)).content.decode()
    assert 'id="experiment-start"' in page and f'<option value="{candidate.pk}">' in page
    response = admin_client.post(reverse("admin:recommender_experiment_start"),
                                 {"candidate": candidate.pk, "split": "0.2"})
    assert response.status_code == 302
    experiment = Experiment.objects.get(status="running")
    assert (experiment.control_id, experiment.candidate_id, experiment.split) == (active.pk, candidate.pk, 0.2)
    views_and_clicks(version=active, experiment=experiment, arm="a", views=1000, clicks=100)
    views_and_clicks(version=candidate, experiment=experiment, arm="b", views=1000, clicks=150)
    page = admin_client.get(reverse(DASHBOARD)).content.decode()
    assert "B ahead, 95% confident" in page and "10.0% (8.3–12.0%)" in page and "15.0% (12.9–17.3%)" in page
    assert 'id="clicks-per-version"' in page and "50.0" in page  # 150 clicks per 3,000 products shown
    admin_client.post(reverse("admin:recommender_experiment_end", args=[experiment.pk]), {"end": "drop"})
    experiment.refresh_from_db()
    assert (experiment.status, experiment.outcome) == ("ended", "dropped")
    assert ModelVersion.objects.get(pk=candidate.pk).status == "retired"
    listing = admin_client.get(reverse("admin:recommender_experiment_changelist")).content.decode()
    assert f"#{experiment.pk}: v{active.pk} (A) vs v{candidate.pk} (B)" in listing and "B ahead" in listing


def test_a_second_experiment_and_a_bad_split_are_refused_with_a_message(admin_client):
    active, candidate, other = versions("active", "ready", "ready")
    start = reverse("admin:recommender_experiment_start")
    admin_client.post(start, {"candidate": candidate.pk, "split": "0.5"})
    response = admin_client.post(start, {"candidate": other.pk, "split": "0.5"}, follow=True)
    assert "running; end it first" in response.content.decode()
    Experiment.objects.update(status="ended", outcome="dropped")
    response = admin_client.post(start, {"candidate": other.pk, "split": "2"}, follow=True)
    assert "between 5% and 95%" in response.content.decode()
    assert Experiment.objects.filter(status="running").count() == 0


def test_starting_needs_the_experiment_permission(client):
    active, candidate = versions("active", "ready")
    user = User.objects.create_user("merch", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_modelversion"))
    client.force_login(user)
    page = client.get(reverse(DASHBOARD)).content.decode()
    assert 'id="experiment-start"' not in page and 'id="clicks-per-version"' in page
    response = client.post(reverse("admin:recommender_experiment_start"), {"candidate": candidate.pk, "split": "0.5"})
    assert response.status_code == 403 and not Experiment.objects.exists()
