"""HTML product descriptions (Shopify's ``Body (HTML)``, WooCommerce's ``Description``) as plain
text: what a shopper reads, with its paragraphs and list items on lines of their own.

The standard library's ``html.parser`` reads the markup as a browser would (unclosed and stray
tags are fine, ``<script>`` and ``<style>`` hold raw text). Tags are dropped, entities unescaped
(``&amp;`` -> ``&``, ``&nbsp;`` -> a space; a ``&#0;`` becomes U+FFFD, never a NUL), block tags
become line breaks (a paragraph, a heading or a list: a blank line), list items start with
"• ", runs of spaces collapse to one, and what a reader never sees is left out: ``<script>``,
``<style>``, ``<template>``, ``<noscript>``, ``<head>``, ``<iframe>``, ``<object>``, ``<svg>``,
``<select>`` and comments. Nothing of the markup survives, so the text is safe to show
anywhere (Django escapes it again on output anyway).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Product.description is a TextField (no limit of its own): an export's description is cut at
# this many characters, on a word, so that a pasted page or a base64 blob cannot bloat every
# product page and API answer. A catalog CSV field is at most csv.field_size_limit() (131,072).
DESCRIPTION_MAX_CHARS = 10_000

HIDDEN = frozenset({"script", "style", "template", "noscript", "head", "title", "iframe", "object", "svg", "math",
                    "select", "textarea"})
PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "blockquote", "pre",
                       "figure", "hr", "address", "fieldset", "details"})
LINE = frozenset({"div", "section", "article", "header", "footer", "main", "nav", "aside", "li", "dt", "dd", "tr",
                  "caption", "figcaption", "summary", "form", "legend", "option", "tbody", "thead", "tfoot", "center"})
CELL = frozenset({"td", "th"})

_BREAK = "\x00"  # inside the parser only: a line break that collapsing whitespace keeps (no NUL gets out)


class _TextParser(HTMLParser):
    """Collects text and line breaks: a ``<br>`` (or, when asked, a newline) is a break of its own;
    block boundaries ask for at least one line break (a paragraph: two), and the requests of
    adjacent boundaries count once (``</li><li>`` is one line break, as in a browser's innerText)."""

    def __init__(self, *, newlines_are_breaks: bool):
        super().__init__(convert_charrefs=True)
        self.parts: list[str | int] = []
        self.hidden = 0
        self.newlines_are_breaks = newlines_are_breaks

    def handle_starttag(self, tag, attrs):
        if tag in HIDDEN:
            self.hidden += 1
        elif self.hidden:
            return
        elif tag == "br":
            self.parts.append(_BREAK)
        elif tag in PARAGRAPH:
            self.parts.append(2)
        elif tag == "li":
            self.parts += [1, "• "]
        elif tag in LINE:
            self.parts.append(1)
        elif tag in CELL:
            self.parts.append(" ")

    def handle_startendtag(self, tag, attrs):
        if tag not in HIDDEN:  # <script/>: an element without content
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag in HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif self.hidden:
            return
        elif tag in PARAGRAPH:
            self.parts.append(2)
        elif tag in LINE:
            self.parts.append(1)

    def handle_data(self, data):
        if self.hidden:
            return
        data = data.replace("\x00", "\ufffd")
        if self.newlines_are_breaks:
            data = data.replace("\r\n", "\n").replace("\r", "\n").replace("\n", _BREAK)
        self.parts.append(data)

    def text(self) -> str:
        """The text with its breaks as ``_BREAK``: adjacent break requests count as their largest."""
        out, pending = [], 0
        for part in self.parts:
            if isinstance(part, int):
                pending = max(pending, part)
            elif part.strip():
                if pending and out:
                    out.append(_BREAK * pending)
                pending = 0
                out.append(part)
            else:
                out.append(part)  # whitespace only: a space within a line (a <br> is not whitespace)
        return "".join(out)


def html_to_text(html: str, *, newlines_are_breaks: bool = False, max_chars: int = DESCRIPTION_MAX_CHARS) -> str:
    """``html`` as plain text (see the module's docstring), at most ``max_chars`` characters (cut
    on a word, ending in "…"). ``newlines_are_breaks``: a line break in the text itself is one
    (WordPress shows descriptions so: its ``wpautop`` turns newlines into ``<br>`` and ``<p>``);
    otherwise, as in any HTML, it is only a space."""
    if not html or not html.strip():
        return ""
    parser = _TextParser(newlines_are_breaks=newlines_are_breaks)
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in parser.text().split(_BREAK)]
    lines = [line for line in lines if line != "•"]  # an empty list item
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return _shortened(text, max_chars)


def _shortened(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars - 1]
    space = cut.rfind(" ", max(0, max_chars - 200))
    return (cut[:space] if space > 0 else cut).rstrip() + "…"
