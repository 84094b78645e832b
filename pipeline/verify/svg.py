"""A QR SVG read back: its structure checked, its filled shapes rasterized."""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.etree import ElementTree

from PIL import Image, ImageDraw

from pipeline.verify.readers import ReadError

SVG = "{http://www.w3.org/2000/svg}"
# 8 pixels a module: a 49-module code becomes a 392-pixel image, decoded in ~2 ms.
PIXELS_PER_UNIT = 8
# Larger than any QR code with its quiet zone (177 + 8 modules), so a crafted
# viewBox cannot ask for a huge image.
MAX_UNITS = 200

_NAMED = {"white": 255, "black": 0}

# What a QR SVG needs, and nothing else: any other element or attribute
# (opacity, style, a <g> with its own fill, a <circle> over the code) could
# hide or change the code in a real viewer without this reader noticing.
ALLOWED = {
    f"{SVG}svg": {
        "version",
        "viewBox",
        "width",
        "height",
        "shape-rendering",
        "role",
        "aria-label",
        "preserveAspectRatio",
    },
    f"{SVG}rect": {"x", "y", "width", "height", "fill"},
    f"{SVG}path": {"d", "fill"},
    f"{SVG}title": set(),
    f"{SVG}desc": set(),
}
# Path commands with their arguments; E and e are left out, as exponents.
_COMMAND = re.compile(r"([A-DF-Za-df-z])([^A-DF-Za-df-z]*)")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class ViewBox:
    x: float
    y: float
    width: float
    height: float


def rasterize(data: bytes) -> Image.Image:
    """The SVG as a grey image; refuses one without a full white background rect.

    No SVG renderer is installed, so this reads the small subset a QR code
    needs: a background rect, then paths of straight lines (M, L, H, V, Z) or
    rects with a solid fill. Anything else is refused with a reason rather than
    guessed at.
    """
    root = _parse(data)
    _check_allowed(root)
    box = _view_box(root)
    shapes = [
        element
        for element in root.iter()
        if element.tag in (f"{SVG}rect", f"{SVG}path")
    ]
    if any(element.get("transform") for element in root.iter()):
        raise ReadError("the SVG uses transforms, which this reader does not follow")
    if not any(element.tag == f"{SVG}path" for element in shapes):
        raise ReadError("the SVG holds no path")
    if not shapes or not _is_background(shapes[0], box):
        raise ReadError(
            "the SVG does not start with a white rect over its whole viewBox: a "
            "dark-mode viewer would show the code without its light background"
        )

    # Mid-grey canvas: only what the SVG paints itself is white or black.
    size = (round(box.width * PIXELS_PER_UNIT), round(box.height * PIXELS_PER_UNIT))
    image = Image.new("L", size, 128)
    draw = ImageDraw.Draw(image)
    for element in shapes:
        grey = _fill(element)
        if grey is None:
            continue
        for polygon in _polygons(element):
            points = [
                ((x - box.x) * PIXELS_PER_UNIT, (y - box.y) * PIXELS_PER_UNIT)
                for x, y in polygon
            ]
            draw.polygon(points, fill=grey)
    return image


def _check_allowed(root: ElementTree.Element) -> None:
    for element in root.iter():
        allowed = ALLOWED.get(element.tag)
        name = element.tag.replace(SVG, "")
        if allowed is None:
            raise ReadError(f"the SVG holds a <{name}>, which a QR SVG has no use for")
        extra = sorted(set(element.attrib) - allowed)
        if extra:
            raise ReadError(
                f"the SVG's <{name}> has {', '.join(extra)}, which could change "
                "how the code shows; a QR SVG needs only shapes and fills"
            )


def _parse(data: bytes) -> ElementTree.Element:
    try:
        # The expat in Python 3.11 bounds entity expansion (billion laughs), and
        # ElementTree never fetches external entities.
        root = ElementTree.fromstring(data)  # noqa: S314
    except ElementTree.ParseError as exc:
        raise ReadError(f"not well-formed XML: {exc}") from None
    if root.tag != f"{SVG}svg":
        raise ReadError(f"the root element is {root.tag!r}, not an SVG <svg>")
    return root


def _view_box(root: ElementTree.Element) -> ViewBox:
    values = _numbers(root.get("viewBox", ""))
    if len(values) != 4 or values[2] <= 0 or values[3] <= 0:
        raise ReadError("the SVG has no usable viewBox")
    box = ViewBox(*values)
    if max(box.width, box.height) > MAX_UNITS:
        raise ReadError(f"the viewBox is {box.width:g} units wide: too large for a QR")
    return box


def _is_background(element: ElementTree.Element, box: ViewBox) -> bool:
    if element.tag != f"{SVG}rect" or _fill(element) != 255:
        return False
    x, y = _number(element, "x", 0.0), _number(element, "y", 0.0)
    width, height = _number(element, "width", 0.0), _number(element, "height", 0.0)
    return (
        x <= box.x
        and y <= box.y
        and x + width >= box.x + box.width
        and y + height >= box.y + box.height
    )


def _fill(element: ElementTree.Element) -> int | None:
    """The element's fill as a grey level; None for no fill."""
    value = element.get("fill", "black").strip().lower()
    style = element.get("style", "")
    match = re.search(r"fill\s*:\s*([^;]+)", style)
    if match:
        value = match.group(1).strip().lower()
    if value == "none":
        return None
    if value in _NAMED:
        return _NAMED[value]
    if re.fullmatch(r"#[0-9a-f]{3}", value):
        value = "#" + "".join(digit * 2 for digit in value[1:])
    if re.fullmatch(r"#[0-9a-f]{6}", value):
        red, green, blue = (int(value[i : i + 2], 16) for i in (1, 3, 5))
        return round(0.299 * red + 0.587 * green + 0.114 * blue)
    raise ReadError(f"fill {value!r} is not a colour this reader knows")


def _polygons(element: ElementTree.Element) -> list[list[tuple[float, float]]]:
    if element.tag == f"{SVG}rect":
        x, y = _number(element, "x", 0.0), _number(element, "y", 0.0)
        width, height = _number(element, "width", 0.0), _number(element, "height", 0.0)
        return [[(x, y), (x + width, y), (x + width, y + height), (x, y + height)]]
    return _path_polygons(element.get("d", ""))


def _path_polygons(d: str) -> list[list[tuple[float, float]]]:
    """Subpaths of straight segments as closed polygons. Each is filled on its
    own, which is exact for the disjoint runs of dark modules of a QR code."""
    if _COMMAND.sub("", d).strip(" \t\r\n,"):
        raise ReadError("the path data does not start with a command")
    polygons: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    x = y = start_x = start_y = 0.0
    for command, arguments in _COMMAND.findall(d):
        numbers = _arguments(arguments)
        relative = command.islower()
        kind = command.upper()
        if kind == "Z":
            if current:
                polygons.append(current)
            current, x, y = [], start_x, start_y
        elif kind in "ML":
            if len(numbers) % 2 or not numbers:
                raise ReadError(f"path command {command!r} needs coordinate pairs")
            for index in range(0, len(numbers), 2):
                dx, dy = numbers[index], numbers[index + 1]
                x, y = (x + dx, y + dy) if relative else (dx, dy)
                if kind == "M" and index == 0:
                    if current:
                        polygons.append(current)
                    current, start_x, start_y = [], x, y
                current.append((x, y))
        elif kind in "HV":
            for value in numbers:
                if kind == "H":
                    x = x + value if relative else value
                else:
                    y = y + value if relative else value
                current.append((x, y))
        else:
            raise ReadError(f"path command {command!r} is not supported")
    if current:
        polygons.append(current)
    return [polygon for polygon in polygons if len(polygon) >= 3]


def _arguments(text: str) -> list[float]:
    """The numbers after a path command: split on separators where that is
    enough (about 4x faster), else read them out one by one ("1-2", ".5.5")."""
    try:
        return [float(part) for part in text.replace(",", " ").split()]
    except ValueError:
        return [float(number) for number in _NUMBER.findall(text)]


def _numbers(text: str) -> list[float]:
    try:
        return [float(part) for part in re.split(r"[\s,]+", text.strip()) if part]
    except ValueError:
        return []


def _number(element: ElementTree.Element, name: str, default: float) -> float:
    value = element.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ReadError(f"{name}={value!r} is not a plain number") from None
