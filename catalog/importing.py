"""The shop catalog format: a CSV (sku, title, category, images, optional price and description)
plus a set of image files. Shared by ``manage.py import_catalog`` and the admin's bulk upload.

Parsing validates every row (fields, numbers, duplicates, image files, image content) before
anything is written; importing writes the good rows, IMPORT_CHUNK rows per transaction.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.db import transaction

from catalog.models import Product
from catalog.services import category_get_or_create, files_removed_on_error, product_image_add
from catalog.validators import NormalisedImage, normalise_image

REQUIRED_COLUMNS = ("sku", "title", "category", "images")
OPTIONAL_COLUMNS = ("price", "description")
IMAGE_SEPARATORS = re.compile(r"[;|]")


class CatalogFormatError(ValueError):
    """The file as a whole cannot be read (not a CSV, missing columns)."""


@dataclass
class CatalogRow:
    line: int
    sku: str
    title: str
    category: str
    price: Decimal
    description: str
    images: list[tuple[str, NormalisedImage]] = field(default_factory=list)


@dataclass
class RowError:
    line: int
    sku: str
    message: str

    def __str__(self):
        return f"line {self.line}" + (f" ({self.sku})" if self.sku else "") + f": {self.message}"


@dataclass
class ParseResult:
    rows: list[CatalogRow]
    errors: list[RowError]


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise CatalogFormatError("The CSV is neither UTF-8 nor Windows-1252 text.")


def catalog_parse(*, csv_bytes: bytes, open_image, max_rows: int = 100_000, progress=None) -> ParseResult:
    """Validate a catalog CSV. ``open_image(name)`` returns the bytes of an image named in the CSV
    or raises ``FileNotFoundError``/``ValueError`` (unknown or unsafe path)."""
    if b"\x00" in csv_bytes[:4096]:
        raise CatalogFormatError("The CSV file is binary, not text.")
    reader = csv.DictReader(io.StringIO(_decode(csv_bytes), newline=""))
    header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CatalogFormatError(f"The CSV is missing the column(s): {', '.join(missing)}. "
                                 f"Expected: {', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}.")
    reader.fieldnames = header
    rows, errors, seen = [], [], {}
    for number, raw in enumerate(reader, start=2):  # line 1 is the header
        if number - 1 > max_rows:
            errors.append(RowError(number, "", f"more than {max_rows} rows; the rest was not read"))
            break
        if progress:
            progress(1)
        values = {k: (v or "").strip() for k, v in raw.items() if k}
        sku = values.get("sku", "")
        problems = []
        for column in ("sku", "title", "category"):
            if not values.get(column):
                problems.append(f"{column} is empty")
        if len(sku) > 64:
            problems.append("sku is longer than 64 characters")
        if sku and sku in seen:
            problems.append(f"duplicate sku (first on line {seen[sku]})")
        price = Decimal("0")
        if values.get("price"):
            try:
                price = Decimal(values["price"].replace(",", ""))
                if not price.is_finite() or price < 0 or price >= Decimal("1e8"):
                    raise InvalidOperation
                price = price.quantize(Decimal("0.01"))
            except InvalidOperation:
                problems.append(f"price {values['price']!r} is not a non-negative number")
        names = [n.strip() for n in IMAGE_SEPARATORS.split(values.get("images", "")) if n.strip()]
        if not names:
            problems.append("no image given")
        images = []
        for name in names:
            try:
                images.append((name, normalise_image(io.BytesIO(open_image(name)))))
            except FileNotFoundError:
                problems.append(f"image {name!r} not found")
            except ValueError as exc:
                problems.append(f"image {name!r}: {exc}")
            except ValidationError as exc:
                problems.append(f"image {name!r}: {' '.join(exc.messages)}")
        if sku and sku not in seen:
            seen[sku] = number
        if problems:
            errors.append(RowError(number, sku, "; ".join(problems)))
            continue
        rows.append(CatalogRow(line=number, sku=sku, title=values["title"][:200], category=values["category"][:120],
                               price=price, description=values.get("description", ""), images=images))
    return ParseResult(rows=rows, errors=errors)


@dataclass
class ImportSummary:
    created: int = 0
    updated: int = 0
    images_added: int = 0


# Rows written per transaction. One transaction per row cost ~11 queries and a commit per row
# (30-58 rows/s for 60x80 photos on 2 cores, a worker task per row); a chunk is one commit, one
# lookup of its existing SKUs and one batch of images for the workers (catalog -> recommender
# signal, sent on commit). A failure rolls back its chunk only, files included; re-running the
# import finishes the job (existing SKUs are updated, not duplicated).
IMPORT_CHUNK = 200


def catalog_import(*, rows, progress=None, chunk: int = IMPORT_CHUNK) -> ImportSummary:
    """Write validated rows; an existing SKU is updated and gets only the images it lacks."""
    summary = ImportSummary()
    categories = {}
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        with files_removed_on_error(), transaction.atomic():
            counts = _chunk_import(rows=part, categories=categories)
        summary.created += counts.created
        summary.updated += counts.updated
        summary.images_added += counts.images_added
        if progress:
            progress(len(part))
    return summary


def _chunk_import(*, rows, categories) -> ImportSummary:
    counts = ImportSummary()
    existing = Product.objects.in_bulk([row.sku for row in rows], field_name="sku")
    for row in rows:
        category = categories.get(row.category)
        if category is None:
            category = categories[row.category] = category_get_or_create(name=row.category)
        fields = {"title": row.title, "category": category, "price": row.price, "description": row.description}
        product = existing.get(row.sku)
        if product is None:
            product = Product.objects.create(sku=row.sku, **fields)
            # A new product has no images yet: no duplicate lookups (the row's own repeats are
            # dropped here), positions in the CSV's order.
            distinct = {}
            for name, normalised in row.images:
                distinct.setdefault(normalised.sha256, (name, normalised))
            for position, (name, normalised) in enumerate(distinct.values()):
                product_image_add(product=product, normalised=normalised, original_name=name, position=position,
                                  known_new=True)
            counts.images_added += len(distinct)
            counts.created += 1
            continue
        for name, value in fields.items():
            setattr(product, name, value)
        product.save()
        before = product.images.count()
        for name, normalised in row.images:
            product_image_add(product=product, normalised=normalised, original_name=name)
        counts.images_added += product.images.count() - before
        counts.updated += 1
    return counts
