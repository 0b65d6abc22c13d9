"""Upload validation and normalisation: every image enters the catalog through :func:`normalise_image`.

An upload is either accepted whole (decoded, normalised, re-encoded under a generated name) or
rejected with a message a person can act on. Nothing the client sent is stored as-is, so an
"image" that is really HTML or SVG can never be served back.

A photo to search by is never stored: :func:`search_photo_open` checks it the same way (same
messages and codes) and decodes it reduced toward the backbone's input, within a pixel budget of
its own (``SEARCH_MAX_IMAGE_PIXELS``), without re-encoding it. Its peak memory is the decoded
frame (at most 4 bytes a pixel) plus a few MiB, whatever the mode. Given the shopper's box
(catalog.cropping), it is reduced less, so that the box keeps the detail the backbone needs, but
never to more than (:data:`BOX_DETAIL_SIDES` x the usual shorter side) squared pixels.
"""

import hashlib
import io
import math
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from PIL import PngImagePlugin

# Pillow keeps a PNG's decompressed text chunks in memory, up to 64 MiB by default: a 63 KB PNG
# of 60 zTXt chunks cost 61 MiB before a pixel was decoded (measured). A product photo needs no
# more than a little metadata; past this it is refused as damaged.
PngImagePlugin.MAX_TEXT_MEMORY = 1 << 20

# Accepted decoders. SVG is not a raster format Pillow knows, so it is refused as "not an image".
ACCEPTED_FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"}


@dataclass(frozen=True)
class NormalisedImage:
    content: bytes
    format: str  # "PNG" or "JPEG"
    width: int
    height: int
    sha256: str

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "JPEG" else "png"


def client_file_name(name: str) -> str:
    """Keep the client's file name only as a label: no path, no control characters, bounded."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:255]


def _read_all(upload) -> bytes:
    if hasattr(upload, "seek"):
        upload.seek(0)
    data = upload.read() if hasattr(upload, "read") else bytes(upload)
    if hasattr(upload, "seek"):
        upload.seek(0)
    return data


def _too_large(size: int, max_bytes: int) -> ValidationError:
    return ValidationError(
        f"The file is too large ({size:,} bytes); the limit is {max_bytes:,} bytes.", code="too_large")


@contextmanager
def _decode_errors(max_pixels: int):
    """Pillow's errors while opening or decoding, as the ValidationError a person can act on."""
    try:
        yield
    except Image.DecompressionBombError:
        raise ValidationError(f"The image is too large (it declares far more than {max_pixels:,} "
                              "pixels, the limit); it was not decoded.", code="too_many_pixels")
    except UnidentifiedImageError:
        raise ValidationError("The file is not an image (or not one we can read: use JPEG, PNG, "
                              "WebP, GIF, BMP or TIFF).", code="not_an_image")
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValidationError(f"The image is damaged or truncated and cannot be decoded ({exc}).",
                              code="corrupt")


def _check_declared(probe: Image.Image, max_pixels: int) -> None:
    """The format and the declared size, read from the header before any pixel is decoded."""
    if probe.format not in ACCEPTED_FORMATS:
        raise ValidationError(
            f"Unsupported image format {probe.format}; use JPEG, PNG, WebP, GIF, BMP or TIFF.",
            code="unsupported_format")
    width, height = probe.size
    if width * height > max_pixels:
        raise ValidationError(
            f"The image is too large ({width}x{height} = {width * height:,} pixels); "
            f"the limit is {max_pixels:,} pixels.", code="too_many_pixels")


def normalise_image(upload, *, max_bytes=None, max_pixels=None) -> NormalisedImage:
    """Validate an uploaded file and return it re-encoded; raise ValidationError otherwise."""
    max_bytes = max_bytes or settings.MAX_UPLOAD_BYTES
    max_pixels = max_pixels or settings.MAX_IMAGE_PIXELS
    size = getattr(upload, "size", None)
    if size is not None and size > max_bytes:
        raise _too_large(size, max_bytes)
    data = _read_all(upload)
    if not data:
        raise ValidationError("The file is empty.", code="empty")
    if len(data) > max_bytes:
        raise _too_large(len(data), max_bytes)
    with _decode_errors(max_pixels):
        # Image.open only reads the header: the declared size is checked before any pixel is decoded.
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
            _check_declared(probe, max_pixels)
            decoded = _decode_first_frame(probe)

    out_format = "JPEG" if fmt == "JPEG" else "PNG"
    buffer = io.BytesIO()
    if out_format == "JPEG":
        decoded.save(buffer, "JPEG", quality=92, optimize=True)
    else:
        decoded.save(buffer, "PNG", optimize=True)
    content = buffer.getvalue()
    return NormalisedImage(content=content, format=out_format, width=decoded.width,
                           height=decoded.height, sha256=hashlib.sha256(content).hexdigest())


def _decode_first_frame(image: Image.Image) -> Image.Image:
    """Decode fully (truncated files fail here), apply EXIF rotation, and bring any mode
    (CMYK, 16-bit, RGBA, palette, multi-frame) to 8-bit L or RGB."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    image.seek(0)  # multi-frame GIF/TIFF: the first frame is the product photo
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping at 255.
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        image = Image.fromarray((array / top * 255.0).astype("uint8"), "L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    elif image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # CMYK, YCbCr, P, 1 ...
    return image.copy()


# --------------------------------------------------------------------------- search by photo

# The default of settings.SEARCH_MAX_IMAGE_PIXELS: 12 Mi pixels = 4096x3072, so every 12 Mpx phone
# frame fits (4032x3024; 4080x3072, the largest). A decoded RGB frame is then at most 48 MiB
# (Pillow keeps 4 bytes a pixel). Measured per request (tests/catalog/test_views.py): a 6300x6300
# PNG took 454 MiB and 2.7 s of CPU on the catalog's path (40 Mpx limit, re-encoded); on this one
# it is refused from its header, and a 4096x3072 PNG takes about 50 MiB.
SEARCH_MAX_IMAGE_PIXELS = 12 * 1024 * 1024
SEARCH_PREVIEW_SIZE = 192  # the longer side of the page's inline preview (catalog.views)
# Reduce to at least twice the backbone's input on the shorter side and let its own bilinear
# (antialiased) resize finish, as Pillow's reducing_gap=2: what it is fed differs from a resize of
# the full decode by 0.35 (PNG) and 0.77 (JPEG) of 255 on average at 224 px (a 2400x1800 textured
# picture, tests/catalog/test_validators.py).
REDUCING_GAP = 2
# Decoders that hold more than the frame are charged for it, in pixels of a 4-byte RGB frame:
# libwebp's animation decoder (Pillow's WebP reader) held the frame 4 times over (4096x3072: 192
# MiB, lossy and lossless); a progressive JPEG keeps every DCT coefficient of the full size (2
# bytes a sample) whatever the draft scale (4096x3072 drafted to 512x384: 37 MiB at 4:2:0, 73
# MiB at 4:4:4; baseline: 0.9 MiB).
WEBP_DECODE_FRAMES = 4
# With a box, the picture is decoded and reduced so that the box's shorter side reaches
# search_photo_side() where it can, but the picture never holds more than (this x that side)
# squared pixels (side 448: 3.2 Mpx, 12.8 MiB): a small box on a large photo costs a JPEG decoded
# at 1/2 or 1/4 instead of 1/8, never more than the budget.
BOX_DETAIL_SIDES = 4
_BAND_BYTES = 1024 * 1024  # source rows converted at a time, when the mode needs converting
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def search_photo_side() -> int:
    """The shorter side a photo to search by is decoded down to (never below): enough for the
    backbone (the configured input sizes, with the reducing gap) and for the page's preview."""
    from recommender.conf import config

    conf = config()
    return max(REDUCING_GAP * max(conf.input_size, conf.backbone_input_size), SEARCH_PREVIEW_SIZE)


def _upload_stream(upload, max_bytes: int):
    """The upload as a seekable stream at 0, after the size checks; its bytes are not copied."""
    size = getattr(upload, "size", None)
    if size is not None and size > max_bytes:
        raise _too_large(size, max_bytes)
    stream = upload if hasattr(upload, "read") else io.BytesIO(bytes(upload))
    stream.seek(0, io.SEEK_END)
    length = stream.tell()
    stream.seek(0)
    if not length:
        raise ValidationError("The file is empty.", code="empty")
    if length > max_bytes:
        raise _too_large(length, max_bytes)
    return stream


def _decode_cost(probe: Image.Image, declared: tuple[int, int]) -> int:
    """What decoding ``probe`` (a JPEG already drafted) holds, in pixels of a decoded frame."""
    width, height = declared
    if probe.format == "WEBP":
        return WEBP_DECODE_FRAMES * width * height
    cost = probe.width * probe.height
    if probe.format == "JPEG" and probe.info.get("progressive"):
        h_max, v_max = max(h for _, h, _, _ in probe.layer), max(v for _, _, v, _ in probe.layer)
        samples = sum(width * height * h * v // (h_max * v_max) for _, h, v, _ in probe.layer)
        cost += 2 * samples // 4
    return cost


def _over_budget(probe: Image.Image, declared: tuple[int, int], cost: int, budget: int) -> ValidationError:
    (width, height), example = declared, math.isqrt(budget * 4 // 3)
    limit = f"the limit is {budget:,} pixels ({example}x{example * 3 // 4})"
    if cost == width * height:
        return ValidationError(f"The image is too large for search by photo ({width}x{height} = "
                               f"{cost:,} pixels); {limit}. Please use a smaller photo.", code="too_many_pixels")
    kind = "WebP image" if probe.format == "WEBP" else "progressive JPEG"
    return ValidationError(
        f"The image is too large for search by photo: decoding this {kind} ({width}x{height}) takes the "
        f"memory of {cost:,} pixels; {limit}. Please use a smaller photo, or a plain JPEG or PNG.",
        code="too_many_pixels")


def search_photo_open(upload, *, max_bytes=None, max_pixels=None, budget=None, box=None) -> Image.Image:
    """Validate a photo to search by and decode it reduced: an L or RGB image whose shorter side
    is at least :func:`search_photo_side` (or the photo's own, when smaller), EXIF rotation
    applied. Raises ValidationError with :func:`normalise_image`'s messages and codes, and
    ``too_many_pixels`` past ``SEARCH_MAX_IMAGE_PIXELS`` pixels decoded. Nothing is re-encoded.

    A JPEG is decoded scaled by libjpeg (``draft``: 1/2, 1/4 or 1/8), so the budget counts the
    pixels it decodes to; other formats decode whole, then are reduced (box filter). Decoders
    that hold more than the frame are charged for it (:data:`WEBP_DECODE_FRAMES`, progressive
    JPEG), so the peak memory is at most 4 bytes x the budget plus a few MiB.

    ``box`` (a catalog.cropping.SearchBox, or None): the part the shopper will search by. The
    whole picture is returned (the page shows it), reduced less: see :func:`_box_reach`. Crop it
    with catalog.cropping.picture_crop."""
    max_bytes = max_bytes or settings.MAX_UPLOAD_BYTES
    max_pixels = max_pixels or settings.MAX_IMAGE_PIXELS
    budget = budget or getattr(settings, "SEARCH_MAX_IMAGE_PIXELS", SEARCH_MAX_IMAGE_PIXELS)
    stream = _upload_stream(upload, max_bytes)
    side = search_photo_side()
    with _decode_errors(max_pixels):
        # Not closed here: the stream is the caller's upload; the decoded pixels are ours.
        probe = Image.open(stream)
        _check_declared(probe, max_pixels)
        declared = probe.size
        wanted, most = _box_reach(side, box)
        if probe.format == "JPEG":
            probe.draft(probe.mode, _draft_request(declared, wanted, most))  # keeps both sides >= the request
        cost = _decode_cost(probe, declared)
        if cost > budget:
            raise _over_budget(probe, declared, cost, budget)
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        probe.seek(0)  # multi-frame GIF/TIFF/WebP: the first frame is the photo
        probe.load()
        orientation = probe.getexif().get(0x0112)
        picture = _reduced(probe, factor=_reduce_factor(probe.size, wanted, most))
    if orientation in _ORIENTATION:
        picture = picture.transpose(_ORIENTATION[orientation])
    return picture


def _box_reach(side: int, box) -> tuple[int, int | None]:
    """(the shorter side the whole picture should keep, the most pixels it may hold). Without a
    box: ``side``, no cap (the reduction as it always was). With one: enough for the box's shorter
    side to keep ``side``, within (BOX_DETAIL_SIDES x side) squared pixels."""
    if box is None:
        return side, None
    return math.ceil(side / box.shorter_side), (BOX_DETAIL_SIDES * side) ** 2


def _draft_request(declared: tuple[int, int], wanted: int, most: int | None) -> tuple[int, int]:
    """The size to ask libjpeg's draft for: ``wanted`` on both sides, unless the scale that gives
    decodes more than ``most`` pixels; then the scale (1, 2, 4, 8) that keeps within it."""
    width, height = declared
    if most is None:
        return wanted, wanted
    scale = next(s for s in (8, 4, 2, 1) if min(width // wanted, height // wanted) >= s or s == 1)
    while scale < 8 and -(-width // scale) * -(-height // scale) > most:
        scale *= 2
    return max(1, width // scale), max(1, height // scale)


def _reduce_factor(size: tuple[int, int], wanted: int, most: int | None) -> int:
    factor = max(1, min(size) // wanted)
    while most is not None and -(-size[0] // factor) * -(-size[1] // factor) > most:
        factor += 1
    return factor


def _reduced(image: Image.Image, *, factor: int) -> Image.Image:
    """``image`` reduced ``factor`` times (box filter) as 8-bit L or RGB. A mode that needs
    converting (alpha, palette, 16-bit, CMYK...) is converted a band of rows at a time, so no
    full-size copy is ever made beside the decoded frame."""
    if image.mode in ("L", "RGB"):
        return image.reduce(factor) if factor > 1 else image
    top = None
    if image.mode.startswith("I"):  # 16/32-bit grayscale: scaled to 8 bits, not clipped at 255
        top = image.getextrema()[1] or 1
    out_mode = "L" if image.mode in ("1", "L", "I", "F") or image.mode.startswith("I;16") else "RGB"
    out = Image.new(out_mode, (-(-image.width // factor), -(-image.height // factor)))
    rows = max(1, _BAND_BYTES // (4 * image.width * factor)) * factor  # whole blocks of factor rows
    for y in range(0, image.height, rows):
        band = _l_or_rgb(image.crop((0, y, image.width, min(y + rows, image.height))), top=top)
        out.paste(band.reduce(factor) if factor > 1 else band, (0, y // factor))
    return out


def _l_or_rgb(band: Image.Image, *, top) -> Image.Image:
    """One band in L or RGB: transparency flattened onto white, as :func:`_decode_first_frame`."""
    if top is not None:
        return band.convert("I").point(lambda v: v * 255.0 / top).convert("L")
    if band.mode in ("1", "F"):
        return band.convert("L")
    if band.mode in ("RGBA", "LA", "PA") or (band.mode == "P" and "transparency" in band.info):
        rgba = band.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return band.convert("RGB")  # CMYK, YCbCr, P ...
