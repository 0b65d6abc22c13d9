"""An image uploaded through the API is processed by a real Celery worker: pending, then ready."""

import pytest

from tests.api.conftest import png
from tests.conftest import wait_for
from tests.factories import ProductFactory, upload

pytestmark = [pytest.mark.worker]


def test_uploaded_image_becomes_ready_with_a_real_worker(start_worker, staff_client, anon_client):
    product = ProductFactory()
    response = staff_client.post(f"/api/v1/products/{product.pk}/images/",
                                 {"images": [upload(png((48, 40), colour=(10, 120, 200)), "photo.png")]},
                                 format="multipart")
    assert response.status_code == 201
    [image] = response.json()
    assert image["status"] == "pending" and image["thumbnails"] == {}
    assert (image["width"], image["height"]) == (48, 40)

    start_worker()
    url = f"/api/v1/products/{product.pk}/"

    def ready():
        body = anon_client.get(url).json()
        return body if body["images"][0]["status"] == "ready" else None

    body = wait_for(ready, timeout=180, message="the uploaded image to become ready")
    processed = body["images"][0]
    assert processed["id"] == image["id"] and processed["attempts"] == 1 and processed["last_error"] == ""
    assert set(processed["thumbnails"]) == {"128"}  # 48x40: larger sizes would only be upscales of it
    assert body["thumbnail"].endswith(".webp")
    # Cold start (no model yet): searchable from the moment it became ready.
    assert body["searchable_since"] == processed["status_changed_at"]
    thumb = anon_client.get(processed["thumbnails"]["128"].replace("http://testserver", ""))
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/webp"
