"""The original notebook's method, reproduced as written, bugs included (benchmark baseline only).

What the notebook did, and what this module reproduces:

1. A StandardScaler is fitted on the training features and the head is trained on the scaled
   features; but the scaler variable was overwritten afterwards, so at inference the head is
   fed the RAW (unscaled) backbone features.
2. Balanced class weights were computed and passed to ``fit`` as an array, which Keras ignored:
   the head is trained with no class weights.
3. The embeddings (middle layer) are standardised by a scaler refitted on whatever set is being
   searched, at search time (here: the recommendation set), instead of one fitted at training.

Everything else (layers, optimiser, epochs, batch size, validation split, seed) is the same as
our pipeline (``recommender.head``), so a difference in the tables comes from these three points.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder, StandardScaler

from recommender.head import MID_LAYER, HeadConfig, build_model


@dataclass
class OriginalModel:
    model: object
    encoder: LabelEncoder
    seconds: float

    @property
    def classes(self):
        return [str(c) for c in self.encoder.classes_]

    def _mid(self):
        import keras

        return keras.Model(self.model.input, self.model.get_layer(MID_LAYER).output)

    def predict(self, raw_features: np.ndarray) -> list[str]:
        # Bug 1: the head sees raw features, not the scaled ones it was trained on.
        proba = self.model.predict(np.asarray(raw_features, np.float32), batch_size=1024, verbose=0)
        return list(self.encoder.inverse_transform(proba.argmax(axis=1)))

    def search_space(self, raw_index_features: np.ndarray, raw_query_features: np.ndarray):
        """(index embeddings, query embeddings) the way the notebook searched."""
        mid = self._mid()
        index = mid.predict(np.asarray(raw_index_features, np.float32), batch_size=1024, verbose=0)
        queries = mid.predict(np.asarray(raw_query_features, np.float32), batch_size=1024, verbose=0)
        # Bug 3: the embedding scaler is refitted on the set being searched, at search time.
        scaler = StandardScaler().fit(index)
        return scaler.transform(index), scaler.transform(queries)


def train_original(features: np.ndarray, labels, config: HeadConfig) -> OriginalModel:
    import keras

    from recommender.backbone import configure_tensorflow

    configure_tensorflow()
    keras.utils.set_random_seed(config.seed)
    labels = np.asarray(labels)
    encoder = LabelEncoder().fit(labels)
    y = encoder.transform(labels)
    n_classes = len(encoder.classes_)
    index = np.arange(len(y))
    train_index, val_index = train_test_split(index, test_size=config.validation_split,
                                              random_state=config.seed, stratify=y)
    scaler = StandardScaler().fit(features[train_index])
    x = scaler.transform(features).astype(np.float32)
    onehot = keras.utils.to_categorical(y, n_classes)
    model = build_model(features.shape[1], n_classes, config)
    # Bug 2: class weights were computed as an array and ignored by fit: none are used.
    started = time.perf_counter()
    model.fit(x[train_index], onehot[train_index], validation_data=(x[val_index], onehot[val_index]),
              epochs=config.epochs, batch_size=config.batch_size, shuffle=True, verbose=0)
    seconds = time.perf_counter() - started
    # ...and ``scaler`` was overwritten here in the notebook, so inference never applies it.
    return OriginalModel(model=model, encoder=encoder, seconds=seconds)
