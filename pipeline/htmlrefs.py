"""What an HTML email body refers to, found by the standard library's parser.

Generate refuses a body that loads anything but its own cid: parts, and verify
reads every delivered body back with the same rules.
"""

from __future__ import annotations

import html as html_module
import re
import urllib.parse
from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class HtmlScan:
    """What the HTML body refers to and says, found by the stdlib HTML parser."""

    urls: list[tuple[str, str]] = field(default_factory=list)
    css: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    # (where, why) for what an email body must not hold whatever its URLs:
    # a script, an SVG animation, markup the parser cannot read.
    refused: list[tuple[str, str]] = field(default_factory=list)

    @property
    def cids(self) -> set[str]:
        """The Content-IDs that `cid:` URLs point to (RFC 2392, percent-decoded)."""
        return {
            urllib.parse.unquote(url[4:])
            for _, url in self.urls
            if url.lower().startswith("cid:")
        }


# Attributes whose value a mail client may fetch or follow.
URL_ATTRIBUTES = frozenset(
    {
        "action",
        "background",
        "cite",
        "codebase",
        "data",
        "dynsrc",
        "formaction",
        "href",
        "icon",
        "imagesrcset",
        "longdesc",
        "lowsrc",
        "manifest",
        "ping",
        "poster",
        "profile",
        "src",
        "srcset",
        "usemap",
        "xlink:href",
    }
)
_SKIPPED_TEXT = frozenset({"head", "script", "style", "title"})
_FOREIGN = frozenset({"svg", "math"})
# SVG animation can set an attribute (a link's href) to any value later.
_ANIMATION = frozenset({"set", "animate", "animatemotion", "animatetransform"})
# Browsers end a raw-text element at "</style" followed by anything up to
# ">"; the stdlib parser of some Python versions wants "</style>" exactly.
_RAW_TEXT_END = re.compile(
    r"</(style|script|title|textarea|xmp|iframe|noembed|noframes|noscript)\b",
    re.IGNORECASE,
)
# Comments and srcdoc are read as markup, to this depth.
_MAX_DEPTH = 4


class _Scanner(HTMLParser):
    def __init__(self, depth: int) -> None:
        super().__init__(convert_charrefs=True)
        self.scan = HtmlScan()
        self._depth = depth
        self._skipping: list[str] = []
        self._foreign = 0  # open <svg> and <math> elements

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scan.refused.append(("<script>", "a script"))
        if tag in _ANIMATION:
            self.scan.refused.append((f"<{tag}>", "an SVG animation"))
        if tag in _FOREIGN:
            self._foreign += 1
        # Every occurrence of a repeated attribute is read: browsers keep the
        # first, a check that kept the last could be fooled.
        for name, value in attrs:
            if value is None:
                continue
            if name.startswith("on"):
                self.scan.refused.append((f"<{tag} {name}>", "an event handler"))
            elif name in URL_ATTRIBUTES:
                self.scan.urls.append((f"<{tag} {name}>", value.strip()))
            elif name == "style":
                self.scan.css.append(value)
            elif name == "srcdoc":
                self._nested(value)  # a whole document, with its own URLs
            elif "url(" in value.lower():
                self.scan.css.append(value)  # SVG fill, filter, mask: url(...)
        first: dict[str, str] = {}
        for name, value in attrs:
            first.setdefault(name, value or "")
        refresh = first.get("http-equiv", "").strip().lower() == "refresh"
        if tag == "meta" and refresh:
            # content="5; url=https://..." or "5;https://...": the URL to go to.
            for name, value in attrs:
                if name == "content" and value and ";" in value:
                    target = value.split(";", 1)[1].strip()
                    target = _META_URL.sub("", target, count=1).strip(" '\"")
                    self.scan.urls.append(("<meta refresh>", target))
        if tag in _SKIPPED_TEXT:
            self._skipping.append(tag)

    def handle_comment(self, data: str) -> None:
        # Outlook reads the markup in conditional comments (<!--[if mso]>...
        # <![endif]-->), and nothing is lost by reading every comment's.
        self._nested(data)

    def _nested(self, html: str) -> None:
        inner = _scan(html, self._depth + 1)
        self.scan.urls += inner.urls
        self.scan.css += inner.css
        self.scan.refused += inner.refused

    def handle_endtag(self, tag: str) -> None:
        if tag in _FOREIGN and self._foreign:
            self._foreign -= 1
        if self._skipping and self._skipping[-1] == tag:
            self._skipping.pop()

    def handle_data(self, data: str) -> None:
        if self._skipping and self._skipping[-1] == "style":
            self.scan.css.append(data)
            if self._foreign:
                # Inside <svg> or <math>, a <style> holds markup and character
                # references, not raw text: read it that way too.
                self.scan.css.append(html_module.unescape(data))
                if "<" in data:
                    self._nested(data)
        elif not self._skipping:
            self.scan.text.append(data)


def scan_html(html: str) -> HtmlScan:
    return _scan(html, 0)


def _browser_end_tags(html: str) -> str:
    """Write "</style x>" and "</style/>" as "</style>", as browsers read them.

    One pass: each end tag is looked up once, and its ">" with str.find.
    """
    parts, done = [], 0
    for tag in _RAW_TEXT_END.finditer(html):
        if tag.start() < done:
            continue
        close = html.find(">", tag.end())
        if close < 0:
            break  # no ">" left: no later end tag can be complete either
        parts += [html[done : tag.start()], f"</{tag.group(1)}>"]
        done = close + 1
    return "".join(parts) + html[done:]


def _scan(html: str, depth: int) -> HtmlScan:
    if depth > _MAX_DEPTH:
        return HtmlScan(refused=[("markup", "markup nested too deep to read")])
    scanner = _Scanner(depth)
    try:
        scanner.feed(_browser_end_tags(html))
        scanner.close()
    except (AssertionError, ValueError):
        # _markupbase asserts on some malformed declarations ("<![ x").
        scanner.scan.refused.append(("markup", "markup the HTML parser cannot read"))
    return scanner.scan


# CSS tokens that can name a URL, each consuming what it matched, so one pass
# is linear however the text is shaped: a string (which a line break ends
# unclosed), url( with its unquoted URL, and @import.
_CSS_TOKEN = re.compile(
    r"""(?P<string>"[^"\n]*"?|'[^'\n]*'?)"""
    r"""|url\(\s*(?P<url>[^)"'\s]*)"""
    r"""|(?P<import>@import\s*)""",
    re.IGNORECASE,
)
_FETCHABLE = re.compile(r"\s*(?:https?:|ftp:|file:|data:|//)", re.IGNORECASE)
# A CSS escape: a backslash and 1-6 hex digits (and one optional space), or a
# backslash and any other character, which stands for itself; a backslash
# before a line break continues a string on the next line.
_CSS_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6}\s?|[^\n\r\f0-9a-fA-F])")
_CSS_CONTINUATION = re.compile(r"\\(?:\r\n|[\n\r\f])")
_META_URL = re.compile(r"^url\s*=", re.IGNORECASE)


def _css_unescape(css: str) -> str:
    """`u\\72l(` is `url(` to a CSS parser: undo escapes before looking."""

    def one(match: re.Match[str]) -> str:
        text = match.group(1)
        if text[0] in "0123456789abcdefABCDEF":
            code = int(text.strip(), 16)
            return chr(code) if 0 < code <= 0x10FFFF else "\ufffd"
        return text

    return _CSS_ESCAPE.sub(one, _CSS_CONTINUATION.sub("", css))


# Comments and strings, each consumed whole (an unclosed one to its end), so
# a quote in a comment or an escaped quote in a string ends nothing.
_CSS_LEX = re.compile(
    r"(?P<comment>/\*(?:[^*]|\*(?!/))*(?:\*/)?)"
    r"""|"(?P<dq>(?:[^"\\\n]|\\[\s\S])*)"?"""
    r"""|'(?P<sq>(?:[^'\\\n]|\\[\s\S])*)'?"""
)


def _css_normalized(css: str) -> str:
    """The CSS with comments dropped, escapes undone, and every string written
    again as "...", holding no quote: what the URL tokens below can read."""
    out, done = [], 0
    for token in _CSS_LEX.finditer(css):
        # Between tokens there is no quote, unless an escape makes one: such
        # a character is part of a name, not a string's start.
        outside = _css_unescape(css[done : token.start()])
        out.append(outside.replace('"', "_").replace("'", "_"))
        body = token.group("dq") if token.group("dq") is not None else token.group("sq")
        if body is not None:
            text = _css_unescape(body).replace('"', "%22").replace("'", "%27")
            out.append('"' + text.replace("\n", " ") + '"')
        else:
            out.append(" ")  # a comment
        done = token.end()
    outside = _css_unescape(css[done:])
    out.append(outside.replace('"', "_").replace("'", "_"))
    return "".join(out)


def css_urls(css: str) -> list[str]:
    """The URLs a stylesheet or style attribute loads: url(...), @import, and
    quoted strings naming a fetchable place (image-set), escapes undone."""
    found = []
    url_string_at = -1  # where a string right after url( or @import starts
    for token in _CSS_TOKEN.finditer(_css_normalized(css)):
        string = token.group("string")
        if string is not None:
            value = string[1:].removesuffix(string[0])
            if token.start() == url_string_at or _FETCHABLE.match(value):
                found.append(value.strip())
        elif token.group("url"):
            found.append(token.group("url"))
        else:  # url( with nothing unquoted, or @import: a string may follow
            url_string_at = token.end()
    return found


def html_urls(scan: HtmlScan) -> list[tuple[str, str]]:
    """Every URL the HTML refers to: attributes, srcset entries and CSS url()."""
    urls = []
    for where, value in scan.urls:
        if where.endswith("srcset>"):
            urls += [
                (where, entry.split()[0]) for entry in value.split(",") if entry.split()
            ]
        elif where.endswith(" ping>"):
            urls += [(where, url) for url in value.split()]
        else:
            urls.append((where, value))
    for css in scan.css:
        urls += [("CSS", url) for url in css_urls(css)]
    return urls


def refusals(scan: HtmlScan, *, data_uris: bool = True) -> list[tuple[str, str]]:
    """(where, what) for each thing an email body must not hold, `what` safe to
    show: refused markup, then URLs but cid:, mailto: and #fragments (and
    data: URIs unless `data_uris` is False)."""
    found = list(scan.refused)
    for where, url in html_urls(scan):
        scheme = url.strip().lower().split(":", 1)[0] if ":" in url else ""
        if url.startswith("#") or scheme in ("cid", "mailto"):
            continue
        if scheme == "data" and not data_uris:
            continue
        found.append((where, shown_url(url)))
    return found


def first_refused(html: str) -> tuple[str, str] | None:
    """The first thing of `html` an email body must not hold: (where, what).

    Allowed: cid: (the message's own parts), mailto: and #fragments. A data:
    URI is refused (Gmail drops those), and so is anything a mail client would
    fetch or follow from elsewhere, and a script or an SVG animation.
    """
    found = refusals(scan_html(html))
    return found[0] if found else None


def shown_url(url: str) -> str:
    """A URL as a message may quote it: the scheme and the host, no more.

    The path and the query may hold what a template put there (an account
    code in a tracking link), and the user part a password.
    """
    text = url.strip()
    if text.lower().startswith("data:"):
        return "a data: URI"
    try:
        parts = urllib.parse.urlsplit(text)
        host = parts.hostname or ""
    except ValueError:
        parts, host = None, ""
    if parts is not None and parts.scheme and host:
        return f"{parts.scheme}://{host}/..."
    if parts is not None and host:
        return f"//{host}/..."
    if parts is not None and parts.scheme:
        return f"a {parts.scheme}: URL"
    return "a relative URL"
