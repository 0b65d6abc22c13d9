"""Training a model version (recommender.services.training): its phases, redeliveries of the task
(one run, under the advisory lock), a worker lost mid-training, and the quality gate's refusal."""

import io
from pathlib import Path

import pytest
from django.core.management import call_command

from recommender import runtime
from recommender.locks import training_alive
from recommender.models import Embedding, ModelVersion
from recommender.services.training import model_version_start, model_version_train
from tests.conftest import wait_for
from tests.recommender.helpers import import_products, lock_from_another_session, process_all, train_inline

pytestmark = pytest.mark.django_db


def test_a_training_delivered_again_after_it_finished_changes_nothing(settings):
    import_products(40)
    process_all()
    version = train_inline(settings)
    assert version.status == "active"
    count = Embedding.objects.filter(version=version).count()
    assert model_version_train(version_id=version.pk).status == "active"  # second delivery: no-op
    assert Embedding.objects.filter(version=version).count() == count == 40


def test_a_training_records_the_time_of_each_phase(settings):
    import_products(40)
    process_all()
    version = train_inline(settings, epochs=2)
    assert version.status == "active"
    seconds = version.progress["phase_seconds"]
    phases = [ModelVersion.Phase.LOADING, ModelVersion.Phase.TRAINING, ModelVersion.Phase.SAVING,
              ModelVersion.Phase.EMBEDDING, ModelVersion.Phase.EVALUATING, ModelVersion.Phase.ACTIVATING]
    assert set(seconds) == {*phases, "quality gate"}
    assert all(isinstance(s, (int, float)) and s >= 0 for s in seconds.values())
    assert seconds["quality gate"] <= seconds[ModelVersion.Phase.EVALUATING]  # timed within that phase
    assert version.progress["phase"] == ModelVersion.Phase.DONE


def test_a_training_that_fails_its_quality_gate_keeps_the_active_version(settings):
    import_products(120)
    process_all()
    good = train_inline(settings, epochs=8)
    assert good.status == "active"
    settings.RECOMMENDER = {**settings.RECOMMENDER, "LEARNING_RATE": 0.0, "GATE_TOLERANCE": 0.0}
    bad = train_inline(settings, epochs=1)  # learns nothing: worse than the active version
    assert bad.status == "failed" and bad.error.startswith("Quality gate:")
    assert ModelVersion.objects.get(status="active").pk == good.pk
    assert not Path(settings.MODELS_ROOT, f"v{bad.pk}").exists()
    assert not list(Path(settings.MODELS_ROOT).glob(".*tmp*"))
    assert runtime.artifacts_stored(good) and not runtime.artifacts_stored(bad)  # its stored files removed too
    assert not list(Path(settings.MODELS_STORAGE_ROOT, f"v{bad.pk}").glob("*"))
    assert not Embedding.objects.filter(version=bad).exists()


def test_a_training_delivered_twice_runs_once(settings, django_capture_on_commit_callbacks):
    import_products(60)
    process_all()
    with django_capture_on_commit_callbacks(execute=False) as published:
        version = model_version_start(trigger="test")
    assert len(published) == 1
    other = lock_from_another_session(version.pk)  # a first delivery is training it right now
    try:
        assert training_alive(version.pk)
        again = model_version_train(version_id=version.pk)  # the broker delivers it again
        assert (again.status, again.attempts) == ("training", 0)  # it did nothing
        assert not Path(settings.MODELS_ROOT, f"v{version.pk}").exists()
    finally:
        other.close()
    # The server drops the other session's lock once it notices the connection closed.
    wait_for(lambda: not training_alive(version.pk), timeout=30, message="the other session's lock to go")
    # The first delivery's worker died after starting (attempts 1): a redelivery fails it, for good.
    ModelVersion.objects.filter(pk=version.pk).update(attempts=1, progress={"phase": "training", "epoch": 3})
    lost = model_version_train(version_id=version.pk)
    assert lost.status == "failed" and "interrupted" in lost.error and "'training'" in lost.error
    assert model_version_train(version_id=version.pk).status == "failed"  # and stays failed


def test_train_model_inline_does_not_also_queue_the_training(settings, django_capture_on_commit_callbacks):
    import_products(60)
    process_all()
    settings.RECOMMENDER = {**settings.RECOMMENDER, "EPOCHS": 2}
    with django_capture_on_commit_callbacks(execute=False) as published:
        call_command("train_model", inline=True, stdout=io.StringIO())
    assert published == []
    assert ModelVersion.objects.get().status == "active"


def test_a_version_retired_by_staff_during_its_activating_phase_stays_retired(settings, monkeypatch, caplog):
    """Staff retire the new version while its training embeds the last images before activating
    it: the activation, re-checked under the lock, is refused; the old version serves on and the
    training ends without failing (the retired version keeps its files for a later activation)."""
    from recommender.services import training
    from recommender.services.versions import model_version_retire

    import_products(40)
    process_all()
    old = train_inline(settings, epochs=2)
    assert old.status == "active"
    settings.RECOMMENDER = {**settings.RECOMMENDER, "GATE_TOLERANCE": 1.0}
    real = training.embeddings_create

    def then_staff_retire(**kwargs):
        created = real(**kwargs)
        if "progress" not in kwargs:  # the activating phase's call, not the catalog's embedding
            model_version_retire(version=ModelVersion.objects.get(pk=kwargs["version"].pk))
        return created

    monkeypatch.setattr(training, "embeddings_create", then_staff_retire)
    new = train_inline(settings, epochs=2)
    assert (new.status, new.error) == ("retired", "")
    assert ModelVersion.objects.get(pk=old.pk).status == "active"
    assert runtime.artifacts_stored(new) and "head.keras" in new.checksums
    assert f"v{new.pk} was retired while it was being activated" in caplog.text
