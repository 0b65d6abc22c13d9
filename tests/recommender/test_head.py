"""Pure ML: the classifier head, its embeddings and their persistence."""

import numpy as np
import pytest

from recommender.head import EMBEDDING_DIM, HeadConfig, TrainedHead, balanced_class_weight, train_head


def blobs(counts, dim=64, seed=0):
    """Gaussian clusters, one per class, with the given number of rows each."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (len(counts), dim))
    x = np.concatenate([rng.normal(c, 1.0, (n, dim)) for c, n in zip(centres, counts)]).astype(np.float32)
    y = np.concatenate([[f"class-{i}"] * n for i, n in enumerate(counts)])
    return x, y


FAST = HeadConfig(epochs=4, batch_size=32, seed=11)


def test_training_is_reproducible_with_a_seed():
    x, y = blobs([60, 60, 60])
    a = train_head(x, y, FAST)
    b = train_head(x, y, FAST)
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(a.head.embed(x[:10]), b.head.embed(x[:10]), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(a.val_index, b.val_index)


def test_split_is_stratified_and_embeddings_have_512_standardised_dims():
    x, y = blobs([100, 50, 50])
    result = train_head(x, y, FAST)
    assert len(result.val_index) == 40 and len(set(result.train_index) & set(result.val_index)) == 0
    held_out = y[result.val_index]
    assert (held_out == "class-0").sum() == 20  # stratified: 20% of each class
    vectors = result.head.embed(x[result.train_index])
    assert vectors.shape == (160, EMBEDDING_DIM)
    # The embedding scaler was fitted on the training rows: standardised there (dead units stay 0).
    live = vectors.std(axis=0) > 1e-6
    np.testing.assert_allclose(vectors.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(vectors[:, live].std(axis=0), 1, atol=1e-2)
    assert set(result.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(result.history["loss"]) == FAST.epochs


def test_saved_and_reloaded_head_gives_identical_embeddings(tmp_path):
    x, y = blobs([40, 40])
    head = train_head(x, y, FAST).head
    path = head.save(tmp_path / "v1", meta={"note": "test"})
    assert sorted(p.name for p in path.iterdir()) == ["head.keras", "meta.json", "preprocessing.joblib"]
    assert not list(tmp_path.glob(".v1.tmp-*"))  # written under a temporary name, then renamed
    again = TrainedHead.load(path)
    np.testing.assert_allclose(head.embed(x), again.embed(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(head.predict_proba(x), again.predict_proba(x), rtol=1e-6, atol=1e-6)
    assert again.classes == ["class-0", "class-1"]


def test_class_weights_are_a_dict_and_change_the_loss_on_an_imbalanced_set():
    x, y = blobs([300, 30, 30], seed=2)
    codes = np.searchsorted(np.unique(y), y)
    weights = balanced_class_weight(codes, 3)
    assert isinstance(weights, dict) and weights[1] > weights[0] * 5
    weighted = train_head(x, y, HeadConfig(epochs=2, seed=5, class_weights=True))
    plain = train_head(x, y, HeadConfig(epochs=2, seed=5, class_weights=False))
    # What went to fit: a dict computed on the training rows (the notebook's array was ignored).
    assert weighted.class_weight == balanced_class_weight(codes[weighted.train_index], 3)
    assert plain.class_weight == {}
    # Same seed and data: only the class weights differ, so the training loss must differ.
    assert abs(weighted.history["loss"][0] - plain.history["loss"][0]) > 1e-3


def test_needs_two_classes():
    x, y = blobs([30])
    with pytest.raises(ValueError, match="two categories"):
        train_head(x, y, FAST)
