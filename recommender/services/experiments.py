"""A/B experiments of the panel: started by staff between the active version (A) and a candidate
(B: a ready version, or a retired one whose files are kept, e.g. the version a retraining
replaced), ended by promoting the candidate (it becomes the active version) or dropping it (a
ready one is retired; a retired one stays so).

Contract: one runs at a time (the partial unique index one_running_experiment). Start and end run
under the serving lock (recommender.locks), as activations do, with the experiment's row locked:
two staff clicking Promote and Drop together get one outcome, the other is refused; a start
never pairs a candidate with a version that stopped serving meanwhile. Retiring or activating a
version ends the experiment that compares it (recommender.services.versions); the periodic
recovery ends one whose versions changed behind its back (experiments_heal), keeps a ready
candidate out of its "left ready by a lost worker" finishing, and embeds the images the
candidate lacks (products added during the experiment reach arm B within a recovery's minute).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from recommender import publishing
from recommender.locks import serving_lock
from recommender.models import Experiment, ModelVersion
from recommender.selectors.experiments import CANDIDATE_STATUSES, experiment_cache_clear
from recommender.selectors.features import images_missing_embedding
from recommender.selectors.versions import active_version
from recommender.services.versions import model_version_activate, model_version_retire

SPLIT_MIN, SPLIT_MAX = 0.05, 0.95  # the check constraint experiment_split_range


def experiment_start(*, candidate: ModelVersion, split: float, started_by: str = "") -> Experiment:
    """Start comparing ``candidate`` (arm B, ``split`` of the visitors) with the active version."""
    if not SPLIT_MIN <= split <= SPLIT_MAX:
        raise ValidationError(f"The candidate's share of visitors must be between {SPLIT_MIN:.0%} and {SPLIT_MAX:.0%}.")
    try:
        with transaction.atomic():
            serving_lock()
            control = active_version()
            if control is None:
                raise ValidationError("No version is active: activate one before comparing a candidate with it.")
            locked = ModelVersion.objects.select_for_update().filter(pk=candidate.pk).first()
            if locked is None or locked.status not in CANDIDATE_STATUSES or not locked.artifacts:
                raise ValidationError(f"Only a ready or retired version with its model files can be a candidate "
                                      f"(v{candidate.pk} is {locked.status if locked else 'gone'}).")
            experiment = Experiment.objects.create(control=control, candidate=locked, split=split,
                                                   started_by=started_by[:150])
            if images_missing_embedding(version=locked, limit=1):  # pruned, or products added since it trained
                transaction.on_commit(lambda: publishing.embedding_publish(version_id=locked.pk))
            transaction.on_commit(experiment_cache_clear)  # this process serves it at once
            return experiment
    except IntegrityError:
        running = Experiment.objects.filter(status=Experiment.Status.RUNNING).first()
        raise ValidationError(f"Experiment {running.pk if running else ''} is running; end it first "
                              "(one experiment at a time).") from None


def experiment_end(*, experiment: Experiment, promote: bool) -> Experiment:
    """End a running experiment: promote its candidate (activated; the control is retired) or drop
    it (a ready candidate is retired). Refused, and nothing changed, when it has ended meanwhile or
    the candidate cannot be activated."""
    with transaction.atomic():
        serving_lock()  # first, as activations take it: no lock-order deadlock with one
        locked = Experiment.objects.select_for_update().select_related("candidate").get(pk=experiment.pk)
        if locked.status != Experiment.Status.RUNNING:
            raise ValidationError(f"Experiment {locked.pk} has already ended ({locked.get_outcome_display()}).")
        if promote:
            model_version_activate(version=locked.candidate)  # ends it as promoted
        else:
            Experiment.objects.filter(pk=locked.pk).update(
                status=Experiment.Status.ENDED, outcome=Experiment.Outcome.DROPPED, ended_at=timezone.now())
            if locked.candidate.status == ModelVersion.Status.READY:
                model_version_retire(version=locked.candidate)
        transaction.on_commit(experiment_cache_clear)
    experiment.refresh_from_db()
    return experiment


def experiments_heal() -> list[int]:
    """End running experiments whose versions changed without passing through the services (a
    control no longer active, a candidate failed or deleted): the periodic recovery's step."""
    broken = (Experiment.objects.filter(status=Experiment.Status.RUNNING)
              .filter(~Q(control__status=ModelVersion.Status.ACTIVE) | ~Q(candidate__status__in=CANDIDATE_STATUSES)))
    ids = list(broken.values_list("pk", flat=True))
    if ids:
        Experiment.objects.filter(pk__in=ids, status=Experiment.Status.RUNNING).update(
            status=Experiment.Status.ENDED, outcome=Experiment.Outcome.RETIRED, ended_at=timezone.now())
        experiment_cache_clear()
    return ids
