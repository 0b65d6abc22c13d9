"""Bridges the configuration to the pure ML modules, and keeps loaded models per process.

Model files come from the "models" storage through this host's cache (recommender.artifacts) and
are verified before they are loaded: the head's joblib file is a pickle, so a file changed by
anyone but the training that wrote it could run code in every worker and web process. A training
publishes its version's files and records their SHA-256s on the version
(:func:`artifacts_publish`, ``ModelVersion.checksums``); :func:`load_head` and :func:`backbone_of`
(trained backbone weights) hash the bytes they are about to read: a cached copy that does not match
is fetched again from the storage, and a stored one that does not match (or a missing one) raises
:class:`ModelFilesError` naming the file and the version: nothing is unpickled. A version saved
before checksums existed (none recorded) is loaded from this host's MODELS_ROOT as before, with a
warning (refusing it would stop the version that serves at the upgrade); train a new version to
have one that is verified and shared. The storage must be writable by the application only.

A version's ``weights`` names a trained backbone portably (``models:v<N>/backbone.weights.h5``,
:func:`weights_portable`), never by one host's path; :func:`weights_local` is this host's path of
it. Paths recorded before (under this host's MODELS_ROOT) are still understood.
"""

import logging
import re
import tempfile
import threading
from pathlib import Path

from django.conf import settings

from recommender import artifacts
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
    return BackboneSpec(weights=weights_local(version.weights), input_size=version.input_size, seed=config().seed)


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
    """This host's folder of a version's files: where its training writes them, and its cache."""
    return artifacts.cache_dir(version_id)


def artifacts_publish(version_id: int) -> dict[str, str]:
    """Store the files a training wrote into :func:`artifacts_dir` in the "models" storage; their
    SHA-256s by name, to record on the version (which makes them loadable everywhere)."""
    return artifacts.files_publish(version_id=version_id)


def artifacts_remove(version_id: int) -> None:
    artifacts.files_remove(version_id=version_id)
    forget_head(version_id)


def artifacts_stored(version) -> bool:
    """Every recorded file of the version is in the models storage (a legacy version without
    checksums: its folder is on this host)."""
    if not artifacts.published(version):
        return bool(version.artifacts) and _legacy_dir(version).is_dir()
    store = artifacts.storage()
    return all(store.exists(artifacts.object_name(version.pk, name, digest))
               for name, digest in version.checksums.items())


def _legacy_dir(version) -> Path:
    return Path(version.artifacts) if Path(version.artifacts or "x").is_absolute() else artifacts_dir(version.pk)


def load_head(version):
    """The persisted head of a version, loaded once per process, its files verified first."""
    from recommender.head import PREPROCESSING_FILE, TrainedHead

    with _heads_lock:
        if version.pk not in _heads:
            # The files are copied while they are hashed, and the private copy is what is loaded:
            # a file swapped between the check and the load is never the one unpickled.
            with tempfile.TemporaryDirectory(prefix=f"lookalike-v{version.pk}-") as private:
                artifacts_verify(version, names=(HEAD_MODEL_FILE, PREPROCESSING_FILE), copy_to=Path(private))
                _heads[version.pk] = TrainedHead.load(Path(private) if version.checksums else _legacy_dir(version))
        return _heads[version.pk]


def forget_head(version_id: int) -> None:
    with _heads_lock:
        _heads.pop(version_id, None)


# --------------------------------------------------------------------------- model files' checksums


class ModelFilesError(RuntimeError):
    """A version's model file is missing or is not the one its training wrote: it is not loaded."""


_VERIFIED_WEIGHTS: set[tuple] = set()  # (path, size, mtime_ns) of weights files verified in this process
_UNVERIFIED_WARNED: set[int] = set()


def artifacts_verify(version, *, names, copy_to: Path | None = None) -> None:
    """Raise ModelFilesError unless each of ``names`` has the checksum recorded on the version,
    fetching it from the models storage first where this host has no copy (or a copy that does not
    match); with ``copy_to``, the bytes that were hashed are also written there (load those, not
    the cached file). A version without recorded checksums (saved before they existed) is let
    through with a warning, once per process."""
    recorded = version.checksums or {}
    if not recorded:
        if version.pk not in _UNVERIFIED_WARNED:
            _UNVERIFIED_WARNED.add(version.pk)
            logger.warning("v%s has no recorded checksums (saved before they existed): its model files are "
                           "loaded unverified; train a new version to serve verified files", version.pk)
        return
    for name in names:
        if name not in recorded:
            raise ModelFilesError(f"v{version.pk}: no checksum was recorded for {name}; it is not loaded.")
        _file_verify(version, name, recorded[name], copy_to / name if copy_to else None)


def _file_verify(version, name: str, digest: str, copy_to: Path | None) -> None:
    if not artifacts.published(version):  # saved before the models storage: on this host only
        _legacy_file_verify(version, name, digest, copy_to)
        return
    where = artifacts.object_name(version.pk, name, digest)
    try:
        path = artifacts.file_local(version_id=version.pk, name=name, digest=digest)
        if artifacts.sha256_file(path, copy_to=copy_to) == digest:
            return
        path = artifacts.file_refetch(version_id=version.pk, name=name, digest=digest)
    except artifacts.ArtifactMissingError:
        raise ModelFilesError(f"v{version.pk}: model file {name} is missing from the models storage ({where}); "
                              "the version cannot be loaded.") from None
    if artifacts.sha256_file(path, copy_to=copy_to) != digest:
        raise ModelFilesError(
            f"v{version.pk}: model file {name} in the models storage ({where}) does not match the SHA-256 "
            "recorded when it was saved (changed or replaced since); it is not loaded. Restore the version's "
            "files or train a new one.")


def _legacy_file_verify(version, name: str, digest: str, copy_to: Path | None) -> None:
    path = _legacy_dir(version) / name
    if not path.is_file():
        raise ModelFilesError(f"v{version.pk}: model file {path} is missing; the version cannot be loaded.")
    if artifacts.sha256_file(path, copy_to=copy_to) != digest:
        raise ModelFilesError(
            f"v{version.pk}: model file {path} does not match the SHA-256 recorded when it was saved (changed or "
            "replaced since); it is not loaded. Restore the version's files or train a new one.")


_PORTABLE = re.compile(rf"models:v(\d+)/{re.escape(TRAINED_WEIGHTS_FILE)}")


def _weights_owner(weights: str) -> int | None:
    """The version whose trained backbone ``weights`` is (``models:v<N>/backbone.weights.h5``, or a
    path MODELS_ROOT/v<N>/backbone.weights.h5 of this host), or None (imagenet, random, or a file of
    the operator's own: RECOMMENDER_BACKBONE_WEIGHTS)."""
    if match := _PORTABLE.fullmatch(weights):
        return int(match.group(1))
    path = Path(weights)
    if path.name != TRAINED_WEIGHTS_FILE or not re.fullmatch(r"v\d+", path.parent.name):
        return None
    if path.parent.parent.resolve() != Path(settings.MODELS_ROOT).resolve():
        return None
    return int(path.parent.name[1:])


def weights_portable(weights: str) -> str:
    """What a version records for ``weights``: a trained backbone by its version, not by a path."""
    owner = _weights_owner(weights)
    return weights if owner is None else f"models:v{owner}/{TRAINED_WEIGHTS_FILE}"


def weights_local(weights: str) -> str:
    """This host's path of ``weights`` (a trained backbone's cached file; unchanged otherwise)."""
    owner = _weights_owner(weights)
    return weights if owner is None else str(trained_weights_path(owner))


def weights_verify(weights: str) -> None:
    """Raise ModelFilesError unless a trained backbone's weights file (fetched into this host's
    cache first when it has none) is the one its version recorded. Verified once per process per
    file state (path, size, modification time): the extractors ask on every batch, and hashing
    95 MB takes ~0.1 s."""
    owner = _weights_owner(weights)
    if owner is None:
        return
    path = trained_weights_path(owner)
    key = _file_state(path)
    if key is not None and key in _VERIFIED_WEIGHTS:
        artifacts.cache_touch(owner)  # in use: the last folder the cache trims
        return
    version = ModelVersion.objects.filter(pk=owner).only("pk", "artifacts", "checksums").first()
    if version is None:
        raise ModelFilesError(f"v{owner} no longer exists: its trained backbone {path} is not loaded.")
    if not version.checksums and key is None:
        raise ModelFilesError(
            f"v{owner}: model file {path} is missing; the trained backbone cannot be loaded.")
    artifacts_verify(version, names=[TRAINED_WEIGHTS_FILE])
    _VERIFIED_WEIGHTS.add(_file_state(path))


def _file_state(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return str(path), stat.st_size, stat.st_mtime_ns
