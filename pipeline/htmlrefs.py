"""What an HTML email body refers to, read as a browser reads it.

Generate refuses a body that loads anything but its own cid: parts, and verify
reads every delivered body back with the same rules. The HTML is parsed by
tinyhtml5 (the WHATWG tree builder: raw-text end tags, foreign content,
repeated attributes and comments as a browser sees them) and the CSS by
tinycss2 (tokens with escapes, comments and line ends as the CSS syntax says);
both already come with WeasyPrint.
"""

from __future__ import annotations

import io
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

import tinycss2
from tinyhtml5.parser import HTMLParser


@dataclass
class HtmlScan:
    """What the HTML body refers to and says."""

    urls: list[tuple[str, str]] = field(default_factory=list)
    css: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    # (where, why) for what an email body must not hold whatever its URLs:
    # a script, an event handler, an SVG animation, markup nested too deep.
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
    }
)
_HTML = "{http://www.w3.org/1999/xhtml}"
_SVG = "{http://www.w3.org/2000/svg}"
# Elements whose text is not the body's text.
_NOT_TEXT = frozenset({"head", "script", "style", "title", "template"})
# SVG animation can set an attribute (a link's href) to any value later.
_ANIMATION = frozenset(
    {"set", "animate", "animatemotion", "animatetransform", "animatecolor", "discard"}
)
# Comments and srcdoc are read as markup (Outlook reads conditional
# comments), to this depth.
_MAX_DEPTH = 4
# The refresh URL of <meta http-equiv=refresh content="5; url=...">, as the
# HTML standard's declarative refresh steps find it.
_REFRESH = re.compile(
    r"""^\s*[\d.]*\s*[;,]?\s*(?:url\s*=\s*)?['"]?([^'"]*)""", re.IGNORECASE
)
# CSS functions whose bare strings are images to load.
_IMAGE_FUNCTIONS = frozenset({"image-set", "-webkit-image-set", "image", "cross-fade"})
# Above this, a body is refused unread: the parser's time grows faster than
# its size, and Gmail clips a body near 102 KB anyway.
MAX_HTML_CHARS = 200_000


def scan_html(html: str) -> HtmlScan:
    scan = HtmlScan()
    if len(html) > MAX_HTML_CHARS:
        scan.refused.append(("HTML", f"a body over {MAX_HTML_CHARS:,} characters"))
        return scan
    _read(html, scan, depth=0, text=True)
    return scan


def _read(html: str, scan: HtmlScan, *, depth: int, text: bool) -> None:
    if depth > _MAX_DEPTH:
        scan.refused.append(("markup", "markup nested too deep to read"))
        return
    # A file-like object, never the str: tinyhtml5.parse reads a short str
    # that names an existing file from disk. The full tree keeps the
    # comments before <html>.
    root = HTMLParser(True).parse(io.StringIO(html), full_tree=True)
    for element in root.iter():
        if _is_comment(element):
            _read(element.text or "", scan, depth=depth + 1, text=False)
        elif isinstance(element.tag, str):
            _element(element, scan, depth)
    if text:
        scan.text += _texts(root)


def _element(element: ElementTree.Element, scan: HtmlScan, depth: int) -> None:
    namespace, _, tag = str(element.tag).rpartition("}")
    tag = tag.lower()
    svg = namespace + "}" == _SVG
    if tag == "script":
        scan.refused.append(("<script>", "a script"))
    if svg and tag in _ANIMATION:
        scan.refused.append((f"<{tag}>", "an SVG animation"))
    if tag == "style":
        scan.css.append("".join(element.itertext()))
    for qualified, value in element.attrib.items():
        name = qualified.rpartition("}")[2].lower()  # xlink:href is href
        if name.startswith("on"):
            scan.refused.append((f"<{tag} {name}>", "an event handler"))
        elif name in URL_ATTRIBUTES:
            scan.urls.append((f"<{tag} {name}>", value.strip()))
        elif name == "style":
            scan.css.append(value)
        elif name == "srcdoc":
            _read(value, scan, depth=depth + 1, text=False)
        elif svg:
            # fill, filter, mask, clip-path...: url(...) as in CSS.
            scan.urls += [(f"<{tag} {name}>", url) for url in css_urls(value)]
    if tag == "meta" and element.get("http-equiv", "").strip().lower() == "refresh":
        target = _REFRESH.match(element.get("content", ""))
        if target and target.group(1).strip():
            scan.urls.append(("<meta refresh>", target.group(1).strip()))


def _is_comment(element: ElementTree.Element) -> bool:
    # ElementTree marks a comment by its tag: the Comment factory, not a str.
    return not isinstance(element.tag, str)


def _texts(root: ElementTree.Element) -> list[str]:
    """The body's text in document order, without head, script and style.

    A loop with its own stack: markup may nest deeper than Python recurses.
    """
    found: list[str] = []
    stack: list[ElementTree.Element | str] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)  # a tail, after its element's content
            continue
        tag = str(item.tag).rpartition("}")[2].lower()
        if _is_comment(item) or tag in _NOT_TEXT:
            if item.tail:
                stack.append(item.tail)
            continue
        if item.tail:
            stack.append(item.tail)
        stack.extend(reversed(list(item)))
        if item.text:
            stack.append(item.text)
    return found


def css_urls(css: str) -> list[str]:
    """The URLs a stylesheet, a style attribute or a presentation attribute
    loads: url(...) and src(...), @import, and the strings of image-set()
    and its kin. A loop with its own stack: blocks may nest deeper than
    Python recurses."""
    found: list[str] = []
    # (tokens left, strings are URLs here, the last token was @import)
    stack: list[tuple[Iterator[Any], bool, list[bool]]] = [
        (
            iter(tinycss2.parse_component_value_list(css, skip_comments=True)),
            False,
            [False],
        )
    ]
    while stack:
        tokens, strings_are_urls, after_import = stack[-1]
        token = next(tokens, None)
        if token is None:
            stack.pop()
            continue
        kind = token.type
        if kind == "url":
            found.append(token.value.strip())
        elif kind == "string":
            if strings_are_urls or after_import[0]:
                found.append(token.value.strip())
        elif kind == "function":
            name = token.lower_name
            if name in ("url", "src"):
                strings = [t for t in token.arguments if t.type == "string"]
                found += [t.value.strip() for t in strings[:1]]
                rest = [t for t in token.arguments if t is not (strings or [None])[0]]
                stack.append((iter(rest), False, [False]))
            else:
                stack.append((iter(token.arguments), name in _IMAGE_FUNCTIONS, [False]))
        elif kind in ("() block", "[] block", "{} block"):
            stack.append((iter(token.content), strings_are_urls, [False]))
        if kind not in ("whitespace", "comment"):
            after_import[0] = kind == "at-keyword" and token.lower_value == "import"
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
    fetch or follow from elsewhere, a script, an event handler and an SVG
    animation.
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
