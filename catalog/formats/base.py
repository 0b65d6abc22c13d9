"""What every catalog format reads into: a :class:`SourceProduct` per product (text fields as the
file has them, images as :class:`ImageRef`), or a :class:`RowError` for a row that cannot be one.
``catalog.importing`` then validates them all alike (SKU, price, duplicates, image files)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator
from urllib.parse import unquote, urlsplit


class CatalogFormatError(ValueError):
    """The file as a whole cannot be read (not a CSV, an unknown format, missing columns)."""


@dataclass
class RowError:
    line: int
    sku: str
    message: str

    def __str__(self):
        return f"line {self.line}" + (f" ({self.sku})" if self.sku else "") + f": {self.message}"


FILE, URL = "file", "url"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class ImageRef:
    """One picture a row names, as written (``text``), and the file looked for (``name``).

    ``kind`` FILE: a path relative to the images folder (or to the CSV's folder in the ZIP); it is
    its own ``name``. ``kind`` URL: an http(s) address, as Shopify and WooCommerce exports name
    pictures. A URL is first looked up among the provided files by its file name (the last
    segment of its path, percent-decoded, without the query string): a shop that saved its
    pictures next to the export, or zipped them, imports offline. A URL with no such file is
    downloaded by the worker after the import (catalog.downloads, with SSRF protection).
    ``problem``: why the reference can name no file at all."""

    kind: str
    text: str
    name: str
    problem: str = ""

    @property
    def is_url(self) -> bool:
        return self.kind == URL


def image_ref(text: str) -> ImageRef:
    text = text.strip()
    if not _SCHEME.match(text):
        return ImageRef(FILE, text, text)
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # "http://[::1/a.png": an unclosed IPv6 address
        return ImageRef(URL, text, "", f"not a valid address ({exc})")
    if parts.scheme.lower() not in ("http", "https"):
        return ImageRef(URL, text, "", f"only http and https addresses can name pictures, not {parts.scheme}:")
    name = unquote(parts.path.rsplit("/", 1)[-1]).strip()
    if not name or name in (".", "..") or any(ch in name for ch in "/\\\x00"):
        return ImageRef(URL, text, "", "the address names no file (its path does not end in a file name)")
    return ImageRef(URL, text, name)


def image_refs(texts: Iterable[str], *, unique: bool = True) -> list[ImageRef]:
    """References of the non-empty ``texts``; ``unique``: each text once (in first-seen order)."""
    seen, refs = set(), []
    for text in texts:
        text = text.strip()
        if text and not (unique and text in seen):
            seen.add(text)
            refs.append(image_ref(text))
    return refs


@dataclass
class SourceProduct:
    """One product as a format reads it, before validation: ``price`` is the file's text;
    ``description`` is plain text (an export's HTML already made text); ``line`` is the CSV line
    of its first row."""

    line: int
    sku: str
    title: str
    category: str
    price: str = ""
    description: str = ""
    images: list[ImageRef] = field(default_factory=list)
    # Shown to shoppers: True/False when the export says so (a draft, an archived or a private
    # product is imported hidden), None when it does not (a new product is shown, an existing
    # one keeps what staff set).
    is_active: bool | None = None


Record = tuple[int, dict]  # (CSV line, {normalised header: value})


@dataclass
class Layout:
    """A recognised format and how its columns map onto a product: ``mapping`` is what each field
    comes from, in words ("" when from the column of its own name); ``notes`` qualify the format
    ("one product per Handle"); ``ignored`` are columns not read. ``describe()`` says it all to
    whoever imports. ``read`` turns the CSV's records into products (or errors)."""

    name: str
    mapping: dict[str, str]
    read: Callable[[Iterable[Record]], Iterator[SourceProduct | RowError]]
    notes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def describe(self) -> str:
        fields = "; ".join(f"{field} <- {source}" if source else field for field, source in self.mapping.items())
        ignored = (f" (ignored: {', '.join(self.ignored[:8])}{', …' if len(self.ignored) > 8 else ''})"
                   if self.ignored else "")
        return ", ".join([self.name, *self.notes]) + f": {fields}{ignored}"


def header_key(name: str | None) -> str:
    """A column's name as formats compare it: case, spaces and underscores do not matter."""
    return " ".join((name or "").replace("_", " ").split()).lower()


def cell(record: dict, *keys: str) -> str:
    """The first non-empty value among ``keys`` (normalised header names), stripped."""
    for key in keys:
        text = (record.get(key) or "").strip()
        if text:
            return text
    return ""


def last_level(path: str, separator: str = ">") -> str:
    """The deepest level of a category path: "Apparel & Accessories > Clothing > Shirts" -> "Shirts"."""
    levels = [level.strip() for level in path.split(separator) if level.strip()]
    return levels[-1] if levels else ""
