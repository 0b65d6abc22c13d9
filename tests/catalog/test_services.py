"""catalog.services: how a picture is described on its row (one way for the admin and the API), and
how a category gets its slug."""

import io

import pytest

from catalog.models import ProductImage
from catalog.services import product_image_describe
from catalog.validators import client_file_name, normalise_image
from tests.factories import png_bytes


def test_a_picture_is_described_from_its_normalised_file():
    normalised = normalise_image(io.BytesIO(png_bytes(size=(48, 40))))
    image = ProductImage()
    content = product_image_describe(image=image, normalised=normalised, original_name="C:\\shots\\boot\x07.png")
    assert (image.width, image.height, image.image_format) == (48, 40, "PNG")
    assert image.content_hash == normalised.sha256 and len(image.content_hash) == 64
    assert image.original_name == "boot.png"  # no path, no control characters
    assert content.name == "upload.png" and content.read() == normalised.content


def test_client_file_names_are_labels_only():
    assert client_file_name("../../etc/passwd") == "passwd"
    assert client_file_name("a/b\\c\x00d.jpg") == "cd.jpg"
    assert client_file_name("x" * 300 + ".png") == "x" * 255
    assert client_file_name("") == ""


@pytest.mark.django_db
def test_a_category_name_whose_slug_grows_past_the_column_still_gets_one():
    """slugify's NFKD may lengthen a name (each "ﬃ" becomes "ffi"): 120 characters, 360 of slug."""
    from catalog.services import category_get_or_create

    first = category_get_or_create(name="ﬃ" * 120)
    second = category_get_or_create(name="ﬃ" * 119 + "i")
    assert len(first.slug) <= 140 and second.slug == first.slug + "-2"
