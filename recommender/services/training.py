"""Training a model version: start, train (a short list of named phases), fail.

``ModelVersion.status``/``progress`` are the truth. A training runs under its advisory lock
(:mod:`recommender.locks`), so a second delivery of the task does nothing, and a redelivery after
the worker died fails the version instead of retrying it in a loop (an out-of-memory kill would
repeat). Failure at any point leaves the active version serving, removes this version's files and
embeddings, and records the reason on the row.
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from recommender import publishing, runtime
from recommender.locks import training_lock
from recommender.models import Embedding, ModelVersion
from recommender.selectors.features import features_load, images_missing_embedding
from recommender.selectors.versions import training_blocker
from recommender.services.embeddings import embeddings_create
from recommender.services.evaluation import model_version_evaluate
from recommender.services.versions import model_version_activate, model_version_gate

logger = logging.getLogger(__name__)
Phase = ModelVersion.Phase


def model_version_start(*, trigger: str = "manual", publish: bool = True) -> ModelVersion:
    """Create a version in 'training' and enqueue its training after commit (``publish=False``:
    the caller trains it itself). One at a time: when a training is already running, that version
    is returned."""
    spec = runtime.backbone_spec()
    try:
        with transaction.atomic():
            version = ModelVersion.objects.create(
                status=ModelVersion.Status.TRAINING, backbone=spec.identity, weights=spec.weights,
                input_size=spec.input_size, hyperparameters=asdict(runtime.head_config()), trigger=trigger,
                progress={"phase": Phase.QUEUED.value}, heartbeat_at=timezone.now())
            if publish:
                transaction.on_commit(lambda: publishing.training_publish(version_id=version.pk))
    except IntegrityError:
        return ModelVersion.objects.get(status=ModelVersion.Status.TRAINING)
    return version


def progress_update(version: ModelVersion, **progress) -> None:
    """Merge ``progress`` into the version's progress and beat its heartbeat."""
    version.progress = {**version.progress, **progress}
    version.heartbeat_at = timezone.now()
    ModelVersion.objects.filter(pk=version.pk).update(progress=version.progress, heartbeat_at=version.heartbeat_at)


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
            return
        ModelVersion.objects.filter(pk=version.pk).update(
            status=ModelVersion.Status.FAILED, error=reason[:5000], finished_at=timezone.now(),
            progress={**(locked.progress or {}), "phase": Phase.FAILED.value})
    Embedding.objects.filter(version_id=version.pk).delete()
    path = runtime.artifacts_dir(version.pk)
    shutil.rmtree(path, ignore_errors=True)
    for leftover in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    runtime.forget_head(version.pk)


# --------------------------------------------------------------------------- the phases


@dataclass
class _Catalog:
    """What a training learns from: the features of every active image of its backbone."""

    ids: list[int]
    labels: list[str]
    features: np.ndarray


class _Run:
    """One training's phases: each reports itself on the progress bar as it starts, with the times
    of the phases before it in ``progress["phase_seconds"]`` (complete once the version is done;
    the benchmarks read them). Nothing is written as a phase ends, so a version failed meanwhile
    (by staff or the recovery) keeps its "failed" phase."""

    def __init__(self, version: ModelVersion):
        self.version = version
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timed(self, name: str):
        started = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - started, 2)

    @contextmanager
    def phase(self, phase: ModelVersion.Phase, **progress):
        progress_update(self.version, phase=phase.value, phase_seconds=dict(self.seconds), **progress)
        with self.timed(phase.value):
            yield

    def done(self) -> None:
        progress_update(self.version, phase=Phase.DONE.value, phase_seconds=dict(self.seconds))


def _train(version: ModelVersion) -> None:
    run = _Run(version)
    now = timezone.now()
    ModelVersion.objects.filter(pk=version.pk).update(started_at=now, heartbeat_at=now, error="")
    with run.phase(Phase.LOADING):
        catalog = _catalog_load(version)
    config = runtime.head_config()
    with run.phase(Phase.TRAINING, epoch=0, epochs=config.epochs, images=len(catalog.ids)):
        result = _head_fit(version, catalog, config)
    with run.phase(Phase.SAVING):
        _head_save(version, catalog, result)
    with run.phase(Phase.EMBEDDING, images_embedded=0, images_total=len(catalog.ids)):
        _catalog_embed(version, catalog.ids)
    with run.phase(Phase.EVALUATING):
        model_version_evaluate(version=version)
        version.refresh_from_db()
        with run.timed("quality gate"):  # part of the evaluating phase, timed on its own
            passed, reason = model_version_gate(version=version)
    if not _mark_ready(version):
        return  # failed meanwhile (by staff or the recovery): leave it as it is
    if not passed:
        model_version_fail(version=version, reason=f"Quality gate: {reason}")
        return
    with run.phase(Phase.ACTIVATING, gate=reason):
        # Images ingested while it trained were embedded by the old version only: embed them here,
        # on the worker, so that the new version serves the whole catalog from its first request.
        embeddings_create(version=version, image_ids=images_missing_embedding(version=version))
        model_version_activate(version=version)
    run.done()


def _catalog_load(version: ModelVersion) -> _Catalog:
    ids, _, labels, features = features_load(backbone=version.backbone)
    blocker = training_blocker(images=len(ids), categories=len(set(labels)), backbone=version.backbone)
    if blocker:
        raise ValueError(blocker)
    return _Catalog(ids=ids, labels=labels, features=features)


def _epoch_callback(version: ModelVersion, epochs: int):
    import keras

    class Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            done = epoch + 1
            elapsed = time.monotonic() - self.started
            progress_update(version, phase=Phase.TRAINING.value, epoch=done, epochs=epochs,
                            accuracy=round(float(logs.get("accuracy", 0)), 4),
                            val_accuracy=round(float(logs.get("val_accuracy", 0)), 4),
                            loss=round(float(logs.get("loss", 0)), 4),
                            eta_seconds=round(elapsed / done * (epochs - done), 1))

    return Progress()


def _head_fit(version: ModelVersion, catalog: _Catalog, config):
    from recommender.head import train_head

    # The worker's own settings train the model: record those, not the requesting process's.
    version.hyperparameters = asdict(config)
    version.save(update_fields=["hyperparameters"])
    return train_head(catalog.features, catalog.labels, config, callbacks=[_epoch_callback(version, config.epochs)])


def _head_save(version: ModelVersion, catalog: _Catalog, result) -> None:
    head = result.head
    path = runtime.artifacts_dir(version.pk)
    head.save(path, meta={"version": version.pk, "backbone": version.backbone, "weights": version.weights,
                          "input_size": version.input_size, "classes": head.classes,
                          "hyperparameters": version.hyperparameters})
    version.artifacts = str(path)
    version.classes = head.classes
    version.n_images = len(catalog.ids)
    version.n_train = len(result.train_index)
    version.n_val = len(result.val_index)
    version.history = result.history
    version.metrics = {"holdout_image_ids": np.asarray(catalog.ids)[result.val_index].tolist(),
                       "training_seconds": round(result.seconds, 2)}
    version.save(update_fields=["artifacts", "classes", "n_images", "n_train", "n_val", "history", "metrics"])
    runtime.forget_head(version.pk)


def _catalog_embed(version: ModelVersion, image_ids: list[int]) -> None:
    """Embed the whole catalog with this version (the active version keeps serving meanwhile)."""
    total, done, started = len(image_ids), 0, time.monotonic()

    def embedded(n):
        nonlocal done
        done += n
        rate = done / max(time.monotonic() - started, 1e-6)
        progress_update(version, phase=Phase.EMBEDDING.value, images_embedded=done, images_total=total,
                        eta_seconds=round((total - done) / rate, 1))

    embeddings_create(version=version, image_ids=image_ids, progress=embedded)


def _mark_ready(version: ModelVersion) -> bool:
    """training -> ready; False when it is no longer training (failed by staff or the recovery)."""
    updated = ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.TRAINING).update(
        status=ModelVersion.Status.READY, finished_at=timezone.now())
    version.refresh_from_db()
    return bool(updated)
