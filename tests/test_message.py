"""Tests of MIME assembly: the tree, the QR by cid, headers and Message-ID."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.policy
import re
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from pipeline.errors import RenderError
from pipeline.htmlrefs import first_refused
from pipeline.message import build_message, kit_filename, make_message_id, qr_cid
from pipeline.render.context import EmailContext
from pipeline.render.env import Templates
from pipeline.render.kit import KitRenderer
from pipeline.render.qr import qr_png, qr_svg

from conftest import make_context as base_context

ACCOUNT_ID = "0f8e9a3c-5b2d-4e6f-8a1b-3c5d7e9f0a2b"
DOMAIN = "mail.example.com"
DATE = dt.datetime(2025, 3, 14, 9, 30, tzinfo=dt.UTC)


def make_context(seed: int = 7, **changes: object) -> EmailContext:
    """An account whose name and state exercise headers: non-ASCII, a reset."""
    details: dict[str, object] = {
        "account_id": ACCOUNT_ID,
        "email": "zoe@example.com",
        "name": "Zoë Ünal-Brontë",
        "key_generation": 2,
        "password_epoch": 3,
        "reason": "reset",
        "subject": "Your new Acme Vault account key",
    }
    return base_context(seed, **{**details, **changes})


@dataclasses.dataclass(frozen=True)
class Parts:
    """The rendered pieces of one email, as build_message takes them."""

    ctx: EmailContext
    html: str
    text: str
    png: bytes
    pdf: bytes
    message_id: str

    def build(self, **changes: object) -> bytes:
        ctx = dataclasses.replace(self.ctx, **changes)  # type: ignore[arg-type]
        return build_message(
            ctx, self.html, self.text, self.png, self.pdf, self.message_id, DATE
        )


@pytest.fixture(scope="module")
def parts() -> Parts:
    ctx = make_context()
    message_id = make_message_id(
        ctx.account_id, ctx.key_generation, ctx.password_epoch, DOMAIN
    )
    templates = Templates()
    return Parts(
        ctx=ctx,
        html=templates.email_html(ctx, qr_cid(message_id)),
        text=templates.email_text(ctx),
        png=qr_png(ctx.qr_payload),
        pdf=KitRenderer(templates).render(ctx, qr_svg(ctx.qr_payload)),
        message_id=message_id,
    )


@pytest.fixture(scope="module")
def raw(parts: Parts) -> bytes:
    return parts.build()


@pytest.fixture(scope="module")
def parsed(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def tree(part: EmailMessage, depth: int = 0) -> list[tuple[int, str]]:
    """The content types of the MIME tree, depth first, with their depth."""
    rows = [(depth, part.get_content_type())]
    if part.is_multipart():
        for child in part.iter_parts():
            assert isinstance(child, EmailMessage)
            rows.extend(tree(child, depth + 1))
    return rows


def find(message: EmailMessage, content_type: str) -> EmailMessage:
    matches = [p for p in message.walk() if p.get_content_type() == content_type]
    assert len(matches) == 1, content_type
    part = matches[0]
    assert isinstance(part, EmailMessage)
    return part


def test_the_mime_tree_is_exact(parsed: EmailMessage) -> None:
    assert tree(parsed) == [
        (0, "multipart/mixed"),
        (1, "multipart/alternative"),
        (2, "text/plain"),
        (2, "multipart/related"),
        (3, "text/html"),
        (3, "image/png"),
        (1, "application/pdf"),
    ]


def test_the_html_refers_to_the_image_by_its_content_id(
    parsed: EmailMessage, parts: Parts
) -> None:
    html = find(parsed, "text/html").get_content()
    image = find(parsed, "image/png")

    cids = re.findall(r'src="cid:([^"]+)"', html)
    assert cids == [image["Content-ID"].strip("<>")]
    assert image.get_content_disposition() == "inline"
    assert image.get_filename() == "qr.png"
    assert image.get_content() == parts.png


def test_the_html_has_no_data_uris(parsed: EmailMessage) -> None:
    assert "data:" not in find(parsed, "text/html").get_content()


def test_the_kit_is_an_attachment_with_a_safe_name(
    parsed: EmailMessage, parts: Parts
) -> None:
    kit = find(parsed, "application/pdf")

    assert kit.get_content_disposition() == "attachment"
    assert kit.get_filename() == "acme-vault-kit-2025-03-14.pdf"
    assert kit.get_content() == parts.pdf


def test_the_kit_filename_drops_unsafe_characters() -> None:
    ctx = make_context(product="../Acme Vault: <Ünïcode>\\")

    assert kit_filename(ctx) == "acme-vault-n-code-kit-2025-03-14.pdf"


def test_the_text_body_holds_every_code_group(
    parsed: EmailMessage, parts: Parts
) -> None:
    text = find(parsed, "text/plain").get_content()

    for group in parts.ctx.account_code_groups:
        assert group in text


def test_the_headers_round_trip(parsed: EmailMessage, parts: Parts) -> None:
    assert parsed["From"] == parts.ctx.sender
    assert parsed["To"].addresses[0].display_name == "Zoë Ünal-Brontë"
    assert parsed["To"].addresses[0].addr_spec == "zoe@example.com"
    assert parsed["Subject"] == parts.ctx.subject
    assert parsed["Date"].datetime == DATE
    assert parsed["Message-ID"] == parts.message_id
    assert parsed["MIME-Version"] == "1.0"


def test_non_ascii_headers_are_encoded(raw: bytes) -> None:
    head = raw.split(b"\r\n\r\n", 1)[0]

    assert head.isascii()
    assert b"=?utf-8?" in head


def test_only_the_top_part_has_a_mime_version(parsed: EmailMessage) -> None:
    versions = [part["MIME-Version"] for part in parsed.walk()]

    assert versions[0] == "1.0"
    assert not any(versions[1:])


def test_a_non_ascii_domain_is_sent_as_idna(parts: Parts) -> None:
    raw = parts.build(email="zoe@bücher.example")

    parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert parsed["To"].addresses[0].domain == "xn--bcher-kva.example"


def test_a_non_ascii_local_part_is_refused(parts: Parts) -> None:
    with pytest.raises(RenderError, match=r'"email".*SMTPUTF8'):
        parts.build(email="zoë@example.com")


def test_the_same_inputs_give_the_same_bytes(parts: Parts, raw: bytes) -> None:
    assert parts.build() == raw


def test_the_message_id_is_deterministic() -> None:
    first = make_message_id(ACCOUNT_ID, 2, 3, DOMAIN)

    assert first == make_message_id(ACCOUNT_ID.upper(), 2, 3, DOMAIN)
    assert first == "<km1.0f8e9a3c5b2d4e6f8a1b3c5d7e9f0a2b.g2.e3@mail.example.com>"
    assert first != make_message_id(ACCOUNT_ID, 2, 4, DOMAIN)
    assert first != make_message_id(ACCOUNT_ID, 3, 3, DOMAIN)


def test_the_qr_cid_follows_the_message_id() -> None:
    message_id = make_message_id(ACCOUNT_ID, 1, 1, DOMAIN)

    assert qr_cid(message_id) == (
        "qr.km1.0f8e9a3c5b2d4e6f8a1b3c5d7e9f0a2b.g1.e1@mail.example.com"
    )


@pytest.mark.parametrize(
    ("account_id", "domain", "message"),
    [
        ("../../etc/passwd", DOMAIN, "account_id"),
        (ACCOUNT_ID, "mail.example.com>\r\nBcc: x@evil", "domain"),
        (ACCOUNT_ID, "", "domain"),
    ],
)
def test_a_bad_message_id_input_is_refused(
    account_id: str, domain: str, message: str
) -> None:
    with pytest.raises(RenderError, match=message):
        make_message_id(account_id, 1, 1, domain)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "Zoë\r\nBcc: victim@example.com"),
        ("subject", "Hello\nBcc: victim@example.com"),
        ("sender", "Acme <noreply@example.com>\rBcc: victim@example.com"),
        ("email", "zoe@example.com\n"),
        ("name", "Zoë\x00"),
        ("subject", "Hello\u2028there"),
        ("name", "Zoë\x85"),
    ],
)
def test_control_characters_in_headers_are_refused(
    parts: Parts, field: str, value: str
) -> None:
    with pytest.raises(RenderError, match=f'field "{field}": control character'):
        parts.build(**{field: value})


def test_html_without_the_qr_reference_is_refused(parts: Parts) -> None:
    html = parts.html.replace("cid:", "ref:")

    with pytest.raises(RenderError, match="does not show the QR code"):
        build_message(
            parts.ctx, html, parts.text, parts.png, parts.pdf, parts.message_id, DATE
        )


def test_the_message_is_small(raw: bytes, parsed: EmailMessage) -> None:
    html = find(parsed, "text/html").get_content()

    assert len(html.encode()) < 90 * 1024
    assert len(raw) < 100 * 1024


def test_what_an_email_body_may_hold_is_not_refused() -> None:
    html = (
        "<!-- a plain comment --><style>p { font-family: 'Helvetica', sans-serif;"
        " } p::after { content: 'note: kept' }</style>"
        '<p style="color: #333">Hi <a href="mailto:help@example.com">help</a>'
        ' <a href="#top">top</a> <img src="cid:qr@example.com" alt="QR"></p>'
    )
    assert first_refused(html) is None


@pytest.mark.parametrize(
    ("html", "where"),
    [
        # Where the stdlib parser and a browser disagree.
        ("<style></style x><img src=https://e.example/p.gif></style>", "<img src>"),
        ("<style></style/><img src=https://e.example/p.gif>", "<img src>"),
        ("<svg><style><img src=https://e.example/p.gif></style></svg>", "<img src>"),
        (
            "<svg><style>@import &quot;https://e.example/x.css&quot;</style></svg>",
            "CSS",
        ),
        # CSS a parser reads as a URL.
        ('<style>@import "ht\\\ntps://e.example/a.css";</style>', "CSS"),
        ('<p style="background: u\\72l(https://e.example/x.gif)">.</p>', "CSS"),
        (
            "<p style='background: image-set(\"https://e.example/x.png\" 1x)'>.</p>",
            "CSS",
        ),
        # Attributes and elements that fetch or change where a link goes.
        (
            '<meta http-equiv="refresh" content="0;https://e.example/">',
            "<meta refresh>",
        ),
        (
            '<link rel="preload" imagesrcset="https://e.example/a.png 1x">',
            "<link imagesrcset>",
        ),
        ('<a href="mailto:a@example.com" ping="https://e.example/p">a</a>', "<a ping>"),
        (
            '<svg><a><set attributeName="href" to="https://e.example/"/></a></svg>',
            "<set>",
        ),
        ("<script>fetch('/x')</script>", "<script>"),
        # Comments are read as markup, as Outlook reads conditional ones.
        (
            '<!--[if mso]><v:image src="https://e.example/o.gif"/><![endif]-->',
            "<v:image src>",
        ),
        # A quote in a CSS comment or an escaped one in a string ends nothing.
        (
            "<style>/* don't */ p{background:url(https://e.example/p.png)}</style>",
            "CSS",
        ),
        (
            '<style>a{content:"\\""; background:url(https://e.example/p.png)}</style>',
            "CSS",
        ),
        # Every occurrence of a repeated attribute counts.
        ('<img src="https://e.example/p.png" src="cid:qr@example.com">', "<img src>"),
        (
            '<div style="background:url(https://e.example/p.png)" style="color:red">',
            "CSS",
        ),
        # Event handlers, and url() in SVG presentation attributes.
        ('<img src="cid:qr@example.com" onerror="fetch(1)">', "<img onerror>"),
        ('<svg><rect fill="url(https://e.example/x.svg#g)"/></svg>', "<rect fill>"),
    ],
)
def test_references_a_browser_would_follow_are_refused(html: str, where: str) -> None:
    refused = first_refused(html)
    assert refused is not None and refused[0] == where


@pytest.mark.parametrize(
    "html",
    [
        '<meta name="format-detection" content="telephone=no, url=no">',
        "<style>/* it's a note */ td > p { color: red } @media (max-width: 600px)"
        " { p { margin: 0 } } @font-face { font-family: X; src: local('Arial') }"
        "</style>",
        "<!--[if !mso]><!--><p>shown</p><!--<![endif]-->",
        '<p style="background: url(cid:bg@example.com)">.</p>',
        '<img src="cid:qr@example.com" alt="see url(x) here" title="Call url(555)">',
        "<!-- <![ note ] --><p>an odd comment</p>",
    ],
    ids=["format-detection", "css", "not-mso", "cid-background", "text", "comment"],
)
def test_email_boilerplate_is_not_a_reference(html: str) -> None:
    assert first_refused(html) is None


def test_markup_that_names_a_file_is_not_read_from_disk(tmp_path: Path) -> None:
    # A short string that names a file is a path to tinyhtml5.parse: a comment
    # or srcdoc holding one must be read as the text it is.
    trap = tmp_path / "trap.html"
    trap.write_text('<img src="https://e.example/read-from-disk.gif">')
    assert first_refused(f"<p>x</p><!--{trap}-->") is None
    assert first_refused(f'<iframe srcdoc="{trap}"></iframe>') is None


@pytest.mark.parametrize(
    "html",
    ["<div>" * 5000, '<p style="' + "(" * 5000 + '">.</p>'],
    ids=["nested-markup", "nested-css"],
)
def test_deep_nesting_is_read_without_recursing(html: str) -> None:
    assert first_refused(html) is None


def test_a_body_too_large_to_read_is_refused_unread() -> None:
    refused = first_refused("<p>" + "x" * 250_000 + "</p>")
    assert refused == ("HTML", "a body over 200,000 characters")


def test_css_strings_that_are_not_loaded_are_not_urls() -> None:
    css = (
        '<style>a[href^="https:"] { color: red } p::after { content: "http://x" }'
        ' @namespace svg "http://www.w3.org/2000/svg";</style>'
    )
    assert first_refused(css) is None
