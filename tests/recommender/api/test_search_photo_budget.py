"""Issue 15, item 3: what one anonymous search by photo (POST /api/v1/search/image/) may cost.

A 131 KB plain 6300x6300 PNG passed the 10 MB / 40 Mpx upload limits and then took 454 MiB and
2.7 s of CPU per request (decoded, copied, re-encoded with optimize=True, decoded again). Search
by photo now has its own pixel budget (SEARCH_MAX_IMAGE_PIXELS) and decodes reduced toward the
backbone's input (catalog.validators.search_photo_open). Peak memory and CPU are measured per
request with the backbone (random weights, 32 px) already loaded, on a cold-start catalog (no
active version). Method and bounds: tests/catalog/test_validators.py.
"""

import pytest

from tests.catalog.test_validators import SEARCH_CPU_SECONDS, SEARCH_PEAK_MIB, peak_memory, solid
from tests.factories import upload

pytestmark = pytest.mark.django_db

SEARCH = "/api/v1/search/image/"


def _post(client, data, name):
    return client.post(SEARCH, {"image": upload(data, name)}, format="multipart")


def _measured(client, data, name):
    return peak_memory(lambda: _post(client, data, name))  # the image is made before, not measured


def test_search_by_photo_memory_and_cpu_per_request_are_bounded(anon_client, settings):
    for warm in (solid((64, 64)), solid((64, 64), "JPEG")):  # the backbone, lazy imports
        assert _post(anon_client, warm, "warm.png").status_code == 200

    response, peak, cpu = _measured(anon_client, solid((6300, 6300)), "flat.png")
    assert peak < SEARCH_PEAK_MIB and cpu < SEARCH_CPU_SECONDS, f"6300x6300 PNG: {peak:.0f} MiB, {cpu:.2f} s"
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "too_many_pixels" and body["errors"][0]["field"] == "image"
    assert body["detail"] == (
        "image: The image is too large for search by photo (6300x6300 = 39,690,000 pixels); the limit is "
        "12,582,912 pixels (4096x3072). Please use a smaller photo.")

    for size, fmt in (((6300, 6300), "JPEG"), ((4096, 3072), "PNG")):  # a large JPEG; a PNG at the budget
        response, peak, cpu = _measured(anon_client, solid(size, fmt), f"big.{fmt.lower()}")
        assert peak < SEARCH_PEAK_MIB and cpu < SEARCH_CPU_SECONDS, f"{size} {fmt}: {peak:.0f} MiB, {cpu:.2f} s"
        assert response.status_code == 200
        assert response.json()["source"] == "none"  # cold start, no products: the backbone ran all the same


def test_search_by_photo_budget_is_a_setting(anon_client, settings):
    settings.SEARCH_MAX_IMAGE_PIXELS = 1000
    response = _post(anon_client, solid((40, 40)), "small.png")
    assert response.status_code == 400
    assert response.json()["errors"][0]["message"].startswith(
        "The image is too large for search by photo (40x40 = 1,600 pixels); the limit is 1,000 pixels")
