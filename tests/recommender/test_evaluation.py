import numpy as np

from recommender.evaluation import classification_metrics, nearest, recall_against_exact, retrieval_metrics


def test_nearest_matches_a_brute_force_sort():
    rng = np.random.default_rng(0)
    index, queries = rng.normal(size=(200, 8)), rng.normal(size=(17, 8))
    expected = np.argsort(((queries[:, None] - index[None]) ** 2).sum(-1), axis=1)[:, :6]
    np.testing.assert_array_equal(nearest(queries, index, 6, chunk=5), expected)


def test_exclude_self():
    points = np.array([[0.0], [1.0], [10.0]])
    assert nearest(points, points, 1, exclude_self=True)[:, 0].tolist() == [1, 0, 1]


def test_retrieval_metrics_on_a_hand_computed_case():
    index = np.array([[0.0], [1.0], [2.0], [10.0]])
    labels = np.array(["a", "b", "a", "b"])
    result = retrieval_metrics(np.array([[0.1]]), np.array(["a"]), index, labels, k=3)
    # Neighbours: 0 (a, hit), 1 (b, miss), 2 (a, hit): P@1 = 1, P@3 = 2/3, AP@3 = (1/1 + 2/3) / 3.
    assert result["precision_at_1"] == 1.0
    assert abs(result["precision_at_3"] - 2 / 3) < 1e-9
    assert abs(result["map_at_3"] - (1 + 2 / 3) / 3) < 1e-9


def test_classification_metrics():
    result = classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
    assert result["accuracy"] == 0.75
    assert result["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert result["confusion_matrix"] == [[1, 1], [0, 2]]


def test_recall_against_exact():
    assert recall_against_exact([[1, 2, 3]], [[1, 2, 4]]) == 2 / 3
