"""The recommender's configuration: one typed, validated object built from ``settings.RECOMMENDER``.

Every module reads ``config().<name>`` instead of indexing the settings dict by string, so a typo
is an AttributeError at the line that makes it and a bad value (an environment variable of 0
epochs, a tolerance of 2) is named by the ``recommender.E001`` system check at start-up, not deep
in a worker. The object is rebuilt whenever ``settings.RECOMMENDER`` is replaced (a test's
``settings`` fixture, ``override_settings``, a benchmark assigning a new dict); change it by
replacing the dict, not by mutating it in place.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

from django.conf import settings
from django.core import checks

_KEYS = {
    "BACKBONE_WEIGHTS": "backbone_weights", "BACKBONE_RUNTIME": "backbone_runtime", "INPUT_SIZE": "input_size",
    "EXTRACT_BATCH_SIZE": "extract_batch_size", "INGEST_CHUNK": "ingest_chunk", "INGEST_LINGER_MS": "ingest_linger_ms",
    "WORKER_PRELOAD": "worker_preload", "SEED": "seed",
    "EPOCHS": "epochs", "BATCH_SIZE": "batch_size", "LEARNING_RATE": "learning_rate",
    "VALIDATION_SPLIT": "validation_split", "DROPOUT": "dropout", "MIN_IMAGES_TO_TRAIN": "min_images_to_train",
    "GATE_TOLERANCE": "gate_tolerance", "RETRAIN_NEW_SHARE": "retrain_new_share",
    "RETRAIN_MAX_AGE_HOURS": "retrain_max_age_hours", "MAX_ATTEMPTS": "max_attempts",
    "STALE_SECONDS": "stale_seconds", "TRAINING_STALE_SECONDS": "training_stale_seconds",
    "EF_SEARCH": "ef_search", "NEIGHBOUR_LISTS_MAX_ROWS": "neighbour_lists_max_rows", "KEEP_RETIRED_EMBEDDINGS": "keep_retired_embeddings",
    "SIMILAR_CACHE_SECONDS": "similar_cache_seconds", "TRAINING": "training",
    "BACKBONE_EPOCHS": "backbone_epochs", "BACKBONE_INPUT_SIZE": "backbone_input_size",
    "BACKBONE_BATCH_SIZE": "backbone_batch_size", "BACKBONE_LEARNING_RATE": "backbone_learning_rate",
    "BACKBONE_MIN_STEPS": "backbone_min_steps", "DIVERSITY_LAMBDA": "diversity_lambda",
    "DIVERSITY_VARIANTS_MAX": "diversity_variants_max", "DIVERSITY_VARIANT_CLOSENESS": "diversity_variant_closeness",
}
TRAINING_KINDS = ("head", "backbone", "auto")
BACKBONE_RUNTIMES = ("auto", "openvino", "keras")  # recommender.backbone.RUNTIMES (not imported: numpy)


_KINDS = {int: "a whole number", float: "a number", str: "a string"}


@dataclass(frozen=True)
class RecommenderConfig:
    """``settings.RECOMMENDER`` with types and ranges. The defaults (and each key's meaning) are in
    config/settings.py only: every key is required here."""

    backbone_weights: str  # "imagenet", a path to a weights file, or "random"
    backbone_runtime: str  # one of BACKBONE_RUNTIMES
    input_size: int
    extract_batch_size: int
    ingest_chunk: int
    ingest_linger_ms: int
    worker_preload: int  # 1: a features worker loads the serving backbone when it starts
    seed: int
    epochs: int
    batch_size: int
    learning_rate: float
    validation_split: float
    dropout: float
    min_images_to_train: int
    gate_tolerance: float
    retrain_new_share: float
    retrain_max_age_hours: float
    max_attempts: int
    stale_seconds: int
    training_stale_seconds: int
    ef_search: int
    neighbour_lists_max_rows: int
    keep_retired_embeddings: int
    similar_cache_seconds: int
    training: str  # one of TRAINING_KINDS
    backbone_epochs: int
    backbone_input_size: int
    backbone_batch_size: int
    backbone_learning_rate: float
    backbone_min_steps: int
    diversity_lambda: float  # MMR's relevance weight in a panel: 1.0 = nearest first (recommender.diversity)
    diversity_variants_max: int  # at most this many of a variant group in a panel; 0 = no cap
    diversity_variant_closeness: float  # variants: closer than this x the pool's median distance to the query

    @classmethod
    def from_dict(cls, values: dict) -> RecommenderConfig:
        """Raises ValueError naming every unknown key and bad value."""
        unknown, missing = sorted(set(values) - set(_KEYS)), sorted(set(_KEYS) - set(values))
        if unknown:
            raise ValueError(f"unknown RECOMMENDER keys: {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
        if missing:
            raise ValueError(f"missing RECOMMENDER keys: {', '.join(missing)}")
        config = cls(**{_KEYS[key]: value for key, value in values.items()})
        problems = config.problems()
        if problems:
            raise ValueError("; ".join(problems))
        return config

    def problems(self) -> list[str]:
        found = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            wanted = float if item.type == "float" else int if item.type == "int" else str
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) if wanted is float else (
                isinstance(value, wanted) and not isinstance(value, bool))
            if not ok:
                found.append(f"RECOMMENDER['{item.name.upper()}'] must be {_KINDS[wanted]}, not {value!r}")
        if found:
            return found
        rules = [
            ("backbone_weights", bool(self.backbone_weights.strip()), "must name 'imagenet', 'random' or a file"),
            ("backbone_runtime", self.backbone_runtime in BACKBONE_RUNTIMES,
             f"must be one of {', '.join(BACKBONE_RUNTIMES)}"),
            ("input_size", self.input_size >= 32, "must be at least 32 pixels (ResNet50's minimum)"),
            ("extract_batch_size", self.extract_batch_size >= 1, "must be at least 1"),
            ("ingest_chunk", self.ingest_chunk >= 1, "must be at least 1"),
            ("ingest_linger_ms", 0 <= self.ingest_linger_ms <= 5000, "must be between 0 and 5000 ms"),
            ("worker_preload", self.worker_preload in (0, 1), "must be 0 (load on the first batch) or 1"),
            ("epochs", self.epochs >= 1, "must be at least 1"),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
            ("learning_rate", self.learning_rate >= 0, "must be 0 or more"),
            ("validation_split", 0 < self.validation_split < 1, "must be between 0 and 1 (exclusive)"),
            ("dropout", 0 <= self.dropout < 1, "must be at least 0 and below 1"),
            ("min_images_to_train", self.min_images_to_train >= 2, "must be at least 2"),
            ("gate_tolerance", 0 <= self.gate_tolerance <= 1, "must be between 0 and 1"),
            ("retrain_new_share", 0 < self.retrain_new_share <= 1, "must be above 0 and at most 1"),
            ("retrain_max_age_hours", self.retrain_max_age_hours >= 0, "must be 0 (never) or more"),
            ("max_attempts", self.max_attempts >= 1, "must be at least 1"),
            ("stale_seconds", self.stale_seconds >= 0, "must be 0 or more"),
            ("training_stale_seconds", self.training_stale_seconds >= 0, "must be 0 or more"),
            ("ef_search", 1 <= self.ef_search <= 1000, "must be between 1 and 1000 (pgvector's range)"),
            ("neighbour_lists_max_rows", self.neighbour_lists_max_rows >= 0, "must be 0 (no lists) or more"),
            ("keep_retired_embeddings", self.keep_retired_embeddings >= 0, "must be 0 or more"),
            ("similar_cache_seconds", self.similar_cache_seconds >= 0, "must be 0 or more"),
            ("training", self.training in TRAINING_KINDS, f"must be one of {', '.join(TRAINING_KINDS)}"),
            ("backbone_epochs", self.backbone_epochs >= 1, "must be at least 1"),
            ("backbone_input_size", self.backbone_input_size >= 32, "must be at least 32 pixels (ResNet50's minimum)"),
            ("backbone_batch_size", self.backbone_batch_size >= 2, "must be at least 2 (BatchNorm needs a batch)"),
            ("backbone_learning_rate", self.backbone_learning_rate > 0, "must be above 0"),
            ("backbone_min_steps", self.backbone_min_steps >= 0, "must be 0 or more"),
            ("diversity_lambda", 0 <= self.diversity_lambda <= 1,
             "must be between 0 (most varied) and 1 (nearest first, no re-ranking)"),
            ("diversity_variants_max", self.diversity_variants_max >= 0,
             "must be 0 (no cap) or more (at most that many of a variant group in a panel)"),
            ("diversity_variant_closeness", 0 < self.diversity_variant_closeness <= 2,
             "must be above 0 and at most 2 (a share of the pool's median distance to the query)"),
        ]
        return [f"RECOMMENDER['{name.upper()}'] {message} (it is {getattr(self, name)!r})"
                for name, ok, message in rules if not ok]


_lock = threading.Lock()
_cached: tuple[dict, RecommenderConfig] | None = None


def config() -> RecommenderConfig:
    """The current configuration (cached until ``settings.RECOMMENDER`` is replaced)."""
    global _cached
    source = getattr(settings, "RECOMMENDER", {})
    cached = _cached
    if cached is not None and cached[0] is source:
        return cached[1]
    with _lock:
        built = RecommenderConfig.from_dict(dict(source))
        _cached = (source, built)
    return built


@checks.register()
def check_config(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """recommender.E001: a bad RECOMMENDER setting, said before any worker trips on it."""
    try:
        RecommenderConfig.from_dict(dict(getattr(settings, "RECOMMENDER", {})))
    except (TypeError, ValueError) as exc:
        return [checks.Error(f"Invalid recommender configuration: {exc}.", hint=(
            "Fix the RECOMMENDER_* environment variable (or settings.RECOMMENDER) named above; "
            "config/settings.py documents each one."), id="recommender.E001")]
    return []
