"""`keymail generate`: account records in, authentication emails out."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich import progress as rich_progress

from pipeline.cli.app import Exit, app, error, fail, state, stdout
from pipeline.config import load as load_settings
from pipeline.errors import KeymailError, RegistryError, UsageError
from pipeline.keys import kdf

if TYPE_CHECKING:  # the batch module loads WeasyPrint: only when a batch runs
    from pipeline.batch import BatchSummary, Progress
    from pipeline.deliver.smtp import SmtpSettings

DEFAULT_OUTPUT = Path("output")


@app.command("generate")
def generate_command(
    records: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Account records: .csv or .jsonl."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Batch folder [default: output/<records name>-<UTC time>]."
    ),
    registry: Path = typer.Option(
        DEFAULT_OUTPUT / "registry.sqlite3", "--registry", help="Registry (SQLite)."
    ),
    secrets: Path | None = typer.Option(
        None,
        "--secrets",
        exists=True,
        dir_okay=False,
        help="Passwords by account: CSV or JSONL with account_id,password.",
    ),
    templates: Path | None = typer.Option(
        None,
        "--templates",
        exists=True,
        file_okay=False,
        help="A template folder (sandboxed); missing files come from the default.",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="TOML with product, sender, support_email, subject."
    ),
    product: str | None = typer.Option(None, "--product", help="Product name."),
    sender: str | None = typer.Option(None, "--sender", help="From header."),
    support_email: str | None = typer.Option(None, "--support-email"),
    subject: str | None = typer.Option(
        None, "--subject", help="Subject; may use {product} and {name}."
    ),
    workers: int = typer.Option(
        os.cpu_count() or 1, "--workers", min=1, help="Worker processes."
    ),
    kdf_text: str = typer.Option(
        str(kdf.DEFAULT),
        "--kdf",
        help="Argon2id cost m=KiB,t=iterations,p=lanes; at least m=19456,t=2,p=1.",
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="Stop after this many accounts."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Finish an interrupted batch in --out."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    send: bool = typer.Option(
        False, "--send", help="Send the batch over SMTP once it is generated."
    ),
    smtp: str | None = typer.Option(
        None, "--smtp", metavar="URL", help="With --send: smtp://[user@]host:port."
    ),
    smtp_password_file: Path | None = typer.Option(
        None, "--smtp-password-file", help="With --send: the SMTP password file."
    ),
    allow_plaintext: bool = typer.Option(
        False, "--allow-plaintext", help="With --send: no TLS, loopback only."
    ),
    cafile: Path | None = typer.Option(
        None, "--cafile", help="With --send: trust this CA (PEM) for TLS."
    ),
    rate: float | None = typer.Option(
        None, "--rate", help="With --send: at most R messages a second."
    ),
) -> None:
    """Generate every account's authentication email into a batch folder.

    For each account: message.eml, email.html, email.txt, kit.pdf, qr.png and
    qr.svg under OUT/<account_id>/, a line in OUT/manifest.jsonl, and a row in
    the registry. Bad records go to OUT/rejects.jsonl with line, field and
    reason; the batch goes on.

    Exit codes: 0 all generated, 1 some records rejected or failed, 2 usage or
    configuration error.

    With --send, the batch is then sent as `keymail send` would (see its help
    for the ledger); the SMTP options are checked before anything is generated.

    \b
    Examples:
      keymail generate fixtures/accounts.csv --out output/g1 \\
          --registry output/g1/registry.sqlite3
      keymail generate fixtures/accounts.csv --out output/g1 \\
          --registry output/g1/registry.sqlite3 --resume
      keymail generate fixtures/accounts.jsonl --secrets fixtures/secrets.csv \\
          --out output/g2 --registry output/g2/registry.sqlite3 --workers 4
      keymail generate fixtures/accounts.csv --out output/g3 \\
          --registry output/g3/registry.sqlite3 \\
          --send --smtp smtp://127.0.0.1:2525 --allow-plaintext
    """
    from pipeline.batch import BatchOptions, run_batch

    try:
        settings = load_settings(
            config,
            {
                "product": product,
                "sender": sender,
                "support_email": support_email,
                "subject": subject,
            },
        )
        params = kdf.parse_params(kdf_text)
        kdf.check_for_wrapping(params)
        smtp_settings = _smtp_settings(
            send, smtp, smtp_password_file, allow_plaintext, cafile
        )
    except UsageError as exc:
        fail(exc)

    options = BatchOptions(
        records=records,
        out=out or default_out(records),
        registry=registry,
        settings=settings,
        templates=templates,
        secrets=secrets,
        workers=workers,
        kdf_params=params,
        resume=resume,
        limit=limit,
    )
    try:
        with progress_bar(records) as advance:
            summary = run_batch(options, advance)
    except RegistryError as exc:
        fail(UsageError(str(exc)))
    except KeymailError as exc:
        fail(exc, _hint(exc))
    except OSError as exc:  # --out or --registry where no folder can be
        fail(UsageError(f"cannot write {exc.filename}: {exc.strerror}"))

    report(summary, as_json)
    sent_ok = True
    if smtp_settings is not None:
        sent_ok = _send(Path(summary.out), smtp_settings, rate)
    raise typer.Exit(Exit.OK if summary.ok and sent_ok else Exit.FAILED)


def _smtp_settings(
    send: bool,
    url: str | None,
    password_file: Path | None,
    allow_plaintext: bool,
    cafile: Path | None,
) -> SmtpSettings | None:
    if not send:
        if url or password_file or allow_plaintext or cafile:
            raise UsageError("--smtp and its options need --send")
        return None
    from pipeline.cli.send import smtp_settings

    return smtp_settings(url, password_file, allow_plaintext, cafile, 30.0, False)


def _send(batch: Path, settings: SmtpSettings, rate: float | None) -> bool:
    """Send the batch just generated, as `keymail send` would; True when every
    message went out."""
    from pipeline.cli.send import current_check, print_summary, progress_bar
    from pipeline.errors import SmtpAuthError, SmtpTlsError
    from pipeline.send import send_batch

    later = f"the batch is generated; send it later: keymail send {batch}"
    try:
        with progress_bar() as progress:
            summary = send_batch(
                batch,
                settings,
                rate=rate,
                current=current_check(batch, None),
                progress=progress,
            )
    except (SmtpAuthError, SmtpTlsError) as exc:
        error(str(exc), later)
        raise typer.Exit(Exit.USAGE) from None
    except KeymailError as exc:
        fail(exc, later)
    print_summary(summary)
    if summary.stopped:
        error(f"stopped early: {summary.stopped}", later)
    return summary.ok


def default_out(records: Path) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return DEFAULT_OUTPUT / f"{records.stem}-{stamp}"


@contextmanager
def progress_bar(records: Path) -> Iterator[Progress | None]:
    """A rich progress bar on a terminal; nothing when piped or with --quiet."""
    from pipeline.batch import count_records

    if state.quiet or not sys.stderr.isatty():
        yield None
        return
    columns = (
        rich_progress.TextColumn("{task.description}"),
        rich_progress.BarColumn(),
        rich_progress.MofNCompleteColumn(),
        rich_progress.TimeElapsedColumn(),
    )
    # No refresh thread: batch workers are forked, and a fork must not copy a
    # lock that another thread holds. The bar redraws from the callback.
    with rich_progress.Progress(*columns, transient=True, auto_refresh=False) as bar:
        task = bar.add_task("generating", total=count_records(records))

        def advance(event: str, line: int) -> None:
            bar.advance(task)
            bar.refresh()

        yield advance


def report(summary: BatchSummary, as_json: bool) -> None:
    if as_json:
        stdout.print(json.dumps(summary.as_dict(), indent=2), markup=False)
    else:
        _print_summary(summary)
    if not summary.ok:
        error(
            f"{summary.rejected + summary.failed} record(s) not generated; "
            f"see {Path(summary.out) / 'rejects.jsonl'}"
        )


def _print_summary(summary: BatchSummary) -> None:
    stdout.print(
        f"batch {summary.out}: {summary.generated} generated, {summary.skipped} "
        f"already done, {summary.rejected} rejected, {summary.failed} failed "
        f"in {summary.seconds:.1f} s ({summary.records_per_second:.1f} records/s)",
        markup=False,
    )


def _hint(exc: KeymailError) -> str | None:
    if "already holds a batch" in str(exc):
        return "keymail generate RECORDS --out DIR --resume finishes it"
    return None
