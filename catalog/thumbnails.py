"""WebP thumbnails, made once by the worker at ingestion (never in a page request)."""

import io
from pathlib import PurePosixPath

from django.core.files.base import ContentFile
from PIL import Image


# libwebp's effort (0-6). Measured on 2 cores for 60x80 photos: method 4 took 4-20 ms per
# thumbnail (a 512 px one ~20 ms), method 2 about a quarter of that, for files ~5% larger.
WEBP_METHOD = 2


def thumbnail_sizes(*, source: tuple[int, int], sizes) -> list[int]:
    """The sizes worth making for a source picture: every size up to the first one that covers its
    longest side. Larger ones would only be upscales of that one (a 60x80 photo made 128, 256 and
    512 px copies, 3x the encoding work of ingesting it); ``ProductImage.thumbnail_url`` serves
    the largest one made for them."""
    longest, wanted = max(source), []
    for size in sorted(sizes):
        wanted.append(size)
        if size >= longest:
            break
    return wanted


def thumbnails_create(*, image_field, picture: Image.Image, sizes) -> dict[str, str]:
    """Write one WebP per size (longest side) next to the original; return {size: storage name}.

    Names are derived from the original's generated name, so a second run overwrites the same
    files instead of adding new ones (idempotent)."""
    storage = image_field.storage
    stem = PurePosixPath(image_field.name).stem
    out = {}
    for size in thumbnail_sizes(source=picture.size, sizes=sizes):
        thumb = picture.convert("RGB") if picture.mode not in ("RGB", "L") else picture.copy()
        # Upscale tiny sources (28x28 Fashion-MNIST) with nearest neighbour so they stay crisp.
        scale = size / max(thumb.size)
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
        thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))), resample)
        buffer = io.BytesIO()
        thumb.save(buffer, "WEBP", quality=82, method=WEBP_METHOD)
        name = f"thumbs/{size}/{stem[:2]}/{stem}.webp"
        if storage.exists(name):
            storage.delete(name)
        out[str(size)] = storage.save(name, ContentFile(buffer.getvalue()))
    return out
