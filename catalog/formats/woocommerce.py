"""WooCommerce's product CSV export (Products > Export, WooCommerce 3.1+), as its "Product CSV
Import Schema" documents it: ID, Type, SKU, Name, Published, ..., Short description, Description,
..., Sale price, Regular price, Categories, Tags, ..., Images, ..., Parent, ..., Attribute 1 name...

One row per product, and one per variation (Type "variation", Parent "id:44" or the parent's SKU).
Variations are folded into their parent, not imported as products: the catalog has no variants,
and a variation's own row has no category and a generated name ("V-Neck T-Shirt - Red"). What a
variation adds is its picture (the red T-shirt), which similarity search wants: the parent gets
its variations' Images after its own, and the first variation's Regular price when it has none
(a variable product's row has no price of its own). A variation whose parent is not in the file
is reported as an error (export the parent too).

- SKU: SKU, else "woo-<ID>" (WooCommerce does not require SKUs; the ID is the shop's stable
  product id). Adding a SKU in WooCommerce later makes the next import create a new product.
- Price: Regular price (the sale price is temporary, with its own dates; it is not read).
- Category: the deepest level of the first category path: "Clothing > Tshirts, Clothing" ->
  "Tshirts". Our categories are flat (one name, one page, and the class a photo search predicts),
  and the deepest level is the one that says what a picture shows: "Tshirts" and "Hoodies" look
  different, "Clothing" holds both. A category tree would need the model to have one, and a
  flattened path ("Clothing / Tshirts") would make a different category of each parent's
  "Accessories"... (the same leaf under two parents does become one category). The path itself is
  not kept: WooCommerce remains the place to edit it.
- Description: Description as text (catalog.formats.htmltext; its newlines are line breaks, as
  WordPress shows them), else Short description.
- Images: Images (a comma-separated list of URLs), then the variations' Images, each once.

The exporter's escapes are undone: newlines written as "\\n", commas inside a list item as
"\\,", and the apostrophe put before a value that starts with = + - or @ (against spreadsheet
formulas). Published: 1 is shown; 0 (private) and -1 (draft) are imported hidden; no such column,
shown (an existing product keeps what staff set). Stock is not read: products are in stock.
"""

from __future__ import annotations

import re

from catalog.formats.base import (CatalogFormatError, Layout, RowError, SourceProduct, cell, image_refs,
                                  last_level)
from catalog.formats.htmltext import html_to_text

NAME = "WooCommerce product export"
# Columns only a WooCommerce export has: with a Name column, two of them say "WooCommerce".
SIGNALS = frozenset({"published", "is featured?", "visibility in catalog", "short description", "tax status",
                     "tax class", "in stock?", "backorders allowed?", "sold individually?", "allow customer reviews?",
                     "purchase note", "sale price", "date sale price starts", "categories", "shipping class", "parent",
                     "grouped products", "upsells", "cross-sells", "external url", "button text"})

MAPPING = {
    "sku": "SKU, else woo-<ID>",
    "title": "Name",
    "category": "the last level of the first Categories path",
    "price": "Regular price, else the first variation's",
    "description": "Description as text, else Short description",
    "images": "Images, then the variations' Images",
    "shown": "Published 1 (0 private, -1 draft: hidden)",
}
_LIST_SEPARATOR = re.compile(r"(?<!\\),")
_NEWLINE_ESCAPE = re.compile(r"\\\\n|\\n")


def woocommerce_layout(header: list[str], keys: list[str]) -> Layout | None:
    present = set(keys)
    if "name" not in present or len(present & SIGNALS) < 2:
        return None
    missing = [name for name, options in [("Images", {"images"}), ("Categories", {"categories"}),
                                          ("SKU or ID", {"sku", "id"})] if not present & options]
    if missing:
        raise CatalogFormatError(
            f"The CSV looks like a WooCommerce product export, but it lacks the column(s): {', '.join(missing)}. "
            "Export all columns from WooCommerce (Products > Export) and import that file.")
    return Layout(name=NAME, mapping=dict(MAPPING), notes=["variations folded into their parent"], read=_read)


def unescaped(text: str | None) -> str:
    """A value as the exporter meant it: without the apostrophe it puts before = + - @."""
    text = (text or "").strip()
    if text[:1] == "'" and text[1:2] in ("=", "+", "-", "@", "\t", "\r"):
        return text[1:]
    return text


def listed(text: str) -> list[str]:
    """The items of a comma-separated list ("a, b\\, c" -> ["a", "b, c"])."""
    return [item.strip().replace("\\,", ",") for item in _LIST_SEPARATOR.split(text) if item.strip()]


def _is_variation(record: dict) -> bool:
    """Type says "variation"; without a Type (an export of chosen columns), a Parent does."""
    kinds = cell(record, "type")
    if not kinds:
        return bool(cell(record, "parent"))
    return "variation" in [kind.strip().lower() for kind in kinds.split(",")]


def _read(records):
    products, variations = [], []
    for line, record in records:
        record = {key: unescaped(text) for key, text in record.items() if key}
        (variations if _is_variation(record) else products).append((line, record))
    index = {}
    for position, (_, record) in enumerate(products):
        for ref in (f"id:{cell(record, 'id')}" if cell(record, "id") else "", cell(record, "sku")):
            if ref:
                index.setdefault(ref, position)
    folded = [[] for _ in products]
    for line, record in variations:
        parent = cell(record, "parent")
        position = index.get(parent, index.get(f"id:{parent}"))
        if position is None:
            yield RowError(line, cell(record, "sku"), f"a variation of {parent or 'no parent'!r}, which is not in "
                                                      "this file: variations are imported as part of their parent "
                                                      "product; export the parent too")
        else:
            folded[position].append(record)
    for (line, record), its_variations in zip(products, folded):
        yield _product(line, record, its_variations)


def _product(line: int, record: dict, variations: list[dict]) -> SourceProduct:
    product_id = cell(record, "id")
    categories = listed(cell(record, "categories"))
    price = cell(record, "regular price") or next(
        (text for text in (cell(variation, "regular price") for variation in variations) if text), "")
    description = _text(cell(record, "description")) or _text(cell(record, "short description"))
    pictures = [item for source in [record, *variations] for item in listed(cell(source, "images"))]
    return SourceProduct(line=line, sku=cell(record, "sku") or (f"woo-{product_id}" if product_id else ""),
                         title=cell(record, "name"), category=last_level(categories[0]) if categories else "",
                         price=price, description=description, images=image_refs(pictures),
                         is_active=None if not cell(record, "published") else cell(record, "published") == "1")


def _text(html: str) -> str:
    newlines = _NEWLINE_ESCAPE.sub(lambda match: "\\n" if match.group(0) == "\\\\n" else "\n", html)
    return html_to_text(newlines, newlines_are_breaks=True)
