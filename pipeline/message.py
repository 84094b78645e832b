"""Assemble one authentication email as MIME bytes, ready to write or send."""

from __future__ import annotations

import datetime as dt
import email.policy
import hashlib
import logging
import re
import unicodedata
import uuid
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart

from pipeline.errors import RenderError
from pipeline.htmlrefs import first_refused
from pipeline.render.context import EmailContext

__all__ = [
    "build_message",
    "check_references",
    "kit_filename",
    "make_message_id",
    "qr_cid",
]

logger = logging.getLogger("pipeline.message")

_POLICY = email.policy.SMTP
_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_MESSAGE_ID = re.compile(r"^<([^<>@\s]+)@([^<>@\s]+)>$")


def make_message_id(
    account_id: str, key_generation: int, password_epoch: int, domain: str
) -> str:
    """The Message-ID of an account's email for one key generation and epoch.

    The same account, generation and epoch always give the same ID, so a rerun
    or a resend of the same EAK is recognisably the same message.
    """
    account = _account_uuid(account_id)
    if not _DOMAIN.match(domain):
        raise RenderError(f"message domain is not a host name: {domain!r}")
    for field, value in (
        ("key_generation", key_generation),
        ("password_epoch", password_epoch),
    ):
        if value < 1:
            raise RenderError(f'field "{field}": must be 1 or more: {value!r}')

    return f"<km1.{account.hex}.g{key_generation}.e{password_epoch}@{domain}>"


def qr_cid(message_id: str) -> str:
    """The Content-ID, without brackets, of the QR image in message `message_id`.

    The HTML refers to it as `cid:<value>`; deriving it from the Message-ID
    keeps it unique and lets the HTML and the MIME part agree.
    """
    match = _MESSAGE_ID.match(message_id)
    if match is None:
        raise RenderError(f"not a Message-ID of the form <id@domain>: {message_id!r}")
    local, domain = match.groups()
    return f"qr.{local}@{domain}"


def kit_filename(ctx: EmailContext) -> str:
    """A safe attachment name such as `acme-vault-kit-2025-03-14.pdf`."""
    slug = re.sub(r"[^a-z0-9]+", "-", ctx.product.lower()).strip("-")[:40]
    return f"{slug or 'account'}-kit-{ctx.issued.isoformat()}.pdf"


def build_message(
    ctx: EmailContext,
    html: str,
    text: str,
    qr_png: bytes,
    kit_pdf: bytes,
    message_id: str,
    date: dt.datetime,
) -> bytes:
    """The complete email, in this MIME tree:

    multipart/mixed
      multipart/alternative
        text/plain
        multipart/related
          text/html
          image/png       the QR code, inline, referred to by cid
      application/pdf     the kit, as an attachment

    Boundaries are derived from the content, so the same inputs give the same
    bytes.
    """
    _check_headers(ctx, message_id)
    cid = qr_cid(message_id)
    if f"cid:{cid}" not in html:
        raise RenderError(
            f"email HTML of account {ctx.account_id} does not show the QR code:"
            f" no reference to 'cid:{cid}'"
        )
    check_references(html, f"email HTML of account {ctx.account_id}")

    message = EmailMessage(policy=_POLICY)
    message["From"] = ctx.sender
    message["To"] = _recipient(ctx)
    message["Subject"] = ctx.subject
    message["Date"] = date
    message["Message-ID"] = message_id
    message["MIME-Version"] = "1.0"

    related = _multipart(
        MIMEPart(policy=_POLICY),
        "related",
        _text_part(html, "html"),
        _qr_part(qr_png, cid),
    )
    alternative = _multipart(
        MIMEPart(policy=_POLICY), "alternative", _text_part(text, "plain"), related
    )
    _multipart(message, "mixed", alternative, _kit_part(ctx, kit_pdf))

    _set_boundaries(message, message_id)
    return message.as_bytes(policy=_POLICY)


def check_references(html: str, what: str) -> None:
    """Refuse an HTML body that refers to anything but cid:, mailto: and #."""
    refused = first_refused(html)
    if refused is not None:
        where, shown = refused
        raise RenderError(
            f"{what} holds {shown} in {where}: an email body may load only its "
            "own cid: images and link to mailto:"
        )


def _account_uuid(account_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(account_id)
    except ValueError as error:
        raise RenderError(f'field "account_id": not a UUID: {account_id!r}') from error


def _recipient(ctx: EmailContext) -> Address:
    """The To address; a non-ASCII domain goes out in its IDNA (xn--) form."""
    local, at, domain = ctx.email.rpartition("@")
    if not at or not local or not domain:
        raise RenderError(f'field "email": not an address: {ctx.email!r}')
    if not local.isascii():
        raise RenderError(
            f'field "email": a non-ASCII local part needs SMTPUTF8, which keymail'
            f" does not send: {ctx.email!r}"
        )

    try:
        ascii_domain = domain.encode("idna").decode("ascii")
        return Address(display_name=ctx.name, username=local, domain=ascii_domain)
    except (UnicodeError, ValueError, IndexError) as error:
        raise RenderError(f'field "email": not an address: {ctx.email!r}') from error


def _check_headers(ctx: EmailContext, message_id: str) -> None:
    """Refuse control characters in every value that reaches a header.

    A CR or LF would let a value start a header of its own (header injection);
    records are validated earlier, and this is the last line of defence.
    """
    for field, value in (
        ("sender", ctx.sender),
        ("email", ctx.email),
        ("name", ctx.name),
        ("subject", ctx.subject),
        ("product", ctx.product),
        ("message_id", message_id),
    ):
        bad = next((char for char in value if _is_control(char)), None)
        if bad is not None:
            raise RenderError(
                f'field "{field}": control character U+{ord(bad):04X} '
                f"not allowed in a header: {value!r}"
            )


def _is_control(char: str) -> bool:
    """C0, DEL, C1, and the Unicode line and paragraph separators."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp")


def _multipart(container: MIMEPart, subtype: str, *parts: MIMEPart) -> MIMEPart:
    """Make `container` a multipart/`subtype` holding `parts`, in order."""
    # Setting the header directly, unlike set_type(), adds no MIME-Version to
    # inner parts; only the top-level message carries one.
    container["Content-Type"] = f"multipart/{subtype}"
    for part in parts:
        container.attach(part)
    return container


def _text_part(body: str, subtype: str) -> MIMEPart:
    # Quoted-printable keeps long HTML lines and non-ASCII names within the
    # 998-octet line limit of RFC 5322 while staying readable.
    part = MIMEPart(policy=_POLICY)
    part.set_content(body, subtype=subtype, charset="utf-8", cte="quoted-printable")
    return part


def _qr_part(qr_png: bytes, cid: str) -> MIMEPart:
    part = MIMEPart(policy=_POLICY)
    part.set_content(
        qr_png,
        maintype="image",
        subtype="png",
        disposition="inline",
        filename="qr.png",
        cid=f"<{cid}>",
    )
    return part


def _kit_part(ctx: EmailContext, kit_pdf: bytes) -> MIMEPart:
    part = MIMEPart(policy=_POLICY)
    part.set_content(
        kit_pdf,
        maintype="application",
        subtype="pdf",
        disposition="attachment",
        filename=kit_filename(ctx),
    )
    return part


def _set_boundaries(message: EmailMessage, message_id: str) -> None:
    """Give each multipart a boundary derived from the whole message's content.

    The boundary contains "=_", which quoted-printable never emits and base64
    cannot hold, and a hash of the parts, which the parts cannot contain.
    """
    digest = hashlib.sha256(message_id.encode())
    for part in message.walk():
        if not part.is_multipart():
            digest.update(part.as_bytes(policy=_POLICY))

    seed = digest.hexdigest()[:32]
    for depth, part in enumerate(p for p in message.walk() if p.is_multipart()):
        part.set_boundary(f"=_km{depth}_{seed}")
