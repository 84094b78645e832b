"""Account records: read CSV or JSONL as a stream, validate each record on its own.

A bad record becomes a RecordError (line, field, reason) and the stream goes on.
Passwords never appear in a reason, a repr or a log line.
"""

from __future__ import annotations

import csv
import io
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
    """Yield (line, raw row) for each record of a CSV or JSONL file, one at a time."""
    if detect_format(path) == "csv":
        yield from _csv_rows(path)
    else:
        yield from _jsonl_rows(path)


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | RecordError]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            return
        unknown = set(reader.fieldnames) - set(FIELDS)
        if unknown:
            raise UsageError(
                f"{path.name}: unknown column(s) {sorted(unknown)}; "
                f"the columns are {', '.join(FIELDS)}"
            )
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, RecordError(start, "line", f"not valid CSV: {exc}")
                continue
            if None in row:
                yield start, RecordError(start, "line", "more values than columns")
                continue
            yield start, dict(row)


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
            if not isinstance(row, dict):
                yield number, RecordError(number, "line", "not a JSON object")
                continue
            yield number, row


def validate(
    line: int, row: dict[str, Any], password: str | None = None
) -> AccountRecord:
    """Check one raw row; `password` (from --secrets) fills a missing one.

    Raises RecordError naming the first invalid field.
    """
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
            line, "locale", f"not a language tag like 'en' or 'de-CH': {locale!r}"
        )

    secret = values["password"] or password
    encrypted = values["encrypted_key"]
    if secret and encrypted:
        raise RecordError(
            line, "encrypted_key", "give a password or an encrypted_key, not both"
        )
    if not secret and not encrypted:
        raise RecordError(
            line,
            "password",
            "missing: give it in the record, in --secrets, or give an "
            "encrypted_key to resend",
        )
    eak = _encrypted_key(line, encrypted, account_id) if encrypted else None
    return AccountRecord(line, account_id, email, name, locale, secret, eak)


def _text(line: int, name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RecordError(line, name, f"must be text, not {type(value).__name__}")
    if len(value) > MAX_LENGTH[name]:
        raise RecordError(
            line, name, f"too long: {len(value)} characters, at most {MAX_LENGTH[name]}"
        )
    return value


def _account_id(line: int, value: str | None) -> uuid.UUID:
    if value is None:
        raise RecordError(line, "account_id", "missing")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise RecordError(line, "account_id", f"not a UUID: {value!r}") from None
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
            value, check_deliverability=False, test_environment=True
        )
    except email_validator.EmailNotValidError as exc:
        raise RecordError(line, "email", f"not an address: {value!r} ({exc})") from None
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

    The file is indexed once (account_id -> byte offset, in a temporary SQLite
    table that holds no password) and each password is read back when its record
    comes, so memory does not grow with the number of accounts.
    """

    def __init__(self, path: Path, index: sqlite3.Connection) -> None:
        self._path = path
        self._format = detect_format(path)
        self._db = index
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS secret "
            "(account_id TEXT PRIMARY KEY, offset INT)"
        )
        self._db.execute("DELETE FROM secret")
        self._handle = path.open("rb")
        self._columns: list[str] = []
        self._index()

    def _index(self) -> None:
        offset = 0
        for number, raw in enumerate(self._handle, start=1):
            start, offset = offset, offset + len(raw)
            if number == 1 and self._format == "csv":
                self._columns = next(csv.reader([raw.decode("utf-8-sig")]))
                if not {"account_id", "password"} <= set(self._columns):
                    raise UsageError(
                        f"{self._path.name}: a secrets CSV needs the columns "
                        "account_id,password"
                    )
                continue
            account_id = self._parse(raw).get("account_id")
            if account_id:
                self._db.execute(
                    "INSERT OR REPLACE INTO secret VALUES (?, ?)",
                    (str(account_id).lower(), start),
                )

    def _parse(self, raw: bytes) -> dict[str, Any]:
        text = raw.decode("utf-8-sig").strip()
        if not text:
            return {}
        try:
            if self._format == "csv":
                return dict(
                    zip(
                        self._columns, next(csv.reader(io.StringIO(text))), strict=False
                    )
                )
            row = json.loads(text)
        except (ValueError, csv.Error, StopIteration):
            return {}
        return row if isinstance(row, dict) else {}

    def password(self, account_id: uuid.UUID) -> str | None:
        found = self._db.execute(
            "SELECT offset FROM secret WHERE account_id = ?", (str(account_id),)
        ).fetchone()
        if found is None:
            return None
        self._handle.seek(found[0])
        value = self._parse(self._handle.readline()).get("password")
        return value if isinstance(value, str) and value else None

    def close(self) -> None:
        self._handle.close()


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
