"""A/B experiments of the panel: started by staff between the active version and a ready
candidate, ended by promoting the candidate (it becomes the active version) or dropping it (it is
retired). One runs at a time (the partial unique index one_running_experiment decides a race);
retiring or activating a version ends the experiment that compares it
(recommender.services.versions), so an experiment never outlives its versions.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from recommender.models import Experiment, ModelVersion
from recommender.selectors.experiments import experiment_cache_clear
from recommender.selectors.versions import active_version
from recommender.services.versions import model_version_activate, model_version_retire

SPLIT_MIN, SPLIT_MAX = 0.05, 0.95  # the check constraint experiment_split_range


def experiment_start(*, candidate: ModelVersion, split: float, started_by: str = "") -> Experiment:
    """Start comparing ``candidate`` (arm B, ``split`` of the visitors) with the active version."""
    if not SPLIT_MIN <= split <= SPLIT_MAX:
        raise ValidationError(f"The candidate's share of visitors must be between {SPLIT_MIN:.0%} and {SPLIT_MAX:.0%}.")
    control = active_version()
    if control is None:
        raise ValidationError("No version is active: activate one before comparing a candidate with it.")
    if candidate.status != ModelVersion.Status.READY:
        raise ValidationError(f"Only a ready version can be a candidate (v{candidate.pk} is {candidate.status}).")
    try:
        with transaction.atomic():
            experiment = Experiment.objects.create(control=control, candidate=candidate, split=split,
                                                   started_by=started_by[:150])
            transaction.on_commit(experiment_cache_clear)  # this process serves it at once
            return experiment
    except IntegrityError:
        running = Experiment.objects.filter(status=Experiment.Status.RUNNING).first()
        raise ValidationError(f"Experiment {running.pk if running else ''} is running; end it first "
                              "(one experiment at a time).") from None


def experiment_end(*, experiment: Experiment, promote: bool) -> Experiment:
    """End a running experiment: promote its candidate (activated; the control is retired) or drop
    it (retired). Refused, and nothing changed, when the version cannot make that move."""
    experiment.refresh_from_db()
    if experiment.status != Experiment.Status.RUNNING:
        raise ValidationError(f"Experiment {experiment.pk} has already ended ({experiment.get_outcome_display()}).")
    with transaction.atomic():
        if promote:
            model_version_activate(version=experiment.candidate)  # ends it as promoted
        else:
            Experiment.objects.filter(pk=experiment.pk, status=Experiment.Status.RUNNING).update(
                status=Experiment.Status.ENDED, outcome=Experiment.Outcome.DROPPED, ended_at=timezone.now())
            model_version_retire(version=experiment.candidate)
    experiment.refresh_from_db()
    return experiment
