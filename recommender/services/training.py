"""Training a model version: start, train (a short list of named phases), fail, and finish one
left ready by a lost worker.

``ModelVersion.status``/``progress`` are the truth. A training runs under its advisory lock
(:mod:`recommender.locks`), so a second delivery of the task does nothing, and a redelivery after
the worker died fails the version instead of retrying it in a loop (an out-of-memory kill would
repeat). Failure at any point leaves the active version serving, removes this version's files and
embeddings, and records the reason on the row.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from recommender import publishing, runtime
from recommender.locks import training_lock
from recommender.models import Embedding, ModelVersion
from recommender.conf import config
from recommender.selectors.features import features_load, images_missing_embedding, images_missing_features
from recommender.selectors.versions import serving_backbone, training_blocker, training_kind
from recommender.services.backbone_training import backbone_version_build
from recommender.services.embeddings import embeddings_create
from recommender.services.neighbours import neighbours_refresh
from recommender.services.features import features_extract
from recommender.services.evaluation import model_version_evaluate
from recommender.services.phases import PhaseRun, epoch_callback, progress_update
from recommender.services.versions import model_version_activate, model_version_gate, model_version_retire

logger = logging.getLogger(__name__)
Phase = ModelVersion.Phase


def _version_fields(kind: str) -> dict:
    """What a new version of ``kind`` starts from: the serving backbone (the configured one, or a
    trained one that serves), at the configured input size for a head, at the backbone kind's own
    for a backbone (whose identity is replaced by its trained one once saved). No weights file is
    read here (this runs in web processes too)."""
    serving, identity = serving_backbone()
    if kind == ModelVersion.Kind.BACKBONE:
        size = config().backbone_input_size
        hyper = {**asdict(runtime.backbone_training_config(from_scratch=serving.is_random)),
                 "starting_backbone": identity}
        placeholder = f"{identity.rsplit(':', 1)[0]}:{size}"  # the starting backbone at this size, until saved
        return {"backbone": placeholder, "weights": runtime.weights_portable(serving.weights), "input_size": size,
                "hyperparameters": hyper}
    return {"backbone": identity, "weights": runtime.weights_portable(serving.weights), "input_size": serving.input_size,
            "hyperparameters": asdict(runtime.head_config())}


def _bounded(text: str, field: str) -> str:
    """``text`` cut to the column's length, marked as cut ("…") when it was: a trigger is built
    from a username, a staff reason or a list of new categories, and an overflow would raise
    DataError (and the hourly retraining would fail on it for ever)."""
    limit = ModelVersion._meta.get_field(field).max_length
    return text if len(text) <= limit else text[:limit - 1] + "…"


def model_version_start(*, trigger: str = "manual", kind: str | None = None, publish: bool = True) -> ModelVersion:
    """Create a version in 'training' and enqueue its training after commit (``publish=False``:
    the caller trains it itself). ``kind`` (head or backbone) defaults to RECOMMENDER_TRAINING's
    choice, recorded with its reason. One at a time: when a training is already running, that
    version is returned. ``trigger`` of any length is stored cut to the column (marked "…")."""
    kind, why = (kind, "chosen by whoever started it") if kind else training_kind()
    try:
        with transaction.atomic():
            version = ModelVersion.objects.create(
                status=ModelVersion.Status.TRAINING, kind=kind, kind_reason=_bounded(why, "kind_reason"),
                trigger=_bounded(trigger, "trigger"),
                progress={"phase": Phase.QUEUED.value}, heartbeat_at=timezone.now(), **_version_fields(kind))
            if publish:
                transaction.on_commit(lambda: publishing.training_publish(version_id=version.pk))
    except IntegrityError:
        return ModelVersion.objects.get(status=ModelVersion.Status.TRAINING)
    return version


def model_version_train(*, version_id: int) -> ModelVersion:
    """Train, persist, embed, evaluate and (if it passes the gate) activate a version.

    Idempotent: a second delivery while the first runs (the broker's visibility timeout, two
    workers) finds the training lock taken and does nothing; a delivery after it finished finds it
    no longer training."""
    version = ModelVersion.objects.get(pk=version_id)
    if version.status != ModelVersion.Status.TRAINING:
        return version  # a second delivery after it finished: nothing to do
    with training_lock(version_id) as acquired:
        if not acquired:
            return version  # another process is training it right now
        version.refresh_from_db()
        if version.status != ModelVersion.Status.TRAINING:
            return version
        if version.attempts:
            model_version_fail(version=version, reason=(
                f"Training was interrupted (worker lost during '{version.progress.get('phase', 'start')}'); "
                "start a new training."))
        else:
            ModelVersion.objects.filter(pk=version.pk).update(attempts=F("attempts") + 1)
            try:
                _train(version)
            except Exception as exc:
                logger.exception("training v%s failed", version.pk)
                model_version_fail(version=version, reason=f"{type(exc).__name__}: {exc}")
    version.refresh_from_db()
    return version


def model_version_fail(*, version: ModelVersion, reason: str) -> None:
    """Mark failed, drop its embeddings and files; never touches an active, retired or already
    failed version (only a training, or a ready one that has not been activated)."""
    failable = (ModelVersion.Status.TRAINING, ModelVersion.Status.READY)
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().filter(pk=version.pk).first()
        if locked is None or locked.status not in failable:
            if locked is not None and locked.status == ModelVersion.Status.FAILED:
                # Failed meanwhile, while its training still wrote files (or embeddings).
                Embedding.objects.filter(version_id=version.pk).delete()
                _files_remove(version.pk)
            return
        ModelVersion.objects.filter(pk=version.pk).update(
            status=ModelVersion.Status.FAILED, error=reason[:5000], finished_at=timezone.now(),
            progress={**(locked.progress or {}), "phase": Phase.FAILED.value})
    Embedding.objects.filter(version_id=version.pk).delete()
    _files_remove(version.pk)


def model_version_finish(*, version: ModelVersion) -> str:
    """Finish a version left ready by a worker lost between the ready commit and its activation
    (the caller checked that no process holds its training lock), as its training would have:

    - activated, if it passed the gate and no version has been activated since it became ready
      (a newer one, or any after its ready time): its missing embeddings and features follow from
      the activation's backfill and the recovery's re-extraction, within moments;
    - retired (files kept, staff may activate it) when the serving choice moved on since: it is
      never activated over a version that serves now;
    - failed, when the gate (run again for a version left ready before its verdict was recorded)
      refuses it, or its files are gone.

    Returns "activated", "retired", "failed", or "unchanged" when another process changed it
    meanwhile; only a ready version changes, so running it twice changes nothing."""
    if not (version.progress or {}).get("gate_passed"):
        passed, reason = model_version_gate(version=version)
        if not passed:
            model_version_fail(version=version, reason=f"Quality gate: {reason}")
            return "failed"
        progress_update(version=version, gate=reason, gate_passed=True)
    since = Q(pk__gt=version.pk, activated_at__isnull=False)
    if version.finished_at:
        since |= Q(activated_at__gt=version.finished_at)
    newer = ModelVersion.objects.filter(since).exclude(pk=version.pk).order_by("-activated_at").first()
    try:
        if newer is not None:
            model_version_retire(version=version)
            logger.warning("v%s was left ready by a lost worker; v%s was activated since, so it is retired",
                           version.pk, newer.pk)
            return "retired"
        model_version_activate(version=version)
    except ValidationError as exc:
        version.refresh_from_db()
        if version.status != ModelVersion.Status.READY:
            return "unchanged"  # retired, activated or failed by someone else meanwhile
        model_version_fail(version=version, reason=" ".join(exc.messages))  # its files are gone
        return "failed"
    progress_update(version=version, phase=Phase.DONE.value)
    return "activated"


def _files_remove(version_id: int) -> None:
    runtime.artifacts_remove(version_id)  # stored objects and this host's cache


# --------------------------------------------------------------------------- the phases


@dataclass
class _Catalog:
    """What a training learns from: the features of every active image of its backbone."""

    ids: list[int]
    labels: list[str]
    features: np.ndarray


def _train(version: ModelVersion) -> None:
    run = PhaseRun(version)
    now = timezone.now()
    ModelVersion.objects.filter(pk=version.pk).update(started_at=now, heartbeat_at=now, error="")
    build = backbone_version_build if version.trains_backbone else _head_version_build
    image_ids = build(version=version, run=run)
    version.refresh_from_db(fields=["status"])
    if version.status != ModelVersion.Status.TRAINING:  # failed meanwhile: stop here (files removed)
        raise RuntimeError(f"v{version.pk} was failed while it trained")
    with run.phase(Phase.EMBEDDING, images_embedded=0, images_total=len(image_ids)):
        _catalog_embed(version, image_ids)
    with run.phase(Phase.EVALUATING):
        model_version_evaluate(version=version)
        version.refresh_from_db()
        with run.timed("quality gate"):  # part of the evaluating phase, timed on its own
            passed, reason = model_version_gate(version=version)
    if not passed:  # failed straight from training: "ready" always means it passed the gate
        model_version_fail(version=version, reason=f"Quality gate: {reason}")
        return
    if not _mark_ready(version, gate=reason):
        return  # failed meanwhile (by staff or the recovery): leave it as it is
    with run.phase(Phase.ACTIVATING, gate=reason):
        # Images ingested while it trained were embedded by the old version only: embed them here,
        # on the worker, so that the new version serves the whole catalog from its first request
        # (a trained backbone first extracts their features; the recovery heals later arrivals).
        if version.trains_backbone:
            features_extract(version_id=version.pk, image_ids=images_missing_features(backbone=version.backbone))
        embeddings_create(version=version, image_ids=images_missing_embedding(version=version))
        if not _activate_unless_retired(version):
            return
    run.done()


def _activate_unless_retired(version: ModelVersion) -> bool:
    """Activate the version this training made ready; False when staff retired it meanwhile (their
    choice stands: it stays retired, files kept). Failed meanwhile: raises, and the training's
    failure path removes what this phase added."""
    try:
        model_version_activate(version=version)
    except ValidationError:
        version.refresh_from_db()
        if version.status != ModelVersion.Status.RETIRED:
            raise
        logger.warning("v%s was retired while it was being activated; it stays retired", version.pk)
        return False
    return True


def _head_version_build(*, version: ModelVersion, run: PhaseRun) -> list[int]:
    """The original method: the head trained on stored features of a frozen backbone. Returns the
    images to embed."""
    with run.phase(Phase.LOADING):
        catalog = _catalog_load(version)
    head_config = runtime.head_config()
    with run.phase(Phase.TRAINING, epoch=0, epochs=head_config.epochs, images=len(catalog.ids)):
        result = _head_fit(version, catalog, head_config)
    with run.phase(Phase.SAVING):
        _head_save(version, catalog, result)
    return catalog.ids


def _catalog_load(version: ModelVersion) -> _Catalog:
    ids, _, labels, features = features_load(backbone=version.backbone)
    blocker = training_blocker(images=len(ids), categories=len(set(labels)), backbone=version.backbone)
    if blocker:
        raise ValueError(blocker)
    return _Catalog(ids=ids, labels=labels, features=features)


def _head_fit(version: ModelVersion, catalog: _Catalog, head_config):
    from recommender.head import train_head

    # The worker's own settings train the model: record those, not the requesting process's.
    version.hyperparameters = asdict(head_config)
    version.save(update_fields=["hyperparameters"])
    return train_head(catalog.features, catalog.labels, head_config,
                      callbacks=[epoch_callback(version=version, epochs=head_config.epochs)])


def _head_save(version: ModelVersion, catalog: _Catalog, result) -> None:
    head = result.head
    path = runtime.artifacts_dir(version.pk)
    head.save(path, meta={"version": version.pk, "backbone": version.backbone, "weights": version.weights,
                          "input_size": version.input_size, "classes": head.classes,
                          "hyperparameters": version.hyperparameters})
    version.artifacts = f"v{version.pk}"  # in the models storage (recommender.artifacts)
    version.checksums = runtime.artifacts_publish(version.pk)  # stored first: verified before any load
    version.classes = head.classes
    version.n_images = len(catalog.ids)
    version.n_train = len(result.train_index)
    version.n_val = len(result.val_index)
    version.history = result.history
    version.metrics = {"holdout_image_ids": np.asarray(catalog.ids)[result.val_index].tolist(),
                       "training_seconds": round(result.seconds, 2)}
    version.save(update_fields=["artifacts", "checksums", "classes", "n_images", "n_train", "n_val", "history",
                                "metrics"])
    runtime.forget_head(version.pk)


def _catalog_embed(version: ModelVersion, image_ids: list[int]) -> None:
    """Embed the whole catalog with this version (the active version keeps serving meanwhile)."""
    total, done, started = len(image_ids), 0, time.monotonic()

    def embedded(n):
        nonlocal done
        done += n
        rate = done / max(time.monotonic() - started, 1e-6)
        progress_update(version=version, phase=Phase.EMBEDDING.value, images_embedded=done, images_total=total,
                        eta_seconds=round((total - done) / rate, 1))

    embeddings_create(version=version, image_ids=image_ids, progress=embedded, refresh_lists=False)
    _catalog_neighbours(version)


def _catalog_neighbours(version: ModelVersion) -> None:
    """The version's neighbour lists, before it can be activated: its product panels are exact
    lookups from the first request. A failure here does not fail the training: the index answers
    meanwhile and the periodic recovery asks for the lists again."""
    started, last = time.monotonic(), 0.0

    def listed(done, total):
        nonlocal last
        now = time.monotonic()
        if now - last >= 2 or done == total:  # a heartbeat, not a write per block
            last = now
            rate = done / max(now - started, 1e-6)
            progress_update(version=version, phase=Phase.NEIGHBOURS.value, products_listed=done,
                            products_total=total, eta_seconds=round((total - done) / rate, 1))

    try:
        neighbours_refresh(version_id=version.pk, progress=listed)
    except Exception:
        logger.exception("neighbour lists of v%s not built; the index answers until a refresh builds them",
                         version.pk)


def _mark_ready(version: ModelVersion, *, gate: str) -> bool:
    """training -> ready, with the gate's verdict in the same write (the recovery finishes a ready
    version whose worker was lost on it: model_version_finish); False when it is no longer
    training (failed by staff or the recovery)."""
    progress = {**(version.progress or {}), "gate": gate, "gate_passed": True}
    updated = ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.TRAINING).update(
        status=ModelVersion.Status.READY, finished_at=timezone.now(), progress=progress)
    version.refresh_from_db()
    return bool(updated)
