"""The checks of one account: every delivered artifact read back and compared."""

from __future__ import annotations

import contextlib
import email.policy
import functools
import hashlib
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, TypeVar, cast

from PIL import Image

from pipeline import keys
from pipeline.errors import CodeError, KeymailError
from pipeline.htmlrefs import HtmlScan, html_urls, refusals, scan_html
from pipeline.keys import AccountState, Eak
from pipeline.verify import degrade, readers, svg
from pipeline.verify.readers import ReadError, Symbol
from pipeline.verify.report import AccountResult, CheckResult, Status

ARTIFACTS = ("message.eml", "email.html", "email.txt", "kit.pdf", "qr.png", "qr.svg")

# The MIME tree an authentication email must have, exactly (DESIGN.md).
MIME_TREE = (
    "multipart/mixed",
    (
        (
            "multipart/alternative",
            ("text/plain", ("multipart/related", ("text/html", "image/png"))),
        ),
        "application/pdf",
    ),
)

# Gmail clips an HTML body above about 102 KB and hides the rest behind a link;
# 90 KiB leaves room for what a mail server adds on the way.
HTML_LIMIT = 90 * 1024

# Scanners want at least 0.4 mm a module on paper and a light margin of 4
# modules around the code (ISO/IEC 18004 quiet zone).
MIN_MODULE_MM = 0.4
QUIET_ZONE = 4
# A quiet zone pixel must be at least this light (0-255) to count as light.
LIGHT = 160
# Around the code in the kit, the print-and-scan and dark-mode renders take
# this many modules of the page on each side: the quiet zone and its
# neighbours, a few milliseconds instead of a whole page.
MARGIN_MODULES = 10

WHITE = (255, 255, 255)
_MM_PER_INCH = 25.4
_HEX32 = re.compile(r"[0-9a-f]{32}")
_SOURCES = (
    "qr.inline",
    "qr.png",
    "qr.svg",
    "qr.pdf",
    "code.text",
    "code.html",
    "code.pdf",
)


class CheckFailed(Exception):
    """A check (or a read it depends on) failed; the message is the reason."""


class CheckSkipped(Exception):
    """A check cannot run for this account; the message says why."""


@dataclass(frozen=True)
class AccountJob:
    """One manifest line to verify, with the registry's view of its account.

    Everything pickles, so a worker process gets all it needs in one message.
    """

    batch_dir: Path
    line: int
    row: dict[str, Any]
    entry_state: AccountState | None
    entry_email: str | None
    password: str | None = field(default=None, repr=False)
    passwords_given: bool = False
    # Why the password could not be read (a bad line of --secrets), if so.
    password_problem: str | None = None

    @property
    def account_id(self) -> str:
        return str(self.row.get("account_id", ""))


T = TypeVar("T")


def _once(method: Callable[[Inspection], T]) -> Callable[[Inspection], T]:
    """Make a read of Inspection run once; see Inspection.remember."""

    @functools.wraps(method)
    def read(self: Inspection) -> T:
        return self.remember(method.__name__, lambda: method(self))

    return read


class Inspection:
    """The artifacts of one account, read back lazily with independent decoders.

    What a check needs is read once; a read that failed fails every check that
    needs it, each naming the cause, and never stops the other checks.

    The EAK every artifact should hold is the one most of them agree on; a
    check of one artifact fails when it holds another, so a swapped QR image is
    blamed on that image and not on the others.
    """

    def __init__(self, job: AccountJob) -> None:
        self.job = job
        self.row = job.row
        self.cache: dict[str, tuple[bool, Any]] = {}
        self._pdf: readers.Pdf | None = None

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()

    def remember(self, key: str, compute: Callable[[], T]) -> T:
        """`compute()` once per account; a failed read fails the same way again,
        so every check that needs it names the same cause."""
        if key not in self.cache:
            try:
                self.cache[key] = (True, compute())
            except (CheckFailed, ReadError, KeymailError) as exc:
                self.cache[key] = (False, str(exc))
        ok, value = self.cache[key]
        if not ok:
            raise CheckFailed(value)
        return cast(T, value)

    # Manifest ----------------------------------------------------------------

    def field(self, name: str, kind: type[T]) -> T:
        value = self.row.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckFailed(f"the manifest line has no valid {name!r}")
        return value

    @_once
    def account_uuid(self) -> uuid.UUID:
        text = self.field("account_id", str)
        try:
            parsed = uuid.UUID(text)
        except ValueError:
            raise CheckFailed(f"account_id {text!r} is not a UUID") from None
        if str(parsed) != text:
            raise CheckFailed(f"account_id {text!r} is not in canonical form")
        return parsed

    def artifact(self, name: str) -> bytes:
        return self.remember(f"artifact:{name}", lambda: self._read_artifact(name))

    def _read_artifact(self, name: str) -> bytes:
        account_id = str(self.account_uuid())
        listed = self.field("artifacts", dict).get(name)
        if not isinstance(listed, dict):
            raise CheckFailed(f"{name} is not listed in the manifest")
        # The path is fixed, never taken from the manifest as given: a crafted
        # line must not point verify at a file outside the batch folder.
        expected = f"{account_id}/{name}"
        if listed.get("path") != expected:
            raise CheckFailed(f"{name}: the manifest path is not {expected!r}")
        path = self.job.batch_dir / account_id / name
        if path.is_symlink() or not path.is_file():
            raise CheckFailed(f"{name} is missing")
        return path.read_bytes()

    # The email ---------------------------------------------------------------

    @_once
    def message(self) -> EmailMessage:
        raw = self.artifact("message.eml")
        parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
        if not isinstance(parsed, EmailMessage):
            raise CheckFailed("message.eml did not parse as an email")
        return parsed

    @_once
    def parts(self) -> list[tuple[str, EmailMessage]]:
        """Every part with its content type (parsing a header costs ~0.4 ms)."""
        return [
            (part.get_content_type(), part)
            for part in self.message().walk()
            if isinstance(part, EmailMessage)
        ]

    def part(self, content_type: str) -> EmailMessage:
        """The first part of `content_type` anywhere in the message."""
        for found, part in self.parts():
            if found == content_type:
                return part
        raise CheckFailed(f"message.eml has no {content_type} part")

    @_once
    def text_body(self) -> str:
        return _body(self.part("text/plain"))

    @_once
    def html_body(self) -> str:
        return _body(self.part("text/html"))

    @_once
    def inline_png(self) -> bytes:
        data: bytes = self.part("image/png").get_content()
        return data

    @_once
    def html_scan(self) -> HtmlScan:
        return scan_html(self.html_body())

    # The kit -----------------------------------------------------------------

    @_once
    def pdf(self) -> readers.Pdf:
        self._pdf = readers.Pdf(self.artifact("kit.pdf"))
        return self._pdf

    @_once
    def page(self) -> Image.Image:
        return self.pdf().render()

    @_once
    def pdf_symbol(self) -> Symbol:
        try:
            return readers.decode_qr(self.page())
        except ReadError as exc:
            raise CheckFailed(f"kit.pdf, page 1 at 150 dpi: {exc}") from None

    def qr_box(self) -> tuple[float, float, float, float] | None:
        """The kit's QR code and MARGIN_MODULES around it, in page pixels."""
        try:
            symbol = self.pdf_symbol()
        except CheckFailed:
            return None
        margin = symbol.width / symbol.modules * MARGIN_MODULES
        page = self.page()
        return (
            max(symbol.left - margin, 0),
            max(symbol.top - margin, 0),
            min(symbol.right + margin, page.width),
            min(symbol.bottom + margin, page.height),
        )

    # EAKs ----------------------------------------------------------------------

    @_once
    def inline_symbol(self) -> Symbol:
        image = readers.flatten(readers.open_image(self.inline_png()), WHITE)
        return readers.decode_qr(image)

    def source(self, name: str) -> Eak:
        """The EAK held by one artifact: a QR payload or an account code."""
        return self.remember(f"source:{name}", lambda: _SOURCE_READERS[name](self))

    @_once
    def reference(self) -> Eak:
        """The EAK most artifacts hold (ties go to the email's own QR image)."""
        found: list[bytes] = []
        for name in _SOURCES:
            try:
                found.append(self.source(name).to_bytes())
            except CheckFailed:
                continue
        if not found:
            raise CheckFailed("no artifact holds a readable EAK")
        best, _ = Counter(found).most_common(1)[0]
        return Eak.from_bytes(best)

    def payload(self) -> str:
        return keys.format_payload(self.reference())


def _payload_eak(text: str) -> Eak:
    return keys.parse_payload(text)


def _code_eak(text: str, where: str) -> Eak:
    found = readers.find_codes(text)
    if not found:
        raise CheckFailed(f"no account code (27 groups of 6 symbols) in {where}")
    try:
        eaks = {keys.parse_code(code).to_bytes() for code in found}
    except CodeError as exc:
        raise CheckFailed(
            f"the account code in {where} does not parse: {exc}"
        ) from None
    if len(eaks) > 1:
        raise CheckFailed(f"{where} holds {len(eaks)} different account codes")
    return Eak.from_bytes(eaks.pop())


def _svg_eak(inspection: Inspection) -> Eak:
    image = svg.rasterize(inspection.artifact("qr.svg"))
    return _payload_eak(readers.decode_qr(image).text)


_SOURCE_READERS: dict[str, Callable[[Inspection], Eak]] = {
    "qr.inline": lambda ins: _payload_eak(ins.inline_symbol().text),
    "qr.png": lambda ins: _payload_eak(
        readers.decode_qr(
            readers.flatten(readers.open_image(ins.artifact("qr.png")), WHITE)
        ).text
    ),
    "qr.svg": _svg_eak,
    "qr.pdf": lambda ins: _payload_eak(ins.pdf_symbol().text),
    "code.text": lambda ins: _code_eak(ins.text_body(), "the text body"),
    "code.html": lambda ins: _code_eak(" ".join(ins.html_scan().text), "the HTML body"),
    "code.pdf": lambda ins: _code_eak(ins.pdf().text(), "the kit's text"),
}


# The checks, in report order ---------------------------------------------------

Check = Callable[[Inspection], None]
CHECKS: list[tuple[str, Check]] = []


def check(name: str) -> Callable[[Check], Check]:
    def register(function: Check) -> Check:
        CHECKS.append((name, function))
        return function

    return register


@check("manifest.row")
def _manifest_row(ins: Inspection) -> None:
    ins.account_uuid()
    for name, kind in (
        ("email", str),
        ("message_id", str),
        ("subject", str),
        ("key_generation", int),
        ("password_epoch", int),
        ("issued", str),
        ("key_check", str),
        ("artifacts", dict),
    ):
        ins.field(name, kind)
    if not _HEX32.fullmatch(ins.field("key_check", str)):
        raise CheckFailed("key_check in the manifest is not 32 hex digits")
    if ins.row.get("status") != "generated":
        raise CheckFailed(f"status is {ins.row.get('status')!r}, not 'generated'")


@check("artifacts.present")
def _present(ins: Inspection) -> None:
    missing = []
    for name in ARTIFACTS:
        try:
            ins.artifact(name)
        except CheckFailed as exc:
            missing.append(str(exc))
    if missing:
        raise CheckFailed("; ".join(missing))


@check("artifacts.sha256")
def _sha256(ins: Inspection) -> None:
    changed, unread = [], []
    for name in ARTIFACTS:
        try:
            data = ins.artifact(name)
        except CheckFailed:
            unread.append(name)
            continue
        listed = ins.field("artifacts", dict)[name].get("sha256")
        if hashlib.sha256(data).hexdigest() != listed:
            changed.append(name)
    if changed:
        raise CheckFailed(
            f"{', '.join(changed)} changed since the manifest was written "
            "(SHA-256 differs)"
        )
    if unread:
        raise CheckFailed(f"{', '.join(unread)} could not be read (artifacts.present)")


@check("artifacts.consistent")
def _consistent(ins: Inspection) -> None:
    """The loose files are the ones the email carries."""
    pairs = (
        (
            "email.txt",
            _lines(ins.artifact("email.txt").decode(errors="replace")),
            _lines(ins.text_body()),
        ),
        (
            "email.html",
            _lines(ins.artifact("email.html").decode(errors="replace")),
            _lines(ins.html_body()),
        ),
        ("qr.png", ins.artifact("qr.png"), ins.inline_png()),
        ("kit.pdf", ins.artifact("kit.pdf"), _attachment(ins).get_content()),
    )
    differ = [name for name, loose, carried in pairs if loose != carried]
    if differ:
        raise CheckFailed(f"{', '.join(differ)} differ(s) from the copy in message.eml")


@check("mime.tree")
def _mime_tree(ins: Inspection) -> None:
    message = ins.message()
    shape = _shape(message)
    if shape != MIME_TREE:
        raise CheckFailed(
            f"the MIME tree is {_describe(shape)}, not {_describe(MIME_TREE)}"
        )
    defects = [d for part in message.walk() for d in part.defects]
    if defects:
        raise CheckFailed(f"message.eml has MIME defects: {defects[0]!r}")


@check("mime.to")
def _mime_to(ins: Inspection) -> None:
    header = ins.message()["To"]
    addresses: tuple[Address, ...] = getattr(header, "addresses", ())
    if len(addresses) != 1:
        raise CheckFailed(f"To holds {len(addresses)} addresses, not 1")
    expected = ins.field("email", str)
    if not _same_address(addresses[0].addr_spec, expected):
        raise CheckFailed(
            f"To is {addresses[0].addr_spec!r}, the manifest says {expected!r}"
        )


@check("mime.message_id")
def _mime_message_id(ins: Inspection) -> None:
    found = str(ins.message()["Message-ID"] or "").strip()
    expected = ins.field("message_id", str)
    if found != expected:
        raise CheckFailed(f"Message-ID is {found!r}, the manifest says {expected!r}")


@check("mime.subject")
def _mime_subject(ins: Inspection) -> None:
    found = str(ins.message()["Subject"] or "")
    expected = ins.field("subject", str)
    if found != expected:
        raise CheckFailed(f"Subject is {found!r}, the manifest says {expected!r}")


@check("mime.cid")
def _mime_cid(ins: Inspection) -> None:
    image = ins.part("image/png")
    content_id = str(image["Content-ID"] or "").strip()
    if not (content_id.startswith("<") and content_id.endswith(">")):
        raise CheckFailed("the QR image part has no Content-ID")
    referenced = ins.html_scan().cids
    if content_id[1:-1] not in referenced:
        raise CheckFailed(
            f"the HTML never refers to the QR image as cid:{content_id[1:-1]}"
        )
    parts = {str(part["Content-ID"] or "").strip()[1:-1] for _, part in ins.parts()}
    dangling = sorted(referenced - parts)
    if dangling:
        raise CheckFailed(f"the HTML refers to cid:{dangling[0]}, which no part has")


@check("mime.pdf_attached")
def _pdf_attached(ins: Inspection) -> None:
    _attachment(ins)


@check("html.no_data_uri")
def _no_data_uri(ins: Inspection) -> None:
    for where, url in html_urls(ins.html_scan()):
        if url.lower().lstrip().startswith("data:"):
            raise CheckFailed(f"{where} holds a data: URI; Gmail drops those")


@check("html.no_external")
def _no_external(ins: Inspection) -> None:
    found = refusals(ins.html_scan(), data_uris=False)  # data: has its own check
    if found:
        where, shown = found[0]
        raise CheckFailed(f"{where} holds {shown}: only cid: and mailto: allowed")


@check("html.size")
def _html_size(ins: Inspection) -> None:
    size = len(ins.html_body().encode())
    if size > HTML_LIMIT:
        raise CheckFailed(
            f"the HTML body is {size:,} bytes; above {HTML_LIMIT:,} Gmail may clip it"
        )


def _source_check(name: str) -> Check:
    def run(ins: Inspection) -> None:
        held = ins.source(name)
        reference = ins.reference()
        if held.to_bytes() != reference.to_bytes():
            raise CheckFailed(_differs(held, reference, ins.account_uuid()))

    return run


for _name in _SOURCES[:4]:
    check(_name)(_source_check(_name))


@check("qr.module_size")
def _module_size(ins: Inspection) -> None:
    symbol = ins.pdf_symbol()
    module_mm = symbol.width / symbol.modules / readers.PDF_DPI * _MM_PER_INCH
    if module_mm < MIN_MODULE_MM:
        raise CheckFailed(
            f"the kit's QR modules are {module_mm:.2f} mm; scanners want "
            f"{MIN_MODULE_MM} mm or more"
        )


@check("qr.quiet_zone")
def _quiet_zone(ins: Inspection) -> None:
    """Four light modules around the code, in the kit and in the email, even on
    a dark ground: a transparent margin vanishes in dark mode."""
    inline = readers.flatten(readers.open_image(ins.inline_png()), degrade.DARK_GROUND)
    for where, image, symbol in (
        ("the email's QR image (on a dark ground)", inline, ins.inline_symbol()),
        ("the kit's QR code", ins.page(), ins.pdf_symbol()),
    ):
        problem = _margin_problem(image, symbol)
        if problem:
            raise CheckFailed(f"{where}: {problem}")


@check("qr.print_scan")
def _print_scan(ins: Inspection) -> None:
    box = ins.qr_box()
    region = ins.page().crop(box) if box else ins.page()
    seed = f"keymail/verify/print-scan/{ins.job.account_id}"
    scanned = degrade.print_and_scan(region, seed)
    try:
        found = readers.decode_qr(scanned).text
    except ReadError as exc:
        raise CheckFailed(
            f"the kit's QR after print and scan at 100 dpi: {exc}"
        ) from None
    if found != ins.payload():
        raise CheckFailed("after print and scan the kit's QR reads as another payload")


@check("qr.dark_mode")
def _dark_mode(ins: Inspection) -> None:
    """Shown over a dark ground, and inverted, the QR code still reads."""
    dark = degrade.DARK_GROUND
    inline = readers.flatten(readers.open_image(ins.inline_png()), dark)
    kit = ins.pdf().render(ground=dark, box=ins.qr_box())
    for where, image in (("the email's QR image", inline), ("the kit's QR code", kit)):
        for how, shown, invert in (
            ("over a dark ground", image, False),
            ("inverted", degrade.inverted(image), True),
        ):
            try:
                found = readers.decode_qr(shown, invert=invert, strict=True).text
            except ReadError as exc:
                raise CheckFailed(f"{where}, {how}: {exc}") from None
            if found != ins.payload():
                raise CheckFailed(f"{where}, {how}: reads as another payload")


for _name in _SOURCES[4:]:
    check(_name)(_source_check(_name))


@check("pdf.pages")
def _pdf_pages(ins: Inspection) -> None:
    pages = ins.pdf().pages
    if pages != 1:
        raise CheckFailed(f"the kit has {pages} pages, not 1")


@check("eak.registry")
def _eak_registry(ins: Inspection) -> None:
    state = ins.job.entry_state
    if state is None:
        raise CheckFailed("the account is not in the registry")
    try:
        keys.check_current(ins.reference(), ins.account_uuid(), state)
    except CodeError as exc:
        raise CheckFailed(f"{exc.title}: {exc}") from None


@check("eak.manifest")
def _eak_manifest(ins: Inspection) -> None:
    header = ins.reference().header
    problems = []
    for name, held in (
        ("key_generation", header.key_generation),
        ("password_epoch", header.password_epoch),
    ):
        listed = ins.field(name, int)
        if held != listed:
            problems.append(f"{name} is {held} in the EAK, {listed} in the manifest")
    if header.issued.isoformat() != ins.field("issued", str):
        problems.append(
            f"issued is {header.issued} in the EAK, {ins.field('issued', str)} in "
            "the manifest"
        )
    state = ins.job.entry_state
    if state is not None and state.key_check != ins.field("key_check", str):
        problems.append("key_check in the manifest is not the registry's")
    registered = ins.job.entry_email
    if registered is not None and not _same_address(
        registered, ins.field("email", str)
    ):
        problems.append(f"the registry has the email {registered!r}")
    if problems:
        raise CheckFailed("; ".join(problems))


@check("eak.unwrap")
def _eak_unwrap(ins: Inspection) -> None:
    password = ins.job.password
    if ins.job.password_problem is not None:
        raise CheckFailed(ins.job.password_problem)
    if password is None and ins.job.passwords_given:
        raise CheckFailed(
            "the passwords given (--secrets or --records) hold none for this account"
        )
    if password is None:
        raise CheckSkipped("no password given for this account")
    try:
        unlocked = keys.unlock(
            ins.reference(), ins.account_uuid(), password, ins.job.entry_state
        )
    except CodeError as exc:
        raise CheckFailed(f"{exc.title}: {exc}") from None
    except KeymailError as exc:
        raise CheckFailed(str(exc)) from None
    if unlocked.key_check != ins.field("key_check", str):
        raise CheckFailed("the unwrapped key's key check is not the manifest's")


CHECK_NAMES = tuple(name for name, _ in CHECKS)


def verify_account(job: AccountJob) -> AccountResult:
    """Run every check on one manifest line; never raises for a bad artifact.

    Each check passes, fails with a reason, or is skipped (eak.unwrap without a
    password).
    """
    inspection = Inspection(job)
    results = []
    try:
        for name, function in CHECKS:
            results.append(_run(name, function, inspection))
    finally:
        inspection.close()
    return AccountResult(job.account_id, job.line, tuple(results))


def _run(name: str, function: Check, inspection: Inspection) -> CheckResult:
    started = time.perf_counter()
    status: Status = "pass"
    reason = ""
    try:
        function(inspection)
    except CheckFailed as exc:
        status, reason = "fail", str(exc)
    except CheckSkipped as exc:
        status, reason = "skip", str(exc)
    except (ReadError, KeymailError) as exc:
        status, reason = "fail", str(exc)
    except Exception as exc:  # a bug in a check must not hide the other checks
        # Only the type: a message could quote a value this check was handed.
        status, reason = "fail", f"internal error in the check: {type(exc).__name__}"
    seconds = time.perf_counter() - started
    return CheckResult(name, status, reason, seconds)


# Helpers ---------------------------------------------------------------------------


def _lines(text: str) -> str:
    """Text with CRLF read as LF: the SMTP policy writes CRLF into the email."""
    return text.replace("\r\n", "\n")


def _body(part: EmailMessage) -> str:
    """A text part's content, or a failed check when its charset cannot decode it
    (a mail client would show the recipient garbage)."""
    try:
        body: str = part.get_content()
    except LookupError:
        raise CheckFailed(
            f"message.eml: the {part.get_content_type()} part has an unknown "
            f"charset {part.get_content_charset()!r}"
        ) from None
    except UnicodeError:
        raise CheckFailed(
            f"message.eml: the {part.get_content_type()} part does not decode as "
            f"its charset {part.get_content_charset()!r}"
        ) from None
    return body


def _attachment(ins: Inspection) -> EmailMessage:
    for content_type, part in ins.parts():
        if content_type != "application/pdf":
            continue
        if part.get_content_disposition() != "attachment":
            raise CheckFailed("the kit PDF is not marked as an attachment")
        filename = part.get_filename() or ""
        if not filename.lower().endswith(".pdf"):
            raise CheckFailed(f"the kit attachment has no .pdf filename: {filename!r}")
        return part
    raise CheckFailed("message.eml has no PDF attachment")


Shape = str | tuple[str, tuple["Shape", ...]]


def _shape(part: EmailMessage) -> Shape:
    if not part.is_multipart():
        return part.get_content_type()
    children = tuple(
        _shape(child) for child in part.iter_parts() if isinstance(child, EmailMessage)
    )
    return (part.get_content_type(), children)


def _describe(shape: Shape) -> str:
    if isinstance(shape, str):
        return shape
    kind, children = shape
    return f"{kind} [{', '.join(_describe(child) for child in children)}]"


def _same_address(found: str, expected: str) -> bool:
    """Equal addresses, the domain compared case-blind and in its IDNA form."""

    def split(address: str) -> tuple[str, str]:
        local, _, domain = address.strip().rpartition("@")
        with contextlib.suppress(UnicodeError):
            domain = domain.encode("idna").decode("ascii")
        return local, domain.lower()

    return split(found) == split(expected)


def _margin_problem(image: Image.Image, symbol: Symbol) -> str:
    module = symbol.width / symbol.modules
    zone = module * QUIET_ZONE
    outer = (
        round(symbol.left - zone + module / 2),
        round(symbol.top - zone + module / 2),
        round(symbol.right + zone - module / 2),
        round(symbol.bottom + zone - module / 2),
    )
    if (
        outer[0] < 0
        or outer[1] < 0
        or outer[2] > image.width
        or outer[3] > image.height
    ):
        return f"less than {QUIET_ZONE} modules of margin inside the image"
    grey = image.convert("L")
    inset = module / 2
    inner = (
        symbol.left - inset,
        symbol.top - inset,
        symbol.right + inset,
        symbol.bottom + inset,
    )
    strips = (
        (outer[0], outer[1], outer[2], round(inner[1])),
        (outer[0], round(inner[3]), outer[2], outer[3]),
        (outer[0], outer[1], round(inner[0]), outer[3]),
        (round(inner[2]), outer[1], outer[2], outer[3]),
    )
    darkest = min(
        cast(tuple[int, int], grey.crop(strip).getextrema())[0] for strip in strips
    )
    if darkest < LIGHT:
        return f"the {QUIET_ZONE}-module margin around the code is not light"
    return ""


def _differs(held: Eak, reference: Eak, account_id: uuid.UUID) -> str:
    """Why an artifact's EAK is not the one the other artifacts hold."""
    mine, theirs = held.header, reference.header
    try:
        keys.check_current(held, account_id, None)
    except CodeError:
        return "holds an EAK made for a different account than the other artifacts"
    changes = [
        f"{label} {getattr(mine, name)} where the others have {getattr(theirs, name)}"
        for label, name in (
            ("key generation", "key_generation"),
            ("password epoch", "password_epoch"),
            ("issued", "issued"),
        )
        if getattr(mine, name) != getattr(theirs, name)
    ]
    if changes:
        return "holds another EAK: " + ", ".join(changes)
    return "holds another EAK: same header, another salt or ciphertext"
