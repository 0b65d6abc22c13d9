"""Bridges the configuration to the pure ML modules, and keeps loaded models per process."""

import threading
from pathlib import Path

from django.conf import settings

from recommender.backbone import BackboneSpec, get_backbone
from recommender.conf import config

# recommender.head (scikit-learn, joblib) and Keras are imported where they are used, so that a web
# process that only reads pages never loads them.

_heads: dict[int, object] = {}
_heads_lock = threading.Lock()


def backbone_spec() -> BackboneSpec:
    conf = config()
    return BackboneSpec(weights=conf.backbone_weights, input_size=conf.input_size, seed=conf.seed)


def backbone():
    return get_backbone(backbone_spec(), batch_size=config().extract_batch_size)


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
