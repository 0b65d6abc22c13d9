"""Evaluation of classification and same-category retrieval (pure numpy/scikit-learn, no Django).

Retrieval metrics, for queries against an index set, by Euclidean distance:
- precision@k: share of the k nearest items with the query's category, averaged over queries;
- mAP@k: mean over queries of AP@k = sum_{i<=k} P@i * rel_i / k. Every category has far more
  than k members here, so the normaliser is k (the number of relevant items that could fit).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def nearest(queries: np.ndarray, index: np.ndarray, k: int, exclude_self: bool = False,
            chunk: int = 1024) -> np.ndarray:
    """Indices (Q, k) of the k nearest index rows of each query (exact, squared L2)."""
    queries = np.asarray(queries, dtype=np.float32)
    index = np.asarray(index, dtype=np.float32)
    index_sq = (index ** 2).sum(axis=1)
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        d = index_sq[None, :] - 2.0 * q @ index.T  # + |q|^2, constant per row
        if exclude_self:
            rows = np.arange(len(q))
            d[rows, start + rows] = np.inf
        kk = min(k, d.shape[1])
        part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
        order = np.take_along_axis(d, part, axis=1).argsort(axis=1)
        out[start:start + len(q), :kk] = np.take_along_axis(part, order, axis=1)
    return out


def retrieval_metrics(query_vectors, query_labels, index_vectors, index_labels, k: int = 6,
                      exclude_self: bool = False) -> dict:
    query_labels = np.asarray(query_labels)
    index_labels = np.asarray(index_labels)
    if len(query_labels) == 0 or len(index_labels) == 0:
        return {"precision_at_1": None, f"precision_at_{k}": None, f"map_at_{k}": None, "queries": 0}
    neighbours = nearest(query_vectors, index_vectors, k, exclude_self=exclude_self)
    relevant = (index_labels[neighbours] == query_labels[:, None]).astype(np.float64)
    cumulative = relevant.cumsum(axis=1) / np.arange(1, k + 1)
    ap = (cumulative * relevant).sum(axis=1) / k
    return {
        "precision_at_1": float(relevant[:, 0].mean()),
        f"precision_at_{k}": float(relevant.mean()),
        f"map_at_{k}": float(ap.mean()),
        "queries": int(len(query_labels)),
    }


def classification_metrics(y_true, y_pred, classes: list[str]) -> dict:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if len(y_true) == 0:
        return {"accuracy": None, "per_class": {}, "confusion_matrix": [], "classes": classes}
    precision, recall, _, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class": {
            c: {"precision": float(p), "recall": float(r), "support": int(s)}
            for c, p, r, s in zip(classes, precision, recall, support)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "classes": list(classes),
    }


def recall_against_exact(approx: list[list[int]], exact: list[list[int]]) -> float:
    """Mean share of the exact top-k ids that the approximate search also returned."""
    hits = total = 0
    for a, e in zip(approx, exact):
        hits += len(set(a) & set(e))
        total += len(e)
    return hits / total if total else 1.0
