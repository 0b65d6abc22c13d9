"""The trained backbone on Fashion-MNIST with the original post's protocol: ResNet50 trained end to
end with the head on the 15,000 training images (recommender.finetune with the product's defaults:
RECOMMENDER_BACKBONE_* of config/settings.py), from the benchmark's starting weights; then the
5,000 recommendation images and the 5,000 queries are embedded with it, beside raw pixels.

bench/quality.py calls :func:`train_and_embed` for its trained-backbone row (the product's
defaults). Run on its own, this script tries another number of epochs (default 12: a longer
schedule than the product's 6):

    python bench/backbone_training.py [--quick | --full] [--epochs N]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402


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


def main():
    args = common.parse_mode(extra=lambda p: p.add_argument("--epochs", type=int, default=12))
    common.quiet_tensorflow()
    from bench.quality import BACKBONE_SIZE, N_INDEX, N_QUERY, N_TRAIN, standardised
    from recommender.evaluation import retrieval_metrics

    (x_train, y_train), (x_test, y_test) = common.load_fashion_mnist()
    names = np.array(common.CLASS_NAMES)
    index_lab, query_lab = names[y_test[:N_INDEX]], names[y_test[N_INDEX:N_INDEX + N_QUERY]]
    index_img, query_img = x_test[:N_INDEX], x_test[N_INDEX:N_INDEX + N_QUERY]
    started = time.perf_counter()
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32)  # noqa: E731
    p_index, p_query = standardised(flat(x_train[:N_TRAIN]), flat(index_img), flat(query_img))
    pixels = retrieval_metrics(p_query, query_lab, p_index, index_lab, k=6)
    trained = train_and_embed(weights=common.weights(), size=BACKBONE_SIZE, epochs=args.epochs,
                              train_img=x_train[:N_TRAIN], train_lab=names[y_train[:N_TRAIN]], index_img=index_img,
                              query_img=query_img, query_lab=query_lab)
    ours = retrieval_metrics(trained.pop("query"), query_lab, trained.pop("index"), index_lab, k=6)
    keys = ("precision_at_1", "precision_at_6", "map_at_6")
    rows = [[f"Backbone trained end to end ({common.weights()} start, {trained['epochs_run']} epochs)",
             *[ours[k] for k in keys], trained["accuracy"], trained["training_seconds"]],
            ["Raw pixels, standardised, Euclidean k-NN", *[pixels[k] for k in keys], None, None],
            ["Lead over raw pixels", *[ours[k] - pixels[k] for k in keys], None, None]]
    table = common.table(f"Trained backbone, Fashion-MNIST protocol (15,000 training images, {BACKBONE_SIZE}px, "
                         f"at most {args.epochs} epochs)", ["Method", "P@1", "P@6", "mAP@6", "Head accuracy",
                                                             "Training s"], rows,
                         [f"Backbone weights at the start: {common.weights()} ({common.weights_reason()})."])
    common.print_table(table)
    common.write_result("backbone_training", {
        "mode": args.mode, "epochs": args.epochs, "trained": {**ours, **trained}, "raw_pixels": pixels,
        "tables": [table], "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
