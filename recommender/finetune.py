"""Training the backbone itself on a catalog's images and categories (pure ML: no Django).

The frozen backbone of the original method is only as good as its weights: with random ones
(no ImageNet here) or photos unlike ImageNet, its features barely beat raw pixels. This trains
ResNet50 (architecture unchanged) end to end with the original head on top (Dense 1024 -> Dense
512 "mid" -> softmax, balanced class weights), from the given weights: ImageNet (fine-tuning) or
seeded random ones (from scratch). What it adds to the head-only recipe:

- mild augmentation suited to product photos, when asked for (``augment``): horizontal flips,
  small shifts, mild contrast changes; no vertical flips or rotations (products are shown upright);
- from random weights, each residual block starts as the identity (its last BatchNorm's scale at
  zero: Goyal et al. 2017), and the head's dropout is lighter than the head kind's;
- AdamW with a linear warm-up then cosine decay of the learning rate;
- BatchNorm statistics re-estimated from training images after each epoch (trained from scratch,
  the running averages lag far behind the weights), then early stopping on the validation loss,
  keeping the best epoch's weights; a bounded number of epochs;
- mixed precision on a GPU; deterministic under a seed on the CPU.

The result is a backbone (saved as a Keras weights file, loadable by :mod:`recommender.backbone`
as ``BackboneSpec(weights=<file>)``, so stored features stay keyed by its own identity) and a
:class:`recommender.head.TrainedHead` that reads that backbone's features. The head's feature
scaler is the identity: the trained layers already expect the backbone's raw features; its
embedding scaler is fitted afterwards (``TrainedHead.embedding_scaler_fit``) on the training
rows' features of the trained backbone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recommender.backbone import TRAINED_WEIGHTS_FILE
from recommender.head import (EMBEDDING_DIM, MID_LAYER, TrainedHead, balanced_class_weight, encode_labels,
                              split_indices)


@dataclass
class BackboneTrainingConfig:
    epochs: int = 6  # at most (early stopping may end sooner); more for a small catalog: min_steps
    min_steps: int = 0  # a small catalog trains for at least this many optimiser steps (epochs_for)
    batch_size: int = 64
    learning_rate: float = 1e-3  # peak, reached after the warm-up
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    validation_split: float = 0.2
    dropout: float = 0.2  # the head kind's 0.5 underfits in a few epochs (see _augmentation)
    patience: int = 3  # epochs without a better validation loss before stopping
    calibration_batches: int = 24  # training batches that re-estimate BatchNorm statistics per epoch
    seed: int = 1234
    # Off by default: at the budgets of a 2-core CPU it costs more than it gives (Fashion-MNIST,
    # 12,000 images, 6 epochs: validation accuracy 0.81 with it, 0.87 without; docs/benchmarks.md).
    augment: bool = False
    class_weights: bool = True
    label_smoothing: float = 0.0
    # From scratch only: each residual block's last BatchNorm starts at zero, so every block starts
    # as the identity (Goyal et al. 2017); with ImageNet weights it would erase what they know.
    zero_init_residual: bool = False


@dataclass
class BackboneTrainingResult:
    backbone: object  # the Keras ResNet50 (include_top=False, average pooling)
    head: TrainedHead
    history: dict
    train_index: np.ndarray
    val_index: np.ndarray
    epochs_run: int
    best_epoch: int
    seconds: float
    mixed_precision: bool = False
    class_weight: dict = field(default_factory=dict)


def epochs_for(config: BackboneTrainingConfig, n_images: int) -> tuple[int, int]:
    """(epochs, patience) for ``n_images``: ``config.epochs``, raised so that a small catalog still
    trains for ``min_steps`` steps (what learning from scratch needs is steps, not passes: 1,200
    images at batch 64 make 19 steps an epoch), with the patience scaled alike."""
    n_train = max(1, int(round(n_images * (1 - config.validation_split))))
    steps = max(1, math.ceil(n_train / config.batch_size))
    epochs = max(config.epochs, math.ceil(config.min_steps / steps))
    return epochs, max(config.patience, math.ceil(config.patience * epochs / config.epochs))


def _augmentation(seed: int):
    # Mild on purpose: a few epochs from scratch on 2 cores cannot afford much regularisation
    # (Fashion-MNIST, 12,000 images, epoch 2: validation accuracy 0.67 with flips, shifts of 8%,
    # zooms, contrast, label smoothing 0.1 and dropout 0.5; 0.81 without any of them, dropout 0.2).
    from keras import layers

    return [layers.RandomFlip("horizontal", seed=seed),
            layers.RandomTranslation(0.05, 0.05, fill_mode="nearest", seed=seed + 1),
            layers.RandomContrast(0.1, seed=seed + 2)]


def _head_layers(n_classes: int, config: BackboneTrainingConfig):
    from keras import layers

    return [layers.Dense(1024, activation="relu", name="dense_1024"),
            layers.Dropout(config.dropout, seed=config.seed),
            layers.Dense(EMBEDDING_DIM, activation="relu", name=MID_LAYER),
            layers.Dropout(config.dropout, seed=config.seed + 1),
            # float32 output under mixed precision: a float16 softmax loses the loss's precision.
            layers.Dense(n_classes, activation="softmax", name="classes", dtype="float32")]


def _apply(layers_, x):
    for layer in layers_:
        x = layer(x)
    return x


def build_models(backbone, n_classes: int, config: BackboneTrainingConfig):
    """(end-to-end model on images, head model on backbone features); they share the head's layers."""
    import keras

    head = _head_layers(n_classes, config)
    # The head's graph first: a shared layer's ``output`` is that of its first call, and
    # TrainedHead reads the "mid" layer's output from the head model.
    features = keras.Input(shape=(backbone.output_shape[-1],), name="features")
    head_model = keras.Model(features, _apply(head, features), name="head")
    size = backbone.input_shape[1]
    images = keras.Input(shape=(size, size, 3), name="images")
    x = _apply(_augmentation(config.seed), images) if config.augment else images
    return keras.Model(images, _apply(head, backbone(x)), name="backbone_and_head"), head_model


def _batches(images, onehot, batch_size, shuffle, seed, sample_weight=None):
    """Preprocessed batches of uint8 images (only one batch at a time is held as float32)."""
    import keras
    from keras.applications.resnet50 import preprocess_input

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(images))
            self.on_epoch_end()

        def __len__(self):
            return int(np.ceil(len(images) / batch_size))

        def __getitem__(self, index):
            rows = self.order[index * batch_size:(index + 1) * batch_size]
            x = preprocess_input(images[rows].astype(np.float32))
            if sample_weight is None:
                return x, onehot[rows]
            return x, onehot[rows], sample_weight[rows]

        def on_epoch_end(self):
            if shuffle:
                self.rng.shuffle(self.order)

    return Batches()


def _schedule(config: BackboneTrainingConfig, steps_per_epoch: int):
    import keras

    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate * 0.01 if warmup else config.learning_rate,
        decay_steps=total - warmup, warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup, alpha=0.01)


def _precision_policy() -> bool:
    """Mixed precision when a GPU is visible (bfloat16 where supported); float32 on the CPU."""
    import keras

    from recommender.backbone import accelerator_present

    if not accelerator_present():
        keras.mixed_precision.set_global_policy("float32")
        return False
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    return True


def _batch_norm_recalibrate(backbone, batches, steps: int) -> None:
    """Re-estimate every BatchNorm layer's statistics as the exact average over ``steps`` batches of
    (un-augmented) training images, with the weights as they are now. Trained from scratch, the
    running averages lag behind weights that change fast: inference features came out ~16x too
    large (2 classes predicted for everything: validation accuracy 0.10 against 0.53 in training,
    5,000 Fashion-MNIST images, 6 epochs)."""
    from keras import layers

    norms = [layer for layer in backbone.layers if isinstance(layer, layers.BatchNormalization)]
    saved = [layer.momentum for layer in norms]
    try:
        for step in range(min(steps, len(batches))):
            for layer in norms:
                layer.momentum = step / (step + 1)  # a running mean of the batches seen so far
            backbone(batches[step][0], training=True)
    finally:
        for layer, momentum in zip(norms, saved):
            layer.momentum = momentum


def _calibrated_validation(backbone, end_to_end, calibration, val, steps: int):
    """Callback: at each epoch's end, recalibrate BatchNorm, then score the validation split (the
    early stopping and the curves read these val_loss/val_accuracy)."""
    import keras

    class CalibratedValidation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            _batch_norm_recalibrate(backbone, calibration, steps)
            if logs is not None and len(val):
                loss, accuracy = end_to_end.evaluate(val, verbose=0, return_dict=False)[:2]
                logs.update(val_loss=float(loss), val_accuracy=float(accuracy))

    return CalibratedValidation()


def _zero_init_residual(backbone) -> None:
    # Keras names each residual block's last BatchNorm "conv<stage>_block<n>_3_bn".
    for layer in backbone.layers:
        if re.fullmatch(r"conv\d_block\d+_3_bn", layer.name):
            layer.gamma.assign(np.zeros(layer.gamma.shape, np.float32))


def _deterministic(seed: int) -> None:
    # Seeds Python, numpy and the backend: the data order, augmentation and dropout are then fixed.
    # On the CPU that is enough for identical weights run to run (tests/recommender/test_finetune.py);
    # TensorFlow's enable_op_determinism is process-wide and has no way back, so it is not used.
    import keras

    keras.utils.set_random_seed(seed)


def train_backbone(images: np.ndarray, labels, backbone, config: BackboneTrainingConfig | None = None,
                   callbacks=()) -> BackboneTrainingResult:
    """Train ``backbone`` (a Keras ResNet50, include_top=False, average pooling, built with the
    starting weights) and a new head on ``images`` (N, S, S, 3) uint8 RGB at the backbone's input
    size, with string ``labels``; a stratified split is held out (validation, early stopping)."""
    import keras
    from sklearn.preprocessing import StandardScaler

    config = config or BackboneTrainingConfig()
    epochs, patience = epochs_for(config, len(images))
    config = dataclasses.replace(config, epochs=epochs, patience=patience)
    _deterministic(config.seed)
    mixed = _precision_policy()
    try:
        encoder, y = encode_labels(labels)
        n_classes = len(encoder.classes_)
        train_index, val_index = split_indices(y, config.validation_split, config.seed)
        onehot = keras.utils.to_categorical(y, n_classes).astype(np.float32)
        class_weight = balanced_class_weight(y[train_index], n_classes) if config.class_weights else {}
        weights = np.array([class_weight.get(int(c), 1.0) for c in y], np.float32) if class_weight else None
        if config.zero_init_residual:
            _zero_init_residual(backbone)
        end_to_end, head_model = build_models(backbone, n_classes, config)
        # One copy of the training rows, shared by the training and the calibration batches.
        train_images, train_onehot = images[train_index], onehot[train_index]
        train = _batches(train_images, train_onehot, config.batch_size, True, config.seed,
                         None if weights is None else weights[train_index])
        val = _batches(images[val_index], onehot[val_index], config.batch_size, False, config.seed)
        end_to_end.compile(optimizer=keras.optimizers.AdamW(_schedule(config, len(train)),
                                                            weight_decay=config.weight_decay),
                           loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                           metrics=["accuracy"])
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
        calibration = _batches(train_images, train_onehot, config.batch_size, True, config.seed + 1)
        calibrate = _calibrated_validation(backbone, end_to_end, calibration, val, config.calibration_batches)
        started = time.perf_counter()
        # The calibrating callback runs first: early stopping and the caller's callbacks see its scores.
        fit = end_to_end.fit(train, epochs=config.epochs, verbose=0, callbacks=[calibrate, stop, *callbacks])
        seconds = time.perf_counter() - started
    finally:
        keras.mixed_precision.set_global_policy("float32")
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    epochs_run = len(history.get("loss", []))
    best = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else epochs_run
    identity = StandardScaler(with_mean=False, with_std=False).fit(np.zeros((1, backbone.output_shape[-1])))
    head = TrainedHead(model=head_model, feature_scaler=identity, embedding_scaler=None, label_encoder=encoder)
    return BackboneTrainingResult(backbone=backbone, head=head, history=history, train_index=train_index,
                                  val_index=val_index, epochs_run=epochs_run, best_epoch=best, seconds=seconds,
                                  mixed_precision=mixed, class_weight=class_weight)


def backbone_save(backbone, directory: Path) -> Path:
    """Write the backbone's weights into ``directory`` (temporary name, then rename): a reader never
    sees half a file. Returns the file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / TRAINED_WEIGHTS_FILE
    handle, tmp = tempfile.mkstemp(prefix=".backbone-", suffix=".weights.h5", dir=directory)
    os.close(handle)
    try:
        backbone.save_weights(tmp, overwrite=True)
        shutil.move(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
