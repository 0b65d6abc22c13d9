"""The synthetic catalogs of bench/catalogs.py (used by bench/heldout.py): deterministic under a
seed, the promised image sizes, modes and formats, balanced labels, and for colour_objects a
category that colour does not give away. Pure numpy/PIL: no database, no TensorFlow."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bench import catalogs
from bench.heldout import ranked_metrics
from recommender.evaluation import retrieval_metrics

# name: (number of categories, PIL mode, format, smallest side, largest side)
EXPECTED = {"colour_objects": (len(catalogs.OBJECT_CLASSES), "RGB", "JPEG", 96, 160),
            "line_drawings": (10, "L", "PNG", 28, 64),
            "recoloured_crops": (10, "RGB", "JPEG", 64, 128)}


@pytest.mark.parametrize("name", sorted(catalogs.CATALOGS))
def test_same_seed_same_bytes_other_seed_other_images(name):
    files, labels = catalogs.generate(name, 24, seed=7)
    again, again_labels = catalogs.generate(name, 24, seed=7)
    other, _ = catalogs.generate(name, 24, seed=8)
    assert files == again and labels == again_labels
    assert sum(a != b for a, b in zip(files, other)) == len(files)


@pytest.mark.parametrize("name", sorted(catalogs.CATALOGS))
def test_images_have_the_promised_size_mode_and_format(name):
    n_classes, mode, fmt, low, high = EXPECTED[name]
    files, labels = catalogs.generate(name, 2 * n_classes, seed=1)
    assert len(files) == len(labels) == 2 * n_classes
    for data in files:
        image = catalogs.decode(data)
        assert (image.format, image.mode) == (fmt, mode)
        assert image.width == image.height and low <= image.width <= high
        assert catalogs.extension(data) == ("png" if fmt == "PNG" else "jpg")
    assert {image.width for image in map(catalogs.decode, files)} != {low}  # sizes vary


@pytest.mark.parametrize("name", sorted(catalogs.CATALOGS))
def test_labels_are_balanced_over_every_category(name):
    n_classes = EXPECTED[name][0]
    _, labels = catalogs.generate(name, 3 * n_classes + 1, seed=2)
    counts = Counter(labels)
    assert set(counts) == set(catalogs.CLASSES[name]) and len(counts) == n_classes
    assert max(counts.values()) - min(counts.values()) <= 1
    assert labels[:n_classes] != sorted(labels[:n_classes])  # shuffled, not in class order


def test_colour_objects_has_shop_like_numbers_of_categories():
    assert 24 <= len(catalogs.OBJECT_CLASSES) <= 30


def _mean_colours(files) -> np.ndarray:
    return np.stack([np.asarray(catalogs.decode(d).convert("RGB"), np.float64).reshape(-1, 3).mean(0) for d in files])


def test_colour_objects_category_is_not_its_colour():
    # A nearest-mean-colour classifier (one centroid of mean RGB per category) is near chance.
    n_classes = len(catalogs.OBJECT_CLASSES)
    files, labels = catalogs.colour_objects(8 * n_classes, seed=11)
    queries, query_labels = catalogs.colour_objects(4 * n_classes, seed=12)
    train, test = _mean_colours(files), _mean_colours(queries)
    labels, query_labels = np.asarray(labels), np.asarray(query_labels)
    classes = np.asarray(catalogs.OBJECT_CLASSES)
    centroids = np.stack([train[labels == c].mean(axis=0) for c in classes])
    predicted = classes[np.argmin(((test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    chance = 1 / n_classes
    assert (predicted == query_labels).mean() < 3.5 * chance


def test_ranked_metrics_agree_with_retrieval_metrics():
    # heldout scores the API's ranked answers with the definitions of recommender.evaluation.
    rng = np.random.default_rng(0)
    index, queries = rng.normal(size=(60, 5)), rng.normal(size=(20, 5))
    labels, query_labels = rng.integers(0, 3, 60), rng.integers(0, 3, 20)
    order = np.argsort(((queries[:, None] - index[None]) ** 2).sum(-1), axis=1)[:, :6]
    ours = ranked_metrics(labels[order] == query_labels[:, None])
    reference = retrieval_metrics(queries, query_labels, index, labels, k=6)
    assert ours == pytest.approx(reference)
