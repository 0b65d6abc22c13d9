"""Bridges the configuration to the pure ML modules, and keeps loaded models per process."""

import threading
from pathlib import Path

from django.conf import settings

from recommender.backbone import TRAINED_WEIGHTS_FILE, BackboneSpec, get_backbone
from recommender.conf import config

# recommender.head (scikit-learn, joblib) and Keras are imported where they are used, so that a web
# process that only reads pages never loads them.

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


def backbone_of(spec: BackboneSpec):
    """The process-wide extractor of ``spec`` (workers keep it loaded between tasks)."""
    return get_backbone(spec, batch_size=config().extract_batch_size, runtime=config().backbone_runtime)


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
    """The persisted head of a version, loaded once per process."""
    from recommender.head import TrainedHead

    with _heads_lock:
        if version.pk not in _heads:
            _heads[version.pk] = TrainedHead.load(Path(version.artifacts))
        return _heads[version.pk]


def forget_head(version_id: int) -> None:
    with _heads_lock:
        _heads.pop(version_id, None)
