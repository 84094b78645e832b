"""One account's email from its EAK: encode, render, assemble, write to disk."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import keys, message
from pipeline.config import Settings
from pipeline.deliver.disk import atomic_write_many, ensure_dir
from pipeline.keys import Eak
from pipeline.render import qr
from pipeline.render.context import EmailContext, Reason
from pipeline.render.env import Templates
from pipeline.render.kit import KitRenderer

ARTIFACTS = ("message.eml", "email.html", "email.txt", "kit.pdf", "qr.png", "qr.svg")
STAGES = (
    "wrap",
    "encode",
    "render_qr",
    "render_email",
    "render_kit",
    "assemble",
    "write",
)


@dataclass(frozen=True)
class Account:
    """Who the email is for: the fields a template and the headers need."""

    account_id: str
    email: str
    name: str
    locale: str = "en"


@dataclass
class Produced:
    """What was written for one account, with each artifact's SHA-256."""

    account_id: str
    message_id: str
    subject: str
    artifacts: dict[str, dict[str, str]]
    html_bytes: int
    timings_ms: dict[str, float] = field(default_factory=dict)


class Producer:
    """Makes emails for many accounts; build one per process and reuse it.

    The kit renderer keeps one font configuration and the parsed CSS, which is
    most of what makes a warm page cheap.
    """

    def __init__(self, settings: Settings, templates_dir: Path | None = None) -> None:
        self.settings = settings
        self.templates = Templates(templates_dir)
        self.kit = KitRenderer(self.templates)

    def check_email_html(self) -> None:
        """Render the email HTML for a sample account and refuse what every
        account's would refuse alike (a tracking pixel, a data: image).

        A template may still refer to something for some accounts only; the
        same check runs on each account's email as it is built.
        """
        groups = ("000000",) * keys.code.GROUPS
        ctx = EmailContext(
            account_id="00000000-0000-4000-8000-000000000000",
            email="sample@example.com",
            name="Sample Account",
            account_code="-".join(groups),
            account_code_groups=groups,
            qr_payload=keys.payload.PREFIX + "0" * 132,
            issued=dt.date(2000, 1, 1),
            key_generation=1,
            password_epoch=1,
            reason="new",
            product=self.settings.product,
            support_email=self.settings.support_email,
            sender=self.settings.sender,
            subject=self.settings.subject_for("Sample Account"),
        )
        html = self.templates.email_html(ctx, "sample@keymail")
        message.check_references(html, "email.html.j2, rendered for a sample account,")

    def produce(
        self,
        account: Account,
        eak: Eak,
        reason: Reason,
        out_dir: Path,
        *,
        now: dt.datetime,
        timings: dict[str, float] | None = None,
    ) -> Produced:
        """Render every artifact of `account` and write them into `out_dir`.

        Each file is written atomically; the caller records the result (registry,
        manifest) only after this returns, so a crash leaves nothing half-done.
        """
        clock = timings if timings is not None else {}
        header = eak.header
        with _timed(clock, "encode"):
            groups = keys.format_groups(eak)
            payload = keys.format_payload(eak)

        ctx = EmailContext(
            account_id=account.account_id,
            email=account.email,
            name=account.name,
            locale=account.locale,
            account_code="-".join(groups),
            account_code_groups=groups,
            qr_payload=payload,
            issued=header.issued,
            key_generation=header.key_generation,
            password_epoch=header.password_epoch,
            reason=reason,
            product=self.settings.product,
            support_email=self.settings.support_email,
            sender=self.settings.sender,
            subject=self.settings.subject_for(account.name),
        )
        with _timed(clock, "render_qr"):
            png = qr.qr_png(payload)
            svg = qr.qr_svg(payload)
        message_id = message_id_for(account.account_id, eak, reason, self.settings, now)
        cid = message.qr_cid(message_id)
        with _timed(clock, "render_email"):
            html = self.templates.email_html(ctx, cid)
            text = self.templates.email_text(ctx)
        with _timed(clock, "render_kit"):
            pdf = self.kit.render(ctx, svg)
        with _timed(clock, "assemble"):
            eml = message.build_message(ctx, html, text, png, pdf, message_id, now)

        files = {
            "message.eml": eml,
            "email.html": html.encode(),
            "email.txt": text.encode(),
            "kit.pdf": pdf,
            "qr.png": png,
            "qr.svg": svg.encode(),
        }
        with _timed(clock, "write"):
            artifacts = write_artifacts(out_dir, account.account_id, files)
        return Produced(
            account_id=account.account_id,
            message_id=message_id,
            subject=ctx.subject,
            artifacts=artifacts,
            html_bytes=len(files["email.html"]),
            timings_ms=clock,
        )


def manifest_row(
    line: int,
    account: Account,
    produced: Produced,
    eak: Eak,
    reason: Reason,
    key_check: str,
) -> dict[str, object]:
    """The manifest.jsonl line that commits one account's email."""
    header = eak.header
    return {
        "account_id": account.account_id,
        "line": line,
        "email": account.email,
        "status": "generated",
        "reason": reason,
        "message_id": produced.message_id,
        "subject": produced.subject,
        "key_generation": header.key_generation,
        "password_epoch": header.password_epoch,
        "issued": header.issued.isoformat(),
        "key_check": key_check,
        "html_bytes": produced.html_bytes,
        "artifacts": produced.artifacts,
    }


def message_id_for(
    account_id: str, eak: Eak, reason: Reason, settings: Settings, now: dt.datetime
) -> str:
    """Deterministic per account, key generation and password epoch.

    A resent copy gets its own ID (suffixed with the day it was resent): mail
    systems drop a message whose Message-ID they have already delivered.
    """
    header = eak.header
    base = message.make_message_id(
        account_id, header.key_generation, header.password_epoch, settings.sender_domain
    )
    if reason != "resend":
        return base
    local, domain = base.strip("<>").split("@", 1)
    return f"<{local}.r{now:%Y%m%d}@{domain}>"


def write_artifacts(
    out_dir: Path, account_id: str, files: dict[str, bytes]
) -> dict[str, dict[str, str]]:
    folder = ensure_dir(out_dir / account_id)
    atomic_write_many(folder, files)
    return {
        name: {
            "path": f"{account_id}/{name}",
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        for name, data in files.items()
    }


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = (time.perf_counter() - start) * 1000
        timings[stage] = timings.get(stage, 0.0) + elapsed
