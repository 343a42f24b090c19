"""Markdown to safe HTML: one renderer for the server-rendered page and for live events."""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

# "js-default" escapes raw HTML in the source; nh3 then strips anything unsafe that remains.
_md = MarkdownIt("js-default", {"linkify": False, "typographer": False}).enable("table")
_md.enable("strikethrough")

_TAGS = {
    "p",
    "br",
    "hr",
    "em",
    "strong",
    "del",
    "s",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "a",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "span",
}
_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}, "th": {"style"}, "td": {"style"}}


def render_markdown(text: str) -> str:
    """Render message text as sanitized HTML (no scripts, handlers or javascript: links)."""
    if not text:
        return ""
    html = _md.render(text)
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
