"""The QR payload: an EAK as the text inside the QR code."""

from __future__ import annotations

from pipeline.errors import MalformedCodeError
from pipeline.keys.code import (
    _ASCII_UPPER,
    ALPHABET,
    b32decode,
    b32encode,
    parse_code,
)
from pipeline.keys.eak import EAK_SIZE, Eak

# Crockford Base32 uses only characters of QR alphanumeric mode; at error
# correction M a payload of 136 characters is a version 6 symbol, 41 modules a
# side. Base45 (RFC 9285) is 9 characters shorter but lands on the same version,
# and its space character is one that scanners and copy-paste tend to trim.
PREFIX = "KM1:"
PAYLOAD_LENGTH = len(PREFIX) + len(b32encode(bytes(EAK_SIZE)))


def format_payload(eak: Eak) -> str:
    return PREFIX + b32encode(eak.to_bytes())


def is_payload(text: str) -> bool:
    """True when `text` looks like a QR payload rather than a typed account code."""
    head = text.strip().translate(_ASCII_UPPER)
    return head.startswith("KM") and ":" in head[:6]


def parse_payload(text: str) -> Eak:
    payload = text.strip().translate(_ASCII_UPPER)
    if not payload.startswith(PREFIX):
        prefix = payload.split(":", 1)[0]
        if not (
            prefix[:2] == "KM"
            and prefix[2:].isascii()
            and prefix[2:].isdigit()
            and len(prefix) <= 6
        ):
            raise MalformedCodeError(
                "the QR code does not hold a keymail code (it may belong to "
                "another app): scan the QR code of the authentication email"
            )
        raise MalformedCodeError(
            f"QR payload version {prefix!r} is not supported; this keymail reads "
            f"{PREFIX!r}: update the app"
        )
    body = payload[len(PREFIX) :]
    bad = sorted({symbol for symbol in body if symbol not in ALPHABET})
    if bad or len(body) != PAYLOAD_LENGTH - len(PREFIX):
        raise MalformedCodeError(
            "the QR code does not hold a keymail code: scan it again or type the "
            "account code instead"
        )
    return Eak.from_bytes(b32decode(body, EAK_SIZE))


def parse_any(text: str) -> Eak:
    """Parse an account code or a QR payload, whichever `text` is."""
    return parse_payload(text) if is_payload(text) else parse_code(text)
