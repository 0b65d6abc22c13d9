import io

import pytest
from django.core.exceptions import ValidationError
from PIL import Image

from catalog.validators import normalise_image
from tests.factories import png_bytes


def encode(image, fmt, **kw):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def rejected(data, code, **kw):
    with pytest.raises(ValidationError) as info:
        normalise_image(io.BytesIO(data), **kw)
    assert info.value.code == code, info.value.messages
    return info.value.messages[0]


def test_empty_file():
    assert "empty" in rejected(b"", "empty", max_bytes=1000, max_pixels=10**6)


def test_too_large_file():
    assert "too large" in rejected(png_bytes((64, 64)), "too_large", max_bytes=10, max_pixels=10**6)


@pytest.mark.parametrize("data", [
    b"<svg xmlns='http://www.w3.org/2000/svg'></svg>",
    b"<!doctype html><html><script>alert(1)</script></html>",
    b"just text",
])
def test_not_images(data):
    assert "not an image" in rejected(data, "not_an_image", max_bytes=10**6, max_pixels=10**6)


def test_png_header_followed_by_html():
    with pytest.raises(ValidationError) as info:
        normalise_image(io.BytesIO(b"\x89PNG\r\n\x1a\n<html><body>hi</body></html>"),
                        max_bytes=10**6, max_pixels=10**6)
    assert info.value.code in ("not_an_image", "corrupt")


def test_truncated_jpeg():
    data = encode(Image.new("RGB", (64, 64), "red"), "JPEG")
    message = rejected(data[: len(data) // 2], "corrupt", max_bytes=10**6, max_pixels=10**6)
    assert "damaged or truncated" in message


def test_decompression_bomb_is_rejected_before_decoding():
    # A tiny PNG that declares 20000x20000 pixels.
    data = encode(Image.new("1", (20000, 20000)), "PNG", optimize=True)
    assert len(data) < 200_000
    assert "too large" in rejected(data, "too_many_pixels", max_bytes=10**6, max_pixels=10**6)


@pytest.mark.parametrize("mode,fmt,expected", [
    ("CMYK", "JPEG", "JPEG"), ("RGBA", "PNG", "PNG"), ("P", "PNG", "PNG"), ("I;16", "PNG", "PNG"),
    ("LA", "PNG", "PNG"), ("RGB", "WEBP", "PNG"), ("RGB", "BMP", "PNG"), ("L", "TIFF", "PNG"),
])
def test_modes_are_normalised(mode, fmt, expected):
    source = Image.new(mode, (20, 10))
    result = normalise_image(io.BytesIO(encode(source, fmt)), max_bytes=10**6, max_pixels=10**6)
    assert result.format == expected
    assert (result.width, result.height) == (20, 10)
    assert Image.open(io.BytesIO(result.content)).mode in ("L", "RGB")


def test_png_renamed_jpg_is_stored_by_content():
    result = normalise_image(io.BytesIO(png_bytes()), max_bytes=10**6, max_pixels=10**6)
    assert result.format == "PNG"


def test_multi_frame_gif_keeps_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    result = normalise_image(io.BytesIO(buffer.getvalue()), max_bytes=10**6, max_pixels=10**6)
    assert Image.open(io.BytesIO(result.content)).convert("RGB").getpixel((0, 0))[0] > 200


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    data = encode(image, "JPEG", exif=exif.tobytes())
    result = normalise_image(io.BytesIO(data), max_bytes=10**6, max_pixels=10**6)
    assert (result.width, result.height) == (20, 40)
