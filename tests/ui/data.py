"""Catalog data for page and admin tests: real rows and files, with synthetic feature vectors
where the test is about pages rather than the network (no TensorFlow needed)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from django.utils import timezone

from catalog.models import ProductImage
from recommender.models import EMBEDDING_DIM, FEATURE_DIM, BackboneFeature, Embedding, ModelVersion
from recommender.runtime import backbone_spec
from tests.factories import CategoryFactory, ProductFactory, ProductImageFactory, png_bytes


def catalog(*, per_category=4, categories=("Shoes", "Bags"), with_images=True, seed=0):
    """Products in a few categories, each with one (distinct) image."""
    products = []
    for c, name in enumerate(categories):
        category = CategoryFactory(name=name, slug=name.lower().replace(" ", "-"))
        for i in range(per_category):
            product = ProductFactory(category=category, title=f"{name} item {i}")
            if with_images:
                ProductImageFactory(product=product, data=png_bytes(seed=seed * 1000 + c * 100 + i))
            products.append(product)
    return products


def cluster_vector(dim, cluster: int, jitter: int, rng=None) -> np.ndarray:
    """A vector near one of a few well-separated centres (the category's)."""
    rng = rng or np.random.default_rng(cluster * 1000 + jitter)
    # Blocks of an eighth of the dimensions: clear even after per-dimension standardisation.
    block = dim // 8
    centre = np.zeros(dim, np.float32)
    centre[cluster * block:(cluster + 1) * block] = 10.0
    return centre + rng.normal(0, 0.5, dim).astype(np.float32)


def add_features(products, *, cluster_of=None, ready=True):
    """Backbone features for the products' images under the current backbone identity."""
    identity = backbone_spec().identity
    categories = sorted({p.category_id for p in products})
    cluster_of = cluster_of or (lambda p: categories.index(p.category_id))
    rows = []
    for n, product in enumerate(products):
        for image in product.images.all():
            rows.append(BackboneFeature(image=image, backbone=identity,
                                        vector=cluster_vector(FEATURE_DIM, cluster_of(product), n)))
    BackboneFeature.objects.bulk_create(rows)
    if ready:
        ProductImage.objects.filter(product__in=products).update(status=ProductImage.Status.READY,
                                                                 status_changed_at=timezone.now())
    return identity


def model_version(*, status=ModelVersion.Status.ACTIVE, **fields) -> ModelVersion:
    """A version row with plausible metrics and history (no files: it cannot be activated)."""
    classes = fields.pop("classes", ["Bags", "Shoes"])
    defaults = dict(
        backbone=backbone_spec().identity, weights="random", input_size=32, classes=classes,
        hyperparameters={"epochs": 4, "batch_size": 64, "learning_rate": 0.0004}, trigger="test",
        n_train=16, n_val=4, n_images=20, val_accuracy=0.75,
        history={"accuracy": [0.4, 0.6, 0.7, 0.8], "val_accuracy": [0.5, 0.5, 0.75, 0.75],
                 "loss": [1.2, 0.9, 0.7, 0.5], "val_loss": [1.1, 1.0, 0.8, 0.7]},
        metrics={"accuracy": 0.75, "precision_at_1": 0.8, "precision_at_6": 0.7, "map_at_6": 0.65,
                 "hnsw_recall_at_6": 1.0, "classes": classes,
                 "per_class": {c: {"precision": 0.8, "recall": 0.7, "support": 2} for c in classes},
                 "confusion_matrix": [[2, 0], [1, 1]][:len(classes)], "holdout_image_ids": [1, 2, 3, 4],
                 "training_seconds": 1.5},
        activated_at=timezone.now() if status == ModelVersion.Status.ACTIVE else None,
    )
    defaults.update(fields)
    return ModelVersion.objects.create(status=status, **defaults)


def add_embeddings(version, products, *, cluster_of=None):
    categories = sorted({p.category_id for p in products})
    cluster_of = cluster_of or (lambda p: categories.index(p.category_id))
    names = {p.category_id: p.category.name for p in products}
    rows = []
    for n, product in enumerate(products):
        for image in product.images.all():
            rows.append(Embedding(image=image, product=product, version=version,
                                  vector=cluster_vector(EMBEDDING_DIM, cluster_of(product), n),
                                  predicted=names[product.category_id], confidence=0.9))
    Embedding.objects.bulk_create(rows)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def media_files(settings) -> list:
    root = settings.MEDIA_ROOT
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """Staff users are created in most page tests; the real hasher costs ~0.3 s per user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
