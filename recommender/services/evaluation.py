"""Evaluation of a version on held-out images: classification, same-category retrieval and the
HNSW index's recall against an exact scan. Results are stored on the version (re-running it
replaces them; a custom set is kept apart under ``metrics["custom"]``)."""

from __future__ import annotations

import numpy as np
from django.utils import timezone

from recommender import runtime
from catalog.models import ProductImage
from recommender.models import Embedding, ModelVersion
from recommender.selectors.features import features_load, images_trained_on
from recommender.selectors.similarity import nearest_images


def head_evaluate(*, version: ModelVersion, image_ids, k: int = 6) -> dict:
    """Classification and same-category retrieval of ``version`` on ``image_ids`` (queries),
    retrieving from the rest of the catalog (all other images with features)."""
    # Imported here: recommender.evaluation loads scikit-learn, which web processes never need.
    from recommender.evaluation import classification_metrics, retrieval_metrics

    head = runtime.load_head(version)
    ids, _, labels, features = features_load(backbone=version.backbone)
    if not ids:
        return {}
    query_set = set(image_ids)
    is_query = np.array([i in query_set for i in ids])
    labels = np.asarray(labels)
    vectors = head.embed(features)
    predicted = head.predict(features[is_query]) if is_query.any() else []
    result = classification_metrics(labels[is_query], predicted, list(head.classes))
    result.update(retrieval_metrics(vectors[is_query], labels[is_query], vectors[~is_query], labels[~is_query], k=k))
    return result


# What the training wrote beside the evaluation's own figures, kept when it is re-run.
KEPT_METRICS = ("training_seconds", "embeddings_pruned", "trained_image_ids", "epochs_run", "best_epoch",
                "mixed_precision")
RAW_PIXELS_SIZE = 32  # raw-pixel baseline: each image as 32x32 RGB, standardised, Euclidean
RAW_PIXELS_MAX_POOL = 5_000  # catalog images searched besides the queries (decoding ~1 ms each)


def _raw_pixels(image_ids) -> dict[int, np.ndarray]:
    from PIL import Image

    out = {}
    for image in ProductImage.objects.filter(id__in=list(image_ids)).only("id", "image"):
        try:
            with image.image.open("rb") as handle:
                picture = Image.open(handle)
                picture.draft("RGB", (RAW_PIXELS_SIZE, RAW_PIXELS_SIZE))  # JPEG: decode at a reduced scale
                small = picture.convert("RGB").resize((RAW_PIXELS_SIZE, RAW_PIXELS_SIZE), Image.Resampling.BILINEAR)
        except Exception:  # a file lost since: the image is left out of the comparison
            continue
        out[image.id] = np.asarray(small, np.float32).reshape(-1)
    return out


def raw_pixels_evaluate(*, version: ModelVersion, image_ids, k: int = 6, seed: int = 0) -> dict | None:
    """Same-category retrieval of raw pixels and of ``version`` side by side, on the same queries
    (``image_ids``) against the same pool (up to RAW_PIXELS_MAX_POOL other images): whether the
    model beats comparing pixels (RECOMMENDER_TRAINING=auto reads it)."""
    from sklearn.preprocessing import StandardScaler

    from recommender.evaluation import retrieval_metrics

    ids, _, labels, features = features_load(backbone=version.backbone)
    queries = set(image_ids)
    others = [i for i in ids if i not in queries]
    rng = np.random.default_rng(seed)
    pool = set(rng.choice(others, size=min(len(others), RAW_PIXELS_MAX_POOL), replace=False).tolist()) if others else set()
    pixels = _raw_pixels([i for i in ids if i in queries or i in pool])
    rows = [n for n, i in enumerate(ids) if i in pixels]
    is_query = np.array([ids[n] in queries for n in rows], bool)
    if not is_query.any() or is_query.all():
        return None
    labels = np.asarray(labels)[rows]
    raw = StandardScaler().fit_transform(np.stack([pixels[ids[n]] for n in rows]))
    mine = runtime.load_head(version).embed(features[rows])
    scores = {name: retrieval_metrics(v[is_query], labels[is_query], v[~is_query], labels[~is_query], k=k)
              for name, v in (("raw_pixels", raw), ("version", mine))}
    return {"queries": int(is_query.sum()), "pool": int((~is_query).sum()), **scores["raw_pixels"],
            "version": scores["version"]}


def index_recall(*, version: ModelVersion, sample, k: int = 6, progress=None) -> float | None:
    """Recall@k of the index scan against an exact scan, for up to len(sample) query images."""
    from recommender.evaluation import recall_against_exact

    queries = list(Embedding.objects.filter(version=version, image_id__in=list(sample))
                   .values_list("image_id", "vector"))
    if not queries:
        return None
    approx, exact = [], []
    for done, (image_id, vector) in enumerate(queries, 1):
        approx.append([i for i, _ in nearest_images(version=version, vector=vector, k=k, exclude_image=image_id)])
        exact.append([i for i, _ in nearest_images(version=version, vector=vector, k=k, exclude_image=image_id,
                                                   exact=True)])
        if progress:
            progress(done, len(queries))
    return recall_against_exact(approx, exact)


def _custom_queries(version: ModelVersion, image_ids) -> tuple[list[int], int]:
    """The images of a custom set that the version did not train on, and how many were left out."""
    queries = list(image_ids)
    trained = images_trained_on(version=version, image_ids=queries)
    kept = [i for i in queries if i not in trained]
    return kept, len(queries) - len(kept)


def model_version_evaluate(*, version: ModelVersion, image_ids=None, k: int = 6, progress=None) -> dict:
    """Evaluate on held-out images and store the results on the version, with the recall of the
    HNSW index against an exact scan.

    By default: its validation split (stored as its metrics and validation accuracy). Given
    ``image_ids`` (e.g. a new batch of products): the images it trained on are left out, and the
    result is kept under ``metrics["custom"]`` without replacing the validation figures.
    ``progress(stage, done, total)`` is called as the work advances."""
    step = progress or (lambda *a: None)
    custom = image_ids is not None
    if custom:
        queries, excluded = _custom_queries(version, image_ids)
    else:
        queries, excluded = list(version.metrics.get("holdout_image_ids", [])), 0
    step("classifying and retrieving", 0, 1)
    metrics = head_evaluate(version=version, image_ids=queries, k=k)
    step("classifying and retrieving", 1, 1)
    if not custom:
        step("comparing with raw pixels", 0, 1)
        metrics["raw_pixels"] = raw_pixels_evaluate(version=version, image_ids=queries, k=k)
    metrics["hnsw_recall_at_6"] = index_recall(
        version=version, sample=queries[:100], k=k,
        progress=lambda done, total: step("index recall against an exact scan", done, total))
    metrics["evaluated_at"] = timezone.now().isoformat()
    if custom:
        metrics.update({"images": len(queries), "excluded_training_images": excluded})
        ModelVersion.objects.filter(pk=version.pk).update(metrics={**version.metrics, "custom": metrics})
        return metrics
    # Bookkeeping that a re-evaluation keeps: the split, the training's own figures, the prune marker.
    metrics["holdout_image_ids"] = queries
    metrics.update({key: version.metrics[key] for key in KEPT_METRICS if key in version.metrics})
    ModelVersion.objects.filter(pk=version.pk).update(metrics=metrics, val_accuracy=metrics.get("accuracy"))
    return metrics
