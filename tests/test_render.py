"""Tests of the render stage: QR codes, templates, the kit PDF and its URL lock."""

from __future__ import annotations

import ctypes
import dataclasses
import datetime as dt
import http.server
import io
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import pytest
import zxingcpp
from PIL import Image, ImageOps

from pipeline.errors import FetchRefusedError, RenderError
from pipeline.render.context import EmailContext
from pipeline.render.env import DEFAULT_TEMPLATES, Templates
from pipeline.render.kit import KitRenderer
from pipeline.render.qr import (
    ERROR_CORRECTION,
    PNG_MODULE_PX,
    QUIET_ZONE,
    qr_png,
    qr_svg,
    qr_version,
)

from conftest import make_context

QR_CID = "qr.km1.0f8e9a3c5b2d4e6f8a1b3c5d7e9f0a2b.g1.e1@mail.example.com"


def normalize(text: str) -> str:
    """Drop what PDF text extraction inserts: whitespace, hyphens, \\x02."""
    return "".join(
        char for char in text if not char.isspace() and char not in "-\u2010\u00ad\x02"
    )


def pdf_font_names(pdf: bytes) -> set[str]:
    """The base font names of the text on the first page, e.g. 'ABCDEF+Kit-Mono'."""
    document = pdfium.PdfDocument(pdf)
    names: set[str] = set()
    try:
        for text_object in document[0].get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_TEXT]):
            font = pdfium_c.FPDFTextObj_GetFont(text_object.raw)
            buffer = ctypes.create_string_buffer(256)
            pdfium_c.FPDFFont_GetBaseFontName(font, buffer, len(buffer))
            names.add(buffer.value.decode())
    finally:
        document.close()
    return names


def decode_qr(image: Image.Image) -> list[zxingcpp.Barcode]:
    return [
        barcode
        for barcode in zxingcpp.read_barcodes(image)
        if barcode.format == zxingcpp.BarcodeFormat.QRCode
    ]


@pytest.fixture(scope="module")
def ctx() -> EmailContext:
    return make_context()


@pytest.fixture(scope="module")
def kit_renderer() -> KitRenderer:
    return KitRenderer()


@pytest.fixture(scope="module")
def kit_pdf(ctx: EmailContext, kit_renderer: KitRenderer) -> bytes:
    return kit_renderer.render(ctx, qr_svg(ctx.qr_payload))


class CountingHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a tiny stylesheet and counts the requests."""

    requests = 0

    def do_GET(self) -> None:
        type(self).requests += 1
        body = b"body { color: red; }"
        self.send_response(200)
        self.send_header("Content-Type", "text/css")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[CountingHandler]]]:
    """A real HTTP server on 127.0.0.1; yields its base URL and request counter."""
    handler = type("Handler", (CountingHandler,), {"requests": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def user_folder(tmp_path: Path, **files: str) -> Path:
    """A user template folder holding `files` (name with "_" for ".")."""
    folder = tmp_path / "theme"
    folder.mkdir()
    for name, text in files.items():
        (folder / name.replace("_", ".")).write_text(text)
    return folder


KIT_WITH = """<html><head><title>kit</title>
<style>svg {{ width: 50mm; height: 50mm }}</style></head><body>
<p>{{{{ account_code }}}}</p>{{{{ qr_svg }}}}
{extra}
</body></html>"""


# QR code


def test_qr_png_decodes_to_the_exact_payload(ctx: EmailContext) -> None:
    image = Image.open(io.BytesIO(qr_png(ctx.qr_payload)))

    found = decode_qr(image)

    assert [barcode.text for barcode in found] == [ctx.qr_payload]
    assert found[0].ec_level == ERROR_CORRECTION == "M"
    extra = found[0].extra
    assert isinstance(extra, dict)
    assert extra["Version"] == "6"


def test_qr_png_is_opaque_black_on_white(ctx: EmailContext) -> None:
    image = Image.open(io.BytesIO(qr_png(ctx.qr_payload)))

    assert image.mode == "L"
    assert "transparency" not in image.info
    assert {color for _, color in image.getcolors() or []} == {0, 255}
    assert image.getpixel((0, 0)) == 255


def test_qr_png_has_a_quiet_zone_of_four_modules(ctx: EmailContext) -> None:
    image = Image.open(io.BytesIO(qr_png(ctx.qr_payload))).convert("L")
    width, height = image.size
    bbox = ImageOps.invert(image).getbbox()
    assert bbox is not None
    left, top = bbox[0], bbox[1]
    right, bottom = width - bbox[2], height - bbox[3]

    # The top-left finder pattern is 7 modules wide: measure a module from it.
    finder = 0
    while image.getpixel((left + finder, top)) == 0:
        finder += 1
    module = finder / 7

    assert module == PNG_MODULE_PX
    assert min(left, top, right, bottom) / module >= QUIET_ZONE == 4


def test_a_136_character_payload_is_version_6(ctx: EmailContext) -> None:
    assert len(ctx.qr_payload) == 136

    assert qr_version(ctx.qr_payload) == 6


def test_a_payload_outside_alphanumeric_mode_still_encodes() -> None:
    payload = "km1:lowercase and ümlauts"

    found = decode_qr(Image.open(io.BytesIO(qr_png(payload))))

    assert [barcode.text for barcode in found] == [payload]


def test_qr_svg_is_a_scalable_path_on_white(ctx: EmailContext) -> None:
    svg = qr_svg(ctx.qr_payload)

    side = 41 + 2 * QUIET_ZONE
    assert f'viewBox="0 0 {side} {side}"' in svg
    assert f'<rect width="{side}" height="{side}" fill="#ffffff"/>' in svg
    assert svg.count("<path") == 1
    assert "<image" not in svg and "data:" not in svg


def test_an_empty_payload_is_refused() -> None:
    with pytest.raises(RenderError, match="empty"):
        qr_png("")


def test_a_payload_too_long_for_any_qr_code_is_refused() -> None:
    with pytest.raises(RenderError, match="does not fit"):
        qr_version("A" * 5000)


# Templates


def test_the_default_theme_sits_beside_the_package() -> None:
    assert (DEFAULT_TEMPLATES / "email.html.j2").is_file()
    assert (DEFAULT_TEMPLATES / "fonts" / "JetBrainsMono-Bold.ttf").is_file()


def test_email_html_shows_the_qr_by_cid_and_nothing_external(
    ctx: EmailContext,
) -> None:
    html = Templates().email_html(ctx, QR_CID)

    assert f'src="cid:{QR_CID}"' in html
    assert re.search(r'<img [^>]*alt="[^"]+"', html)
    assert "data:" not in html
    assert "<script" not in html.lower()
    assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", html)
    assert len(html.encode()) < 90 * 1024


def test_email_html_holds_every_code_group_in_its_own_cell(
    ctx: EmailContext,
) -> None:
    html = Templates().email_html(ctx, QR_CID)

    for group in ctx.account_code_groups:
        assert re.search(rf">{group}</td>", html)
    assert "monospace" in html


@pytest.mark.parametrize(
    ("reason", "opening"),
    [
        ("new", "Welcome to Acme Vault"),
        ("change", "password was changed"),
        ("reset", "password was reset"),
        ("resend", "copy of your authentication email"),
    ],
)
def test_the_reason_changes_the_opening(reason: str, opening: str) -> None:
    ctx = make_context(reason=reason)
    templates = Templates()

    html = templates.email_html(ctx, QR_CID)
    text = templates.email_text(ctx)

    assert opening in html
    assert opening in " ".join(text.split())


def test_email_says_what_the_user_must_know(ctx: EmailContext) -> None:
    templates = Templates()
    for body in (templates.email_html(ctx, QR_CID), templates.email_text(ctx)):
        flat = " ".join(body.split()).lower()
        for phrase in (
            "scan the qr code",
            "upload the qr code image",
            "type the account code",
            "keep this email and the pdf safe",
            "cannot recover a lost key",
            "never ask for your password",
            "invalid qr code",
            "before a password change",
            "before a password reset",
            "issued on 14 march 2025",
        ):
            assert phrase in flat, phrase


def test_email_text_keeps_lines_short_and_the_code_in_rows(
    ctx: EmailContext,
) -> None:
    text = Templates().email_text(ctx)
    lines = text.splitlines()

    assert max(len(line) for line in lines) <= 78
    groups = ctx.account_code_groups
    for start in range(0, len(groups), 3):
        row = "-".join(groups[start : start + 3])
        assert any(line.strip() == row for line in lines), row


def test_html_escapes_the_account_fields_and_text_keeps_them() -> None:
    name = '<script>alert(1)</script> & "O\'Brien"'
    ctx = make_context(name=name)
    templates = Templates()

    html = templates.email_html(ctx, QR_CID)
    text = templates.email_text(ctx)

    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp;" in html
    assert name in text


def test_a_user_folder_falls_back_to_the_default_theme(tmp_path: Path) -> None:
    folder = user_folder(tmp_path, email_txt_j2="Code: {{ account_code }}\n")
    templates = Templates(folder)
    ctx = make_context()

    assert templates.sandboxed
    assert templates.email_text(ctx) == f"Code: {ctx.account_code}\n"
    assert "Your account code" in templates.email_html(ctx, QR_CID)
    assert templates.origin("email.txt.j2") == folder.resolve()
    assert templates.origin("email.html.j2") == DEFAULT_TEMPLATES


def test_an_undefined_variable_names_the_template_and_line(tmp_path: Path) -> None:
    folder = user_folder(tmp_path, email_txt_j2="Hello\n\n{{ nope }}\n")

    with pytest.raises(RenderError) as caught:
        Templates(folder).email_text(make_context())

    message = str(caught.value)
    assert "email.txt.j2" in message
    assert "line 3" in message
    assert "'nope' is undefined" in message


def test_a_syntax_error_names_the_template_and_line(tmp_path: Path) -> None:
    folder = user_folder(tmp_path, email_html_j2="<p>\n{% if %}\n")

    with pytest.raises(RenderError, match=r"email\.html\.j2.*line 2.*syntax"):
        Templates(folder).email_html(make_context(), QR_CID)


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__[1].__subclasses__()",
        "name.__class__.__init__.__globals__",
        "cycler.__init__.__globals__.os",
        "account_code_groups.__class__",
    ],
)
def test_the_sandbox_refuses_attribute_escapes(tmp_path: Path, expression: str) -> None:
    folder = user_folder(tmp_path, email_txt_j2=f"{{{{ {expression} }}}}\n")

    with pytest.raises(RenderError, match=r"email\.txt\.j2.*line 1"):
        Templates(folder).email_text(make_context())


def test_the_sandbox_refuses_mutation(tmp_path: Path) -> None:
    folder = user_folder(tmp_path, email_txt_j2="{% set x = [] %}{{ x.append(1) }}\n")

    with pytest.raises(RenderError, match="sandbox"):
        Templates(folder).email_text(make_context())


def test_a_missing_user_folder_is_a_usage_error(tmp_path: Path) -> None:
    from pipeline.errors import UsageError

    with pytest.raises(UsageError, match="not found"):
        Templates(tmp_path / "absent")


def test_the_context_is_frozen(ctx: EmailContext) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.name = "Mallory"  # type: ignore[misc]


# Kit PDF


def test_the_kit_is_one_page_with_the_code_and_metadata(
    ctx: EmailContext, kit_pdf: bytes
) -> None:
    document = pdfium.PdfDocument(kit_pdf)
    try:
        text = document[0].get_textpage().get_text_range()
        metadata = document.get_metadata_dict()

        assert len(document) == 1
        assert normalize(ctx.account_code) in normalize(text)
        assert ctx.email in text and ctx.name in text
        assert metadata["Title"]
        assert metadata["Author"] == metadata["Creator"] == "Acme Vault"
        assert metadata["Subject"]
        assert metadata["CreationDate"].startswith("D:20250314")
    finally:
        document.close()


def test_the_kit_qr_decodes_from_the_page_at_150_dpi(
    ctx: EmailContext, kit_pdf: bytes
) -> None:
    document = pdfium.PdfDocument(kit_pdf)
    try:
        image = document[0].render(scale=150 / 72).to_pil()
    finally:
        document.close()

    assert [barcode.text for barcode in decode_qr(image)] == [ctx.qr_payload]


def test_the_kit_embeds_the_bundled_monospace_font(kit_pdf: bytes) -> None:
    # WeasyPrint names an @font-face font after its family: "Kit Mono".
    assert any("Kit-Mono" in name for name in pdf_font_names(kit_pdf))


def test_the_kit_lays_out_each_group_as_its_own_element(ctx: EmailContext) -> None:
    html = Templates().kit_html(ctx, qr_svg(ctx.qr_payload))

    spans = re.findall(r'<span class="group">([0-9A-Z]{6})</span>', html)
    assert tuple(spans) == ctx.account_code_groups
    assert "hyphens: none" in (DEFAULT_TEMPLATES / "kit.css").read_text()


def test_the_kit_is_the_same_for_the_same_account(
    ctx: EmailContext, kit_renderer: KitRenderer, kit_pdf: bytes
) -> None:
    assert kit_renderer.render(ctx, qr_svg(ctx.qr_payload)) == kit_pdf


def test_a_kit_of_two_pages_is_refused(tmp_path: Path) -> None:
    extra = '<p style="break-before: page">page two</p>'
    folder = user_folder(tmp_path, kit_html_j2=KIT_WITH.format(extra=extra))
    ctx = make_context()

    with pytest.raises(RenderError, match="2 pages, not 1"):
        KitRenderer(Templates(folder)).render(ctx, qr_svg(ctx.qr_payload))


# The locked URL fetcher


def render_user_kit(folder: Path) -> bytes:
    ctx = make_context()
    return KitRenderer(Templates(folder)).render(ctx, qr_svg(ctx.qr_payload))


@pytest.mark.parametrize(
    "extra",
    [
        '<img src="file:///etc/passwd">',
        "<style>@import url(file:///etc/passwd);</style>",
        '<link rel="stylesheet" href="file:///etc/hostname">',
        '<img src="ftp://127.0.0.1/x.png">',
        '<img src="https://example.com/x.png">',
        '<base href="file:///etc/"><img src="passwd">',
    ],
)
def test_urls_outside_the_folder_fail_the_render(tmp_path: Path, extra: str) -> None:
    folder = user_folder(tmp_path, kit_html_j2=KIT_WITH.format(extra=extra))

    with pytest.raises(FetchRefusedError, match="outside the template folder"):
        render_user_kit(folder)


@pytest.mark.parametrize(
    "extra",
    [
        '<img src="{base}/x.png">',
        '<link rel="stylesheet" href="{base}/x.css">',
        "<style>@import url({base}/x.css);</style>",
        "<style>@font-face { font-family: X; src: url({base}/x.ttf) }"
        " p { font-family: X }</style>",
    ],
)
def test_http_urls_are_refused_without_a_request(
    tmp_path: Path,
    http_server: tuple[str, type[CountingHandler]],
    extra: str,
) -> None:
    base, handler = http_server
    folder = user_folder(tmp_path, kit_html_j2=KIT_WITH.format(extra=extra))
    folder_html = (folder / "kit.html.j2").read_text().replace("{base}", base)
    (folder / "kit.html.j2").write_text(folder_html)

    with pytest.raises(FetchRefusedError, match=re.escape(base)):
        render_user_kit(folder)

    assert handler.requests == 0


def test_the_server_fixture_does_count_requests(
    http_server: tuple[str, type[CountingHandler]],
) -> None:
    import urllib.request

    base, handler = http_server
    with urllib.request.urlopen(f"{base}/x.css") as response:  # noqa: S310
        response.read()

    assert handler.requests == 1


def test_a_dot_dot_escape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.css").write_text("p { color: red }")
    extra = '<link rel="stylesheet" href="../secret.css">'
    folder = user_folder(tmp_path, kit_html_j2=KIT_WITH.format(extra=extra))

    with pytest.raises(FetchRefusedError, match=r"secret\.css"):
        render_user_kit(folder)


def test_a_symlink_escape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.css").write_text("p { color: red }")
    extra = '<link rel="stylesheet" href="inside.css">'
    folder = user_folder(tmp_path, kit_html_j2=KIT_WITH.format(extra=extra))
    (folder / "inside.css").symlink_to(tmp_path / "secret.css")

    with pytest.raises(FetchRefusedError, match=r"inside\.css"):
        render_user_kit(folder)


def test_a_user_kit_css_that_imports_a_local_file_is_refused(tmp_path: Path) -> None:
    folder = user_folder(
        tmp_path,
        kit_html_j2=KIT_WITH.format(extra=""),
        kit_css="@import url(file:///etc/passwd);\n@page { size: A4 }\n",
    )

    with pytest.raises(FetchRefusedError, match="/etc/passwd"):
        KitRenderer(Templates(folder))


def test_files_and_data_uris_inside_the_folder_are_served(tmp_path: Path) -> None:
    pixel = (
        "data:image/svg+xml;base64,"
        "PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciIHZpZXdCb3g9IjAgMCAx"
        "IDEiLz4="
    )
    extra = f'<img src="{pixel}" style="width: 3mm">'
    extra += '<p class="code">{{ account_code }}</p>'
    folder = user_folder(
        tmp_path,
        kit_html_j2=KIT_WITH.format(extra=extra),
        kit_css=(
            '@font-face { font-family: "Own Mono";'
            ' src: url("fonts/JetBrainsMono-Bold.ttf") }\n'
            '.code { font-family: "Own Mono"; hyphens: none }\n'
        ),
    )
    shutil.copytree(DEFAULT_TEMPLATES / "fonts", folder / "fonts")

    pdf = render_user_kit(folder)

    assert any("Own-Mono" in name for name in pdf_font_names(pdf))


def test_svg_rectangles_cover_exactly_the_dark_modules() -> None:
    from pipeline.render.qr import _rectangles, qr_modules

    modules = qr_modules(make_context().qr_payload)
    painted: list[tuple[int, int]] = []
    for x, y, width, height in _rectangles(modules):
        painted += [(x + dx, y + dy) for dx in range(width) for dy in range(height)]
    dark = [
        (x, y) for y, row in enumerate(modules) for x, dark in enumerate(row) if dark
    ]

    assert sorted(painted) == sorted(dark)  # no module twice, none missed


def test_real_payload_matches_the_version_docs_format_states() -> None:
    """docs/format.md promises version 6 (41 modules) at level M: hold it to that."""
    from pipeline import keys
    from pipeline.keys import _testing

    with _testing.weak_kdf():
        issued = keys.create(
            uuid.uuid4(), "pw", issued=dt.date(2026, 12, 3), params=_testing.FAST
        )
    payload = keys.format_payload(issued.eak)
    spec = (Path(__file__).parent.parent / "docs" / "format.md").read_text()

    assert len(payload) == 136
    assert qr_version(payload) == 6
    assert ERROR_CORRECTION == "M"
    assert "**version 6** symbol, **41 \u00d7 41 modules**" in spec
    image = Image.open(io.BytesIO(qr_png(payload)))
    assert image.size == ((41 + 2 * QUIET_ZONE) * PNG_MODULE_PX,) * 2
    assert [code.text for code in zxingcpp.read_barcodes(image)] == [payload]


def test_a_template_linking_out_of_its_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("host secret")
    theme = tmp_path / "theme"
    theme.mkdir()
    (theme / "leak.j2").symlink_to(outside)
    (theme / "email.txt.j2").write_text('{% include "leak.j2" %}')

    with pytest.raises(RenderError, match="outside its folder"):
        Templates(theme).email_text(make_context())
