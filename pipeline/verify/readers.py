"""Independent decoders: QR by zxing-cpp, PDF by pdfium, HTML by the stdlib parser."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import pypdfium2 as pdfium
import zxingcpp
from PIL import Image

# At 150 dpi a module of the kit's QR code (1.27 mm) is about 7.5 pixels; pdfium
# renders the A4 page in about 25 ms, most of an account's verify time.
PDF_DPI = 150
POINTS_PER_INCH = 72
QR_CODE = zxingcpp.barcode_formats_from_str("QRCode")
_ADAPTIVE = zxingcpp.Binarizer.LocalAverage

# Characters that stand between the groups of an account code once a body or a
# PDF is reduced to text: white space, hyphens, the soft hyphen, the zero-width
# space, and \x02, which pdfium returns for a hyphen at the end of a line.
_SEPARATOR = r"[\s\-\u2010\u2011\u00ad\u200b\ufeff\x02]*"
_GROUP = "[0-9A-Za-z]{6}"
# 27 groups of 6, standing alone: a code never touches another letter or digit.
CODE_PATTERN = re.compile(
    rf"(?<![0-9A-Za-z]){_GROUP}(?:{_SEPARATOR}{_GROUP}){{26}}(?![0-9A-Za-z])"
)


class ReadError(Exception):
    """An artifact could not be read back; the message says what was found."""


@dataclass(frozen=True)
class Symbol:
    """One decoded QR code: its text and where it is, in pixels."""

    text: str
    version: int
    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def modules(self) -> int:
        """Modules a side without the quiet zone (ISO/IEC 18004: 17 + 4 x version)."""
        return 17 + 4 * self.version


def decode_qr(
    image: Image.Image, *, invert: bool = False, strict: bool = False
) -> Symbol:
    """The one QR code in `image`; more or fewer than one is an error.

    `invert` lets the reader also try light modules on a dark ground, as a
    scanner does on a screen in dark mode; without it only dark-on-light reads.
    `strict` splits dark from light at mid-grey instead of by local contrast:
    zxing's adaptive binarizer reads black modules on a near-black ground that
    no camera would, so this is how a check asks for real contrast.
    """
    binarizer = zxingcpp.Binarizer.FixedThreshold if strict else _ADAPTIVE
    found = zxingcpp.read_barcodes(
        image,
        formats=QR_CODE,
        try_rotate=False,
        try_invert=invert,
        binarizer=binarizer,
    )
    if not found:
        raise ReadError("no QR code found")
    if len(found) > 1:
        raise ReadError(f"{len(found)} QR codes found where one was expected")

    barcode = found[0]
    position = barcode.position
    corners = (
        position.top_left,
        position.top_right,
        position.bottom_right,
        position.bottom_left,
    )
    xs = [point.x for point in corners]
    ys = [point.y for point in corners]
    extra = barcode.extra
    version = int(extra.get("Version") or 0) if isinstance(extra, dict) else 0
    return Symbol(barcode.text, version, min(xs), min(ys), max(xs), max(ys))


def open_image(data: bytes) -> Image.Image:
    """A PNG (or any image Pillow reads) as an 8-bit image, alpha kept if present."""
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ReadError(f"not a readable image: {exc}") from None
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA")
    return image


def flatten(image: Image.Image, ground: tuple[int, int, int]) -> Image.Image:
    """`image` over a solid `ground` colour, as a mail client shows it, in grey."""
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*ground, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("L")


class Pdf:
    """A PDF opened with pdfium: page count, text and 150 dpi renders of page 1."""

    def __init__(self, data: bytes) -> None:
        try:
            self._document = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            raise ReadError(f"not a readable PDF: {exc}") from None
        self.pages = len(self._document)
        if self.pages == 0:
            self._document.close()
            raise ReadError("the PDF has no page")
        # Loading a page costs about 3 ms; page 1 is rendered two or three times.
        self._first = self._document[0]

    def close(self) -> None:
        self._first.close()
        self._document.close()

    def text(self) -> str:
        """The text of every page, as pdfium extracts it."""
        parts = []
        for index in range(self.pages):
            page = self._first if index == 0 else self._document[index]
            textpage = page.get_textpage()
            parts.append(textpage.get_text_bounded())
            textpage.close()
            if index:
                page.close()
        return "\n".join(parts)

    def render(
        self,
        ground: tuple[int, int, int] = (255, 255, 255),
        box: tuple[float, float, float, float] | None = None,
    ) -> Image.Image:
        """Page 1 at 150 dpi in grey, over `ground` where the page paints nothing.

        `box` (left, top, right, bottom, in pixels of a full-page render) limits
        the render to that part of the page: 2 ms instead of 25.
        """
        scale = PDF_DPI / POINTS_PER_INCH
        crop = (0.0, 0.0, 0.0, 0.0)
        if box is not None:
            width, height = self._first.get_size()
            left, top, right, bottom = (value / scale for value in box)
            crop = (
                max(left, 0.0),
                max(height - bottom, 0.0),
                max(width - right, 0.0),
                max(top, 0.0),
            )
        bitmap = self._first.render(
            scale=scale, crop=crop, fill_color=(*ground, 255), grayscale=True
        )
        image: Image.Image = bitmap.to_pil().convert("L")
        bitmap.close()
        return image


def find_codes(text: str) -> list[str]:
    """Every run of 27 groups of 6 symbols in `text`, separators included."""
    return [match.group(0) for match in CODE_PATTERN.finditer(text)]
