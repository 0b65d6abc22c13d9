"""Uploaded files as normalised images, or one 400 that names every bad file.

All files of a request are validated before anything is written, so a rejected request stores
nothing (no row, no file); writes then happen in one transaction inside
``files_removed_on_error`` (see catalog.services).
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from rest_framework import serializers

from catalog.cropping import picture_crop
from catalog.models import Product, ProductImage
from catalog.services import files_removed_on_error, product_create, product_image_add
from catalog.validators import NormalisedImage, client_file_name, normalise_image, search_photo_open


def normalise_uploads(files, *, field: str = "images") -> list[tuple[object, NormalisedImage]]:
    accepted, errors = [], {}
    for index, upload in enumerate(files):
        try:
            accepted.append((upload, normalise_image(upload)))
        except DjangoValidationError as exc:
            name = client_file_name(getattr(upload, "name", "")) or f"file {index + 1}"
            errors[str(index)] = [serializers.ErrorDetail(f"{name}: {message}", code=exc.code or "invalid")
                                  for message in exc.messages]
    if errors:
        raise serializers.ValidationError({field: errors})
    return accepted


def normalise_one(upload, *, field: str) -> NormalisedImage:
    return _field_checked(normalise_image, upload, field=field)


def search_photo_one(upload, *, field: str, box=None, box_field: str = "box"):
    """The picture to search by: the photo decoded within its own budget
    (catalog.validators.search_photo_open), then, given a box (catalog.cropping.SearchBox), the part
    of it inside the box (catalog.cropping.picture_crop). A refusal is the API's 400 for ``field``
    (the photo) or ``box_field`` (a box too small for this photo)."""
    picture = _field_checked(lambda data: search_photo_open(data, box=box), upload, field=field)
    return _field_checked(lambda whole: picture_crop(whole, box=box), picture, field=box_field)


def _field_checked(check, upload, *, field: str):
    # The validators' messages and codes, as the API's 400 for ``field``.
    try:
        return check(upload)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(
            {field: [serializers.ErrorDetail(m, code=exc.code or "invalid") for m in exc.messages]})


def _attach(product, accepted) -> list[ProductImage]:
    return [product_image_add(product=product, normalised=normalised, original_name=getattr(upload, "name", ""))
            for upload, normalised in accepted]


def images_attach(*, product: Product, accepted) -> list[ProductImage]:
    """Attach already-normalised uploads to a product, all or nothing."""
    with files_removed_on_error(), transaction.atomic():
        return _attach(product, accepted)


def product_create_with_images(*, accepted, **fields) -> Product:
    """catalog.services.product_create with already-normalised uploads, all or nothing."""
    with files_removed_on_error(), transaction.atomic():
        product = product_create(**fields)  # writes no file itself (no uploads)
        _attach(product, accepted)
    return product
