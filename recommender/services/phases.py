"""A training's phases as staff see them: each phase reports itself on the version's progress as
it starts, with the times of the phases before it. Shared by both kinds of training."""

from __future__ import annotations

import time
from contextlib import contextmanager

from django.utils import timezone

from recommender.models import ModelVersion

Phase = ModelVersion.Phase


def progress_update(*, version: ModelVersion, **progress) -> None:
    """Merge ``progress`` into the version's progress and beat its heartbeat."""
    version.progress = {**version.progress, **progress}
    version.heartbeat_at = timezone.now()
    ModelVersion.objects.filter(pk=version.pk).update(progress=version.progress, heartbeat_at=version.heartbeat_at)


class PhaseRun:
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
        progress_update(version=self.version, phase=phase.value, phase_seconds=dict(self.seconds), **progress)
        with self.timed(phase.value):
            yield

    def done(self) -> None:
        progress_update(version=self.version, phase=Phase.DONE.value, phase_seconds=dict(self.seconds))


def epoch_callback(*, version: ModelVersion, epochs: int):
    import keras

    class Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            version.refresh_from_db(fields=["status"])
            if version.status != ModelVersion.Status.TRAINING:  # failed meanwhile (staff, the recovery)
                self.model.stop_training = True
            logs = logs or {}
            done = epoch + 1
            elapsed = time.monotonic() - self.started
            progress_update(version=version, phase=Phase.TRAINING.value, epoch=done, epochs=epochs,
                            accuracy=round(float(logs.get("accuracy", 0)), 4),
                            val_accuracy=round(float(logs.get("val_accuracy", 0)), 4),
                            loss=round(float(logs.get("loss", 0)), 4),
                            eta_seconds=round(elapsed / done * (epochs - done), 1))

    return Progress()
