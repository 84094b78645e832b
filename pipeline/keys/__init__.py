"""The EAK v1: format, KDF, account code, QR payload and account key lifecycle.

Pure: bytes, passwords and account state in; values out or typed errors raised.
"""

from pipeline.keys.code import format_code, format_groups, parse_code
from pipeline.keys.eak import Eak, Header, account_fingerprint, key_check
from pipeline.keys.kdf import DEFAULT, MINIMUM, KdfParams
from pipeline.keys.lifecycle import (
    AccountState,
    Issued,
    Unlocked,
    change_password,
    check_current,
    create,
    reset_password,
    unlock,
)
from pipeline.keys.payload import format_payload, parse_any, parse_payload

__all__ = [
    "DEFAULT",
    "MINIMUM",
    "AccountState",
    "Eak",
    "Header",
    "Issued",
    "KdfParams",
    "Unlocked",
    "account_fingerprint",
    "change_password",
    "check_current",
    "create",
    "format_code",
    "format_groups",
    "format_payload",
    "key_check",
    "parse_any",
    "parse_code",
    "parse_payload",
    "reset_password",
    "unlock",
]
