"""`keymail verify`: prove every artifact of a batch round-trips before sending."""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pipeline.cli.app import Exit, app, error, state, stdout, usage
from pipeline.deliver.disk import atomic_write, read_jsonl
from pipeline.errors import BatchError, RegistryError, UsageError
from pipeline.records import SecretsFile, scratch_db
from pipeline.verify import (
    AccountResult,
    Passwords,
    VerifyReport,
    table_rows,
    to_json,
    to_junit,
    verify_batch,
)
from pipeline.verify.runner import MANIFEST

DEFAULT_REGISTRY = Path("output") / "registry.sqlite3"


@app.command("verify")
def verify_command(
    batch_dir: Path = typer.Argument(
        ..., metavar="DIR", help="A batch folder made by `keymail generate`."
    ),
    secrets: Path | None = typer.Option(
        None,
        "--secrets",
        help="Passwords by account (CSV or JSONL with account_id,password): "
        "each EAK is unwrapped, one KDF run an account.",
    ),
    records: Path | None = typer.Option(
        None,
        "--records",
        help="The records file of the batch: every record must be generated "
        "or rejected, and its password column is used like --secrets.",
    ),
    registry: Path = typer.Option(
        DEFAULT_REGISTRY, "--registry", help="Registry (SQLite) of the batch."
    ),
    json_report: Path | None = typer.Option(
        None, "--json", help="Write the report as JSON to this file."
    ),
    junit_report: Path | None = typer.Option(
        None, "--junit", help="Write the report as JUnit XML to this file."
    ),
    workers: int = typer.Option(
        os.cpu_count() or 1, "--workers", min=1, help="Worker processes."
    ),
) -> None:
    """Check every account of a batch by reading back what was delivered.

    For each account in DIR/manifest.jsonl: the artifacts match their SHA-256;
    message.eml has the expected MIME tree, the QR image by cid, the kit
    attached and no data: or external URLs; the QR codes (email, qr.png,
    qr.svg, the kit at 150 dpi, after print and scan, in dark mode) and the
    account codes (text, HTML, kit) all hold the same EAK; that EAK matches the
    registry and the manifest and, given a password, unwraps to the account's
    current key. Independent decoders read everything back: zxing-cpp, pdfium
    and the Python email parser. The batch itself must be finished (a killed
    generate is not) and, with --records, hold every record of that file,
    generated or rejected.

    Prints a table and a summary; --json and --junit write reports for CI.
    Nothing printed or written holds a password, an account key or a code.

    Exit codes: 0 every check passed, 1 a check failed, 2 usage error (no
    batch folder or manifest, unreadable registry or secrets file).

    \b
    Examples:
      keymail verify output/demo --registry output/demo/registry.sqlite3
      keymail verify output/demo --registry output/demo/registry.sqlite3 \\
          --records fixtures/accounts.csv
      keymail verify output/demo3 --registry output/demo3/registry.sqlite3 \\
          --secrets fixtures/secrets.csv --junit verify.xml
    """
    for option, path in (("--secrets", secrets), ("--records", records)):
        if path is not None and not path.is_file():
            usage(f"{option}: no file at {path}")
    for option, path in (("--json", json_report), ("--junit", junit_report)):
        if path is not None and not path.parent.is_dir():
            usage(f"{option}: no folder {path.parent} to write the report into")

    try:
        with (
            password_lookup(secrets, records, batch_dir) as passwords,
            progress_bar() as done,
        ):
            report = verify_batch(
                batch_dir,
                registry_path=registry,
                passwords=passwords,
                records=records,
                workers=workers,
                progress=done,
            )
    except (BatchError, RegistryError, UsageError) as exc:
        usage(str(exc), _hint(exc, records))

    if json_report is not None:
        atomic_write(json_report, to_json(report).encode())
    if junit_report is not None:
        atomic_write(junit_report, to_junit(report))
    print_report(report)
    raise typer.Exit(Exit.OK if report.ok else Exit.FAILED)


@contextmanager
def password_lookup(
    secrets: Path | None, records: Path | None, batch_dir: Path
) -> Iterator[Passwords | None]:
    """Passwords by account_id: the records file's column first, then --secrets.

    From the records file, an account's password is the one on the line the
    manifest says generate made it from (a rejected duplicate before it does
    not count). Both files are indexed in a temporary folder, never in the
    batch folder, and read one password at a time.
    """
    if secrets is None and records is None:
        yield None
        return
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))

        def indexed(path: Path, name: str, optional: bool) -> SecretsFile | None:
            db = scratch_db(scratch / f"{name}.sqlite3")
            stack.callback(db.close)
            # A records file may hold no password column: its batch took the
            # passwords from --secrets.
            lookup = SecretsFile(path, db, optional=optional)
            stack.callback(lookup.close)
            return lookup if lookup.holds_passwords else None

        by_line = indexed(records, "records", True) if records else None
        by_account = indexed(secrets, "secrets", False) if secrets else None
        if by_line is None and by_account is None:
            yield None
            return
        lines = _manifest_lines(batch_dir) if by_line is not None else {}

        def passwords(account_id: uuid.UUID) -> str | None:
            line = lines.get(str(account_id))
            found = (
                by_line.password_on_line(line, account_id) if by_line and line else None
            )
            if not found and by_account is not None:
                found = by_account.password(account_id)
            return found or None

        yield passwords


def _manifest_lines(batch_dir: Path) -> dict[str, int]:
    """account_id -> the records line generate made it from (the manifest's)."""
    lines: dict[str, int] = {}
    try:
        rows = read_jsonl(batch_dir / "manifest.jsonl")
    except (OSError, ValueError):
        return lines  # verify itself reports a missing or broken manifest
    for row in rows:
        account_id, line = row.get("account_id"), row.get("line")
        if isinstance(account_id, str) and isinstance(line, int):
            lines[account_id.lower()] = line
    return lines


@contextmanager
def progress_bar() -> Iterator[Callable[[AccountResult], None] | None]:
    """A rich progress bar on a terminal; nothing when piped or with --quiet."""
    if state.quiet or not sys.stderr.isatty():
        yield None
        return
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    # No auto-refresh thread: the verify workers are forked from this process.
    with Progress(
        *columns, TimeElapsedColumn(), transient=True, auto_refresh=False
    ) as bar:
        task = bar.add_task("verifying", total=None)

        def done(result: AccountResult) -> None:
            bar.advance(task)
            bar.refresh()

        yield done


def print_report(report: VerifyReport) -> None:
    """The table and summary to stdout; a failure also as an error on stderr."""
    table = Table(box=None)
    # The account id is never cut: a CI log must say which account failed.
    table.add_column("account", no_wrap=True, min_width=36)
    table.add_column("passed")
    table.add_column("failed")
    table.add_column("first failure", overflow="fold")
    for account, passed, failures, reason in table_rows(report):
        table.add_row(Text(account), passed, failures, Text(reason))
    if report.accounts:
        stdout.print(table)
    stdout.print(report.summary(), markup=False)

    failed = report.failed_accounts
    batch_failure = report.batch_failure
    if batch_failure is not None:
        error(f"batch: {batch_failure.name}: {batch_failure.reason}")
    if failed:
        first = failed[0].first_failure
        assert first is not None
        error(
            f"{len(failed)} of {len(report.accounts)} account(s) failed verification; "
            f"first: {failed[0].account_id}: {first.name}: {first.reason}"
        )
    elif not report.accounts:
        error(f"{MANIFEST} lists no account: nothing was verified")


def _hint(exc: Exception, records: Path | None) -> str | None:
    if isinstance(exc, BatchError) and MANIFEST in str(exc):
        return "give the folder that `keymail generate --out` wrote"
    if isinstance(exc, RegistryError):
        return "give the registry the batch was generated with: --registry PATH"
    if isinstance(exc, UsageError) and records is not None and "columns" in str(exc):
        return "--records reads the password column of a records file"
    return None
