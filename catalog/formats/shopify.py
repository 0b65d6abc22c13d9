"""Shopify's product CSV export (Products > Export), as Shopify's help documents its columns:
Handle, Title, Body (HTML), Vendor, Product Category, Type, Tags, Published, Option1 Name/Value...,
Variant SKU, Variant Grams, Variant Inventory Qty, Variant Price, Variant Compare At Price, ...,
Image Src, Image Position, Image Alt Text, Gift Card, SEO Title, ..., Variant Image, Status.

A product spans several rows sharing its Handle: the first carries the product's columns (Title,
Body (HTML), Type...) and its first variant; the next ones carry more variants (Variant SKU,
Variant Price, options) and/or more pictures (Image Src, Image Position), the other columns empty.
One product is imported per Handle:

- SKU: the first variant's Variant SKU (the first of the Handle's rows with variant columns), or
  the Handle when that variant has none (a shop that does not use SKUs). The catalog has no
  variants: a product's identity is one SKU, and the first variant's is the one a shop sees first
  in its admin. Beware that reordering or deleting that variant in Shopify changes the SKU, so the
  next import creates a new product instead of updating this one.
- Price: the first variant's Variant Price (the price shown before a variant is chosen).
- Category: Type (the shop's own, flat product type), else the deepest level of Product Category
  (Shopify's taxonomy path, "Apparel & Accessories > Clothing > Shirts" -> "Shirts"); see
  catalog.formats.woocommerce for why categories are flattened to their deepest level.
- Description: Body (HTML) as plain text (catalog.formats.htmltext).
- Images: every Image Src of the Handle, by Image Position (then file order), then the variants'
  Variant Image not among them, each once.
- Shown to shoppers: Status "active" (a draft or archived product is imported hidden), else
  Published TRUE; neither column: shown (an existing product keeps what staff set).

Columns of Shopify's newer template ("URL handle", "Product image URL", "Variant image URL", "SKU",
"Price", "Description") are read too, where the classic names are absent.
"""

from __future__ import annotations

from catalog.formats.base import (CatalogFormatError, Layout, RowError, SourceProduct, cell, image_refs,
                                  last_level)
from catalog.formats.htmltext import html_to_text

NAME = "Shopify product export"
HANDLE = ("handle", "url handle")
TITLE = ("title",)
BODY = ("body (html)", "description")
TYPE = ("type",)
PRODUCT_CATEGORY = ("product category",)
SKU = ("variant sku", "sku")
PRICE = ("variant price", "price")
IMAGE = ("image src", "product image url")
POSITION = ("image position",)
VARIANT_IMAGE = ("variant image", "variant image url")
VARIANT = SKU + PRICE + ("option1 value", "variant barcode", "variant grams", "variant inventory qty")
# Columns only a Shopify export has: with a Handle, any one of them says "Shopify".
SIGNALS = frozenset({"body (html)", "variant sku", "variant price", "variant compare at price", "variant grams",
                     "variant inventory qty", "image src", "image position", "image alt text", "variant image",
                     "option1 name", "option1 value", "gift card", "seo title", "product image url"})

MAPPING = {
    "sku": "Variant SKU of the first variant, else Handle",
    "title": "Title",
    "category": "Type, else the last level of Product Category",
    "price": "Variant Price of the first variant",
    "description": "Body (HTML) as text",
    "images": "Image Src by Image Position, then Variant Image",
    "shown": "Status active (draft, archived: hidden), else Published",
}


def shopify_layout(header: list[str], keys: list[str]) -> Layout | None:
    present = set(keys)
    if not present & set(HANDLE) or not present & SIGNALS:
        return None
    missing = [name for name, options in [("Title", TITLE), ("Image Src", IMAGE),
                                          ("Type or Product Category", TYPE + PRODUCT_CATEGORY)]
               if not present & set(options)]
    if missing:
        raise CatalogFormatError(
            f"The CSV looks like a Shopify product export (it has a Handle column), but it lacks the column(s): "
            f"{', '.join(missing)}. Export all columns from Shopify (Products > Export) and import that file.")
    return Layout(name=NAME, mapping=dict(MAPPING), notes=["one product per Handle"], read=_read)


def _read(records):
    groups: dict[str, list[tuple[int, dict]]] = {}
    for line, record in records:
        handle = cell(record, *HANDLE)
        if handle:
            groups.setdefault(handle, []).append((line, record))
        elif any((text or "").strip() for text in record.values()):
            yield RowError(line, "", "the Handle is empty: in a Shopify export, each row belongs to the product of "
                                     "its Handle")
    for handle, rows in groups.items():
        yield _product(handle, rows)


def _first(records: list[dict], keys: tuple[str, ...]) -> str:
    return next((text for text in (cell(record, *keys) for record in records) if text), "")


def _product(handle: str, rows: list[tuple[int, dict]]) -> SourceProduct:
    records = [record for _, record in rows]
    variant = next((record for record in records if cell(record, *VARIANT)), {})
    return SourceProduct(line=rows[0][0], sku=cell(variant, *SKU) or handle, title=_first(records, TITLE),
                         category=_first(records, TYPE) or _taxonomy_leaf(_first(records, PRODUCT_CATEGORY)),
                         price=cell(variant, *PRICE), description=html_to_text(_first(records, BODY)),
                         images=image_refs(_pictures(records)), is_active=_shown(records))


def _shown(records: list[dict]) -> bool | None:
    """Status (active, draft, archived: newer exports), else Published (TRUE/FALSE), else None."""
    status = _first(records, ("status",)).lower()
    if status:
        return status == "active"
    published = _first(records, ("published", "published on online store")).lower()
    return None if not published else published == "true"


def _taxonomy_leaf(path: str) -> str:
    # Older exports may hold a Google product category number, newer ones a taxonomy id (gid://...):
    # neither names a category a shopper would read.
    if path.isdigit() or path.startswith("gid://"):
        return ""
    return last_level(path)


def _pictures(records: list[dict]) -> list[str]:
    def position(index_record):
        index, record = index_record
        text = cell(record, *POSITION)
        return (int(text) if text.isdigit() else float("inf"), index)

    with_image = sorted(((index, record) for index, record in enumerate(records) if cell(record, *IMAGE)),
                        key=position)
    return [cell(record, *IMAGE) for _, record in with_image] + [cell(record, *VARIANT_IMAGE) for record in records]
