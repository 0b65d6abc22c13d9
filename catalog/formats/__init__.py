"""The catalog formats an import reads, recognised from the CSV's header:

- a Shopify product export (catalog.formats.shopify),
- a WooCommerce product export (catalog.formats.woocommerce),
- else our own format, sku, title, category, images[, price, description], under the column
  names shops commonly use too: image, picture or photo for images, name for title... (see
  catalog.formats.native).

``detect_layout(header)`` says which, and how its columns map onto a product (``Layout.describe``,
which ``import_catalog`` prints and the admin's bulk upload shows); a header that is none of them
is refused with what was expected.
"""

from __future__ import annotations

from catalog.formats.base import (CatalogFormatError, ImageRef, Layout, RowError, SourceProduct, header_key,
                                  image_ref)
from catalog.formats.htmltext import html_to_text
from catalog.formats.native import IMAGE_SEPARATORS, OPTIONAL_COLUMNS, REQUIRED_COLUMNS, native_layout
from catalog.formats.shopify import shopify_layout
from catalog.formats.woocommerce import woocommerce_layout

EXPECTED = (
    "our catalog format: sku, title, category, images, and optionally price and description (images may also be "
    "called image, picture or photo, title name, category type...); a Shopify product export (Handle, Title, "
    "Body (HTML), Type, Variant SKU, Variant Price, Image Src, Image Position...); or a WooCommerce product export "
    "(ID, Type, SKU, Name, Description, Regular price, Categories, Images, Parent...)")


def detect_layout(header: list[str]) -> Layout:
    """The format of a CSV with this header (its first row); CatalogFormatError if none."""
    header = [name or "" for name in header]
    keys = [header_key(name) for name in header]
    layout = shopify_layout(header, keys) or woocommerce_layout(header, keys) or native_layout(header)
    if layout is None:
        shown = ", ".join(name.strip() for name in header[:12] if name.strip()) or "none"
        raise CatalogFormatError(f"The CSV's columns ({shown}) match no format this import reads. Expected "
                                 f"{EXPECTED}.")
    return layout


__all__ = ["CatalogFormatError", "ImageRef", "Layout", "RowError", "SourceProduct", "detect_layout", "html_to_text",
           "image_ref", "IMAGE_SEPARATORS", "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS"]
