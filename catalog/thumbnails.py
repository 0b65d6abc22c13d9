"""WebP thumbnails, made once by the worker at ingestion (never in a page request).

Contract with the worker (recommender.services.ingestion): each claim of an image writes names of
its own (``claim``: the attempt number the claim counted), so two workers holding the same image
(a redelivered task, a stale claim taken over) never overwrite or delete each other's files; the
worker records the names only while its claim still holds and deletes them otherwise. A call that
fails part-way (a full disk) deletes what it wrote before raising: nothing is left behind.
"""

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


def _name(*, image_field, size: int, claim: int | None) -> str:
    stem = PurePosixPath(image_field.name).stem
    return f"thumbs/{size}/{stem[:2]}/{stem}{'' if claim is None else f'-c{claim}'}.webp"


def thumbnail_names(*, image_field, source: tuple[int, int], sizes, claim: int | None = None) -> list[str]:
    """The names :func:`thumbnails_create` writes for a source picture of this size under ``claim``."""
    return [_name(image_field=image_field, size=s, claim=claim) for s in thumbnail_sizes(source=source, sizes=sizes)]


def thumbnails_delete(*, storage, names) -> None:
    for name in names:
        storage.delete(name)  # a name that is not there is not an error (FileSystemStorage, S3...)


def _webp(picture: Image.Image, size: int) -> bytes:
    thumb = picture.convert("RGB") if picture.mode not in ("RGB", "L") else picture.copy()
    # Upscale tiny sources (28x28 Fashion-MNIST) with nearest neighbour so they stay crisp.
    scale = size / max(thumb.size)
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))), resample)
    buffer = io.BytesIO()
    thumb.save(buffer, "WEBP", quality=82, method=WEBP_METHOD)
    return buffer.getvalue()


def thumbnails_create(*, image_field, picture: Image.Image, sizes, claim: int | None = None) -> dict[str, str]:
    """Write one WebP per size (longest side) next to the original; return {size: storage name}.

    Names are derived from the original's generated name and ``claim``, so the same claim run
    again overwrites its own files instead of adding new ones (idempotent). On any error (disk
    full, storage down) the files this call wrote are deleted and the error is raised."""
    storage = image_field.storage
    out: dict[str, str] = {}
    writing = None
    try:
        for size in thumbnail_sizes(source=picture.size, sizes=sizes):
            writing = _name(image_field=image_field, size=size, claim=claim)
            data = _webp(picture, size)
            if storage.exists(writing):
                storage.delete(writing)
            out[str(size)] = storage.save(writing, ContentFile(data))
            writing = None
    except BaseException:
        # The name being written is this claim's own (deleted above if it existed): a full disk
        # leaves a truncated file under it.
        thumbnails_delete(storage=storage, names=[*out.values(), *([writing] if writing else [])])
        raise
    return out
