"""HTML descriptions of shop exports as plain text (catalog.formats.htmltext)."""

import pytest

from catalog.formats.htmltext import DESCRIPTION_MAX_CHARS, html_to_text


@pytest.mark.parametrize("html, text", [
    ("<p>Soft <strong>cotton</strong></p>", "Soft cotton"),
    # entities, named and numeric; &nbsp; is a space; an escaped tag is text, not markup
    ("Tom &amp; Jerry &ndash; 5&nbsp;cm &#8217;n&#x27; &lt;b&gt;bold&lt;/b&gt;", "Tom & Jerry – 5 cm ’n' <b>bold</b>"),
    # block tags are line breaks, paragraphs and lists blank lines, list items bulleted
    ("<h2>Care</h2><p>One</p><p>Two</p>", "Care\n\nOne\n\nTwo"),
    ("<p>Intro</p>\n<ul>\n  <li>First</li>\n  <li>Second</li>\n</ul>\n<p>End</p>", "Intro\n\n• First\n• Second\n\nEnd"),
    ("a<br>b<br/><br />c<div>d</div>e", "a\nb\n\nc\nd\ne"),
    ("<table><tr><th>Size</th><td>M</td></tr><tr><td>Fit</td><td>Slim</td></tr></table>", "Size M\nFit Slim"),
    # whitespace: runs collapse, lines are trimmed, at most one blank line in a row
    ("  lots \t of\n\n   space  <p></p><p></p><p>x</p>", "lots of space\n\nx"),
    # what a reader never sees: scripts (with markup inside), styles, comments, templates...
    ('A<script type="text/javascript">var s = "<p>no</p>"; if (a < b) {}</script>B', "AB"),
    ("A<style>p { color: red }</style><!-- a comment -->B<noscript>enable JS</noscript>", "AB"),
    ("A<template><p>hidden</p></template><iframe src=x>fallback</iframe>B", "AB"),
    ("<SCRIPT>alert(1)</SCRIPT>Visible", "Visible"),
    ("A<script/>B", "AB"),  # a self-closed script hides nothing
    ("Before<script>never closed <p>anything", "Before"),  # an unclosed script hides the rest, as in a browser
    # broken markup still gives its text
    ("<p>Unclosed <b>bold <i>both</p>after</i>", "Unclosed bold both\n\nafter"),
    ("5 < 6 and 7 > 3", "5 < 6 and 7 > 3"),
    # no NUL can come out (PostgreSQL refuses it in text)
    ("a&#0;b", "a\ufffdb"),
    ("", ""),
    ("   \n ", ""),
])
def test_html_becomes_plain_text(html, text):
    assert html_to_text(html) == text


def test_newlines_are_breaks_when_asked_as_wordpress_shows_them():
    html = "First line\nsecond line\n\nNew paragraph<ul><li>item</li></ul>"
    assert html_to_text(html, newlines_are_breaks=True) == "First line\nsecond line\n\nNew paragraph\n\n• item"
    assert html_to_text(html) == "First line second line New paragraph\n\n• item"


def test_a_long_description_is_cut_on_a_word():
    text = html_to_text("<p>" + "word " * 5_000 + "</p>")
    assert len(text) <= DESCRIPTION_MAX_CHARS and text.endswith("word…")
    assert html_to_text("abcdef ghij", max_chars=9) == "abcdef…"
    assert html_to_text("abcdefghij", max_chars=5) == "abcd…"  # no space to cut on
