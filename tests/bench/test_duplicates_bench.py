"""bench/duplicates.py's labelled set and scoring: the figures it reports mean what they say."""

import numpy as np

from bench import duplicates


def test_score_counts_right_matches_wrong_ones_and_misses():
    distance = np.array([3.0, 5.0, 9.0, 4.0, 20.0])
    nearest = np.array([0, 7, 2, 1, 3])
    source = np.array([0, 1, 2, -1, -1])  # three planted (their sources 0, 1, 2), two distinct
    r = duplicates.score(distance, nearest, source, threshold=5)
    # Flagged: 0 (right), 1 (its nearest is not its source: wrong), 3 (a distinct product: wrong).
    assert (r["flagged"], r["wrong"]) == (3, 2)
    assert r["precision"] == 1 / 3 and r["recall"] == 1 / 3


def test_calibration_takes_the_largest_threshold_at_the_precision_floor():
    distance = np.array([1.0, 2.0, 3.0, 10.0, 11.0])
    nearest = np.array([0, 1, 2, 9, 9])
    source = np.array([0, 1, 2, 3, -1])
    assert duplicates.calibrate(distance, nearest, source) == 3.0  # 10 would flag a wrong match


def test_planted_copies_are_found_by_the_hash_and_distinct_products_mostly_not():
    data = duplicates.labelled_set("line_drawings", 0, (40, 3, 20))
    assert len(data["queries"]) == 3 * len(duplicates.TRANSFORMS) + 20
    d, i = duplicates.hash_nearest(data, 64, 16)
    planted = data["source"] >= 0
    easy = np.isin(data["kinds"], ["re-encoded", "resized", "mirrored"])
    assert (i[easy] == data["source"][easy]).all() and (d[easy] <= 56).all()
    assert (d[~planted] > 56).mean() >= 0.8
