"""The EAK v1 byte format: header, wrapping and unwrapping of the account key.

Layout (big-endian, 82 bytes; docs/format.md is the full specification):

    0  version            u8   = 1
    1  kdf id             u8   = 1 (Argon2id, version 0x13)
    2  memory (KiB)       u32
    6  iterations         u8
    7  lanes              u8
    8  account fingerprint 4 bytes
   12  key generation     u16
   14  password epoch     u16
   16  issue date         u16  days since 1970-01-01
   18  salt               16 bytes
   34  ciphertext + tag   48 bytes  AES-256-GCM of the 32-byte account key
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import struct
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.errors import MalformedCodeError, UsageError, WrongPasswordError
from pipeline.keys import kdf
from pipeline.keys.kdf import KdfParams

VERSION = 1
ACCOUNT_KEY_SIZE = 32
SALT_SIZE = 16
TAG_SIZE = 16
FINGERPRINT_SIZE = 4
HEADER = struct.Struct(">BBIBB4sHHH16s")
HEADER_SIZE = HEADER.size
EAK_SIZE = HEADER_SIZE + ACCOUNT_KEY_SIZE + TAG_SIZE

# Each wrapping key encrypts exactly one message (it is derived from a fresh
# random salt), so a fixed nonce is safe and saves 12 bytes of every code.
NONCE = bytes(12)

FINGERPRINT_LABEL = b"keymail/v1/account-fingerprint"
KEY_CHECK_INFO = b"keymail/v1/key-check"
EPOCH_DATE = dt.date(1970, 1, 1)
COUNTER_MAX = 0xFFFF


@dataclass(frozen=True)
class Header:
    """The clear, authenticated part of an EAK."""

    version: int
    kdf_id: int
    kdf_params: KdfParams
    fingerprint: bytes
    key_generation: int
    password_epoch: int
    issued: dt.date
    salt: bytes

    def pack(self) -> bytes:
        return HEADER.pack(
            self.version,
            self.kdf_id,
            self.kdf_params.memory_kib,
            self.kdf_params.iterations,
            self.kdf_params.lanes,
            self.fingerprint,
            self.key_generation,
            self.password_epoch,
            (self.issued - EPOCH_DATE).days,
            self.salt,
        )


@dataclass(frozen=True)
class Eak:
    """An encrypted account key: its header and the AEAD ciphertext."""

    header: Header
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        return self.header.pack() + self.ciphertext

    @classmethod
    def from_bytes(cls, data: bytes) -> Eak:
        """Parse and bound-check an EAK; the KDF is not run."""
        if len(data) < 1 or data[0] != VERSION:
            version = data[0] if data else "none"
            raise MalformedCodeError(
                f"unsupported EAK version {version}; this keymail reads version "
                f"{VERSION}: update the app, or check that this is an account code"
            )
        if len(data) != EAK_SIZE:
            raise MalformedCodeError(
                f"an EAK v1 is {EAK_SIZE} bytes, this one is {len(data)}"
            )

        fields = HEADER.unpack(data[:HEADER_SIZE])
        version, kdf_id, memory, iterations, lanes, fingerprint = fields[:6]
        generation, epoch, days, salt = fields[6:]
        if kdf_id != kdf.KDF_ARGON2ID:
            raise MalformedCodeError(f"unknown KDF id {kdf_id} in the code")
        params = KdfParams(memory, iterations, lanes)
        kdf.check_for_decoding(params)
        if generation < 1 or epoch < 1:
            raise MalformedCodeError(
                "the code holds key generation or password epoch 0; it is not valid"
            )

        header = Header(
            version=version,
            kdf_id=kdf_id,
            kdf_params=params,
            fingerprint=fingerprint,
            key_generation=generation,
            password_epoch=epoch,
            issued=EPOCH_DATE + dt.timedelta(days=days),
            salt=salt,
        )
        return cls(header=header, ciphertext=data[HEADER_SIZE:])


def account_fingerprint(account_id: uuid.UUID) -> bytes:
    """A few bytes that tell accounts apart without naming them."""
    digest = hashlib.sha256(FINGERPRINT_LABEL + account_id.bytes).digest()
    return digest[:FINGERPRINT_SIZE]


def key_check(account_key: bytes) -> str:
    """The non-secret value that confirms an unwrapped key is the current one."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=KEY_CHECK_INFO)
    return hkdf.derive(account_key).hex()


def new_account_key() -> bytes:
    return os.urandom(ACCOUNT_KEY_SIZE)


def wrap(
    account_key: bytes,
    password: str,
    account_id: uuid.UUID,
    *,
    key_generation: int,
    password_epoch: int,
    issued: dt.date,
    params: KdfParams = kdf.DEFAULT,
    _salt: bytes | None = None,
) -> Eak:
    """Wrap `account_key` under `password` for `account_id`.

    `_salt` is the seam that makes known-answer vectors reproducible; callers
    outside tests and the vector script leave it alone.
    """
    if len(account_key) != ACCOUNT_KEY_SIZE:
        raise UsageError(f"an account key is {ACCOUNT_KEY_SIZE} bytes")
    if not (1 <= key_generation <= COUNTER_MAX and 1 <= password_epoch <= COUNTER_MAX):
        raise UsageError("key generation and password epoch must be 1..65535")
    if not EPOCH_DATE <= issued <= EPOCH_DATE + dt.timedelta(days=COUNTER_MAX):
        raise UsageError(f"issue date {issued} is outside 1970-01-01..2149-06-06")
    kdf.check_for_wrapping(params)

    header = Header(
        version=VERSION,
        kdf_id=kdf.KDF_ARGON2ID,
        kdf_params=params,
        fingerprint=account_fingerprint(account_id),
        key_generation=key_generation,
        password_epoch=password_epoch,
        issued=issued,
        salt=os.urandom(SALT_SIZE) if _salt is None else _salt,
    )
    wrapping_key = kdf.derive_wrapping_key(password, header.salt, params)
    aead = AESGCM(wrapping_key)
    ciphertext = aead.encrypt(NONCE, account_key, associated_data(header, account_id))
    return Eak(header=header, ciphertext=ciphertext)


def unwrap(eak: Eak, password: str, account_id: uuid.UUID) -> bytes:
    """Return the account key, or raise WrongPasswordError.

    AES-GCM cannot tell a wrong password from a wrong account_id or a tampered
    ciphertext; the lifecycle module checks the header first so the usual
    causes get their own diagnosis. Parameters above the cap are refused
    here too, for an Eak that was built rather than parsed.
    """
    kdf.check_for_decoding(eak.header.kdf_params)
    wrapping_key = kdf.derive_wrapping_key(
        password, eak.header.salt, eak.header.kdf_params
    )
    try:
        return AESGCM(wrapping_key).decrypt(
            NONCE, eak.ciphertext, associated_data(eak.header, account_id)
        )
    except InvalidTag:
        raise WrongPasswordError(
            "the password does not open this code. Check the password (it is the "
            "one set when this email was sent; Caps Lock?). If the password was "
            "changed since, use the newest authentication email."
        ) from None


def associated_data(header: Header, account_id: uuid.UUID) -> bytes:
    """The header and the full account_id, bound to the ciphertext."""
    return header.pack() + account_id.bytes
