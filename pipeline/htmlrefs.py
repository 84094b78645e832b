"""What an HTML email body refers to, found by the standard library's parser.

Generate refuses a body that loads anything but its own cid: parts, and verify
reads every delivered body back with the same rules.
"""

from __future__ import annotations

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
        "longdesc",
        "lowsrc",
        "manifest",
        "poster",
        "profile",
        "src",
        "srcset",
        "usemap",
        "xlink:href",
    }
)
_SKIPPED_TEXT = frozenset({"head", "script", "style", "title"})


class _Scanner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scan = HtmlScan()
        self._skipping: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in URL_ATTRIBUTES:
                self.scan.urls.append((f"<{tag} {name}>", value.strip()))
            elif name == "style":
                self.scan.css.append(value)
            elif name == "srcdoc":
                self._nested(value)  # a whole document, with its own URLs
            elif name == "content" and tag == "meta" and _META_URL.search(value):
                self.scan.urls.append(("<meta content>", value.strip()))
        if tag in _SKIPPED_TEXT:
            self._skipping.append(tag)

    def handle_comment(self, data: str) -> None:
        # Outlook reads the markup in conditional comments (<!--[if mso]>...
        # <![endif]-->), and nothing is lost by reading every comment's.
        self._nested(data)

    def _nested(self, html: str) -> None:
        inner = scan_html(html)
        self.scan.urls += inner.urls
        self.scan.css += inner.css

    def handle_endtag(self, tag: str) -> None:
        if self._skipping and self._skipping[-1] == tag:
            self._skipping.pop()

    def handle_data(self, data: str) -> None:
        if self._skipping and self._skipping[-1] == "style":
            self.scan.css.append(data)
        elif not self._skipping:
            self.scan.text.append(data)


def scan_html(html: str) -> HtmlScan:
    scanner = _Scanner()
    scanner.feed(html)
    scanner.close()
    return scanner.scan


_CSS_URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)""", re.IGNORECASE | re.DOTALL)
_CSS_IMPORT = re.compile(r"""@import\s+(['"])(.*?)\1""", re.IGNORECASE)
# Any quoted string that names a fetchable place: image-set("..."), and
# whatever else a future CSS may load from a bare string.
_CSS_STRING_URL = re.compile(
    r"""(['"])\s*((?:https?:|ftp:|file:|data:|//)[^'"]*)\1""", re.IGNORECASE
)
# A CSS escape: a backslash and 1-6 hex digits (and one optional space), or a
# backslash and any other character, which stands for itself.
_CSS_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6}\s?|[^\n0-9a-fA-F])")
_META_URL = re.compile(r"url\s*=", re.IGNORECASE)


def _css_unescape(css: str) -> str:
    """`u\\72l(` is `url(` to a CSS parser: undo escapes before looking."""

    def one(match: re.Match[str]) -> str:
        text = match.group(1)
        if text[0] in "0123456789abcdefABCDEF":
            code = int(text.strip(), 16)
            return chr(code) if 0 < code <= 0x10FFFF else "\ufffd"
        return text

    return _CSS_ESCAPE.sub(one, css)


def css_urls(css: str) -> list[str]:
    """The URLs a stylesheet or style attribute loads: url(...), @import, and
    quoted strings naming a fetchable place (image-set), escapes undone."""
    css = _css_unescape(css)
    found = [match.group(2).strip() for match in _CSS_URL.finditer(css)]
    found += [match.group(2).strip() for match in _CSS_IMPORT.finditer(css)]
    found += [match.group(2).strip() for match in _CSS_STRING_URL.finditer(css)]
    return found


def html_urls(scan: HtmlScan) -> list[tuple[str, str]]:
    """Every URL the HTML refers to: attributes, srcset entries and CSS url()."""
    urls = []
    for where, value in scan.urls:
        if where.endswith(" srcset>"):
            urls += [
                (where, entry.split()[0]) for entry in value.split(",") if entry.split()
            ]
        elif where == "<meta content>":
            url = _META_URL.split(value, maxsplit=1)[1]
            urls.append((where, url.strip(" '\"")))
        else:
            urls.append((where, value))
    for css in scan.css:
        urls += [("CSS", url) for url in css_urls(css)]
    return urls


def first_refused(html: str) -> tuple[str, str] | None:
    """The first URL of `html` an email body must not hold: (where, url).

    Allowed: cid: (the message's own parts), mailto: and #fragments. A data:
    URI is refused (Gmail drops those), and so is anything a mail client would
    fetch or follow from elsewhere.
    """
    for where, url in html_urls(scan_html(html)):
        scheme = url.strip().lower().split(":", 1)[0] if ":" in url else ""
        if url.startswith("#") or scheme in ("cid", "mailto"):
            continue
        return where, url
    return None


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
    if parts is not None and parts.scheme:
        return f"a {parts.scheme}: URL"
    return "a relative URL"
