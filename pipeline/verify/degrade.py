"""What paper and dark-mode screens do to a QR image, simulated reproducibly."""

from __future__ import annotations

import random
from statistics import NormalDist

from PIL import Image, ImageChops, ImageFilter, ImageOps

from pipeline.verify.readers import PDF_DPI

# An office scanner at its draft setting: 100 dpi, optics that smear about one
# pixel, and sensor noise of about 5% of full scale (sigma 12 of 255). At 100
# dpi a module of the kit's QR code (1.27 mm) is about 5 pixels.
SCAN_DPI = 100
BLUR_RADIUS = 1.0
NOISE_SIGMA = 12.0

# A dark-mode mail client or PDF viewer paints its ground about this dark.
DARK_GROUND = (32, 32, 32)


def _noise_table(sigma: float) -> list[int]:
    """Map uniform bytes to Gaussian noise around 128 (inverse CDF, 256 levels)."""
    normal = NormalDist(0.0, sigma)
    return [
        min(255, max(0, 128 + round(normal.inv_cdf((level + 0.5) / 256))))
        for level in range(256)
    ]


_NOISE = _noise_table(NOISE_SIGMA)


def print_and_scan(render: Image.Image, seed: str) -> Image.Image:
    """`render` (grey, at PDF_DPI) as a 100 dpi scan of its print.

    Box-averaged down to SCAN_DPI, blurred by BLUR_RADIUS, with Gaussian noise
    drawn from `seed`: the same seed gives the same pixels, so a failure can be
    replayed.
    """
    scale = SCAN_DPI / PDF_DPI
    size = (max(1, round(render.width * scale)), max(1, round(render.height * scale)))
    scanned = render.convert("L").resize(size, Image.Resampling.BOX)
    blurred = scanned.filter(ImageFilter.GaussianBlur(BLUR_RADIUS))

    # random.Random seeded with a str is stable across runs and platforms.
    uniform = random.Random(seed).randbytes(size[0] * size[1])
    noise = Image.frombytes("L", size, uniform).point(_NOISE)
    return ImageChops.add(blurred, noise, scale=1.0, offset=-128)


def inverted(image: Image.Image) -> Image.Image:
    """Every grey level flipped, as a client that inverts images in dark mode."""
    return ImageOps.invert(image.convert("L"))
