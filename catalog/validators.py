"""Upload validation and normalisation: every image enters the catalog through :func:`normalise_image`.

An upload is either accepted whole (decoded, normalised, re-encoded under a generated name) or
rejected with a message a person can act on. Nothing the client sent is stored as-is, so an
"image" that is really HTML or SVG can never be served back.
"""

import hashlib
import io
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

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


def normalise_image(upload, *, max_bytes=None, max_pixels=None) -> NormalisedImage:
    """Validate an uploaded file and return it re-encoded; raise ValidationError otherwise."""
    max_bytes = max_bytes or settings.MAX_UPLOAD_BYTES
    max_pixels = max_pixels or settings.MAX_IMAGE_PIXELS
    size = getattr(upload, "size", None)
    if size is not None and size > max_bytes:
        raise ValidationError(
            f"The file is too large ({size:,} bytes); the limit is {max_bytes:,} bytes.", code="too_large")
    data = _read_all(upload)
    if not data:
        raise ValidationError("The file is empty.", code="empty")
    if len(data) > max_bytes:
        raise ValidationError(
            f"The file is too large ({len(data):,} bytes); the limit is {max_bytes:,} bytes.", code="too_large")
    try:
        # Image.open only reads the header: the declared size is checked before any pixel is decoded.
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
            width, height = probe.size
            if fmt not in ACCEPTED_FORMATS:
                raise ValidationError(
                    f"Unsupported image format {fmt}; use JPEG, PNG, WebP, GIF, BMP or TIFF.",
                    code="unsupported_format")
            if width * height > max_pixels:
                raise ValidationError(
                    f"The image is too large ({width}x{height} = {width * height:,} pixels); "
                    f"the limit is {max_pixels:,} pixels.", code="too_many_pixels")
            decoded = _decode_first_frame(probe)
    except ValidationError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        if isinstance(exc, Image.DecompressionBombError):
            raise ValidationError(f"The image is too large (it declares far more than {max_pixels:,} "
                                  "pixels, the limit); it was not decoded.", code="too_many_pixels")
        raise ValidationError("The file is not an image (or not one we can read: use JPEG, PNG, "
                              "WebP, GIF, BMP or TIFF).", code="not_an_image")
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValidationError(f"The image is damaged or truncated and cannot be decoded ({exc}).",
                              code="corrupt")

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
