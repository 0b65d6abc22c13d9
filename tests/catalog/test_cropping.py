"""catalog/cropping.py, the box of search by photo: read from the API's text and the page's fields,
checked with clear messages and codes, and cut out of the decoded picture; and the photo decoded
with the box in mind (catalog.validators.search_photo_open: less reduced, within bounds)."""

import io

import pytest
from django.core.exceptions import ValidationError
from PIL import Image

from catalog import validators
from catalog.cropping import SearchBox, box_from_fields, box_parse, picture_crop
from tests.catalog.test_validators import SEARCH_CPU_SECONDS, SEARCH_PEAK_MIB, encode, peak_memory, solid


def refused(call, code) -> str:
    with pytest.raises(ValidationError) as info:
        call()
    assert info.value.code == code, info.value.messages
    return info.value.messages[0]


def two_colours(size=(64, 32), left=(200, 30, 30), right=(30, 30, 200)) -> Image.Image:
    picture = Image.new("RGB", size, right)
    picture.paste(Image.new("RGB", (size[0] // 2, size[1]), left), (0, 0))
    return picture


def test_a_box_is_four_fractions_of_the_photo():
    assert box_parse("0.25,0.1,0.5,0.6") == SearchBox(x=0.25, y=0.1, width=0.5, height=0.6)
    assert box_parse(" 0.5 , 0 , 0.5 , 1 ").as_dict() == {"x": 0.5, "y": 0.0, "width": 0.5, "height": 1.0}
    assert box_parse("") is None and box_parse("   ") is None
    assert box_from_fields({"x": None, "y": None, "width": None, "height": None}) is None
    assert box_from_fields({"x": 0, "y": 0, "width": 1, "height": 1}) == SearchBox(0, 0, 1, 1)
    # A browser's x + width a hair past 1 is clipped to the edge, not refused.
    box = box_parse("0.3333,0,0.66670000001,1")
    assert box.x + box.width == 1 and box.pixels((300, 100)) == (100, 0, 300, 100)


@pytest.mark.parametrize("text,code,message", [
    ("0.1,0.2,0.3", "box_invalid", "The box must be four numbers separated by commas, x,y,width,height"),
    ("left,top,1,1", "box_invalid", "got 'left,top,1,1'"),
    ("nan,0,0.5,0.5", "box_invalid", "The box's x must be numbers from 0 to 1."),
    ("0,0,inf,0.5", "box_invalid", "The box's width must be numbers from 0 to 1."),
    ("0.6,0,0.5,1", "box_outside", "its right edge (x + width) is at 1.1 of the photo; it must be at most 1."),
    ("0,0.7,0.5,0.4", "box_outside", "its bottom edge (y + height) is at 1.1 of the photo"),
    ("-0.1,0,0.5,0.5", "box_outside", "The box goes outside the photo: its x is -0.1"),
    ("0,0,1.5,1", "box_outside", "its width is 1.5"),
    ("0,0,0,0.5", "box_empty", "The box has no area: its width is 0."),
    ("0,0,0.01,0.02", "box_too_small", "its width is 1% and its height is 2% of the photo; each side must be at "
                                       "least 5%."),
])
def test_bad_boxes_are_refused_with_what_is_wrong(text, code, message):
    assert message in refused(lambda: box_parse(text), code)


def test_the_pages_box_is_all_four_fields_or_none():
    message = refused(lambda: box_from_fields({"x": 0.1, "y": 0.1, "width": None, "height": None}), "box_partial")
    assert message == ("Give all four of the box's values (x, y, width and height) or none: width and height "
                       "are missing.")
    assert "y is missing" in refused(lambda: box_from_fields({"x": 0, "width": 1, "height": 1}), "box_partial")


def test_the_crop_is_the_boxs_part_of_the_picture():
    picture = two_colours()
    assert picture_crop(picture, box=None) is picture
    left = picture_crop(picture, box=box_parse("0,0,0.5,1"))
    assert left.size == (32, 32) and left.getcolors() == [(32 * 32, (200, 30, 30))]
    right = picture_crop(picture, box=box_parse("0.5,0.25,0.5,0.5"))
    assert right.size == (32, 16) and right.getcolors() == [(32 * 16, (30, 30, 200))]
    # Past the fraction check, a box must still hold pixels enough of this picture.
    message = refused(lambda: picture_crop(Image.new("L", (28, 28)), box=box_parse("0,0,0.2,0.5")), "box_too_small")
    assert message == ("The box is too small for this photo: it covers 6x14 pixels of its 28x28; it must cover "
                       "at least 8x8.")


def test_a_boxed_photo_is_decoded_less_reduced_so_the_box_keeps_its_detail():
    side = validators.search_photo_side()
    box = box_parse("0.5,0.5,0.25,0.25")
    data = encode(two_colours((3000, 2000)), "PNG")
    whole = validators.search_photo_open(io.BytesIO(data))
    boxed = validators.search_photo_open(io.BytesIO(data), box=box)
    assert whole.size == (300, 200)  # no box: as it always was
    assert boxed.size[0] / boxed.size[1] == pytest.approx(1.5, rel=0.01)
    assert min(picture_crop(boxed, box=box).size) > 2 * min(picture_crop(whole, box=box).size)
    assert boxed.width * boxed.height <= (validators.BOX_DETAIL_SIDES * side) ** 2  # bounded
    # A JPEG is drafted for the box: a 6300x6300 photo at 1/8 (788 px) keeps the box at 197 px.
    jpeg = validators.search_photo_open(io.BytesIO(solid((6300, 6300), "JPEG")), box=box_parse("0,0,0.5,0.5"))
    assert min(picture_crop(jpeg, box=box_parse("0,0,0.5,0.5")).size) >= side


@pytest.mark.parametrize("size,fmt,mode,kw", [
    ((4096, 3072), "PNG", "RGBA", {}), ((6300, 6300), "JPEG", "RGB", {}),
    ((4096, 3072), "JPEG", "RGB", {"progressive": True}),
])
def test_a_boxed_photo_stays_within_search_by_photos_memory_and_cpu(size, fmt, mode, kw):
    box = box_parse("0.4,0.4,0.05,0.05")  # the smallest box asks for the most detail
    data = solid(size, fmt, mode, **kw)
    validators.search_photo_open(io.BytesIO(solid((64, 64), fmt, mode, **kw)), box=box)  # lazy imports
    picture, peak, cpu = peak_memory(lambda: validators.search_photo_open(io.BytesIO(data), box=box))
    assert peak < SEARCH_PEAK_MIB and cpu < SEARCH_CPU_SECONDS, f"{fmt} {mode}: {peak:.0f} MiB, {cpu:.2f} s"
    assert picture.width * picture.height <= (validators.BOX_DETAIL_SIDES * validators.search_photo_side()) ** 2
    assert min(picture_crop(picture, box=box).size) >= 8
