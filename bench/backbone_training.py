"""The trained-backbone rows of bench/quality.py: ResNet50 trained end to end with the head on the
Fashion-MNIST training images (recommender.finetune, the product's own defaults), from the
benchmark's starting weights; then the recommendation set and the queries are embedded with it.

A helper of quality.py, not a script of its own: it reuses quality.py's split and metrics so that
the rows sit beside raw pixels, raw features, the original notebook and our head-only pipeline.
"""

from __future__ import annotations

import time

import numpy as np


def rgb(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 grayscale (N, 28, 28) -> uint8 RGB (N, size, size, 3), resized like the product does."""
    from PIL import Image

    from recommender.backbone import to_rgb_array

    return np.stack([to_rgb_array(Image.fromarray(a, "L"), size) for a in images]).astype(np.uint8)


def _epoch_printer():
    import keras

    class Printer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            print(f"    epoch {epoch + 1}: {time.perf_counter() - self.started:.0f} s, accuracy "
                  f"{logs.get('accuracy', 0):.3f}, validation {logs.get('val_accuracy', 0):.3f}", flush=True)

    return Printer()


def train_and_embed(*, weights: str, size: int, epochs: int, train_img, train_lab, index_img, query_img,
                    query_lab, seed: int = 1234) -> dict:
    """Train from ``weights`` on (train_img, train_lab); embed index and queries. Returns the
    embeddings, the head's accuracy on the queries and the training's figures."""
    from keras.applications.resnet50 import preprocess_input

    from recommender.backbone import BackboneSpec, build_resnet50
    from recommender.finetune import BackboneTrainingConfig, train_backbone

    start = BackboneSpec(weights=weights, input_size=size, seed=seed)
    config = BackboneTrainingConfig(epochs=epochs, seed=seed, zero_init_residual=start.is_random)
    print(f"  training the backbone end to end: {len(train_img):,} images at {size}px, at most {epochs} epochs...",
          flush=True)
    result = train_backbone(rgb(train_img, size), train_lab, build_resnet50(start), config,
                            callbacks=[_epoch_printer()])

    def features(images):
        x = preprocess_input(rgb(images, size).astype(np.float32))
        return np.asarray(result.backbone.predict(x, batch_size=256, verbose=0))

    result.head.embedding_scaler_fit(features(train_img[result.train_index]))
    f_index, f_query = features(index_img), features(query_img)
    accuracy = float(np.mean(np.asarray(result.head.predict(f_query)) == query_lab))
    return {"index": result.head.embed(f_index), "query": result.head.embed(f_query), "accuracy": accuracy,
            "training_seconds": round(result.seconds, 1), "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch, "n_train": len(train_img), "input_size": size,
            "val_accuracy": max(result.history.get("val_accuracy", [0.0]))}
