"""WebP thumbnails, made once by the worker at ingestion (never in a page request)."""

import io
from pathlib import PurePosixPath

from django.core.files.base import ContentFile
from PIL import Image


def thumbnails_create(*, image_field, picture: Image.Image, sizes) -> dict[str, str]:
    """Write one WebP per size (longest side) next to the original; return {size: storage name}.

    Names are derived from the original's generated name, so a second run overwrites the same
    files instead of adding new ones (idempotent)."""
    storage = image_field.storage
    stem = PurePosixPath(image_field.name).stem
    out = {}
    for size in sizes:
        thumb = picture.convert("RGB") if picture.mode not in ("RGB", "L") else picture.copy()
        # Upscale tiny sources (28x28 Fashion-MNIST) with nearest neighbour so they stay crisp.
        scale = size / max(thumb.size)
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
        thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))), resample)
        buffer = io.BytesIO()
        thumb.save(buffer, "WEBP", quality=82, method=4)
        name = f"thumbs/{size}/{stem[:2]}/{stem}.webp"
        if storage.exists(name):
            storage.delete(name)
        out[str(size)] = storage.save(name, ContentFile(buffer.getvalue()))
    return out
