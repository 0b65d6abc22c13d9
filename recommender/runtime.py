"""Bridges Django settings to the pure ML modules, and keeps loaded models per process."""

import threading
from pathlib import Path

from django.conf import settings

from recommender.backbone import BackboneSpec, get_backbone

# recommender.head (scikit-learn, joblib) and Keras are imported where they are used, so that a web
# process that only reads pages never loads them.

_heads: dict[int, object] = {}
_heads_lock = threading.Lock()


def conf(name):
    return settings.RECOMMENDER[name]


def backbone_spec() -> BackboneSpec:
    return BackboneSpec(weights=conf("BACKBONE_WEIGHTS"), input_size=conf("INPUT_SIZE"), seed=conf("SEED"))


def backbone():
    return get_backbone(backbone_spec(), batch_size=conf("EXTRACT_BATCH_SIZE"))


def head_config() -> "HeadConfig":  # noqa: F821
    from recommender.head import HeadConfig

    return HeadConfig(epochs=conf("EPOCHS"), batch_size=conf("BATCH_SIZE"),
                      learning_rate=conf("LEARNING_RATE"), validation_split=conf("VALIDATION_SPLIT"),
                      dropout=conf("DROPOUT"), seed=conf("SEED"))


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
