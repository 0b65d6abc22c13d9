"""The periodic healers (recommender.services.maintenance), run inline: a training whose message was
lost is sent again, and a retraining starts only when none runs. With a real worker and beat:
tests/recommender/test_pipeline.py (lost ingestion) and test_faults.py (a killed training)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from recommender.models import ModelVersion
from recommender.services.maintenance import recover_lost_work, retrain_if_needed
from recommender.services.training import model_version_start

pytestmark = pytest.mark.django_db


def test_the_recovery_resends_a_training_whose_message_was_lost(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        version = model_version_start(trigger="test")  # Redis lost the message
    assert recover_lost_work()["republished_trainings"] == []  # not stale yet
    ModelVersion.objects.filter(pk=version.pk).update(created_at=timezone.now() - timedelta(hours=1))
    report = recover_lost_work()
    assert report["republished_trainings"] == [version.pk] and report["dead_trainings"] == []
    assert ModelVersion.objects.get(pk=version.pk).status == "training"


def test_a_retraining_starts_only_when_none_is_running(django_capture_on_commit_callbacks):
    assert retrain_if_needed() is None  # an empty catalog: nothing to retrain
    with django_capture_on_commit_callbacks(execute=False) as published:
        started = retrain_if_needed(force_reason="staff asked")
    assert (started.status, started.trigger) == ("training", "automatic: staff asked")
    assert len(published) == 1  # its training, sent after commit
    assert retrain_if_needed(force_reason="staff asked again") is None  # one training at a time
    assert ModelVersion.objects.count() == 1


def test_the_recovery_asks_for_the_active_versions_neighbour_lists(settings, broker):
    """A refresh lost with the broker (or never sent) is sent again; the task itself decides
    whether anything is to do. Nothing without an active version or with the lists turned off."""
    from django.core.cache import cache

    from recommender import publishing
    from tests.recommender.conftest import messages

    assert recover_lost_work()["neighbours"] is None  # no active version
    version = ModelVersion.objects.create(status=ModelVersion.Status.ACTIVE, backbone="b", weights="random",
                                          input_size=32, activated_at=timezone.now())
    cache.delete(publishing.NEIGHBOURS_FLAG.format(version.pk))
    assert recover_lost_work()["neighbours"] == version.pk
    [message] = messages(broker, "training")
    assert (message.headers["task"], message.payload[0]) == (publishing.REFRESH_NEIGHBOURS, [version.pk])
    settings.RECOMMENDER = {**settings.RECOMMENDER, "NEIGHBOUR_LISTS_MAX_ROWS": 0}
    assert recover_lost_work()["neighbours"] is None
