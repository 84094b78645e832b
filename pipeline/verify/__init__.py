"""Verify a batch: read every delivered artifact back with independent decoders."""

# zxing-cpp reads the QR codes, pdfium the kit, the stdlib parsers the email and
# its HTML, so a bug shared with the generating side (qrcode, WeasyPrint, Jinja)
# cannot hide itself.

from pipeline.verify.checks import CHECK_NAMES, AccountJob, verify_account
from pipeline.verify.report import (
    AccountResult,
    CheckResult,
    VerifyReport,
    table_rows,
    to_dict,
    to_json,
    to_junit,
)
from pipeline.verify.runner import Passwords, verify_batch

__all__ = [
    "CHECK_NAMES",
    "AccountJob",
    "AccountResult",
    "CheckResult",
    "Passwords",
    "VerifyReport",
    "table_rows",
    "to_dict",
    "to_json",
    "to_junit",
    "verify_account",
    "verify_batch",
]
