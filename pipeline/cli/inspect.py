"""`keymail inspect`: show what an account code or QR payload holds, no password."""

from __future__ import annotations

import json
import sys

import typer

from pipeline import keys
from pipeline.cli.app import app, fail, stdout, usage
from pipeline.errors import CodeError
from pipeline.keys.eak import Header


@app.command("inspect")
def inspect_command(
    code: str = typer.Argument(
        ...,
        help="An account code or a QR payload (KM1:...); '-' reads it from stdin.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the header as JSON."),
) -> None:
    """Print an EAK's header: version, KDF parameters, account fingerprint, key
    generation, password epoch and issue date. Needs no password.

    Exits 10, naming the group, when the code is mistyped.

    \b
    Examples:
      keymail inspect - < output/device/<account_id>.eak
      keymail inspect --json "$(cat output/device/<account_id>.eak)"
    """
    text = sys.stdin.read() if code == "-" else code
    if not text.strip():
        usage("no code given", "pass the account code or QR payload, or '-' for stdin")
    try:
        eak = keys.parse_any(text)
    except CodeError as exc:
        # Typing again helps a typo, which names its group; not a code of
        # another version or one asking for more than the KDF cap.
        typo = bool(getattr(exc, "groups", ()))
        fail(exc, "type the code again, or scan the QR code instead" if typo else None)

    fields = describe(eak.header)
    if as_json:
        stdout.print(json.dumps(fields, indent=2), markup=False)
        return
    width = max(len(name) for name in fields)
    for name, value in fields.items():
        stdout.print(f"{name.replace('_', ' '):<{width}}  {value}", markup=False)


def describe(header: Header) -> dict[str, object]:
    """The header's fields as plain values (nothing in it is secret)."""
    params = header.kdf_params
    return {
        "version": header.version,
        "kdf": "argon2id",
        "kdf_memory_kib": params.memory_kib,
        "kdf_iterations": params.iterations,
        "kdf_lanes": params.lanes,
        "account_fingerprint": header.fingerprint.hex(),
        "key_generation": header.key_generation,
        "password_epoch": header.password_epoch,
        "issued": header.issued.isoformat(),
    }
