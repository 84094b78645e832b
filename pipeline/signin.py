"""Signing in as a new device would, and the password lifecycle around it.

A device reads an EAK from what the user has (a typed code, a QR image, the PDF
kit or the email file), finds the account's current state by email in the
registry, and unlocks with a diagnosis. Change, reset and resend issue a new
email into a one-account batch folder that `verify` and `send` understand.
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import io
import logging
import re
import uuid
from dataclasses import dataclass
from email.message import EmailMessage, Message
from pathlib import Path

import pypdfium2
import zxingcpp
from PIL import Image, UnidentifiedImageError

from pipeline import keys
from pipeline.batch import finish_batch, open_single_batch
from pipeline.config import Settings
from pipeline.deliver.disk import append_jsonl
from pipeline.errors import CodeError, KeystoreError, MalformedCodeError, UsageError
from pipeline.keys import KdfParams
from pipeline.keys.payload import is_payload
from pipeline.keystore import Keystore
from pipeline.produce import Account, Producer, manifest_row
from pipeline.registry import Entry, Registry
from pipeline.render.context import Reason

log = logging.getLogger("pipeline.signin")

SOURCES = ("code", "qr", "pdf", "eml")
_SEPARATOR = r"[\s\-\u2010\u2011\u00ad\x02]+"
CODE_IN_TEXT = re.compile(
    rf"(?<![0-9A-Za-z])(?:[0-9A-Za-z]{{6}}{_SEPARATOR}){{26}}[0-9A-Za-z]{{6}}"
)
PDF_DPI = 150
QR_ONLY = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)


@dataclass(frozen=True)
class SignedIn:
    """A successful unlock: never the account key itself, only its key check."""

    account_id: uuid.UUID
    email: str
    key_check: str
    source: str
    stored: Path | None


# Reading an EAK from what the user has ------------------------------------------


def read_code(kind: str, value: str) -> keys.Eak:
    """Parse the EAK in a typed code, or in the QR image, PDF or email at `value`."""
    if kind == "code":
        return keys.parse_any(value)
    path = Path(value)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if kind == "qr":
        return _from_qr_images([_image(data, path)], path.name)
    if kind == "pdf":
        return _from_pdf(data, path.name)
    if kind == "eml":
        return _from_eml(data, path.name)
    raise UsageError(f"unknown code source {kind!r}; use one of {', '.join(SOURCES)}")


def _image(data: bytes, path: Path) -> Image.Image:
    return _read_image(data, path.name)


def _read_image(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise UsageError(
            f"{what} is not an image keymail can read (PNG, JPEG, GIF, WebP, ...)"
        ) from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise UsageError(f"{what} is not an image keymail can read: {exc}") from None
    return image


def qr_texts(image: Image.Image) -> list[str]:
    """Every QR code's text in `image`, inverted (dark-mode) symbols included."""
    found = zxingcpp.read_barcodes(image, formats=QR_ONLY, try_invert=True)
    return [barcode.text for barcode in found]


def _from_qr_images(images: list[Image.Image], name: str) -> keys.Eak:
    texts = [text for image in images for text in qr_texts(image)]
    if not texts:
        raise MalformedCodeError(
            f"no QR code found in {name}: use a sharper image, the PDF kit, or type "
            "the account code"
        )
    # An email or a page may carry other QR codes too (a signature, an app
    # link): the one that looks like a keymail payload is the one to read.
    ours = [text for text in texts if is_payload(text)]
    return keys.parse_payload((ours or texts)[0])


def _from_pdf(data: bytes, name: str) -> keys.Eak:
    try:
        document = pypdfium2.PdfDocument(data)
    except pypdfium2.PdfiumError as exc:
        raise UsageError(f"{name} is not a PDF keymail can read: {exc}") from None
    try:
        page = document[0]
        image = page.render(scale=PDF_DPI / 72).to_pil()
        text = page.get_textpage().get_text_range()
    finally:
        document.close()
    if qr_texts(image):
        return _from_qr_images([image], name)
    return _code_in_text(text, name)


def _from_eml(data: bytes, name: str) -> keys.Eak:
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
    images = []
    bodies = []
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type.startswith("image/"):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                images.append(_read_image(payload, f"the {content_type} of {name}"))
        elif content_type == "text/plain":
            bodies.append(_text(part))
    if any(qr_texts(image) for image in images):
        return _from_qr_images(images, name)
    return _code_in_text("\n".join(bodies), name)


def _text(part: Message) -> str:
    """A text part's content; an unknown or wrong charset is read as ASCII with
    replacements, which keeps an account code (plain ASCII) intact."""
    if isinstance(part, EmailMessage):
        try:
            return str(part.get_content())
        except (LookupError, UnicodeError):
            pass
    payload = part.get_payload(decode=True)
    return payload.decode("ascii", "replace") if isinstance(payload, bytes) else ""


def _code_in_text(text: str, name: str) -> keys.Eak:
    match = CODE_IN_TEXT.search(text)
    if match is None:
        raise MalformedCodeError(f"no QR code and no account code found in {name}")
    return keys.parse_code(match.group(0))


# Sign-in ----------------------------------------------------------------------------


def sign_in(
    registry: Registry,
    email_address: str,
    password: str,
    given: keys.Eak | None,
    keystore: Keystore | None = None,
) -> SignedIn:
    """Unlock the account as a new device: the stored EAK first, then the given one.

    A stored EAK that no longer works (outdated, from before a reset) is passed
    over for the given code; on success the EAK used is stored for next time.
    """
    entry = registry.by_email(email_address)
    account_id = entry.state.account_id
    stored = keystore.load(account_id) if keystore else None
    if stored is None and given is None:
        raise UsageError(
            "no code given and none stored in the keystore: pass --code, --qr, "
            "--pdf or --eml"
        )

    if stored is not None:
        try:
            unlocked = keys.unlock(stored, account_id, password, entry.state)
            return SignedIn(
                account_id, entry.email, unlocked.key_check, "keystore", None
            )
        except CodeError as exc:
            if given is None:
                raise
            log.info("stored code not usable (%s); trying the given code", exc.title)

    assert given is not None
    unlocked = keys.unlock(given, account_id, password, entry.state)
    path = keystore.store(account_id, given) if keystore else None
    return SignedIn(account_id, entry.email, unlocked.key_check, "given code", path)


# Change, reset, resend ---------------------------------------------------------------


@dataclass(frozen=True)
class Reissue:
    """Where a reissued email goes and how it is made."""

    out: Path
    settings: Settings
    templates: Path | None = None
    params: KdfParams = keys.DEFAULT
    issued: dt.date | None = None


def change_password(
    registry: Registry,
    email_address: str,
    code: keys.Eak,
    old_password: str,
    new_password: str,
    reissue: Reissue,
) -> dict[str, object]:
    """Same account key, password epoch + 1; the old code becomes outdated."""
    entry = registry.by_email(email_address)
    issued = keys.change_password(
        code,
        entry.state.account_id,
        old_password,
        new_password,
        entry.state,
        issued=_today(reissue),
        params=reissue.params,
    )
    return _reissue(registry, entry, issued.eak, issued.state, "change", reissue)


def reset_password(
    registry: Registry, email_address: str, new_password: str, reissue: Reissue
) -> dict[str, object]:
    """A new account key, key generation + 1; every older code stops working."""
    entry = registry.by_email(email_address)
    issued = keys.reset_password(
        entry.state.account_id,
        new_password,
        entry.state,
        issued=_today(reissue),
        params=reissue.params,
    )
    return _reissue(registry, entry, issued.eak, issued.state, "reset", reissue)


def resend(
    registry: Registry, email_address: str, keystore: Keystore, reissue: Reissue
) -> dict[str, object]:
    """Re-render the email from the EAK a device keeps; no password needed."""
    entry = registry.by_email(email_address)
    stored = keystore.load(entry.state.account_id)
    if stored is None:
        raise KeystoreError(
            f"the keystore {keystore.folder} holds no code for {entry.email}; unlock "
            "once with --keystore to store it"
        )
    keys.check_current(stored, entry.state.account_id, entry.state)
    return _reissue(registry, entry, stored, entry.state, "resend", reissue)


def _reissue(
    registry: Registry,
    entry: Entry,
    eak: keys.Eak,
    state: keys.AccountState,
    reason: Reason,
    reissue: Reissue,
) -> dict[str, object]:
    """Write the new email, then the registry, then the manifest line."""
    account = Account(str(state.account_id), entry.email, entry.name, entry.locale)
    batch = open_single_batch(reissue.out, reason, registry.path)
    batch_id = batch["batch_id"]
    producer = Producer(reissue.settings, reissue.templates)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    produced = producer.produce(account, eak, reason, reissue.out, now=now)
    if reason != "resend":
        registry.put(
            state, entry.email, entry.name, entry.locale, f"{reason}:{batch_id}"
        )
    row = manifest_row(1, account, produced, eak, reason, state.key_check)
    append_jsonl(reissue.out / "manifest.jsonl", row)
    finish_batch(reissue.out, batch, limit=None)
    return row


def _today(reissue: Reissue) -> dt.date:
    return reissue.issued or dt.datetime.now(dt.UTC).date()
