"""The Markdown inside an MDX page: its prose and code, without the JavaScript around them.

MDX (Docusaurus, Nextra, Astro docs) is Markdown plus ESM `import`/`export` blocks, JSX
components and `{...}` expressions. What a reader sees is the Markdown and the text inside the
components, so that is what is indexed: ESM blocks and comments go, tags go and their children
stay (a `<TabItem>`'s text, a `<Callout>`'s warning), and a component's `title` or `label`
becomes a paragraph of its own (it is shown as the box's or tab's heading). Other `{...}`
expressions stay as written. Fenced code is kept as written, less its fence's indentation: a
`<div>` or an `import` line inside a fence is code, not MDX.
"""

from __future__ import annotations

import re

# CommonMark lets a fence be indented up to 3 spaces; inside JSX components MDX authors indent
# it further, so any indentation opens a fence here, and is removed from the lines it holds.
_FENCE = re.compile(r"^([ \t]*)(`{3,}(?!.*`)|~{3,})")  # a backtick fence's info has no backtick
_ESM = re.compile(r"^(?:import|export)\b")
# What can start something to remove or keep verbatim in prose: an inline code span, an MDX
# comment, an HTML comment, or a tag (opening, closing, self-closing, fragment).
_SPECIAL = re.compile(r"`+|\{/\*|<!--|</?(?=[A-Za-z>])")
_AUTOLINK = re.compile(r"<[A-Za-z][\w+.-]*:[^\s<>]*>")
_TAG_NAME = re.compile(r"</?([A-Za-z][\w.:-]*)?")
_SHOWN_ATTRIBUTE = re.compile(r"""\b(?:title|label)=(?:"([^"]*)"|'([^']*)')""")
_QUOTES = "\"'`"


def mdx_markdown(body: str) -> str:
    """`body` (an MDX page after its front matter) as Markdown without ESM, JSX or comments."""
    out: list[str] = []
    prose: list[str] = []
    lines = body.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = _FENCE.match(line)
        if fence:
            out.append(_prose(prose))
            prose = []
            index = _copy_fence(lines, index, fence, out)
        elif _ESM.match(line) and (not prose or not prose[-1].strip()):
            while index < len(lines) and lines[index].strip():  # an ESM block ends at a blank line
                index += 1
        else:
            prose.append(line)
            index += 1
    out.append(_prose(prose))
    return "\n\n".join(part for part in out if part)


def _copy_fence(lines: list[str], start: int, fence: re.Match[str], out: list[str]) -> int:
    """Copy the fenced block opening at `start`, less its indentation; the index after it."""
    indent, marker = fence.group(1), fence.group(2)
    block = [lines[start]]
    index = start + 1
    while index < len(lines):
        block.append(lines[index])
        index += 1
        closing = lines[index - 1].strip()
        if closing.startswith(marker) and not closing.strip(marker[0]):
            break
    out.append("\n".join(line[len(indent) :] if line.startswith(indent) else line.lstrip()
                         for line in block))  # fmt: skip
    return index


def _prose(lines: list[str]) -> str:
    """Prose lines without tags and comments; their indentation (JSX nesting, which MDX gives
    no meaning: it has no indented code blocks) dropped."""
    if not lines:
        return ""
    text = _without_jsx("\n".join(lines))
    return "\n".join(line.strip() for line in text.split("\n")).strip("\n")


def _without_jsx(text: str) -> str:
    """`text` with JSX tags and comments removed; code spans and autolinks kept as written."""
    parts: list[str] = []
    position = 0
    while (found := _SPECIAL.search(text, position)) is not None:
        start = found.start()
        parts.append(text[position:start])
        token = found.group()
        if token.startswith("`"):
            end = _code_span_end(text, token, found.end())
            parts.append(text[start:end])
        elif token == "{/*":
            end = _after(text, "*/}", found.end())
        elif token == "<!--":
            end = _after(text, "-->", found.end())
        elif autolink := _AUTOLINK.match(text, start):
            end = autolink.end()
            parts.append(autolink.group()[1:-1])
        elif (tag_end := _tag_end(text, start)) is not None:
            end = tag_end
            parts.append(_shown_text(text[start:end]))
        else:  # not a tag after all ("a <b" in prose): keep the character
            end = start + 1
            parts.append("<")
        position = end
    parts.append(text[position:])
    return "".join(parts)


def _code_span_end(text: str, opening: str, start: int) -> int:
    """The index after the code span that `opening` (a run of backticks) starts: it closes at
    a run of the same length in the same paragraph; unclosed, the run is only backticks."""
    paragraph_end = text.find("\n\n", start)
    closing = re.compile(f"(?<!`){opening}(?!`)")
    found = closing.search(text, start, len(text) if paragraph_end < 0 else paragraph_end)
    return start if found is None else found.end()


def _after(text: str, closing: str, start: int) -> int:
    """The index just after `closing` from `start`; the end of text when it never comes."""
    end = text.find(closing, start)
    return len(text) if end < 0 else end + len(closing)


def _tag_end(text: str, start: int) -> int | None:
    """The index after the JSX tag starting at `start` (quotes and `{...}` attribute values may
    hold `>` and span lines); None when no tag ends there."""
    name = _TAG_NAME.match(text, start)
    if name is None:
        return None
    depth = 0
    quote = ""
    index = name.end()
    while index < len(text):
        char = text[index]
        if quote:
            if char == quote:
                quote = ""
        elif char in _QUOTES:
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == ">" and depth <= 0:
            return index + 1
        elif char == "<" and depth <= 0:
            return None
        index += 1
    return None


def _shown_text(tag: str) -> str:
    """What a tag leaves behind: its `title` or `label` as a paragraph, else nothing."""
    shown = _SHOWN_ATTRIBUTE.search(tag)
    if shown and not tag.startswith("</"):
        value = (shown.group(1) or shown.group(2) or "").strip()
        if value:
            return f"\n\n{value}\n\n"
    return ""
