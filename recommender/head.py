"""The classifier head and its embeddings (pure ML: no Django).

Backbone features -> StandardScaler -> Dense(1024, relu) -> Dropout -> Dense(512, relu) "mid"
-> Dropout -> Dense(n_classes, softmax). The embedding of an image is the "mid" output,
standardised by a second scaler fitted once on the training set and persisted with the model.

Fixes to the original notebook:
- class weights go to ``fit`` as a dict (an array was silently ignored);
- the feature scaler used in training is persisted and reused at inference (it was overwritten);
- the embedding scaler is fitted once per model version (it was refitted on every searched set);
- inference runs in batches.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder, StandardScaler
from sklearn.utils.class_weight import compute_class_weight

MID_LAYER = "mid"
EMBEDDING_DIM = 512
PREPROCESSING_FILE = "preprocessing.joblib"


@dataclass
class HeadConfig:
    epochs: int = 32
    batch_size: int = 64
    learning_rate: float = 0.0004
    validation_split: float = 0.2
    dropout: float = 0.5
    seed: int = 1234
    class_weights: bool = True


@dataclass
class TrainingResult:
    head: "TrainedHead"
    history: dict  # {"loss": [...], "accuracy": [...], "val_loss": [...], "val_accuracy": [...]}
    train_index: np.ndarray  # rows of the input used for training
    val_index: np.ndarray  # rows held out for validation/evaluation
    seconds: float = 0.0
    class_weight: dict = field(default_factory=dict)


def build_model(n_features: int, n_classes: int, config: HeadConfig):
    import keras
    from keras import layers

    inputs = keras.Input(shape=(n_features,), name="features")
    x = layers.Dense(1024, activation="relu", name="dense_1024")(inputs)
    x = layers.Dropout(config.dropout, seed=config.seed)(x)
    x = layers.Dense(EMBEDDING_DIM, activation="relu", name=MID_LAYER)(x)
    x = layers.Dropout(config.dropout, seed=config.seed + 1)(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="classes")(x)
    model = keras.Model(inputs, outputs, name="head")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def balanced_class_weight(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """As a dict: Keras ignores (older) or rejects array-like class weights."""
    classes = np.arange(n_classes)
    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    mapping = {int(c): 1.0 for c in classes}
    mapping.update({int(c): float(w) for c, w in zip(present, weights)})
    return mapping


def encode_labels(labels) -> tuple[LabelEncoder, np.ndarray]:
    """(encoder, integer labels) of string category labels; at least two categories are needed."""
    encoder = LabelEncoder().fit(np.asarray(labels))
    if len(encoder.classes_) < 2:
        raise ValueError("training needs at least two categories")
    return encoder, encoder.transform(np.asarray(labels))


def split_indices(y: np.ndarray, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of integer labels ``y``: stratified when every class can
    appear on both sides; tiny catalogs fall back to a random split."""
    index = np.arange(len(y))
    if validation_split <= 0:
        return index, index[:0]
    n_classes = len(np.unique(y))
    n_val = int(np.ceil(validation_split * len(y)))
    stratify = y if np.bincount(y).min() >= 2 and n_val >= n_classes and len(y) - n_val >= n_classes else None
    return tuple(train_test_split(index, test_size=validation_split, random_state=seed, stratify=stratify))


def train_head(features: np.ndarray, labels, config: HeadConfig | None = None, callbacks=()) -> TrainingResult:
    """Train a head on backbone features and string labels; a stratified split is held out."""
    import keras

    from recommender.backbone import configure_tensorflow

    configure_tensorflow()
    config = config or HeadConfig()
    keras.utils.set_random_seed(config.seed)
    encoder, y = encode_labels(labels)
    n_classes = len(encoder.classes_)
    train_index, val_index = split_indices(y, config.validation_split, config.seed)
    scaler = StandardScaler().fit(features[train_index])
    x = scaler.transform(features).astype(np.float32)
    onehot = keras.utils.to_categorical(y, n_classes)
    model = build_model(features.shape[1], n_classes, config)
    class_weight = balanced_class_weight(y[train_index], n_classes) if config.class_weights else None
    started = time.perf_counter()
    fit = model.fit(
        x[train_index], onehot[train_index],
        validation_data=(x[val_index], onehot[val_index]) if len(val_index) else None,
        epochs=config.epochs, batch_size=config.batch_size, class_weight=class_weight,
        shuffle=True, verbose=0, callbacks=list(callbacks),
    )
    seconds = time.perf_counter() - started
    head = TrainedHead(model=model, feature_scaler=scaler, embedding_scaler=None,
                       label_encoder=encoder)
    head.embedding_scaler_fit(features[train_index])
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    return TrainingResult(head=head, history=history, train_index=train_index, val_index=val_index,
                          seconds=seconds, class_weight=class_weight or {})


class TrainedHead:
    """A trained head with everything needed to reproduce its embeddings."""

    def __init__(self, model, feature_scaler, embedding_scaler, label_encoder):
        self.model = model
        self.feature_scaler = feature_scaler
        self.embedding_scaler = embedding_scaler
        self.label_encoder = label_encoder
        self._mid_model = None

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.label_encoder.classes_]

    def _mid(self):
        if self._mid_model is None:
            import keras

            self._mid_model = keras.Model(self.model.input, self.model.get_layer(MID_LAYER).output)
        return self._mid_model

    def _batched(self, model, features: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        x = self.feature_scaler.transform(np.asarray(features, dtype=np.float32)).astype(np.float32)
        parts = [np.asarray(model(x[i:i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.empty((0, model.output_shape[-1]), np.float32)

    def embedding_scaler_fit(self, features: np.ndarray) -> None:
        """Fit the embedding scaler once, on the training rows' features only; it is kept with the model."""
        self.embedding_scaler = StandardScaler().fit(self.mid(features))

    def mid(self, features: np.ndarray) -> np.ndarray:
        """Raw middle-layer activations."""
        return self._batched(self._mid(), features)

    def embed(self, features: np.ndarray) -> np.ndarray:
        """The stored embedding: standardised middle-layer output, (N, 512) float32."""
        return self.embedding_scaler.transform(self.mid(features)).astype(np.float32)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self._batched(self.model, features)

    def predict(self, features: np.ndarray) -> list[str]:
        return list(self.label_encoder.inverse_transform(self.predict_proba(features).argmax(axis=1)))

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path, meta: dict | None = None) -> Path:
        """Write to a temporary sibling folder, then rename: readers never see half a model."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        try:
            self.model.save(tmp / "head.keras")
            self._preprocessing_dump(tmp / PREPROCESSING_FILE)
            (tmp / "meta.json").write_text(json.dumps(meta or {}, indent=2, default=str))
            if directory.exists():
                shutil.rmtree(directory)
            os.rename(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    def _preprocessing_dump(self, path: Path) -> None:
        joblib.dump({"feature_scaler": self.feature_scaler, "embedding_scaler": self.embedding_scaler,
                     "label_encoder": self.label_encoder}, path)

    def preprocessing_save(self, directory: Path) -> None:
        """Rewrite only the scalers and labels of a saved head (temporary name, then rename): the
        backbone kind fits its embedding scaler once the catalog is re-extracted."""
        handle, tmp = tempfile.mkstemp(prefix=".preprocessing-", dir=directory)
        os.close(handle)
        try:
            self._preprocessing_dump(Path(tmp))
            os.replace(tmp, Path(directory) / PREPROCESSING_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, directory: Path) -> "TrainedHead":
        import keras

        from recommender.backbone import configure_tensorflow

        configure_tensorflow()
        directory = Path(directory)
        parts = joblib.load(directory / PREPROCESSING_FILE)
        model = keras.models.load_model(directory / "head.keras", compile=False)
        return cls(model=model, **parts)
