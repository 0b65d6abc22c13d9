"""catalog.uploads: a file over its limit is not kept (in memory or in a temporary file) while the
request is parsed, and the client still gets the usual "too large" message."""

import os

import pytest
from django.core.files.uploadhandler import MemoryFileUploadHandler, TemporaryFileUploadHandler
from django.urls import reverse
from rest_framework.test import APIClient

from catalog.models import Product
from tests.factories import png_bytes, upload
from tests.ui.data import fast_passwords, media_files, zip_bytes  # noqa: F401 (fast_passwords: autouse)

pytestmark = pytest.mark.django_db

LIMIT = 1_000


@pytest.fixture
def upload_dir(settings, tmp_path, monkeypatch):
    """Small limits, every file through a temporary file in a folder of its own, and a record of
    what the handlers after the cap were given (bytes) and what that folder held during validation."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(folder)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 100  # any real request spills to a temporary file
    settings.MAX_UPLOAD_BYTES = LIMIT
    seen = {"stored": 0, "during": []}

    for cls in (TemporaryFileUploadHandler, MemoryFileUploadHandler):
        original = cls.receive_data_chunk

        def spy(self, raw_data, start, original=original):
            if getattr(self, "activated", True):  # the memory handler only keeps what it is activated for
                seen["stored"] += len(raw_data)
            return original(self, raw_data, start)

        monkeypatch.setattr(cls, "receive_data_chunk", spy)

    import importlib

    import catalog.validators

    def watching(check):
        def watched(upload, **kwargs):
            seen["during"].append(sorted(os.listdir(folder)))
            return check(upload, **kwargs)
        return watched

    # Stored uploads go through normalise_image, photos to search by through search_photo_open.
    for name in ("normalise_image", "search_photo_open"):
        watched = watching(getattr(catalog.validators, name))
        for module in ("catalog.validators", "catalog.forms", "catalog.admin", "catalog.api.uploads",
                       "recommender.api.views"):
            if hasattr(importlib.import_module(module), name):
                monkeypatch.setattr(f"{module}.{name}", watched)
    seen["folder"] = folder
    return seen


def big_file(size=300_000) -> bytes:
    return png_bytes((8, 8), seed=1) + os.urandom(size)


def test_photo_search_stops_storing_a_file_over_the_limit(client, upload_dir):
    data = big_file()
    response = client.post(reverse("catalog:photo_search"), {"photo": upload(data, "huge.png")})
    assert response.status_code == 400
    html = response.content.decode()
    assert f"The file is too large ({len(data):,} bytes); the limit is {LIMIT:,} bytes." in html
    assert upload_dir["stored"] <= LIMIT  # at most the limit was handed to memory or disk
    assert upload_dir["during"] == [[]]  # nothing of it was on disk while the form checked it
    assert os.listdir(upload_dir["folder"]) == []


def test_a_file_within_the_limit_is_received_whole(client, upload_dir):
    data = b"just under the limit, and not a picture " * 20
    assert len(data) < LIMIT
    response = client.post(reverse("catalog:photo_search"), {"photo": upload(data, "small.png")})
    assert response.status_code == 400
    assert "The file is not an image" in response.content.decode()  # it was read: the size was fine
    assert upload_dir["stored"] == len(data)
    assert len(upload_dir["during"]) == 1 and len(upload_dir["during"][0]) == 1  # it was in a temporary file
    assert os.listdir(upload_dir["folder"]) == []


def test_api_answers_400_too_large_and_keeps_nothing(upload_dir, settings):
    data = big_file()
    response = APIClient().post("/api/v1/search/image/", {"image": upload(data, "huge.png")}, format="multipart")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "too_large" and body["errors"][0]["field"] == "image"
    assert f"({len(data):,} bytes); the limit is {LIMIT:,} bytes" in body["detail"]
    assert upload_dir["stored"] <= LIMIT
    assert os.listdir(upload_dir["folder"]) == [] and media_files(settings) == []


def test_one_oversized_file_among_several_is_named_and_nothing_is_stored(admin_user, upload_dir, settings):
    from tests.factories import ProductFactory

    product = ProductFactory()
    client = APIClient()
    client.force_authenticate(admin_user)
    good, bad = png_bytes((8, 8), seed=3), big_file()
    response = client.post(f"/api/v1/products/{product.pk}/images/",
                           {"images": [upload(good, "good.png"), upload(bad, "huge.png")]}, format="multipart")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "too_large" and body["errors"][0]["field"] == "images.1"
    assert "huge.png" in body["detail"]
    assert upload_dir["stored"] <= len(good) + LIMIT
    assert not product.images.exists() and media_files(settings) == []
    assert os.listdir(upload_dir["folder"]) == []


def test_the_bulk_upload_zip_has_its_own_larger_limit(admin_client, upload_dir, settings):
    from tests.catalog.test_admin import CSV, good_zip, post_bulk

    settings.MAX_UPLOAD_BYTES = 5_000  # per image inside the ZIP
    archive = good_zip({"img/padding.bin": os.urandom(20_000)})
    assert len(archive) > settings.MAX_UPLOAD_BYTES
    response = post_bulk(admin_client, archive)
    assert response.status_code == 200, response.content.decode()[:2000]
    assert Product.objects.count() == 2

    settings.BULK_UPLOAD_MAX_BYTES = 10_000
    upload_dir["stored"] = 0
    response = post_bulk(admin_client, archive, csv=CSV)
    assert response.status_code == 400
    html = response.content.decode()
    assert f"The ZIP is too large ({len(archive):,} bytes); the limit is 10,000 bytes." in html
    assert upload_dir["stored"] <= 10_000 + len(CSV)
    assert os.listdir(upload_dir["folder"]) == []


def test_the_cap_is_per_field_on_the_bulk_upload_page_only(rf, settings):
    from catalog.forms import BulkUploadForm
    from catalog.uploads import upload_limit

    bulk = rf.post(reverse("admin:catalog_product_bulk_upload"))
    assert upload_limit(bulk, "archive") == settings.BULK_UPLOAD_MAX_BYTES
    assert upload_limit(bulk, "catalog") == BulkUploadForm.MAX_CSV_BYTES
    assert upload_limit(bulk, "other") == settings.MAX_UPLOAD_BYTES
    elsewhere = rf.post(reverse("catalog:photo_search"))
    assert upload_limit(elsewhere, "archive") == settings.MAX_UPLOAD_BYTES


def test_the_upload_handlers_are_configured(settings):
    assert settings.FILE_UPLOAD_HANDLERS[0] == "catalog.uploads.UploadSizeCapHandler"
