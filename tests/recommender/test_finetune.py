"""recommender.finetune (pure ML): the backbone trained end to end with the head.

Tiny images (32 px, ResNet50's minimum) and a few dozen of them: about two minutes in all."""

import numpy as np
import pytest
from PIL import Image

from recommender.backbone import Backbone, BackboneSpec
from recommender.evaluation import retrieval_metrics
from recommender.finetune import BackboneTrainingConfig, backbone_save, train_backbone

pytestmark = pytest.mark.slow

SIZE = 32
FAST = BackboneTrainingConfig(epochs=10, batch_size=16, learning_rate=2e-3, warmup_epochs=0, patience=10,
                              validation_split=0.25, seed=7)


def stripes(n: int, horizontal: bool, rng) -> np.ndarray:
    """Stripes of a random colour, period and phase, horizontal or vertical: the two classes differ
    only in orientation, which averaged random convolution features barely keep."""
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    coords = np.arange(SIZE)
    for i in range(n):
        period, phase = rng.integers(4, 9), rng.integers(0, 8)
        wave = ((coords + phase) // (period // 2)) % 2
        pattern = np.broadcast_to(wave[:, None] if horizontal else wave[None, :], (SIZE, SIZE))
        colour = rng.integers(60, 256, size=3)
        out[i] = (pattern[..., None] * colour).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def two_classes():
    rng = np.random.default_rng(0)
    images = np.concatenate([stripes(32, True, rng), stripes(32, False, rng)])
    labels = np.array(["horizontal"] * 32 + ["vertical"] * 32)
    order = rng.permutation(len(labels))
    return images[order], labels[order]


def fresh_backbone():
    return Backbone(BackboneSpec(weights="random", input_size=SIZE, seed=11), batch_size=16)


def features(model, images) -> np.ndarray:
    from keras.applications.resnet50 import preprocess_input

    return np.asarray(model.predict(preprocess_input(images.astype(np.float32)), verbose=0))


@pytest.fixture(scope="module")
def trained(two_classes):
    images, labels = two_classes
    frozen = fresh_backbone()
    before = [w.copy() for w in frozen.model.get_weights()]
    frozen_features = features(frozen.model, images)
    result = train_backbone(images, labels, fresh_backbone().model, FAST)
    return result, before, frozen_features


def test_training_changes_the_backbones_weights_and_features(trained, two_classes):
    result, before, frozen_features = trained
    after = result.backbone.get_weights()
    changed = [not np.array_equal(a, b) for a, b in zip(before, after)]
    assert sum(changed) > 0.9 * len(changed)  # nearly every tensor moved (all trainable ones)
    assert not np.allclose(features(result.backbone, two_classes[0]), frozen_features)
    assert result.epochs_run <= FAST.epochs and 1 <= result.best_epoch <= result.epochs_run
    assert set(result.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_a_saved_backbone_loads_with_its_own_identity_and_identical_features(trained, two_classes, tmp_path):
    result = trained[0]
    path = backbone_save(result.backbone, tmp_path / "v7")
    assert path.name == "backbone.weights.h5" and list(path.parent.iterdir()) == [path]  # no temporary left
    spec = BackboneSpec(weights=str(path), input_size=SIZE)
    assert spec.identity.startswith("resnet50:ft-v7-") and spec.identity.endswith(":32")
    loaded = Backbone(spec, batch_size=16)
    pictures = [Image.fromarray(image) for image in two_classes[0][:20]]
    expected = features(result.backbone, two_classes[0][:20])
    np.testing.assert_allclose(loaded.extract(pictures), expected, rtol=1e-5, atol=1e-5)


def test_a_seeded_cpu_training_is_reproducible(two_classes):
    images, labels = two_classes
    config = BackboneTrainingConfig(**{**FAST.__dict__, "epochs": 1})
    first = train_backbone(images, labels, fresh_backbone().model, config)
    second = train_backbone(images, labels, fresh_backbone().model, config)
    for a, b in zip(first.backbone.get_weights(), second.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert first.history == second.history


def test_a_tiny_set_of_two_classes_is_learnt(trained, two_classes):
    # Same-class retrieval on the held-out images, by the embeddings of the trained backbone.
    # (Against the frozen random backbone with the original head, which separates these stripes
    # as well (P@6 0.94 vs 0.90), this tiny task shows no lead: see issue 13's closing note.)
    images, labels = two_classes
    result = trained[0]
    train, val = result.train_index, result.val_index
    result.head.embedding_scaler_fit(features(result.backbone, images[train]))
    scores = retrieval_metrics(result.head.embed(features(result.backbone, images[val])), labels[val],
                               result.head.embed(features(result.backbone, images[train])), labels[train], k=6)
    assert scores["precision_at_6"] >= 0.65, scores  # chance: 0.5
    predicted = result.head.predict(features(result.backbone, images[val]))
    assert np.mean(np.array(predicted) == labels[val]) >= 0.65
