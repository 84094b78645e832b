"""Argon2id parameters, their bounds, and the derivation of the wrapping key."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.errors import KdfParametersError, UsageError, WeakKdfParametersError

KDF_ARGON2ID = 1
WRAPPING_KEY_INFO = b"keymail/v1/wrapping-key"


@dataclass(frozen=True, order=True)
class KdfParams:
    """Argon2id cost: memory in KiB, iterations (t) and lanes (p)."""

    memory_kib: int
    iterations: int
    lanes: int

    def __str__(self) -> str:
        return f"m={self.memory_kib},t={self.iterations},p={self.lanes}"

    def covers(self, other: KdfParams) -> bool:
        """True when every cost of `self` is at least that of `other`."""
        return (
            self.memory_kib >= other.memory_kib
            and self.iterations >= other.iterations
            and self.lanes >= other.lanes
        )


# RFC 9106 section 4, second recommended option; about 300 ms here, since
# OpenSSL runs the four lanes one after another.
DEFAULT = KdfParams(memory_kib=64 * 1024, iterations=3, lanes=4)

# OWASP password storage minimum for Argon2id: about 52 ms here.
MINIMUM = KdfParams(memory_kib=19 * 1024, iterations=2, lanes=1)

# Decoding refuses more than this before running anything: 1 GiB and t=10 would
# take minutes, so a crafted code could otherwise stall a device or a batch.
CAP = KdfParams(memory_kib=1024 * 1024, iterations=10, lanes=16)

# The floor wrapping enforces. Only tests lower it, through pipeline.keys._testing;
# no option of the command line reaches it.
_floor = MINIMUM


def current_floor() -> KdfParams:
    return _floor


def _set_floor(params: KdfParams) -> None:
    global _floor
    _floor = params


def parse_params(text: str) -> KdfParams:
    """Parse `m=65536,t=3,p=4` (memory in KiB) into KdfParams."""
    match = re.fullmatch(r"\s*m=(\d+)\s*,\s*t=(\d+)\s*,\s*p=(\d+)\s*", text)
    if not match:
        raise UsageError(f"KDF parameters must look like 'm=65536,t=3,p=4': {text!r}")
    memory, iterations, lanes = (int(group) for group in match.groups())
    return KdfParams(memory_kib=memory, iterations=iterations, lanes=lanes)


def check_for_wrapping(params: KdfParams) -> None:
    """Refuse parameters below the floor or above the cap."""
    if not params.covers(_floor):
        raise WeakKdfParametersError(
            f"KDF parameters {params} are below the minimum {_floor}; "
            "a stolen email would be cheap to guess passwords against"
        )
    if not CAP.covers(params):
        raise WeakKdfParametersError(
            f"KDF parameters {params} exceed the cap {CAP}; "
            "no device would open the code"
        )


def check_for_decoding(params: KdfParams) -> None:
    """Refuse parameters a device must not run: above the cap, or invalid."""
    if not CAP.covers(params):
        raise KdfParametersError(
            f"the code asks for KDF parameters {params}, above the cap {CAP}; "
            "it was not made by keymail and was refused without running the KDF"
        )
    if (
        params.iterations < 1
        or params.lanes < 1
        or params.memory_kib < 8 * params.lanes
    ):
        raise KdfParametersError(
            f"the code holds invalid KDF parameters {params}; it is not a valid code"
        )


def encode_password(password: str) -> bytes:
    """NFC-normalize and UTF-8 encode, so one password typed on two systems matches."""
    if not password:
        raise UsageError("the password is empty")
    return unicodedata.normalize("NFC", password).encode("utf-8")


def derive_wrapping_key(password: str, salt: bytes, params: KdfParams) -> bytes:
    """Argon2id(password, salt) -> HKDF-SHA256 with a purpose label -> 32 bytes."""
    stretched = Argon2id(
        salt=salt,
        length=32,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    ).derive(encode_password(password))

    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=WRAPPING_KEY_INFO)
    return hkdf.derive(stretched)
