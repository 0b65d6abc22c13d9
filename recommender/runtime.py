"""Bridges the configuration to the pure ML modules, and keeps loaded models per process.

Model files are verified before they are loaded: the head's joblib file is a pickle, so a file in
MODELS_ROOT changed by anyone but the training that wrote it could run code in every worker and
web process. A training records the SHA-256 of every file of its version's folder on the version
(:func:`artifacts_checksums`, ``ModelVersion.checksums``); :func:`load_head` and
:func:`backbone_of` (trained backbone weights) check the files they are about to read against it
and raise :class:`ModelFilesError`, naming the file and the version, on a mismatch or a missing
file: nothing is unpickled. A version saved before checksums existed (none recorded) is loaded as
before, with a warning (refusing it would stop the version that serves at the upgrade); train a
new version to have one that is verified. MODELS_ROOT must be writable by the application only.
"""

import contextlib
import hashlib
import logging
import re
import tempfile
import threading
from pathlib import Path

from django.conf import settings

from recommender.backbone import TRAINED_WEIGHTS_FILE, BackboneSpec, get_backbone
from recommender.conf import config
from recommender.models import ModelVersion

logger = logging.getLogger(__name__)

# recommender.head (scikit-learn, joblib) and Keras are imported where they are used, so that a web
# process that only reads pages never loads them.

HEAD_MODEL_FILE = "head.keras"  # what TrainedHead.save writes beside PREPROCESSING_FILE
_heads: dict[int, object] = {}
_heads_lock = threading.Lock()


def backbone_spec() -> BackboneSpec:
    conf = config()
    return BackboneSpec(weights=conf.backbone_weights, input_size=conf.input_size, seed=conf.seed)


def backbone():
    return backbone_of(backbone_spec())


def version_spec(version) -> BackboneSpec:
    """The backbone a version reads features with: its own trained one (backbone kind), else the
    weights it was trained on (base weights, or the trained file of the version it built on)."""
    if version.trains_backbone:
        return BackboneSpec(weights=str(trained_weights_path(version.pk)), input_size=version.input_size,
                            seed=config().seed)
    return BackboneSpec(weights=version.weights, input_size=version.input_size, seed=config().seed)


def built_on_trained_backbone(version) -> bool:
    """A backbone-kind version, or a head retrained on one's trained backbone (its weights file)."""
    return version.trains_backbone or Path(version.weights).name == TRAINED_WEIGHTS_FILE


def backbone_of(spec: BackboneSpec, *, batch_size: int | None = None):
    """The process-wide extractor of ``spec`` (workers keep it loaded between tasks); trained
    weights are verified first (:func:`weights_verify`)."""
    weights_verify(spec.weights)
    return get_backbone(spec, batch_size=batch_size or config().extract_batch_size,
                        runtime=config().backbone_runtime)


def trained_weights_path(version_id: int) -> Path:
    return artifacts_dir(version_id) / TRAINED_WEIGHTS_FILE


def backbone_training_config(*, from_scratch: bool) -> "BackboneTrainingConfig":  # noqa: F821
    from recommender.finetune import BackboneTrainingConfig

    conf = config()
    return BackboneTrainingConfig(epochs=conf.backbone_epochs, min_steps=conf.backbone_min_steps,
                                  batch_size=conf.backbone_batch_size,
                                  learning_rate=conf.backbone_learning_rate, validation_split=conf.validation_split,
                                  seed=conf.seed, zero_init_residual=from_scratch)


def head_config() -> "HeadConfig":  # noqa: F821
    from recommender.head import HeadConfig

    conf = config()
    return HeadConfig(epochs=conf.epochs, batch_size=conf.batch_size, learning_rate=conf.learning_rate,
                      validation_split=conf.validation_split, dropout=conf.dropout, seed=conf.seed)


def artifacts_dir(version_id: int) -> Path:
    return Path(settings.MODELS_ROOT) / f"v{version_id}"


def load_head(version):
    """The persisted head of a version, loaded once per process, its files verified first."""
    from recommender.head import PREPROCESSING_FILE, TrainedHead

    with _heads_lock:
        if version.pk not in _heads:
            # The files are copied while they are hashed, and the private copy is what is loaded:
            # a file swapped between the check and the load is never the one unpickled.
            with tempfile.TemporaryDirectory(prefix=f"lookalike-v{version.pk}-") as private:
                artifacts_verify(version, names=(HEAD_MODEL_FILE, PREPROCESSING_FILE), copy_to=Path(private))
                _heads[version.pk] = TrainedHead.load(Path(private) if version.checksums else Path(version.artifacts))
        return _heads[version.pk]


def forget_head(version_id: int) -> None:
    with _heads_lock:
        _heads.pop(version_id, None)


# --------------------------------------------------------------------------- model files' checksums


class ModelFilesError(RuntimeError):
    """A version's model file is missing or is not the one its training wrote: it is not loaded."""


_VERIFIED_WEIGHTS: set[tuple] = set()  # (path, size, mtime_ns) of weights files verified in this process
_UNVERIFIED_WARNED: set[int] = set()


def _sha256(path: Path, *, copy_to: Path | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle, (open(copy_to, "wb") if copy_to else contextlib.nullcontext()) as copy:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            if copy is not None:
                copy.write(block)
    return digest.hexdigest()


def artifacts_checksums(version_id: int) -> dict[str, str]:
    """SHA-256 of every file of a version's folder, by name (what a training records once its files
    are written; temporary dot-files of an unfinished write are left out)."""
    folder = artifacts_dir(version_id)
    return {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def artifacts_verify(version, *, names, copy_to: Path | None = None) -> None:
    """Raise ModelFilesError unless each of ``names`` in the version's folder has the checksum
    recorded on the version; with ``copy_to``, the bytes that were hashed are also written there
    (load those, not the originals). A version without recorded checksums (saved before they
    existed) is let through with a warning, once per process."""
    recorded = version.checksums or {}
    if not recorded:
        if version.pk not in _UNVERIFIED_WARNED:
            _UNVERIFIED_WARNED.add(version.pk)
            logger.warning("v%s has no recorded checksums (saved before they existed): its model files are "
                           "loaded unverified; train a new version to serve verified files", version.pk)
        return
    folder = Path(version.artifacts) if version.artifacts else artifacts_dir(version.pk)
    for name in names:
        path = folder / name
        if name not in recorded:
            raise ModelFilesError(f"v{version.pk}: no checksum was recorded for {path}; it is not loaded.")
        if not path.is_file():
            raise ModelFilesError(f"v{version.pk}: model file {path} is missing; the version cannot be loaded.")
        if _sha256(path, copy_to=copy_to / name if copy_to else None) != recorded[name]:
            raise ModelFilesError(
                f"v{version.pk}: model file {path} does not match the SHA-256 recorded when it was saved "
                "(changed or replaced since); it is not loaded. Restore the version's files or train a new one.")


def _weights_owner(weights: str) -> int | None:
    """The version whose trained backbone ``weights`` is (MODELS_ROOT/v<N>/backbone.weights.h5), or None
    (imagenet, random, or a file of the operator's own: RECOMMENDER_BACKBONE_WEIGHTS)."""
    path = Path(weights)
    if path.name != TRAINED_WEIGHTS_FILE or not re.fullmatch(r"v\d+", path.parent.name):
        return None
    if path.parent.parent.resolve() != Path(settings.MODELS_ROOT).resolve():
        return None
    return int(path.parent.name[1:])


def weights_verify(weights: str) -> None:
    """Raise ModelFilesError unless a trained backbone's weights file is the one its version
    recorded. Verified once per process per file state (path, size, modification time): the
    extractors ask on every batch, and hashing 95 MB takes ~0.1 s."""
    owner = _weights_owner(weights)
    if owner is None:
        return
    path = Path(weights)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ModelFilesError(
            f"v{owner}: model file {path} is missing; the trained backbone cannot be loaded.") from None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED_WEIGHTS:
        return
    version = ModelVersion.objects.filter(pk=owner).only("pk", "artifacts", "checksums").first()
    if version is None:
        raise ModelFilesError(f"v{owner} no longer exists: its trained backbone {path} is not loaded.")
    artifacts_verify(version, names=[TRAINED_WEIGHTS_FILE])
    _VERIFIED_WEIGHTS.add(key)
