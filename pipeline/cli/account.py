"""`keymail unlock`, `change-password`, `reset-password` and `resend`."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pipeline import keys
from pipeline.cli.app import Exit, app, fail, stdout, usage
from pipeline.config import load as load_settings
from pipeline.errors import CodeError, KeymailError, UnknownAccountError, UsageError
from pipeline.keys import kdf
from pipeline.keystore import Keystore
from pipeline.registry import Registry

# pipeline.signin loads WeasyPrint and the decoders (about 1.5 s): the
# commands import it when they run, so `keymail --help` stays quick.
if TYPE_CHECKING:
    from pipeline import signin as signin_module

REGISTRY = Path("output") / "registry.sqlite3"

EMAIL = typer.Option(..., "--email", help="The account's email address.")
CODE = typer.Option(None, "--code", help="The account code (or QR payload) as text.")
QR = typer.Option(None, "--qr", exists=True, dir_okay=False, help="A QR image (PNG).")
PDF = typer.Option(None, "--pdf", exists=True, dir_okay=False, help="The PDF kit.")
EML = typer.Option(None, "--eml", exists=True, dir_okay=False, help="The email file.")
KEYSTORE = typer.Option(None, "--keystore", file_okay=False, help="Device keystore.")
REGISTRY_OPTION = typer.Option(REGISTRY, "--registry", help="The registry (SQLite).")
OUT = typer.Option(
    None, "--out", help="Folder for the new email [default: output/<command>-<time>]."
)
TEMPLATES = typer.Option(None, "--templates", exists=True, file_okay=False)
CONFIG = typer.Option(None, "--config", help="TOML with product, sender, etc.")
KDF = typer.Option(str(kdf.DEFAULT), "--kdf", help="Argon2id cost m=KiB,t=,p=.")


def read_password(path: Path | None, what: str) -> str:
    """A password from a file ('-' for stdin) or a hidden prompt; never an argument."""
    if path is not None:
        stream = sys.stdin if str(path) == "-" else None
        try:
            text = stream.readline() if stream else path.read_text(encoding="utf-8")
        except OSError as exc:
            usage(f"cannot read the {what} file {path}: {exc.strerror}")
        except UnicodeDecodeError:
            usage(f"the {what} file {path} is not UTF-8 text")
        password = text.splitlines()[0] if text.splitlines() else ""
    elif sys.stdin.isatty():
        password = typer.prompt(what.capitalize(), hide_input=True, err=True)
    else:
        usage(f"no {what}: give a file with the option, or run in a terminal")
    if not password:
        usage(f"the {what} is empty")
    return password


def source(
    code: str | None, qr: Path | None, pdf: Path | None, eml: Path | None
) -> keys.Eak | None:
    """The EAK from whichever one of --code, --qr, --pdf, --eml was given."""
    from pipeline import signin

    options = (("code", code), ("qr", qr), ("pdf", pdf), ("eml", eml))
    given = [(kind, value) for kind, value in options if value is not None]
    if len(given) > 1:
        usage("give only one of --code, --qr, --pdf and --eml")
    if not given:
        return None
    kind, value = given[0]
    try:
        return signin.read_code(kind, str(value))
    except KeymailError as exc:
        fail(exc)


def open_registry(path: Path) -> Registry:
    try:
        return Registry(path, create=False)
    except KeymailError as exc:
        fail(UsageError(str(exc)))


def reissue_options(
    command: str,
    out: Path | None,
    templates: Path | None,
    config: Path | None,
    kdf_text: str,
) -> signin_module.Reissue:
    from pipeline import signin

    try:
        settings = load_settings(config, {})
        params = kdf.parse_params(kdf_text)
        kdf.check_for_wrapping(params)
    except UsageError as exc:
        fail(exc)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = out or Path("output") / f"{command}-{stamp}"
    return signin.Reissue(
        out=folder, settings=settings, templates=templates, params=params
    )


def run_account_command(action: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Call a lifecycle function, mapping its errors to exit codes and hints."""
    try:
        result = action()
    except UnknownAccountError as exc:
        fail(UsageError(str(exc)))
    except CodeError as exc:
        fail(exc)
    except KeymailError as exc:
        fail(exc)
    return result


@app.command("unlock")
def unlock_command(
    email: str = EMAIL,
    code: str | None = CODE,
    qr: Path | None = QR,
    pdf: Path | None = PDF,
    eml: Path | None = EML,
    keystore: Path | None = KEYSTORE,
    registry: Path = REGISTRY_OPTION,
    password_file: Path | None = typer.Option(
        None,
        "--password-file",
        help="File whose first line is the password; '-' = stdin.",
    ),
) -> None:
    """Sign in as a new device: unlock the account key from the email's code.

    The password comes from a hidden prompt or --password-file, never an option
    value. With --keystore, a stored code is tried first, and the code that
    worked is stored. Prints the account and its key check, never the key.

    Exit codes: 0 unlocked; 10 malformed or mistyped code (names the group),
    or no code found in the given image, PDF or email; 11 code from a
    different account; 12 code from before a password reset; 13 outdated
    code (made before a password change); 14 wrong password; 15 code not
    recognized; 2 usage error.

    \b
    Examples:
      keymail unlock --email ada.lovelace@example.com \\
          --registry output/demo/registry.sqlite3 --keystore output/device \\
          --qr output/demo/<account_id>/qr.png
      keymail unlock --email ada.lovelace@example.com \\
          --registry output/demo/registry.sqlite3 --password-file ada.pw \\
          --pdf output/demo/<account_id>/kit.pdf
      keymail unlock --email ada.lovelace@example.com \\
          --registry output/demo/registry.sqlite3 --keystore output/device
    """
    from pipeline import signin

    given = source(code, qr, pdf, eml)
    if given is None and keystore is None:
        usage("give --code, --qr, --pdf or --eml (or --keystore with a stored code)")
    store = Keystore(keystore) if keystore else None
    with open_registry(registry) as reg:
        password = read_password(password_file, "password")
        try:
            result = signin.sign_in(reg, email, password, given, store)
        except UnknownAccountError as exc:
            fail(UsageError(str(exc)))
        except CodeError as exc:
            fail(exc)
        except KeymailError as exc:
            fail(exc)

    stdout.print(f"unlocked account {result.account_id} ({result.email})", markup=False)
    stdout.print(f"key check: {result.key_check}", markup=False)
    stdout.print(f"code used: {result.source}", markup=False)
    if result.stored:
        stdout.print(f"stored in keystore: {result.stored.name}", markup=False)
    raise typer.Exit(Exit.OK)


@app.command("change-password")
def change_password_command(
    email: str = EMAIL,
    code: str | None = CODE,
    qr: Path | None = QR,
    pdf: Path | None = PDF,
    eml: Path | None = EML,
    keystore: Path | None = KEYSTORE,
    old_password_file: Path | None = typer.Option(None, "--old-password-file"),
    new_password_file: Path | None = typer.Option(None, "--new-password-file"),
    registry: Path = REGISTRY_OPTION,
    out: Path | None = OUT,
    templates: Path | None = TEMPLATES,
    config: Path | None = CONFIG,
    kdf_text: str = KDF,
) -> None:
    """Re-wrap the same account key under a new password (password epoch + 1).

    The current code (or the keystore's) must unlock with the old password. The
    registry is updated and the new email is written to --out as a one-account
    batch that `keymail verify` and `keymail send` take. The old code is then
    diagnosed as outdated.

    \b
    Examples:
      keymail change-password --email jose.garcia@example.org \\
        --registry output/demo/registry.sqlite3 \\
        --qr output/demo/<account_id>/qr.png --old-password-file old.pw \\
        --new-password-file new.pw --out output/change
    """
    from pipeline import signin

    given = source(code, qr, pdf, eml)
    if given is None and keystore is not None:
        with open_registry(registry) as reg:
            try:
                entry = reg.by_email(email)
            except UnknownAccountError as exc:
                fail(UsageError(str(exc)))
            given = Keystore(keystore).load(entry.state.account_id)
    if given is None:
        usage("give the current code: --code, --qr, --pdf, --eml or --keystore")
    reissue = reissue_options("change-password", out, templates, config, kdf_text)
    old = read_password(old_password_file, "old password")
    new = read_password(new_password_file, "new password")
    with open_registry(registry) as reg:
        row = run_account_command(
            lambda: signin.change_password(reg, email, given, old, new, reissue)
        )
    _report(row, reissue.out)


@app.command("reset-password")
def reset_password_command(
    email: str = EMAIL,
    new_password_file: Path | None = typer.Option(None, "--new-password-file"),
    registry: Path = REGISTRY_OPTION,
    out: Path | None = OUT,
    templates: Path | None = TEMPLATES,
    config: Path | None = CONFIG,
    kdf_text: str = KDF,
) -> None:
    """Replace the account key after a lost password (key generation + 1).

    Data under the old key cannot be recovered; every older code is then
    diagnosed as from before a reset. The new email goes to --out.

    \b
    Examples:
      keymail reset-password --email jose.garcia@example.org \\
        --registry output/demo/registry.sqlite3 --new-password-file new.pw \\
        --out output/reset
    """
    from pipeline import signin

    reissue = reissue_options("reset-password", out, templates, config, kdf_text)
    new = read_password(new_password_file, "new password")
    with open_registry(registry) as reg:
        row = run_account_command(
            lambda: signin.reset_password(reg, email, new, reissue)
        )
    _report(row, reissue.out)


@app.command("resend")
def resend_command(
    email: str = EMAIL,
    keystore: Path = typer.Option(..., "--keystore", file_okay=False),
    registry: Path = REGISTRY_OPTION,
    out: Path | None = OUT,
    templates: Path | None = TEMPLATES,
    config: Path | None = CONFIG,
) -> None:
    """Re-render the authentication email from the code a device keeps.

    Needs no password; refuses a stored code that is no longer current.

    \b
    Examples:
      keymail resend --email ada.lovelace@example.com \\
        --registry output/demo/registry.sqlite3 --keystore output/device \\
        --out output/resend
    """
    from pipeline import signin

    reissue = reissue_options("resend", out, templates, config, str(kdf.DEFAULT))
    with open_registry(registry) as reg:
        row = run_account_command(
            lambda: signin.resend(reg, email, Keystore(keystore), reissue)
        )
    _report(row, reissue.out)


def _report(row: dict[str, object], out: Path) -> None:
    stdout.print(
        f"{row['reason']}: account {row['account_id']} ({row['email']}), key "
        f"generation {row['key_generation']}, password epoch {row['password_epoch']}, "
        f"issued {row['issued']}",
        markup=False,
    )
    stdout.print(f"new email written to {out / str(row['account_id'])}", markup=False)
