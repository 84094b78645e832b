"""Account records: read CSV or JSONL as a stream, validate each record on its own.

A bad record becomes a RecordError (line, field, reason) and the stream goes on.
A reason quotes the offending value, except the record's password, wherever
it appears; a line that cannot be read is not quoted at all.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import email_validator

from pipeline import keys
from pipeline.errors import CodeError, RecordError, UsageError

log = logging.getLogger("pipeline.records")

FIELDS = ("account_id", "email", "name", "locale", "password", "encrypted_key")
MAX_LENGTH = {
    "account_id": 36,
    "email": 254,
    "name": 200,
    "locale": 35,
    "password": 1024,
    "encrypted_key": 400,
}
LOCALE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
# Characters that must never reach a header: C0/C1 controls, DEL, and the
# Unicode line and paragraph separators some mail software treats as breaks.
HEADER_BREAKERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u0085]")
LINE_BREAK = re.compile(r"[\r\n\u2028\u2029\u0085\v\f]")
MAX_LINE_BYTES = 16 * 1024


@dataclass(frozen=True)
class AccountRecord:
    """One valid record: an account, and either a password or an EAK to resend."""

    line: int
    account_id: uuid.UUID
    email: str
    name: str
    locale: str
    password: str | None = field(default=None, repr=False)
    encrypted_key: keys.Eak | None = field(default=None, repr=False)

    @property
    def is_resend(self) -> bool:
        return self.encrypted_key is not None


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl", ".ndjson"):
        return "jsonl" if suffix != ".csv" else "csv"
    raise UsageError(f"cannot tell the format of {path.name!r}: name it .csv or .jsonl")


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | RecordError]]:
    """Yield (line, raw row) for each record of a CSV or JSONL file, one at a time.

    A line that cannot be read (bad encoding, broken CSV or JSON, wrong number
    of values) becomes a RecordError for that line; reading goes on. Nothing of
    the line's content is quoted: it may hold a password.
    """
    if detect_format(path) == "csv":
        yield from _csv_rows(path)
    else:
        yield from _jsonl_rows(path)


def check_header(path: Path) -> None:
    """Refuse a records file whose format or CSV header is wrong, before any work."""
    if detect_format(path) == "csv":
        _csv_columns(path, next(_csv_lines(path), (1, ""))[1])


def _csv_columns(path: Path, header_line: str | None) -> list[str]:
    if header_line is None or not header_line.strip():
        return []
    parsed = parse_csv_line(header_line)
    header = parsed if isinstance(parsed, list) else [""]
    unknown = [n for n, column in enumerate(header, start=1) if column not in FIELDS]
    if unknown or len(set(header)) != len(header):
        # The header cells are not quoted: a file without a header would have
        # its first record here, password included.
        where = ", ".join(map(str, unknown)) or "none, but one is repeated"
        raise UsageError(
            f"{path.name}: line 1 must name the columns, each once, from: "
            f"{', '.join(FIELDS)}; unknown column number(s): {where}. "
            "Is the header line missing?"
        )
    return header


def _csv_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(number, text) of each line of a CSV file, without its line end and the
    byte order mark; None for a line longer than MAX_LINE_BYTES characters.

    Split by `_raw_lines`, the splitter SecretsFile counts lines with, so a
    line number means the same line to both. surrogateescape: a byte that is
    not UTF-8 survives as a lone surrogate, so only that record is refused.
    """
    for number, _, data in _raw_lines(path, "csv"):
        if data is None:
            yield number, None
            continue
        text = data.decode("utf-8", "surrogateescape")
        if number == 1:
            text = text.removeprefix("\ufeff")
        for end in ("\r\n", "\n", "\r"):
            if text.endswith(end):
                text = text[: -len(end)]
                break
        yield number, text


UNCLOSED = "unclosed"


def parse_csv_line(text: str) -> list[str] | str:
    """The values of one CSV line, or why it has none: UNCLOSED when a quoted
    value runs past the end of the line, else the parser's complaint.

    Every record is one line: no field of a record may hold a line break, so a
    quote left open must not swallow the records after it.
    """
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            return UNCLOSED
        return str(exc)


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | RecordError]]:
    lines = _csv_lines(path)
    columns = _csv_columns(path, next(lines, (1, None))[1])
    for number, text in lines:
        if text is None:
            yield number, RecordError(number, "line", "longer than 16 KiB")
            continue
        if not text.strip():
            continue
        values = parse_csv_line(text)
        if values == UNCLOSED:
            # The lines after it are read as records of their own: what
            # the quote would have swallowed is refused or made, not lost.
            yield number, _unclosed(number, text, columns)
            continue
        if isinstance(values, str):
            yield number, RecordError(number, "line", f"not valid CSV: {values}")
            continue
        if len(values) != len(columns):
            reason = f"{len(values)} values for {len(columns)} columns"
            yield number, RecordError(number, "line", reason)
            continue
        yield number, dict(zip(columns, values, strict=True))


def _unclosed(number: int, text: str, columns: list[str]) -> RecordError:
    """The error for a line whose quoted value runs on past its end."""
    closed = parse_csv_line(text + '"')
    index = len(closed) - 1 if isinstance(closed, list) else len(columns)
    name = columns[index] if 0 <= index < len(columns) else "line"
    return RecordError(
        number,
        name,
        "a quoted value runs past the end of the line: a record is one line, "
        "and no field may hold a line break (one in a name or email would "
        "reach an email header)",
    )


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | RecordError]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            if len(raw) > MAX_LINE_BYTES:
                yield number, RecordError(number, "line", "longer than 16 KiB")
                continue
            try:
                row = json.loads(raw)
            except UnicodeDecodeError:
                yield number, RecordError(number, "line", "not UTF-8 text")
                continue
            except json.JSONDecodeError as exc:
                yield number, RecordError(number, "line", f"not valid JSON: {exc.msg}")
                continue
            except (ValueError, RecursionError):
                reason = "not valid JSON: nested too deeply or a number too long"
                yield number, RecordError(number, "line", reason)
                continue
            if not isinstance(row, dict):
                yield number, RecordError(number, "line", "not a JSON object")
                continue
            yield number, row


def validate(
    line: int, row: dict[str, Any], password: str | None = None
) -> AccountRecord:
    """Check one raw row; `password` (from --secrets) fills a missing one.

    Raises RecordError naming the first invalid field. A reason never quotes
    the password, even when it sits in the wrong field.
    """
    try:
        return _validate(line, row, password)
    except RecordError as exc:
        secrets = [row.get("password"), password]
        reason = exc.reason
        for secret in secrets:
            if isinstance(secret, str) and secret and repr(secret) in reason:
                reason = reason.replace(repr(secret), "(hidden: it is the password)")
        if reason is exc.reason:
            raise
        raise RecordError(line, exc.field, reason) from None


def _validate(line: int, row: dict[str, Any], password: str | None) -> AccountRecord:
    values = {name: _text(line, name, row.get(name)) for name in FIELDS}
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise RecordError(line, unknown[0], "unknown field")
    for name in ("email", "name", "locale"):
        if HEADER_BREAKERS.search(values[name] or ""):
            raise RecordError(
                line,
                name,
                "holds a control character or line break (refused: it "
                "would reach an email header)",
            )

    account_id = _account_id(line, values["account_id"])
    email = _email(line, values["email"])
    name = (values["name"] or "").strip()
    if not name:
        raise RecordError(line, "name", "missing")
    locale = (values["locale"] or "en").strip()
    if not LOCALE.fullmatch(locale):
        raise RecordError(
            line,
            "locale",
            f"not a language tag (such as en or de-CH): {_shown(locale, LOCALE_SHAPE)}",
        )

    password = values["password"] or password
    if password and LINE_BREAK.search(password):
        # Neither a sign-in form nor --password-file (one line) takes it.
        raise RecordError(line, "password", "holds a line break: no sign-in takes one")
    encrypted = values["encrypted_key"]
    if password and encrypted:
        raise RecordError(
            line, "encrypted_key", "give a password or an encrypted_key, not both"
        )
    if not password and not encrypted:
        raise RecordError(
            line,
            "password",
            "missing: give it in the record, in --secrets, or give an "
            "encrypted_key to resend",
        )
    eak = _encrypted_key(line, encrypted, account_id) if encrypted else None
    return AccountRecord(line, account_id, email, name, locale, password, eak)


def _text(line: int, name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RecordError(line, name, f"must be text, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(line, name, "not valid UTF-8 text") from None
    if len(value) > MAX_LENGTH[name]:
        raise RecordError(
            line, name, f"too long: {len(value)} characters, at most {MAX_LENGTH[name]}"
        )
    return value


def _shown(value: str, shape: str) -> str:
    """`value` quoted for a reason when it has the field's `shape`, else described.

    Columns shift in a hand-edited file, and a password in the wrong column
    must not be quoted: a value is quoted only when it looks like what the
    field holds (hex and hyphens for an id, a short tag for a locale, an @ for
    an email), which a password rarely does.
    """
    if re.fullmatch(shape, value):
        return repr(value)
    return f"(a value of {len(value)} characters, not shown)"


# What a value must look like to be quoted. A UUID that does not parse is
# never quoted (a hex password would look like one); a locale is quoted when
# it looks like a POSIX one (en_US.UTF-8), an email when it has an @ and
# either nothing or a dotted domain after it.
LOCALE_SHAPE = r"[a-z]{2,3}([_-][A-Za-z]{2,4})?(\.[A-Za-z0-9-]{1,12})?(@[a-z]{1,12})?"
EMAIL_SHAPE = r"[^@\s]{1,64}@([^@\s]+\.[^@\s]+)?"


def _account_id(line: int, value: str | None) -> uuid.UUID:
    if value is None:
        raise RecordError(line, "account_id", "missing")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise RecordError(
            line,
            "account_id",
            f"not a UUID: (a value of {len(value)} characters, not shown)",
        ) from None
    if str(parsed) != value.lower():
        raise RecordError(
            line, "account_id", f"write it in the canonical 8-4-4-4-12 form: {value!r}"
        )
    return parsed


def _email(line: int, value: str | None) -> str:
    if value is None:
        raise RecordError(line, "email", "missing")
    try:
        checked = email_validator.validate_email(
            value,
            check_deliverability=False,
            test_environment=True,
            allow_smtputf8=False,  # keymail does not send SMTPUTF8 mail
        )
    except email_validator.EmailNotValidError as exc:
        shown = _shown(value, EMAIL_SHAPE)
        raise RecordError(line, "email", f"not an address: {shown} ({exc})") from None
    return str(checked.normalized)


def _encrypted_key(line: int, value: str, account_id: uuid.UUID) -> keys.Eak:
    try:
        eak = keys.parse_any(value)
        keys.check_current(eak, account_id, None)
    except CodeError as exc:
        raise RecordError(line, "encrypted_key", str(exc)) from None
    return eak


class SecretsFile:
    """Passwords by account_id from a CSV or JSONL file, without holding them.

    The file is indexed once (line number, account_id -> byte offset and
    length, in a temporary SQLite table that holds no password) and each
    password is read back when its record comes, so memory does not grow with
    the number of accounts. Lines are split and counted as the records reader
    does. A password is taken exactly as written: CSV quoting applies, nothing
    is stripped.
    """

    def __init__(
        self, path: Path, index: sqlite3.Connection, *, optional: bool = False
    ) -> None:
        """`optional`: a CSV without a password column is no error, it just
        holds no password (a records file whose passwords came from --secrets).
        """
        self._path = path
        self._optional = optional
        self._format = detect_format(path)
        self._db = index
        self._db.execute("DROP TABLE IF EXISTS secret_line")
        self._db.execute(
            "CREATE TABLE secret_line "
            "(line INTEGER PRIMARY KEY, account_id TEXT, offset INT, length INT)"
        )
        self._db.execute("CREATE INDEX secret_line_account ON secret_line (account_id)")
        self._handle = path.open("rb")
        self._columns: list[str] = []
        try:
            self._index()
        except BaseException:
            self._handle.close()
            raise

    def _index(self) -> None:
        batch: list[tuple[int, str, int, int]] = []
        for number, start, raw in _raw_lines(self._path, self._format):
            if number == 1 and self._format == "csv":
                self._columns = self._header(raw or b"")
                if "password" not in self._columns:
                    return  # an optional file without passwords
                continue
            if raw is None:
                continue  # too long to be a record, as the records reader says
            account_id = self._row(raw).get("account_id")
            if isinstance(account_id, str) and account_id:
                batch.append((number, account_id.lower(), start, len(raw)))
            if len(batch) >= 1000:
                self._db.executemany("INSERT INTO secret_line VALUES (?,?,?,?)", batch)
                batch.clear()
        self._db.executemany("INSERT INTO secret_line VALUES (?,?,?,?)", batch)

    def _header(self, raw: bytes) -> list[str]:
        columns = self._csv_values(raw)
        if columns is not None and self._optional and "account_id" in columns:
            return columns
        if columns is None or not {"account_id", "password"} <= set(columns):
            raise UsageError(
                f"{self._path.name}: a secrets CSV starts with the header line "
                "account_id,password"
            )
        return columns

    def _csv_values(self, raw: bytes) -> list[str] | None:
        try:
            text = raw.decode("utf-8-sig").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError:
            return None
        values = parse_csv_line(text)
        return values if isinstance(values, list) and values else None

    def _row(self, raw: bytes) -> dict[str, Any]:
        """One line as a dict; {"malformed": True} when it cannot be read whole."""
        if not raw.strip():
            return {}
        if self._format == "csv":
            values = self._csv_values(raw)
            if values is None or len(values) != len(self._columns):
                # Whose line it is, if the account_id can still be found in
                # its place and is a UUID; never any other text of the line,
                # which may be a piece of the password.
                pieces = raw.split(b",")
                place = self._columns.index("account_id")
                if place >= len(pieces):
                    return {}
                guess = pieces[place].decode("ascii", "replace").strip(' "\r\n')
                try:
                    return {"account_id": str(uuid.UUID(guess)), "malformed": True}
                except ValueError:
                    return {}
            return dict(zip(self._columns, values, strict=True))
        try:
            row = json.loads(raw)
        except (ValueError, RecursionError):
            return {}
        return row if isinstance(row, dict) else {}

    @property
    def holds_passwords(self) -> bool:
        """False for a CSV without a password column (an `optional` file)."""
        return self._format != "csv" or "password" in self._columns

    def password(self, account_id: uuid.UUID) -> str | None:
        """The account's password (its first line's), None when the file has
        none for it.

        Raises SecretsRowError when the account's line cannot be read whole
        (for instance an unquoted comma in a CSV password).
        """
        found = self._db.execute(
            "SELECT offset, length FROM secret_line WHERE account_id = ? "
            "ORDER BY line LIMIT 1",
            (str(account_id),),
        ).fetchone()
        return None if found is None else self._read(*found)

    def password_on_line(self, line: int, account_id: uuid.UUID) -> str | None:
        """The password on record line `line`, if that line is the account's:
        the line generate made the account from, when it had duplicates."""
        found = self._db.execute(
            "SELECT offset, length FROM secret_line WHERE line = ? AND account_id = ?",
            (line, str(account_id)),
        ).fetchone()
        return None if found is None else self._read(*found)

    def _read(self, offset: int, length: int) -> str | None:
        self._handle.seek(offset)
        row = self._row(self._handle.read(length))
        if row.get("malformed"):
            raise SecretsRowError(
                f"its line in {self._path.name} does not have "
                f"{len(self._columns)} values; quote a password that holds a comma "
                "(a password cannot hold a line break)"
            )
        value = row.get("password")
        return value if isinstance(value, str) and value else None

    def close(self) -> None:
        self._handle.close()


def _raw_lines(path: Path, kind: str) -> Iterator[tuple[int, int, bytes | None]]:
    """(line number, byte offset, bytes with the line end) for each line, split
    and counted as the records reader does: CSV at \\n, \\r\\n or \\r,
    JSONL at \\n. A line longer than MAX_LINE_BYTES comes as None."""
    ends = ("\n", "\r") if kind == "csv" else ("\n",)
    with path.open(
        encoding="utf-8",
        errors="surrogateescape",  # lossless: offsets stay exact
        newline="" if kind == "csv" else "\n",
    ) as text:
        offset, number = 0, 0
        while line := text.readline(MAX_LINE_BYTES + 1):
            number += 1
            data = line.encode("utf-8", "surrogateescape")
            if len(line) > MAX_LINE_BYTES and not line.endswith(ends):
                size = len(data)
                while line and not line.endswith(ends):
                    line = text.readline(MAX_LINE_BYTES)
                    size += len(line.encode("utf-8", "surrogateescape"))
                yield number, offset, None
                offset += size
                continue
            yield number, offset, data
            offset += len(data)


class SecretsRowError(Exception):
    """The secrets file has a line for the account, but not a readable one."""


class DuplicateFilter:
    """Remembers account_ids and emails seen in this batch, on disk, not in memory."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen "
            "(kind TEXT, value TEXT, line INT, PRIMARY KEY (kind, value))"
        )
        self._db.execute("DELETE FROM seen")

    def check(self, record: AccountRecord) -> None:
        for kind, value in (
            ("account_id", str(record.account_id)),
            ("email", record.email.lower()),
        ):
            earlier = self._db.execute(
                "SELECT line FROM seen WHERE kind = ? AND value = ?", (kind, value)
            ).fetchone()
            if earlier is not None:
                raise RecordError(
                    record.line, kind, f"duplicate of record {earlier[0]}: {value!r}"
                )
        self._db.executemany(
            "INSERT INTO seen VALUES (?, ?, ?)",
            [
                ("account_id", str(record.account_id), record.line),
                ("email", record.email.lower(), record.line),
            ],
        )


def scratch_db(path: Path) -> sqlite3.Connection:
    """A throwaway SQLite file for indexes; rebuilt on every run, so no fsync."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    path.chmod(0o600)
    return db
