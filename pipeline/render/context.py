"""The values a template sees when it renders one account's email and kit."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Literal

Reason = Literal["new", "change", "reset", "resend"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EmailContext:
    """Everything the email and the kit say about one account, as plain values.

    The caller formats the account code and the QR payload; render treats them
    as text and never parses them. Fields are keyword-only so `locale` can
    default to English without moving it.
    """

    account_id: str
    email: str
    name: str
    locale: str = "en"
    account_code: str
    account_code_groups: tuple[str, ...]
    qr_payload: str
    issued: dt.date
    key_generation: int
    password_epoch: int
    reason: Reason
    product: str
    support_email: str
    sender: str
    subject: str

    def template_vars(self) -> dict[str, object]:
        """The fields as top-level template variables (a shallow copy)."""
        return {
            field.name: getattr(self, field.name) for field in dataclasses.fields(self)
        }
