"""The visible text of an HTML page, with headings as `#` lines and blocks as paragraphs."""

from __future__ import annotations

import re
from html.parser import HTMLParser


class _HtmlText(HTMLParser):
    """Visible text of an HTML page with headings as '#' lines and blocks as paragraphs."""

    SKIP = frozenset({"script", "style", "nav", "noscript", "template", "svg", "iframe"})
    # Page banners and footers; inside an article they hold its own title, so they stay.
    PAGE_CHROME = frozenset({"header", "footer"})
    CONTENT = frozenset({"article", "main", "section"})
    BLOCKS = frozenset(
        {
            "p", "div", "section", "article", "main", "aside", "blockquote", "pre", "table",
            "ul", "ol", "dl", "dt", "dd", "figure", "figcaption", "form", "fieldset", "address",
            "details", "summary", "hr", "body", "header", "footer",
        }
    )  # fmt: skip
    HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self.first_h1 = ""
        self._skip = 0
        self._content = 0
        self._skipping: list[str] = []
        self._in_title = False
        self._heading: list[str] | None = None
        self._heading_level = 0
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP or (tag in self.PAGE_CHROME and not self._content):
            self._skip += 1
            self._skipping.append(tag)
            return
        if tag in self.CONTENT:
            self._content += 1
        if self._skip:
            return
        if tag == "title":
            self._in_title = True
        elif tag in self.HEADINGS:
            self.parts.append("\n\n")
            self._heading = []
            self._heading_level = int(tag[1])
        elif tag == "br":
            self.parts.append(" " if self._heading is not None else "\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag == "tr":
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")
            if tag == "pre":
                self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if self._skipping and tag == self._skipping[-1]:
            self._skipping.pop()
            self._skip -= 1
            return
        if tag in self.CONTENT and self._content:
            self._content -= 1
        if self._skip:
            return
        if tag == "title":
            self._in_title = False
        elif tag in self.HEADINGS and self._heading is not None:
            text = " ".join("".join(self._heading).split())
            if text:
                self.parts.append("#" * self._heading_level + " " + text + "\n\n")
                if self._heading_level == 1 and not self.first_h1:
                    self.first_h1 = text
            self._heading = None
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")
            if tag == "pre" and self._pre:
                self._pre -= 1

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title += data
        elif self._heading is not None:
            self._heading.append(data)
        elif self._pre:
            self.parts.append(data)
        else:
            self.parts.append(re.sub(r"\s+", " ", data))


def _html_text(html: str) -> tuple[str, str | None]:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).split("\n")]
    title = " ".join(parser.title.split()) or parser.first_h1 or None
    return "\n".join(lines), title
