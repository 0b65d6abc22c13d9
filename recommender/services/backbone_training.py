"""The backbone kind of training: ResNet50 and the head trained end to end on the catalog's own
pixels and categories (:mod:`recommender.finetune`), then the catalog's features re-extracted with
the trained backbone on the ``features`` queue (GPU workers), before it is embedded, evaluated and
gated like any version (services.training runs those phases).

Files: the head's folder first (written aside, then renamed into place), then the backbone's
weights inside it (temporary name, then rename), their checksums recorded on the version once both
are in place (and again when the embedding scaler rewrites the preprocessing file); the version's
``backbone`` becomes the trained backbone's identity (``resnet50:ft-v<N>-<hash>:<size>``) only
once that file is complete, and it serves nobody until activated. A failure or a kill leaves the active version serving:
model_version_fail removes the folder, and features_prune the features of the failed backbone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from catalog.models import ProductImage
from recommender import runtime
from recommender.backbone import BackboneSpec, build_resnet50, to_rgb_array
from recommender.conf import config
from recommender.models import ModelVersion
from recommender.selectors.features import features_load, images_missing_features, images_with_categories
from recommender.selectors.versions import training_blocker
from recommender.services.features import features_enqueue, features_extract
from recommender.services.ingestion import picture_open
from recommender.services.phases import PhaseRun, epoch_callback, progress_update

logger = logging.getLogger(__name__)
Phase = ModelVersion.Phase

# The decoded training images are held in memory (and the training split copied once more): at
# most this much, about 28,000 images at 224 px or 1.4 million at 32 px; larger catalogs train on a
# seeded sample of that size.
MAX_PIXEL_BYTES = 4 * 1024 ** 3
REEXTRACT_POLL_SECONDS = 1.0
# No chunk finished for this long: no features worker is consuming (or all are busy with a long
# ingestion backlog), so the training worker extracts what is left itself.
REEXTRACT_IDLE_SECONDS = 120


@dataclass
class _Pixels:
    """What the backbone learns from: every ready image of a categorised active product (at most
    MAX_PIXEL_BYTES of them), decoded at the version's input size: N x size x size x 3 bytes
    (15,000 images at 64 px: 184 MB; at 224 px: 2.3 GB)."""

    ids: list[int]
    labels: list[str]
    images: np.ndarray


def backbone_version_build(*, version: ModelVersion, run: PhaseRun) -> list[int]:
    """Load the pixels, train, save, re-extract the catalog; returns the images to embed."""
    with run.phase(Phase.LOADING):
        pixels = _pixels_load(version)
    training = _training_config(version, len(pixels.ids))
    with run.phase(Phase.TRAINING, epoch=0, epochs=training.epochs, images=len(pixels.ids)):
        result = _fit(version, pixels, training)
    with run.phase(Phase.SAVING):
        _save(version, pixels, result)
    with run.phase(Phase.EXTRACTING, images_extracted=0, images_total=len(pixels.ids)):
        _reextract(version)
        _embedding_scaler_fit(version, np.asarray(pixels.ids)[result.train_index].tolist(), result.head)
    return pixels.ids


def _pixels_load(version: ModelVersion) -> _Pixels:
    rows = images_with_categories()
    blocker = training_blocker(images=len(rows), categories=len({c for _, c in rows}), backbone=version.backbone)
    if blocker:
        raise ValueError(blocker)
    size = version.input_size
    limit = MAX_PIXEL_BYTES // (size * size * 3)
    if len(rows) > limit:  # a seeded sample (the class weights balance what it leaves uneven)
        keep = np.random.default_rng(config().seed).choice(len(rows), size=limit, replace=False)
        logger.warning("v%s trains on %s of %s images (MAX_PIXEL_BYTES)", version.pk, limit, len(rows))
        rows = [rows[i] for i in sorted(keep)]
    objects = ProductImage.objects.in_bulk([i for i, _ in rows])
    images, ids, labels = np.empty((len(rows), size, size, 3), np.uint8), [], []
    for image_id, category in rows:
        try:
            images[len(ids)] = to_rgb_array(picture_open(objects[image_id]), size).astype(np.uint8)
        except Exception as exc:  # lost or damaged since it was ingested: left out, said in the log
            logger.warning("image %s left out of v%s's training: %s", image_id, version.pk, exc)
            continue
        ids.append(image_id)
        labels.append(category)
    return _Pixels(ids=ids, labels=labels, images=images[:len(ids)])


def _starting_spec(version: ModelVersion) -> BackboneSpec:
    """The weights the training starts from (``version.weights``) at its own input size."""
    return BackboneSpec(weights=runtime.weights_local(version.weights), input_size=version.input_size,
                        seed=config().seed)


def _training_config(version: ModelVersion, n_images: int):
    # The worker's own settings train the model: record those (with the epochs this catalog's size
    # makes of them), not the requesting process's.
    import dataclasses

    from recommender.finetune import epochs_for

    training = runtime.backbone_training_config(from_scratch=_starting_spec(version).is_random)
    epochs, patience = epochs_for(training, n_images)
    training = dataclasses.replace(training, epochs=epochs, patience=patience)
    version.hyperparameters = {**version.hyperparameters, **asdict(training)}
    version.save(update_fields=["hyperparameters"])
    return training


def _fit(version: ModelVersion, pixels: _Pixels, training):
    from recommender.finetune import train_backbone

    # A model of its own, built from the starting weights (a trained backbone's file verified
    # first): the process's cached extractors are never trained in place.
    runtime.weights_verify(version.weights)
    start = build_resnet50(_starting_spec(version))
    return train_backbone(pixels.images, pixels.labels, start, training,
                          callbacks=[epoch_callback(version=version, epochs=training.epochs)])


def _save(version: ModelVersion, pixels: _Pixels, result) -> None:
    from recommender.finetune import backbone_save

    path = runtime.artifacts_dir(version.pk)
    result.head.save(path, meta={"version": version.pk, "kind": version.kind, "starting_weights": version.weights,
                                 "input_size": version.input_size, "classes": result.head.classes})
    weights = backbone_save(result.backbone, path)
    version.backbone = BackboneSpec(weights=str(weights), input_size=version.input_size, seed=config().seed).identity
    version.artifacts = f"v{version.pk}"  # in the models storage (recommender.artifacts)
    version.checksums = runtime.artifacts_publish(version.pk)  # stored and committed before any worker loads them
    version.classes = result.head.classes
    version.n_images, version.n_train, version.n_val = len(pixels.ids), len(result.train_index), len(result.val_index)
    version.history = result.history
    version.metrics = {"holdout_image_ids": np.asarray(pixels.ids)[result.val_index].tolist(),
                       # Its features all postdate its start, so "trained on" is recorded, not inferred.
                       "trained_image_ids": np.asarray(pixels.ids)[result.train_index].tolist(),
                       "training_seconds": round(result.seconds, 2), "epochs_run": result.epochs_run,
                       "best_epoch": result.best_epoch, "mixed_precision": result.mixed_precision}
    version.save(update_fields=["backbone", "artifacts", "checksums", "classes", "n_images", "n_train", "n_val",
                                "history", "metrics"])
    runtime.forget_head(version.pk)


def _reextract(version: ModelVersion) -> None:
    """The features of every image ready now, with the trained backbone, by the features queue;
    waits with progress and ETA. Images that arrive meanwhile are extracted when it activates (and
    by the recovery after that), so a long import does not hold it here."""
    todo = images_missing_features(backbone=version.backbone)
    features_enqueue(version=version, image_ids=todo, chunk=config().ingest_chunk)
    total, started = len(todo), time.monotonic()
    last_done, last_change = -1, started
    while True:
        version.refresh_from_db(fields=["status"])
        if version.status != ModelVersion.Status.TRAINING:
            raise RuntimeError(f"v{version.pk} is no longer training ({version.status}); re-extraction stopped")
        missing = set(images_missing_features(backbone=version.backbone)) & set(todo)
        done = total - len(missing)
        _extraction_progress(version, done, total, started)
        if not missing:
            return
        if done != last_done:
            last_done, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > REEXTRACT_IDLE_SECONDS:
            logger.warning("v%s: no features worker extracted anything for %s s; extracting %s images here",
                           version.pk, REEXTRACT_IDLE_SECONDS, len(missing))
            counted = [done]

            def here(n):
                counted[0] += n
                _extraction_progress(version, counted[0], total, started)

            features_extract(version_id=version.pk, image_ids=sorted(missing), progress=here)
            return
        time.sleep(REEXTRACT_POLL_SECONDS)


def _extraction_progress(version: ModelVersion, done: int, total: int, started: float) -> None:
    rate = done / max(time.monotonic() - started, 1e-6)
    progress_update(version=version, phase=Phase.EXTRACTING.value, images_extracted=done, images_total=total,
                    eta_seconds=round((total - done) / rate, 1) if rate else None)


def _embedding_scaler_fit(version: ModelVersion, train_ids: list[int], head) -> None:
    """The embedding scaler, fitted on the training rows' features of the trained backbone (like the
    head kind's), written beside the head."""
    _, _, _, features = features_load(backbone=version.backbone, image_ids=train_ids, active_only=False)
    head.embedding_scaler_fit(features)
    head.preprocessing_save(runtime.artifacts_dir(version.pk))
    version.checksums = runtime.artifacts_publish(version.pk)  # the rewritten file's (a new stored object)
    ModelVersion.objects.filter(pk=version.pk).update(checksums=version.checksums)
    runtime.forget_head(version.pk)
