"""A box on a photo to search by: the part of the picture the shopper wants matched.

Contract:

- A box is four fractions of the photo as the shopper sees it (EXIF rotation applied): ``x`` and
  ``y``, its top-left corner, then its ``width`` and ``height``, each from 0 to 1, with
  ``x + width <= 1`` and ``y + height <= 1``. Fractions do not depend on the size the server
  decodes the photo to (catalog.validators.search_photo_open reduces it) nor on the size a browser
  shows it at. ``0.5,0,0.5,1`` is the right half.
- :func:`box_parse` reads the API's ``box`` field ("x,y,width,height"); :func:`box_from_fields` the
  page's four fields (all four or none); :func:`box_from_values` checks the numbers for both.
  Every refusal is a ValidationError whose code says what was wrong: ``box_invalid`` (not four
  numbers), ``box_partial`` (some of the page's fields only), ``box_outside`` (a corner outside the
  photo), ``box_empty`` (no area), ``box_too_small`` (a side under :data:`MIN_BOX_SIDE` of the
  photo's, or, once decoded, under :data:`MIN_BOX_PIXELS` pixels).
- :func:`picture_crop` is the one crop of the page and the API: the decoded picture's pixels inside
  the box. It copies at most the decoded (already reduced) picture, so its cost is bounded by
  search by photo's own budget.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from django.core.exceptions import ValidationError
from PIL import Image

# A box narrower than this share of the photo is almost surely a stray click or tap, and leaves the
# backbone a handful of pixels to look at.
MIN_BOX_SIDE = 0.05
# Fewer pixels than this on a side are too little for any backbone (a 28x28 photo boxed in half
# still passes: 14 px).
MIN_BOX_PIXELS = 8
# Values a browser computes (a + b) may land a hair past the edge; clipped, not refused.
SLACK = 1e-6
FIELDS = ("x", "y", "width", "height")
EXAMPLE = "0.25,0.1,0.5,0.6"


@dataclass(frozen=True)
class SearchBox:
    x: float
    y: float
    width: float
    height: float

    @property
    def shorter_side(self) -> float:
        """The smaller of the box's width and height, as a fraction of the photo's side."""
        return min(self.width, self.height)

    def as_dict(self) -> dict:
        return asdict(self)

    def pixels(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in a picture of ``size``: edges rounded to the nearest pixel."""
        width, height = size
        left, top = round(self.x * width), round(self.y * height)
        right = min(width, round((self.x + self.width) * width))
        bottom = min(height, round((self.y + self.height) * height))
        return left, top, right, bottom


def _percent(value: float) -> str:
    return f"{value * 100:.3g}%"


def box_from_values(*, x: float, y: float, width: float, height: float) -> SearchBox:
    """The box of four fractions, checked (see the module's contract); raises ValidationError."""
    values = {"x": x, "y": y, "width": width, "height": height}
    bad = [name for name, value in values.items() if not isinstance(value, (int, float)) or not math.isfinite(value)]
    if bad:
        raise ValidationError(f"The box's {' and '.join(bad)} must be numbers from 0 to 1.", code="box_invalid")
    for name, value in values.items():
        if not 0 <= value <= 1:
            raise ValidationError(
                f"The box goes outside the photo: its {name} is {value:g}; each value is a fraction of the photo, "
                "from 0 to 1.", code="box_outside")
    for start, size, edge in (("x", "width", "right"), ("y", "height", "bottom")):
        end = values[start] + values[size]
        if end > 1 + SLACK:
            raise ValidationError(
                f"The box goes outside the photo: its {edge} edge ({start} + {size}) is at {end:g} of the photo; "
                "it must be at most 1.", code="box_outside")
        values[size] = min(values[size], 1 - values[start])
    empty = [name for name in ("width", "height") if values[name] == 0]
    if empty:
        raise ValidationError(f"The box has no area: its {' and '.join(empty)} is 0.", code="box_empty")
    small = [f"{name} is {_percent(values[name])}" for name in ("width", "height") if values[name] < MIN_BOX_SIDE]
    if small:
        raise ValidationError(
            f"The box is too small: its {' and its '.join(small)} of the photo; each side must be at least "
            f"{_percent(MIN_BOX_SIDE)}.", code="box_too_small")
    return SearchBox(**values)


def box_parse(text: str) -> SearchBox | None:
    """The API's ``box`` field: "x,y,width,height" as fractions (spaces allowed); None when blank."""
    text = (text or "").strip()
    if not text:
        return None
    parts = [part.strip() for part in text.split(",")]
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        numbers = None
    if numbers is None or len(numbers) != 4:
        raise ValidationError(
            f"The box must be four numbers separated by commas, x,y,width,height as fractions of the photo from "
            f"0 to 1 (for example {EXAMPLE}); got {text[:60]!r}.", code="box_invalid")
    return box_from_values(**dict(zip(FIELDS, numbers)))


def box_from_fields(values: dict) -> SearchBox | None:
    """The page's four fields (``{"x": ..., ...}``, None where empty): all four, or none (None)."""
    given = [name for name in FIELDS if values.get(name) is not None]
    if not given:
        return None
    if len(given) < len(FIELDS):
        missing = [name for name in FIELDS if name not in given]
        raise ValidationError(
            f"Give all four of the box's values (x, y, width and height) or none: {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing.", code="box_partial")
    return box_from_values(**{name: values[name] for name in FIELDS})


def picture_crop(picture: Image.Image, *, box: SearchBox | None) -> Image.Image:
    """The part of ``picture`` (a decoded photo, EXIF rotation applied) inside ``box``; the picture
    itself when there is no box. Raises ValidationError ``box_too_small`` when the box covers fewer
    than :data:`MIN_BOX_PIXELS` pixels on a side of this picture."""
    if box is None:
        return picture
    left, top, right, bottom = box.pixels(picture.size)
    if min(right - left, bottom - top) < MIN_BOX_PIXELS:
        raise ValidationError(
            f"The box is too small for this photo: it covers {right - left}x{bottom - top} pixels of its "
            f"{picture.width}x{picture.height}; it must cover at least {MIN_BOX_PIXELS}x{MIN_BOX_PIXELS}.",
            code="box_too_small")
    return picture.crop((left, top, right, bottom))
