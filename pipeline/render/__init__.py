"""The render stage: templates, QR codes and the kit PDF for one account."""

from pipeline.render.context import EmailContext, Reason
from pipeline.render.env import DEFAULT_TEMPLATES, Templates
from pipeline.render.kit import KitRenderer, LockedURLFetcher
from pipeline.render.qr import ERROR_CORRECTION, qr_png, qr_svg, qr_version

__all__ = [
    "DEFAULT_TEMPLATES",
    "ERROR_CORRECTION",
    "EmailContext",
    "KitRenderer",
    "LockedURLFetcher",
    "Reason",
    "Templates",
    "qr_png",
    "qr_svg",
    "qr_version",
]
