"""Our own catalog format (sku, title, category, images[, price, description]), with the column
names shops' spreadsheets commonly use instead (case, spaces and underscores aside)."""

from __future__ import annotations

import re

from catalog.formats.base import CatalogFormatError, Layout, SourceProduct, cell, header_key, image_refs

NAME = "Lookalike catalog CSV"
REQUIRED_COLUMNS = ("sku", "title", "category", "images")
OPTIONAL_COLUMNS = ("price", "description")
IMAGE_SEPARATORS = re.compile(r"[;|]")

# Each field's other names. An alias of the first tuple is as good as the field's own name (two of
# them in one file are ambiguous and refused); a fallback (second tuple) is used only when no
# column has one of the first: an "id" or a "handle" is the SKU of a file that has no SKU column
# (a file with both keeps "sku" and ignores "id"), and a "type" its category only without a
# "category" column.
ALIASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sku": (("sku", "product sku", "item sku", "sku code", "product code", "item code", "article number"),
            ("id", "product id", "item id", "handle")),
    "title": (("title", "name", "product name", "product title", "item name"), ()),
    "category": (("category", "product category", "category name"), ("product type", "type")),
    "images": (("images", "image", "image url", "image urls", "image file", "image files", "image path",
                "image src", "picture", "pictures", "photo", "photos"), ()),
    "price": (("price", "unit price", "regular price", "retail price"), ()),
    "description": (("description", "product description", "long description", "details"), ()),
}


def native_layout(header: list[str]) -> Layout | None:
    """Our format's layout for this header, or None when not one column is recognised (then the
    file is in no format we read). Missing required columns and ambiguous ones are refused."""
    keys = [header_key(name) for name in header]
    columns = {}
    for field, (names, fallbacks) in ALIASES.items():
        found = _found(field, names, header, keys)
        if found is None:
            found = _found(field, fallbacks, header, keys)
        if found is not None:
            columns[field] = found
    if not columns:
        return None
    missing = [field for field in REQUIRED_COLUMNS if field not in columns]
    if missing:
        wanted = "; ".join(f"{field} (or {', '.join(ALIASES[field][0][1:4] + ALIASES[field][1][:2])})"
                           for field in missing)
        raise CatalogFormatError(f"The CSV is missing the column(s): {wanted}. "
                                 f"Expected: {', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}.")
    mapping = {field: ("" if header[index].strip().lower() == field else f'"{header[index].strip()}"')
               for field, index in columns.items()}
    used = set(columns.values())
    ignored = [name.strip() for index, name in enumerate(header) if index not in used and name.strip()]
    fields = {field: keys[index] for field, index in columns.items()}
    return Layout(name=NAME, mapping=mapping, ignored=ignored, read=lambda records: _read(records, fields))


def _found(field: str, names: tuple[str, ...], header: list[str], keys: list[str]) -> int | None:
    hits = [index for index, key in enumerate(keys) if key in names]
    if len(hits) > 1:
        both = " and ".join(f'"{header[index].strip()}"' for index in hits)
        raise CatalogFormatError(f"The columns {both} {'both' if len(hits) == 2 else 'all'} mean {field}: keep one "
                                 "of them (or rename the others) and import again.")
    return hits[0] if hits else None


def _read(records, fields: dict[str, str]):
    for line, record in records:
        get = {field: cell(record, key) for field, key in fields.items()}
        yield SourceProduct(line=line, sku=get["sku"], title=get["title"], category=get["category"],
                            price=get.get("price", ""), description=get.get("description", ""),
                            images=image_refs(IMAGE_SEPARATORS.split(get["images"]), unique=False))
