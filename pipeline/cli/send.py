"""`keymail send`: deliver a batch over SMTP, never sending a message twice."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from pipeline.cli.app import Exit, app, error, fail, state, stderr, stdout, usage
from pipeline.deliver.disk import atomic_write
from pipeline.deliver.dkim import DkimSigner
from pipeline.deliver.smtp import DEFAULT_TIMEOUT, SmtpSettings
from pipeline.errors import (
    BatchError,
    KeymailError,
    RegistryError,
    SmtpAuthError,
    SmtpConnectionError,
    SmtpTlsError,
    UsageError,
)
from pipeline.registry import Registry
from pipeline.send import (
    DEFAULT_RETRIES,
    CurrentCheck,
    MessageResult,
    ProgressCallback,
    SendSummary,
    report_json,
    send_batch,
)

PASSWORD_ENV = "KEYMAIL_SMTP_PASSWORD"  # noqa: S105  (a variable name)


@app.command("send")
def send_command(
    batch: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="Batch folder written by keymail generate."),
    ],
    smtp: Annotated[
        str | None,
        typer.Option(
            "--smtp",
            metavar="URL",
            help="smtp://[user@]host:port (STARTTLS) or smtps://[user@]host:port.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the send plan; send nothing.")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option("--limit", metavar="N", help="Send at most N messages this run."),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option("--rate", metavar="R", help="At most R messages a second."),
    ] = None,
    per_minute: Annotated[
        int | None,
        typer.Option(
            "--per-minute", metavar="M", help="At most M messages in any minute."
        ),
    ] = None,
    retries: Annotated[
        int,
        typer.Option(
            "--retries",
            metavar="K",
            help="Retries of a 4xx reply or a lost connection, with backoff.",
        ),
    ] = DEFAULT_RETRIES,
    json_report: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="Write the summary as JSON."),
    ] = None,
    allow_plaintext: Annotated[
        bool,
        typer.Option(
            "--allow-plaintext",
            help="Send without TLS; to a loopback host only (a local test server).",
        ),
    ] = False,
    resend_uncertain: Annotated[
        bool,
        typer.Option(
            "--resend-uncertain",
            help="Send again the messages that may have reached the server.",
        ),
    ] = False,
    password_file: Annotated[
        Path | None,
        typer.Option(
            "--smtp-password-file",
            metavar="FILE",
            help=f"File holding the SMTP password (else ${PASSWORD_ENV}).",
        ),
    ] = None,
    mail_from: Annotated[
        str | None,
        typer.Option("--from", metavar="ADDR", help="Envelope sender (default: From)."),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", metavar="S", help="Seconds to wait for the server."),
    ] = DEFAULT_TIMEOUT,
    cafile: Annotated[
        Path | None,
        typer.Option(
            "--cafile",
            metavar="FILE",
            help="Trust the certificate authority in this PEM file for TLS.",
        ),
    ] = None,
    dkim_key: Annotated[
        Path | None,
        typer.Option("--dkim-key", metavar="FILE", help="Sign with this PEM RSA key."),
    ] = None,
    dkim_selector: Annotated[
        str | None,
        typer.Option("--dkim-selector", metavar="S", help="DKIM selector."),
    ] = None,
    dkim_domain: Annotated[
        str | None,
        typer.Option("--dkim-domain", metavar="D", help="DKIM signing domain."),
    ] = None,
    registry: Annotated[
        Path | None,
        typer.Option(
            "--registry",
            metavar="PATH",
            help="Refuse emails whose code is no longer the account's "
            "[default: the registry the batch was generated with].",
        ),
    ] = None,
) -> None:
    """Send a batch's emails over SMTP, recording each in the batch's ledger.

    A rerun sends only what is still pending or failed with a 4xx; a message
    that may have reached the server (the connection broke before its reply)
    is left alone unless --resend-uncertain. Exits 0 when every message is
    sent, 1 when any failed or is uncertain, 2 on a usage error.

    \b
    Examples:
      keymail send output/demo3 --dry-run
      KEYMAIL_SMTP_PASSWORD=... keymail send output/demo3 \\
          --smtp smtp://mailer@smtp.example.com:587 --rate 10 --json report.json
    """
    try:
        settings = smtp_settings(
            smtp, password_file, allow_plaintext, cafile, timeout, dry_run
        )
        signer = _signer(dkim_key, dkim_selector, dkim_domain)
        current = current_check(batch, registry)
        if mail_from is not None:
            _check_address(mail_from)
        if json_report is not None and not json_report.parent.is_dir():
            raise UsageError(f"--json: no folder {str(json_report.parent)!r}")
        with progress_bar() as progress:
            summary = send_batch(
                batch,
                settings,
                limit=limit,
                rate=rate,
                per_minute=per_minute,
                retries=retries,
                resend_uncertain=resend_uncertain,
                dry_run=dry_run,
                mail_from=mail_from,
                dkim=signer,
                current=current,
                progress=progress,
            )
    except (BatchError, SmtpAuthError) as exc:
        error(str(exc))
        raise typer.Exit(Exit.USAGE) from None
    except SmtpTlsError as exc:
        error(str(exc))
        raise typer.Exit(Exit.USAGE) from None
    except SmtpConnectionError as exc:
        fail(exc, "rerun keymail send when the server is back; sent messages stay sent")
    except KeymailError as exc:
        fail(exc)

    print_summary(summary)
    if summary.stopped:
        error(
            f"stopped early: {summary.stopped}",
            "rerun keymail send when the server is back; sent messages stay sent",
        )
    if json_report is not None:
        try:
            atomic_write(json_report, report_json(summary))
        except OSError as exc:
            error(f"cannot write --json {str(json_report)!r}: {exc.strerror}")
            raise typer.Exit(Exit.FAILED) from None
    raise typer.Exit(Exit.OK if summary.ok else Exit.FAILED)


def smtp_settings(
    url: str | None,
    password_file: Path | None,
    allow_plaintext: bool,
    cafile: Path | None,
    timeout: float,
    dry_run: bool,
) -> SmtpSettings | None:
    if url is None:
        if dry_run:
            return None
        usage("no SMTP server given", "pass --smtp smtp://[user@]host:port")
    if dry_run:
        # The plan needs no server: check the URL's form, not the password.
        SmtpSettings.from_url(
            url,
            password="-",  # noqa: S106  (a placeholder: a dry run logs in nowhere)
            allow_plaintext=allow_plaintext,
            cafile=cafile,
        )
        return None
    password = _password(password_file)
    settings = SmtpSettings.from_url(
        url,
        password=password,
        allow_plaintext=allow_plaintext,
        cafile=cafile,
        timeout=timeout,
    )
    if password_file is not None and settings.user is None:
        raise UsageError(
            "--smtp-password-file needs a user in the URL: smtp://user@host:port"
        )
    return settings


def _password(password_file: Path | None) -> str | None:
    """The SMTP password from --smtp-password-file, else from the environment."""
    if password_file is None:
        return os.environ.get(PASSWORD_ENV) or None
    try:
        password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise UsageError(
            f"cannot read --smtp-password-file {str(password_file)!r}: {exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        # The exception text would quote the offending byte of the password.
        raise UsageError(
            f"--smtp-password-file {str(password_file)!r} is not UTF-8 text"
        ) from None
    if not password:
        raise UsageError(f"--smtp-password-file {str(password_file)!r} is empty")
    return password


def current_check(batch: Path, registry: Path | None) -> CurrentCheck | None:
    """A check against the registry: the one given, or the batch's own.

    A batch made before a password change or reset must not go out: its code
    would be refused, and the user confused.
    """
    if registry is None:
        try:
            meta = json.loads((batch / "batch.json").read_text())
            registry = Path(meta["registry"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not registry.exists():
            return None
    try:
        accounts = Registry(registry, create=False)
    except RegistryError as exc:
        raise UsageError(str(exc)) from None

    def check(account_id: str, generation: int, epoch: int) -> str | None:
        entry = accounts.get(uuid.UUID(account_id))
        if entry is None:
            return f"the account is not in the registry {registry}"
        now = (entry.state.key_generation, entry.state.password_epoch)
        if (generation, epoch) == now:
            return None
        return (
            f"outdated: this email holds the code of key generation {generation}, "
            f"password epoch {epoch}, and the registry is at {now[0]}, {now[1]} (a "
            "password change or reset came after it); send the newer email"
        )

    return check


def _signer(
    key: Path | None, selector: str | None, domain: str | None
) -> DkimSigner | None:
    given = [v is not None for v in (key, selector, domain)]
    if not any(given):
        return None
    if not all(given):
        raise UsageError(
            "DKIM signing needs --dkim-key, --dkim-selector and --dkim-domain together"
        )
    assert key is not None and selector is not None and domain is not None
    return DkimSigner.from_file(key, selector, domain)


def _check_address(address: str) -> None:
    _, parsed = parseaddr(address)
    if parsed != address or "@" not in address:
        raise UsageError(f"--from is not a bare email address: {address!r}")


@contextmanager
def progress_bar() -> Iterator[ProgressCallback | None]:
    """A progress bar on stderr when it is a terminal and --quiet is off."""
    if state.quiet or not stderr.is_terminal:
        yield None
        return
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task("send", total=None)

        def advance(done: int, total: int, result: MessageResult) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def print_summary(summary: SendSummary) -> None:
    for planned in summary.plan:
        stdout.print(
            f"{planned.action:<12}  {planned.recipient}  {planned.message_id}  "
            f"{planned.size / 1024:.1f} KiB  {planned.subject}",
            markup=False,
        )
    for problem in summary.problems:
        stdout.print(
            f"{problem.state}  {problem.account_id}  {problem.message_id}  "
            f"{problem.recipient}: {problem.reply or ''}",
            markup=False,
        )
    if summary.dry_run:
        line = (
            f"dry run: {summary.pending} to send, {summary.skipped} sent before, "
            f"{summary.failed} failed, {summary.uncertain} uncertain"
        )
    else:
        line = (
            f"sent {summary.sent}, failed {summary.failed}, uncertain "
            f"{summary.uncertain}, skipped {summary.skipped}, pending {summary.pending}"
        )
    stdout.print(line, markup=False)
    if summary.uncertain and not state.quiet:
        stderr.print(
            f"keymail: hint: {summary.uncertain} message(s) may have reached the "
            "server; once you know they did not, --resend-uncertain sends them again",
            markup=False,
        )
