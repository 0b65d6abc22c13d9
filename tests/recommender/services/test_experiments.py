"""A/B experiments (recommender.services.experiments, selectors.experiments): one at a time, a
consistent assignment, results per arm, and an end by promotion, by drop, or by a version's
retirement or replacement."""

import pytest
from django.core.exceptions import ValidationError

from recommender.models import Embedding, Experiment, ModelVersion
from recommender.services.events import panel_events_write
from recommender.selectors.experiments import arm_assign, arm_for, experiment_results, experiment_running
from recommender.services.experiments import experiment_end, experiment_start
from recommender.services.versions import model_version_activate, model_version_retire
from tests.recommender.helpers import retired_and_active

pytestmark = pytest.mark.django_db


def versions(*statuses):
    return [ModelVersion.objects.create(status=s, trigger="test", input_size=32, artifacts={"head": "stored"})
            for s in statuses]


def test_assignment_is_consistent_and_follows_the_split():
    visitors = [f"visitor-{n}" for n in range(4000)]
    arms = [arm_assign(experiment_id=7, split=0.3, visitor=v) for v in visitors]
    assert arms == [arm_assign(experiment_id=7, split=0.3, visitor=v) for v in visitors]  # same every time
    assert 0.27 < arms.count("b") / len(arms) < 0.33
    reshuffled = [arm_assign(experiment_id=8, split=0.3, visitor=v) for v in visitors]
    assert reshuffled != arms  # a new experiment is a new draw


def test_one_experiment_at_a_time_and_bad_starts_refused():
    active, candidate, other = versions("active", "ready", "ready")
    experiment = experiment_start(candidate=candidate, split=0.5, started_by="ann")
    assert experiment_running() == experiment
    with pytest.raises(ValidationError, match="running; end it first"):
        experiment_start(candidate=other, split=0.5)
    with pytest.raises(ValidationError, match="between 5% and 95%"):
        experiment_start(candidate=other, split=0.99)
    failed = versions("failed")[0]
    with pytest.raises(ValidationError, match="Only a ready or retired version"):
        experiment_start(candidate=failed, split=0.5)
    assert Experiment.objects.count() == 1


def test_no_experiment_without_an_active_version():
    candidate = versions("ready")[0]
    with pytest.raises(ValidationError, match="No version is active"):
        experiment_start(candidate=candidate, split=0.5)


def test_visitors_without_an_id_stay_outside():
    active, candidate = versions("active", "ready")
    experiment_start(candidate=candidate, split=0.95)
    assert arm_for(visitor="").name == "" and arm_for(visitor=None).name == ""
    arms = {arm_for(visitor=f"v{n}").name for n in range(50)}
    assert arms == {"a", "b"}
    assert {arm_for(visitor=f"v{n}").version for n in range(50)} == {None, candidate}


@pytest.mark.parametrize("end", ["retire candidate", "retire control", "activate another"])
def test_a_version_leaving_ends_the_experiment(end, monkeypatch):
    active, candidate, other = versions("active", "ready", "ready")
    experiment = experiment_start(candidate=candidate, split=0.5)
    if end == "retire candidate":
        model_version_retire(version=candidate)
    elif end == "retire control":
        model_version_retire(version=active)
    else:
        from recommender import runtime

        ModelVersion.objects.filter(pk=other.pk).update(artifacts={"head": "x"})
        other.refresh_from_db()
        monkeypatch.setattr(runtime, "artifacts_stored", lambda version: True)  # no files needed to swap rows
        model_version_activate(version=other)
    experiment.refresh_from_db()
    assert experiment.status == "ended" and experiment.ended_at is not None
    assert experiment.outcome == ("superseded" if end == "activate another" else "retired")
    assert experiment_running() is None and arm_for(visitor="v1").name == ""


def test_a_row_that_missed_its_end_is_not_served_and_the_recovery_ends_it():
    from recommender.services.experiments import experiments_heal

    active, candidate = versions("active", "ready")
    experiment = experiment_start(candidate=candidate, split=0.5)
    ModelVersion.objects.filter(pk=candidate.pk).update(status="failed")  # behind the services' back
    assert experiment_running() is None
    assert experiments_heal() == [experiment.pk]
    experiment.refresh_from_db()
    assert (experiment.status, experiment.outcome) == ("ended", "retired")


def test_the_recovery_keeps_a_ready_candidate_ready_and_embeds_what_it_lacks(settings, monkeypatch):
    from recommender import publishing
    from recommender.services.maintenance import recover_lost_work

    old, new = retired_and_active(settings)
    ModelVersion.objects.filter(pk=old.pk).update(status="ready")
    experiment_start(candidate=ModelVersion.objects.get(pk=old.pk), split=0.5)
    Embedding.objects.filter(version_id=old.pk).order_by("id")[:1].get().delete()  # a product added since
    sent = []
    monkeypatch.setattr(publishing, "embedding_publish", lambda *, version_id: sent.append(version_id) or True)
    recover_lost_work()
    assert ModelVersion.objects.get(pk=old.pk).status == "ready"  # not "finished" as left by a lost worker
    assert old.pk in sent and experiment_running() is not None


def test_a_retired_version_can_be_the_candidate_and_dropping_it_keeps_it_retired():
    active, candidate = versions("active", "retired")
    experiment = experiment_end(experiment=experiment_start(candidate=candidate, split=0.5), promote=False)
    assert experiment.outcome == "dropped" and ModelVersion.objects.get(pk=candidate.pk).status == "retired"


def test_promote_and_drop_with_real_versions(settings):
    old, new = retired_and_active(settings)
    ModelVersion.objects.filter(pk=old.pk).update(status="ready")
    old.refresh_from_db()
    experiment = experiment_end(experiment=experiment_start(candidate=old, split=0.5), promote=False)
    assert (experiment.outcome, ModelVersion.objects.get(pk=old.pk).status) == ("dropped", "retired")
    with pytest.raises(ValidationError, match="already ended"):
        experiment_end(experiment=experiment, promote=True)
    ModelVersion.objects.filter(pk=old.pk).update(status="ready")
    old.refresh_from_db()
    experiment = experiment_end(experiment=experiment_start(candidate=old, split=0.5), promote=True)
    assert experiment.outcome == "promoted"
    assert ModelVersion.objects.get(pk=old.pk).status == "active" and ModelVersion.objects.get(pk=new.pk).status == "retired"


def test_results_per_arm_with_the_verdict():
    active, candidate = versions("active", "ready")
    experiment = experiment_start(candidate=candidate, split=0.5)

    def events(arm, views, clicks):
        common = {"at": 1.7e9, "channel": "page", "visitor": "v", "product_id": 1, "version_id": active.pk,
                  "experiment_id": experiment.pk, "arm": arm, "rules": "", "target_id": None, "position": None}
        return ([{**common, "kind": 1, "shown": [1, 2, 3, 4, 5, 6]} for n in range(views)]
                + [{**common, "kind": 2, "shown": [], "target_id": 2, "position": 1} for n in range(clicks)])

    panel_events_write(events("a", 1000, 100), chunk="a")
    panel_events_write(events("b", 1000, 150), chunk="b")
    panel_events_write(events("b", 1000, 150), chunk="b")  # read again after a lost acknowledgement: counted once
    results = experiment_results(experiment=experiment)
    assert (results["a"]["views"], results["a"]["clicks"], results["b"]["clicks"]) == (1000, 100, 150)
    assert results["a"]["ctr"] == pytest.approx(0.1) and results["a"]["per_1000"] == pytest.approx(100 / 6)
    assert results["a"]["ctr_low"] < 0.1 < results["a"]["ctr_high"]
    assert results["verdict"] == "B ahead, 95% confident" and results["p_value"] == pytest.approx(0.000723, abs=2e-5)
