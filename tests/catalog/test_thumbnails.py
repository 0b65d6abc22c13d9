"""Thumbnails (catalog.thumbnails): made by the worker, one WebP per size worth making."""

import pytest
from PIL import Image

from catalog.thumbnails import thumbnail_sizes, thumbnails_create
from tests.factories import ProductImageFactory


@pytest.mark.parametrize("source, made", [
    ((28, 28), [128]),          # Fashion-MNIST: one crisp upscale, the rest would copy it
    ((60, 80), [128]),
    ((200, 150), [128, 256]),
    ((256, 100), [128, 256]),
    ((900, 1200), [128, 256, 512]),
])
def test_only_sizes_up_to_the_first_covering_the_source_are_made(source, made):
    assert thumbnail_sizes(source=source, sizes=(512, 128, 256)) == made


@pytest.mark.django_db
def test_a_small_source_gets_one_file_and_pages_ask_for_any_size(settings):
    image = ProductImageFactory()
    picture = Image.new("RGB", (60, 80), (200, 30, 30))
    image.thumbnails = thumbnails_create(image_field=image.image, picture=picture, sizes=(128, 256, 512))
    assert list(image.thumbnails) == ["128"]
    with Image.open(image.image.storage.path(image.thumbnails["128"])) as thumb:
        assert thumb.size == (96, 128)
    assert image.thumbnail_url(512) == image.thumbnail_url(128) == settings.MEDIA_URL + image.thumbnails["128"]
