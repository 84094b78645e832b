"""The QR code of a QR payload: a PNG for the email and an SVG for the kit."""

from __future__ import annotations

import functools
import io
import logging

import qrcode
import qrcode.constants
import qrcode.exceptions
import qrcode.util
from PIL import Image

from pipeline.errors import RenderError

__all__ = [
    "ERROR_CORRECTION",
    "PNG_MODULE_PX",
    "QUIET_ZONE",
    "qr_modules",
    "qr_png",
    "qr_svg",
    "qr_version",
]

logger = logging.getLogger("pipeline.render.qr")

# Level M restores about 15% of damaged codewords: enough for a creased print,
# and a 136-character alphanumeric payload still fits version 6 (41 modules).
ERROR_CORRECTION = "M"
_ERROR_CORRECTION_LEVEL = qrcode.constants.ERROR_CORRECT_M

# ISO/IEC 18004 asks for a 4-module light margin; phone scanners need it.
QUIET_ZONE = 4

# 6 px per module makes a version 6 code 294 px wide with its quiet zone.
PNG_MODULE_PX = 6

# Uppercase letters, digits and these nine symbols encode at 5.5 bits each.
_ALPHANUMERIC = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")


def _qr_code(payload: str) -> qrcode.QRCode:
    """A QRCode holding `payload` in one segment, alphanumeric mode if it fits."""
    if not payload:
        raise RenderError("QR payload is empty")

    mode = qrcode.util.MODE_ALPHA_NUM if set(payload) <= _ALPHANUMERIC else None
    code = qrcode.QRCode(error_correction=_ERROR_CORRECTION_LEVEL, border=0)
    try:
        code.add_data(qrcode.util.QRData(payload, mode=mode))
        code.best_fit()
    except (qrcode.exceptions.DataOverflowError, ValueError) as error:
        # qrcode 8.2 raises ValueError ("Invalid version") past version 40.
        raise RenderError(
            f"QR payload of {len(payload)} characters does not fit a QR code"
        ) from error
    return code


def qr_version(payload: str) -> int:
    """The QR version (1-40) that holds `payload` at level M."""
    version: int = _qr_code(payload).version
    return version


@functools.lru_cache(maxsize=4)
def qr_modules(payload: str) -> tuple[tuple[bool, ...], ...]:
    """The module matrix of `payload`, True for dark, without quiet zone.

    Mask selection costs most of the time (about 15 ms); the cache lets the PNG
    and the SVG of one account share it.
    """
    code = _qr_code(payload)
    code.make(fit=False)
    return tuple(tuple(bool(module) for module in row) for row in code.modules)


def qr_png(payload: str) -> bytes:
    """A black-on-white PNG (grayscale, no alpha) with a 4-module quiet zone.

    The light background is painted, never transparent, because dark-mode mail
    clients invert images and a transparent code would vanish.
    """
    modules = qr_modules(payload)
    side = len(modules) + 2 * QUIET_ZONE

    image = Image.new("L", (side, side), 255)
    image.putdata(
        [
            0 if _is_dark(modules, x - QUIET_ZONE, y - QUIET_ZONE) else 255
            for y in range(side)
            for x in range(side)
        ]
    )
    image = image.resize(
        (side * PNG_MODULE_PX, side * PNG_MODULE_PX), Image.Resampling.NEAREST
    )

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def qr_svg(payload: str) -> str:
    """A scalable SVG: one path of dark runs on a white rect, 4-module quiet zone.

    The viewBox counts modules, so the code scales to any size the kit gives it;
    crispEdges keeps module edges sharp when rasterized.
    """
    modules = qr_modules(payload)
    side = len(modules) + 2 * QUIET_ZONE

    rects = "".join(
        f"M{x + QUIET_ZONE} {y + QUIET_ZONE}h{width}v{height}H{x + QUIET_ZONE}z"
        for x, y, width, height in _rectangles(modules)
    )

    return (
        '<svg xmlns="http://www.w3.org/2000/svg" version="1.1" '
        f'viewBox="0 0 {side} {side}" shape-rendering="crispEdges" '
        'role="img" aria-label="QR code">'
        f'<rect width="{side}" height="{side}" fill="#ffffff"/>'
        f'<path fill="#000000" d="{rects}"/>'
        "</svg>"
    )


def _rectangles(
    modules: tuple[tuple[bool, ...], ...],
) -> list[tuple[int, int, int, int]]:
    """Dark modules as rectangles (x, y, width, height).

    Each row's dark runs are merged with the same run in the rows below it.
    WeasyPrint parses SVG paths slowly (about 0.1 ms a subpath): fewer, taller
    rectangles cut about a fifth of the subpaths from a kit render.
    """
    done: list[tuple[int, int, int, int]] = []
    open_runs: dict[tuple[int, int], int] = {}  # (start, end) -> first row
    for y, row in enumerate([*modules, ()]):
        runs = set(_runs(row))
        for run, top in open_runs.items():
            if run not in runs:
                done.append((run[0], top, run[1] - run[0], y - top))
        open_runs = {run: open_runs.get(run, y) for run in runs}
    return sorted(done, key=lambda rect: (rect[1], rect[0]))


def _runs(row: tuple[bool, ...]) -> list[tuple[int, int]]:
    """The (start, end) of each run of dark modules in a row."""
    runs = []
    x = 0
    while x < len(row):
        if row[x]:
            start = x
            while x < len(row) and row[x]:
                x += 1
            runs.append((start, x))
        x += 1
    return runs


def _is_dark(modules: tuple[tuple[bool, ...], ...], x: int, y: int) -> bool:
    """Whether the module at (x, y) is dark; outside the matrix is light."""
    inside = 0 <= x < len(modules) and 0 <= y < len(modules)
    return inside and modules[y][x]
