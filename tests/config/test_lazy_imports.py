"""The web process never loads TensorFlow, Keras or scikit-learn to serve pages and the API (they
cost ~1 GB and seconds of start-up, and TensorFlow does not survive a fork); only search by photo
loads them, lazily. Checked in a fresh process: this test process has them loaded already."""

import os
import subprocess
import sys

import numpy as np
import pytest

from recommender.models import Embedding, ModelVersion
from tests.conftest import ROOT, database_url_for_tests
from tests.factories import ProductImageFactory

SCRIPT = r"""
import sys
import django

django.setup()
from django.test import Client
from django.test.utils import setup_test_environment

setup_test_environment()
client = Client()
for path in sys.argv[1:]:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    if path.startswith("/p/"):
        assert b'id="similar"' in response.content, "the similar-items panel"
heavy = sorted(name for name in ("tensorflow", "keras", "sklearn", "joblib", "jax", "torch", "openvino")
               if name in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.slow
def test_pages_and_api_are_served_without_loading_tensorflow_keras_or_sklearn(transactional_db):
    version = ModelVersion.objects.create(status="active", backbone="resnet50:random:32", weights="random",
                                          input_size=32, classes=["a"])
    images = [ProductImageFactory() for _ in range(8)]
    rng = np.random.default_rng(0)
    for image in images:
        Embedding.objects.create(image=image, product=image.product, version=version, predicted="a",
                                 vector=rng.normal(size=512))
    product = images[0].product
    paths = ["/", f"/c/{product.category.slug}/", f"/p/{product.pk}/", "/search/photo/", "/api/v1/products/",
             f"/api/v1/products/{product.pk}/", f"/api/v1/products/{product.pk}/similar/", "/api/v1/health/",
             "/api/schema/"]
    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, *paths], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "HEAVY=\n" in result.stdout, result.stdout
