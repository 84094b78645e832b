"""Optional DKIM signing (RFC 6376) of finished messages, with dkimpy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pipeline.errors import DeliveryError, UsageError

__all__ = ["DkimSigner"]

# RFC 8301 section 3.2: verifiers must refuse RSA keys under 1024 bits.
MIN_RSA_BITS = 1024

# The fields a receiver shows or threads by; a relay adding others (Received,
# Return-Path) does not break the signature.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
)


@dataclass(frozen=True)
class DkimSigner:
    """Signs with one RSA key as `selector._domainkey.domain`."""

    selector: str
    domain: str
    private_key: bytes = field(repr=False)

    @classmethod
    def from_file(cls, path: Path, selector: str, domain: str) -> DkimSigner:
        """Load a PEM RSA private key (PKCS#1 or PKCS#8, unencrypted)."""
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise UsageError(
                f"cannot read --dkim-key {str(path)!r}: {exc.strerror}"
            ) from None
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise UsageError(
                f"--dkim-key {str(path)!r} is not an unencrypted PEM private key"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise UsageError(
                f"--dkim-key {str(path)!r} is not an RSA key; keymail signs with "
                "rsa-sha256 only"
            )
        if key.key_size < MIN_RSA_BITS:
            raise UsageError(
                f"--dkim-key {str(path)!r} has {key.key_size} bits; receivers "
                f"refuse fewer than {MIN_RSA_BITS} (2048 is usual)"
            )
        for name, value in (("selector", selector), ("domain", domain)):
            if not value or not value.isascii() or any(c in value for c in " ;=\r\n"):
                raise UsageError(f"--dkim-{name} is not a DNS label: {value!r}")
        return cls(selector, domain, pem)

    def sign(self, message: bytes) -> bytes:
        """The message with a DKIM-Signature header field in front."""
        try:
            field_ = dkim.sign(
                message,
                self.selector.encode(),
                self.domain.encode(),
                self.private_key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=list(SIGNED_HEADERS),
            )
        except dkim.DKIMException as exc:
            raise DeliveryError(f"DKIM signing failed: {exc}") from None
        assert isinstance(field_, bytes)
        return field_ + message
