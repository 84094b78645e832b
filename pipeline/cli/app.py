"""The Typer application and what every command shares: output, logging, exits."""

from __future__ import annotations

import logging
import sys
from enum import IntEnum
from typing import NoReturn

import typer
from rich.console import Console

from pipeline import __version__
from pipeline.errors import CodeError, KeymailError, UsageError

app = typer.Typer(
    name="keymail",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class Exit(IntEnum):
    """Exit codes shared by every command; unlock adds the diagnoses (10-15)."""

    OK = 0
    FAILED = 1
    USAGE = 2


def error(message: str, hint: str | None = None) -> None:
    """Print `keymail: error: ...` (and a hint) to stderr."""
    stderr.print(f"keymail: error: {message}", markup=False)
    if hint:
        stderr.print(f"keymail: hint: {hint}", markup=False)


def warn(message: str) -> None:
    stderr.print(f"keymail: warning: {message}", markup=False)


def fail(exc: KeymailError, hint: str | None = None) -> NoReturn:
    """Report a library error and exit with the code its class stands for."""
    error(str(exc), hint)
    if isinstance(exc, CodeError):
        raise typer.Exit(exc.exit_code)
    if isinstance(exc, UsageError):
        raise typer.Exit(Exit.USAGE)
    raise typer.Exit(Exit.FAILED)


def usage(message: str, hint: str | None = None) -> NoReturn:
    error(message, hint)
    raise typer.Exit(Exit.USAGE)


def setup_logging(verbose: int, quiet: bool) -> None:
    """Send the library's log records to stderr at the level -v/-q ask for."""
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose == 1:
        level = logging.INFO
    elif verbose > 1:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Prefixed())
    root = logging.getLogger("pipeline")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class _Prefixed(logging.Formatter):
    """`keymail: warning: ...`, in the same form as the CLI's own errors."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return f"keymail: {record.levelname.lower()}: {record.getMessage()}"


def _version(value: bool) -> None:
    if value:
        stdout.print(f"keymail {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="More log output (-vv for debug)."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Only errors; no progress bar."
    ),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Make, verify and send authentication emails that carry each account's
    encrypted account key (EAK) as a QR code, an account code and a PDF kit.

    \b
    Examples:
      keymail generate fixtures/accounts.csv --out output/demo \\
          --registry output/demo/registry.sqlite3
      keymail verify output/demo --registry output/demo/registry.sqlite3 \\
          --records fixtures/accounts.csv
      keymail inspect - < output/device/<account_id>.eak
    """
    setup_logging(verbose, quiet)
    state.quiet = quiet


class _State:
    quiet: bool = False


state = _State()
