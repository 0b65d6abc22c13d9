"""Model versions' lifecycle after training: the quality gate, activation and retirement.

At most one version is active (a partial unique constraint); activation swaps it atomically
under the serving lock and the rows' locks, so shoppers are answered by the old version until the
commit and by the new one after it. Every transition is re-checked under the lock against the
status its caller saw, and refused with the current status when another process changed it.
"""

from __future__ import annotations


from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from recommender import publishing, runtime
from recommender.conf import config
from recommender.locks import serving_lock
from recommender.models import Experiment, ModelVersion
from recommender.selectors.experiments import experiment_cache_clear
from recommender.selectors.features import images_missing_embedding, images_trained_on
from recommender.selectors.versions import active_version
from recommender.services.evaluation import head_evaluate

GATE_MIN_IMAGES = 30  # fewer unseen held-out images than this: too noisy, compare on all of them
GATE_METRICS = ("accuracy", "precision_at_6")


def _gate_scores(version: ModelVersion, active: ModelVersion) -> tuple[dict, dict, str]:
    """Both versions' scores on held-out images that *neither* trained on, where there are enough.

    This version's validation split mostly holds images the active version trained on, which
    would score the active version on its own training data. Unseen by it: its own validation
    split, and images whose features arrived after it started training."""
    holdout = version.metrics.get("holdout_image_ids", [])
    trained_by_active = images_trained_on(version=active, image_ids=holdout)
    unseen = [i for i in holdout if i not in trained_by_active]
    if len(unseen) >= GATE_MIN_IMAGES:
        return (head_evaluate(version=version, image_ids=unseen), head_evaluate(version=active, image_ids=unseen),
                f"on {len(unseen)} held-out images neither version trained on")
    return (version.metrics, head_evaluate(version=active, image_ids=holdout),
            f"on all {len(holdout)} held-out images (only {len(unseen)} are unseen by v{active.pk}, "
            "which favours it)")


def model_version_gate(*, version: ModelVersion) -> tuple[bool, str]:
    """Whether ``version`` may replace the active one: at most GATE_TOLERANCE worse on each of
    GATE_METRICS. Returns (passed, the reason in words)."""
    active = active_version()
    if active is None:
        return True, "no active version to compare with"
    # Different backbones are compared too (a trained backbone against a frozen one): each version
    # reads its own backbone's features of the same held-out images.
    if sorted(active.classes) != sorted(version.classes):
        return True, "catalog categories changed; versions are not comparable"
    tolerance = config().gate_tolerance
    mine, theirs, basis = _gate_scores(version, active)
    checks = [(key, mine[key], theirs[key]) for key in GATE_METRICS
              if mine.get(key) is not None and theirs.get(key) is not None]
    failed = [key for key, new, old in checks if new < old - tolerance]
    summary = ", ".join(f"{k} {n:.3f} vs active {o:.3f}" for k, n, o in checks) + f" ({basis})"
    if failed:
        return False, f"worse than active v{active.pk} beyond tolerance {tolerance}: {summary}"
    return True, f"passed against v{active.pk}: {summary}"


def _changed(version: ModelVersion, seen: str, now: str, undone: str) -> ValidationError:
    return ValidationError(f"v{version.pk} is {now} now (it was {seen} when this was asked for); {undone}. "
                           "Look at it again before retrying.")


def _experiments_end(*, promoted: int | None = None, retired: int | None = None) -> None:
    """End the running experiment when the versions it compares change: its candidate activated
    (promoted), another version activated (superseded: its control no longer serves), either
    retired. Within the caller's transaction; an experiment dropped by staff has ended before."""
    running = Experiment.objects.filter(status=Experiment.Status.RUNNING)
    now = timezone.now()
    ended = 0
    if promoted is not None:
        ended += running.filter(candidate_id=promoted).update(status=Experiment.Status.ENDED, ended_at=now,
                                                              outcome=Experiment.Outcome.PROMOTED)
        ended += running.update(status=Experiment.Status.ENDED, ended_at=now, outcome=Experiment.Outcome.SUPERSEDED)
    if retired is not None:
        ended += running.filter(Q(candidate_id=retired) | Q(control_id=retired)).update(
            status=Experiment.Status.ENDED, ended_at=now, outcome=Experiment.Outcome.RETIRED)
    if ended:
        transaction.on_commit(experiment_cache_clear)  # this process serves without it at once


def model_version_activate(*, version: ModelVersion) -> ModelVersion:
    """Atomically make ``version`` the served one; the previous active version is retired.

    Decided on the caller's copy, applied only if the row still has that status under the locks
    (the serving lock, then the row): a version retired by staff or failed by the recovery since
    the caller looked is refused, not activated with its files gone. Activations run one at a
    time (:func:`recommender.locks.serving_lock`), so a second one retires the first one's version
    instead of hitting the one_active_version constraint. Activating the active version is a no-op."""
    seen = version.status
    if seen not in (ModelVersion.Status.READY, ModelVersion.Status.RETIRED, ModelVersion.Status.ACTIVE):
        raise ValidationError(f"Only a ready or retired version can be activated (v{version.pk} is {seen}).")
    with transaction.atomic():
        serving_lock()
        locked = ModelVersion.objects.select_for_update().filter(pk=version.pk).first()
        if locked is None:
            raise ValidationError(f"v{version.pk} no longer exists.")
        if locked.status == ModelVersion.Status.ACTIVE:
            return locked
        if locked.status != seen:
            raise _changed(locked, seen, locked.status, "it was not activated")
        # Under the row lock: a failure marks the row failed (and commits) before it removes files.
        if not locked.artifacts or not runtime.artifacts_stored(locked):
            raise ValidationError(f"v{version.pk} has no model files; it cannot be activated.")
        previous = list(ModelVersion.objects.select_for_update().filter(status=ModelVersion.Status.ACTIVE)
                        .values_list("pk", flat=True))
        ModelVersion.objects.filter(pk__in=previous).update(status=ModelVersion.Status.RETIRED)
        locked.status = ModelVersion.Status.ACTIVE
        locked.activated_at = timezone.now()
        locked.save(update_fields=["status", "activated_at"])
        _experiments_end(promoted=locked.pk)
        # Images this version has not embedded (ingested after it trained, e.g. a retired version
        # activated again) are embedded by a worker, not in this (web) request: they join its
        # similar items within moments. The periodic recovery repeats this if the broker is down.
        if images_missing_embedding(version=locked, limit=1):
            transaction.on_commit(lambda: publishing.embedding_publish(version_id=locked.pk))
    return locked


def model_version_retire(*, version: ModelVersion) -> ModelVersion:
    """Stop serving an active (or ready) version; with none active, similar items fall back to
    backbone features.

    Conditional on the status the caller saw (one UPDATE ... WHERE status = it, which waits for a
    concurrent activation's row lock and then re-reads the row): a ready version activated
    meanwhile is not retired behind the caller's back, which would leave no version serving.
    Retiring a version already retired is a no-op."""
    seen = version.status
    if seen not in (ModelVersion.Status.ACTIVE, ModelVersion.Status.READY):
        raise ValidationError(f"Only an active or ready version can be retired (v{version.pk} is {seen}).")
    with transaction.atomic():
        updated = ModelVersion.objects.filter(pk=version.pk, status=seen).update(status=ModelVersion.Status.RETIRED)
        if updated:
            _experiments_end(retired=version.pk)
    version.refresh_from_db()
    if not updated and version.status != ModelVersion.Status.RETIRED:
        raise _changed(version, seen, version.status, "nothing was retired")
    return version
