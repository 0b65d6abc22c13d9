"""Writes to the catalog (HackSoft style: plain functions, keyword-only arguments).

Files are written to storage only inside a transaction, and removed again if that transaction
rolls back, so a rejected or failed request leaves neither a row nor a file behind.
"""

from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal

from django.core.files.base import ContentFile
from django.db import transaction
from django.utils.text import slugify

from catalog.models import Category, Product, ProductImage
from catalog.validators import NormalisedImage, client_file_name, normalise_image


def category_get_or_create(*, name: str) -> Category:
    name = " ".join(name.split())
    category = Category.objects.filter(name__iexact=name).first()
    if category:
        return category
    base = slugify(name) or "category"
    slug, n = base, 2
    while Category.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return Category.objects.create(name=name, slug=slug)


_written_files: ContextVar[list | None] = ContextVar("catalog_written_files", default=None)


@contextmanager
def files_removed_on_error():
    """Storage writes are not transactional: delete the files written inside this block when it
    raises. Use it *outside* ``transaction.atomic()`` so rows and files go together; nested, a
    block that succeeds hands its files to the enclosing one."""
    outer = _written_files.get()
    token = _written_files.set([])
    try:
        yield
    except BaseException:
        for storage, name in _written_files.get():
            storage.delete(name)
        raise
    else:
        if outer is not None:  # nested (a row inside an import's chunk): the chunk may still roll back
            outer.extend(_written_files.get())
    finally:
        _written_files.reset(token)


def _track_written(storage, name):
    written = _written_files.get()
    if written is not None:
        written.append((storage, name))


def product_image_describe(*, image: ProductImage, normalised: NormalisedImage, original_name: str) -> ContentFile:
    """Fill an image row's picture fields (hash, format, size, client's name) from its normalised
    file, and return the file to store, named by its format. The admin's inline form and
    :func:`product_image_add` describe every picture this one way."""
    image.content_hash = normalised.sha256
    image.image_format = normalised.format
    image.width, image.height = normalised.width, normalised.height
    image.original_name = client_file_name(original_name)
    return ContentFile(normalised.content, name=f"upload.{normalised.extension}")


def product_image_add(*, product: Product, upload=None, normalised: NormalisedImage | None = None,
                      position: int | None = None, original_name: str = "", known_new: bool = False) -> ProductImage:
    """Validate, normalise and attach an image. Returns the existing image if the same picture is
    already attached to the product (re-imports are idempotent). ``known_new``: the product was
    created in this transaction with distinct pictures (an importer's chunk): no lookup."""
    normalised = normalised or normalise_image(upload)
    if not known_new:
        existing = ProductImage.objects.filter(product=product, content_hash=normalised.sha256).first()
        if existing:
            return existing
    if position is None:
        last = product.images.order_by("-position").values_list("position", flat=True).first()
        position = 0 if last is None else last + 1
    image = ProductImage(product=product, position=position)
    content = product_image_describe(image=image, normalised=normalised,
                                     original_name=original_name or getattr(upload, "name", ""))
    image.image.save(content.name, content, save=False)
    _track_written(image.image.storage, image.image.name)
    try:
        image.save()
    except BaseException:
        image.image.storage.delete(image.image.name)
        raise
    return image


def product_image_delete(*, image: ProductImage) -> None:
    image.delete()  # catalog.signals removes the files after commit


def product_create(*, sku: str, title: str, category: Category, price=Decimal("0"), description: str = "",
                   is_active: bool = True, in_stock: bool = True, uploads=()) -> Product:
    """Create a product with its images, all or nothing."""
    with files_removed_on_error(), transaction.atomic():
        product = Product(sku=sku.strip(), title=title.strip(), category=category, price=price,
                          description=description, is_active=is_active, in_stock=in_stock)
        product.full_clean()
        product.save()
        for upload in uploads:
            product_image_add(product=product, upload=upload)
    return product


def product_update(*, product: Product, **fields) -> Product:
    for name, value in fields.items():
        setattr(product, name, value)
    product.full_clean()
    product.save()
    return product


def product_delete(*, product: Product) -> None:
    product.delete()  # images cascade; catalog.signals removes their files after commit
