"""Importing a catalog: a CSV plus a set of image files. Shared by ``manage.py import_catalog``
and the admin's bulk upload. The CSV is our format (sku, title, category, images, optional price
and description, also under common aliases such as image or name), a Shopify product export or a
WooCommerce product export, recognised from its header (catalog.formats); every format reads into
the same products, validated and imported alike.

Parsing validates the whole file (NUL bytes, csv's field limit) and every row (fields, numbers,
duplicates, image files, image content) before anything is written: a file that cannot be read
as a whole raises CatalogFormatError, a bad row is a RowError with its line. Each image file is
read and decoded once, however many rows name it. Importing writes the good rows, IMPORT_CHUNK
rows per transaction, each row idempotent: two imports of the same SKUs at once both finish,
and running a file again after a failure finishes it (see IMPORT_CHUNK).
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction

from catalog.downloads import downloads_record
from catalog.formats import CatalogFormatError, ImageRef, Layout, RowError, SourceProduct, detect_layout
from catalog.formats.base import header_key
from catalog.models import Product
from catalog.services import (category_get_or_create, files_removed_on_error, product_image_get_or_add,
                              product_images_add_new)
from catalog.validators import NormalisedImage, normalise_image

__all__ = ["CatalogFormatError", "CatalogRow", "ImportSummary", "ParseResult", "RowError", "catalog_import",
           "catalog_parse", "folder_images"]


@dataclass
class CatalogRow:
    """A validated product: ``images`` are the pictures read, as (file name, normalised image);
    ``urls`` those named by a URL with no such file, downloaded by the worker after the import
    (catalog.downloads); ``image_refs`` what the CSV named, file or URL (see ImageRef)."""

    line: int
    sku: str
    title: str
    category: str
    price: Decimal
    description: str
    images: list[tuple[str, NormalisedImage]] = field(default_factory=list)
    image_refs: list[ImageRef] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    is_active: bool | None = None  # None: the file does not say (SourceProduct.is_active)


@dataclass
class ParseResult:
    rows: list[CatalogRow]
    errors: list[RowError]
    layout: Layout | None = None  # the format recognised, and how its columns were read


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise CatalogFormatError("The CSV is neither UTF-8 nor Windows-1252 text.")


def _check_text(data: bytes) -> None:
    """A NUL anywhere is refused before any row is read: PostgreSQL cannot store one in a text
    column, so a NUL found only when its row was written would stop the import half-way."""
    at = data.find(b"\x00")
    if at >= 0:
        line = data.count(b"\n", 0, at) + 1
        raise CatalogFormatError(f"The CSV file is binary, not text: it has a NUL byte (line {line}, byte "
                                 f"{at + 1:,}); UTF-16 or a damaged file? Save it as UTF-8 text. Nothing was "
                                 "imported.")


def _csv_error(exc: csv.Error, line: int) -> CatalogFormatError:
    if "field larger than field limit" in str(exc):
        return CatalogFormatError(
            f"line {line}: a field is longer than {csv.field_size_limit():,} characters, the limit; nothing was "
            "imported. Often a quote (\") opened and never closed makes the rest of the file one field.")
    return CatalogFormatError(f"line {line}: the CSV cannot be read ({exc}); nothing was imported.")


def _records(reader: csv.DictReader, *, max_rows: int, errors: list, progress=None):
    """(line, record) pairs, at most ``max_rows`` (past them, an error in ``errors``); a csv.Error
    (a field over csv.field_size_limit()) is a whole-file error."""
    number = 1  # line 1 is the header
    rows = iter(reader)
    while True:
        number += 1
        try:
            raw = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_error(exc, number)
        if number - 1 > max_rows:
            errors.append(RowError(number, "", f"more than {max_rows} rows; the rest was not read"))
            return
        if progress:
            progress(1)
        yield number, {key: text or "" for key, text in raw.items() if key}  # not the extra fields (key None)


def _image_loader(open_image):
    """``load(name) -> (NormalisedImage | None, problem)``. Each file is read and decoded once,
    however many rows name it (and under however many spellings, when ``open_image.resolve``
    says which file a name means): 5,000 rows naming one picture hold one decoded copy, so what is
    held stays within what the folder or the ZIP's limits allow."""
    resolve = getattr(open_image, "resolve", None) or (lambda name: name)
    outcomes = {}

    def load(name):
        try:
            key = resolve(name)
        except FileNotFoundError:
            return None, "not found"
        except ValueError as exc:
            return None, str(exc)
        if key not in outcomes:  # a failure is remembered too: a damaged member is not unpacked 5,000 times
            outcomes[key] = _image_load(open_image, name)
        return outcomes[key]

    return load


def _image_load(open_image, name) -> tuple[NormalisedImage | None, str | None]:
    try:
        return normalise_image(io.BytesIO(open_image(name))), None
    except FileNotFoundError:
        return None, "not found"
    except ValueError as exc:
        return None, str(exc)
    except ValidationError as exc:
        return None, " ".join(exc.messages)


def catalog_parse(*, csv_bytes: bytes, open_image, max_rows: int = 100_000, progress=None) -> ParseResult:
    """Validate a whole catalog CSV before anything is written. Its format is recognised from its
    header (``ParseResult.layout``: which, and how its columns were read). ``open_image(name)``
    returns the bytes of an image named in the CSV or raises ``FileNotFoundError``/``ValueError``
    (unknown, unsafe or too large); its optional ``resolve(name)`` names the file a name means (see
    :func:`_image_loader`). A file that cannot be read as a whole raises CatalogFormatError."""
    _check_text(csv_bytes)
    reader = csv.DictReader(io.StringIO(_decode(csv_bytes), newline=""))
    try:
        header = list(reader.fieldnames or [])
    except csv.Error as exc:
        raise _csv_error(exc, 1)
    layout = detect_layout(header)
    reader.fieldnames = [header_key(name) for name in header]
    rows, errors, seen, load = [], [], {}, _image_loader(open_image)
    for item in layout.read(_records(reader, max_rows=max_rows, errors=errors, progress=progress)):
        parsed = item if isinstance(item, RowError) else _row_parse(source=item, seen=seen, load=load)
        (errors if isinstance(parsed, RowError) else rows).append(parsed)
    errors.sort(key=lambda error: error.line)  # a format that groups rows reports some after reading them all
    return ParseResult(rows=rows, errors=errors, layout=layout)


def _price_parse(text: str) -> tuple[Decimal, str | None]:
    if not text:
        return Decimal("0"), None
    try:
        price = Decimal(text.replace(",", ""))
        if not price.is_finite() or price < 0 or price >= Decimal("1e8"):
            raise InvalidOperation
        return price.quantize(Decimal("0.01")), None
    except InvalidOperation:
        return Decimal("0"), f"price {text!r} is not a non-negative number"


def _row_parse(*, source: SourceProduct, seen: dict, load) -> CatalogRow | RowError:
    number, sku = source.line, source.sku
    problems = [f"{column} is empty" for column in ("sku", "title", "category") if not getattr(source, column)]
    if len(sku) > 64:
        problems.append("sku is longer than 64 characters")
    if sku and sku in seen:
        problems.append(f"duplicate sku (first on line {seen[sku]})")
    price, problem = _price_parse(source.price)
    if problem:
        problems.append(problem)
    if not source.images:
        problems.append("no image given")
    images, urls, image_problems = _images_load(source.images, load)
    problems += image_problems
    if sku and sku not in seen:
        seen[sku] = number
    if problems:
        return RowError(number, sku, "; ".join(problems))
    return CatalogRow(line=number, sku=sku, title=source.title[:200], category=source.category[:120],
                      price=price, description=source.description, images=images, image_refs=list(source.images),
                      urls=urls, is_active=source.is_active)


# The longest URL a row may name (ImageDownload.url, whose unique index takes at most ~2,700 bytes).
MAX_URL_BYTES = 2000


def _images_load(refs: list[ImageRef], load) -> tuple[list, list[str], list[str]]:
    """The pictures ``refs`` name, read from the provided files; the URLs to download; the
    problems. A URL is looked up among the files by its file name; one without such a file is
    downloaded by the worker once the row is imported (catalog.downloads)."""
    images, urls, problems = [], [], []
    for ref in refs:
        if ref.problem:
            problems.append(f"image {ref.text}: {ref.problem}")
            continue
        normalised, problem = load(ref.name)
        if problem == "not found" and ref.is_url and len(ref.text.encode()) > MAX_URL_BYTES:
            problems.append(f"image {ref.text[:100]}…: the address is longer than {MAX_URL_BYTES:,} bytes")
        elif problem == "not found" and ref.is_url:
            urls.append(ref.text)
        elif problem == "not found":
            problems.append(f"image {ref.name!r} not found")
        elif problem:
            problems.append(f"image {ref.text if ref.is_url else repr(ref.name)}: {problem}")
        else:
            images.append((ref.name, normalised))
    return images, list(dict.fromkeys(urls)), problems


def folder_images(root: Path, *, max_bytes: int | None = None):
    """``open_image`` for catalog_parse over a folder (``manage.py import_catalog``): names are
    relative to ``root`` and may not leave it; a file's size is checked on disk (stat) and it is
    read with a cap, so a 50 MB "image" is refused without being read."""
    root = Path(root).resolve()

    @functools.lru_cache(maxsize=None)  # a name is resolved once per import (0.17 ms each)
    def _resolved(name) -> Path:
        return (root / name).resolve()

    def resolve(name) -> Path:
        path = _resolved(name)
        if not path.is_relative_to(root):
            raise ValueError("the path leaves the images folder")
        try:
            found = path.is_file()
        except OSError:  # a name no file can have (longer than 255 bytes: a URL's long file name)
            found = False
        if not found:
            raise FileNotFoundError(name)
        return path

    def open_image(name) -> bytes:
        limit = max_bytes or settings.MAX_UPLOAD_BYTES
        path = resolve(name)
        size = path.stat().st_size
        if size > limit:
            raise ValueError(f"the file is too large ({size:,} bytes); the limit is {limit:,} bytes")
        with path.open("rb") as handle:
            # read(n) allocates n bytes up front: ask for the size on disk, not the limit, and
            # one more byte to notice a file that grew since the stat.
            data = handle.read(size + 1)
        if len(data) > size:
            raise ValueError("the file changed while it was being read; try again")
        return data

    open_image.resolve = resolve
    return open_image


@dataclass
class ImportSummary:
    created: int = 0
    updated: int = 0
    images_added: int = 0
    downloads_queued: int = 0  # pictures named by URL the worker is to download (catalog.downloads)
    product_ids: list[int] = field(default_factory=list)  # the products written (catalog.import_runs)


# Rows written per transaction. One transaction per row cost ~11 queries and a commit per row
# (30-58 rows/s for 60x80 photos on 2 cores, a worker task per row); a chunk is one commit, one
# lookup of its existing SKUs, one INSERT of its new products and one batch of images for the
# workers (catalog -> recommender signal, sent on commit).
#
# Not one transaction per import: a 100,000-row file would hold its SKUs' locks for minutes and
# give the workers nothing until the end. Instead the whole file is validated before the first
# commit (catalog_parse: fields, images, NUL bytes, csv limits), and every row's write is
# idempotent: a new SKU is inserted with ON CONFLICT DO NOTHING (one that another import or a
# staff member committed meanwhile is then updated like any existing SKU), a picture already
# attached, by anyone, is kept. Two imports of overlapping files both finish; a chunk that fails
# for another reason (the database went away) rolls back whole, files included, and running the
# same file again finishes the job (existing SKUs are updated, not duplicated).
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
        summary.downloads_queued += counts.downloads_queued
        summary.product_ids += counts.product_ids
        if progress:
            progress(len(part))
    return summary


def _chunk_import(*, rows, categories) -> ImportSummary:
    # Locks are taken in one order (categories, then SKUs, each sorted) so that two imports of
    # overlapping files wait for each other instead of deadlocking.
    for name in sorted({row.category for row in rows} - categories.keys()):
        categories[name] = category_get_or_create(name=name)
    skus = [row.sku for row in rows]
    existing = _products_locked(skus=skus)
    created = _products_insert(rows=[row for row in rows if row.sku not in existing], categories=categories)
    existing.update(_products_locked(skus=[sku for sku in skus if sku not in existing and sku not in created]))
    counts = ImportSummary()
    new_pictures, downloads = [], []
    for row in rows:
        product = created.get(row.sku)
        if product is not None:
            new_pictures += _pictures_of_new(product=product, row=row)
            counts.created += 1
        else:
            product = existing[row.sku]
            counts.images_added += _product_refresh(product=product, row=row, category=categories[row.category])
            counts.updated += 1
        downloads += [(product, url) for url in row.urls]
        counts.product_ids.append(product.pk)
    counts.images_added += product_images_add_new(pictures=new_pictures)
    # Pictures named by URL: recorded here, downloaded by the worker after the commit.
    counts.downloads_queued = len(downloads_record(pairs=downloads))
    return counts


def _products_locked(*, skus) -> dict[str, Product]:
    """The committed products of these SKUs, locked (as an UPDATE would) until the chunk commits."""
    if not skus:
        return {}
    found = Product.objects.select_for_update(no_key=True).filter(sku__in=skus).order_by("sku")
    return {product.sku: product for product in found}


def _products_insert(*, rows, categories) -> dict[str, Product]:
    """Insert the rows' products in one statement and return those this chunk inserted, by SKU.

    ON CONFLICT DO NOTHING: a SKU that another writer holds uncommitted makes the INSERT wait for
    it; once committed it is skipped (that row is then updated instead). Django sets no primary
    key on rows inserted with ignore_conflicts, so the chunk takes its ids from the sequence first
    and tells its own rows by them."""
    if not rows:
        return {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                       [Product._meta.db_table, len(rows)])
        ids = [pk for (pk,) in cursor.fetchall()]
    products = [Product(pk=pk, sku=row.sku, title=row.title, category=categories[row.category], price=row.price,
                        description=row.description, is_active=row.is_active is not False)
                for pk, row in zip(ids, sorted(rows, key=lambda row: row.sku))]
    Product.objects.bulk_create(products, ignore_conflicts=True)
    inserted = set(Product.objects.filter(pk__in=ids).values_list("pk", flat=True))
    return {product.sku: product for product in products if product.pk in inserted}


def _pictures_of_new(*, product, row) -> list[tuple]:
    # A product this chunk created has no images and no other writer can see it: no lookups (the
    # row's own repeats are dropped here), positions in the CSV's order.
    distinct = {}
    for name, normalised in row.images:
        distinct.setdefault(normalised.sha256, (name, normalised))
    return [(product, normalised, name, position) for position, (name, normalised) in enumerate(distinct.values())]


def _product_refresh(*, product, row, category) -> int:
    product.title, product.category, product.price, product.description = (
        row.title, category, row.price, row.description)
    if row.is_active is not None:
        product.is_active = row.is_active
    product.save()
    return sum(product_image_get_or_add(product=product, normalised=normalised, original_name=name)[1]
               for name, normalised in row.images)
