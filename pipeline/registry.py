"""The registry: the server's view of each account's key state, in SQLite.

One row per account: account_id, email, key generation, password epoch, key
check and issue date, the name and locale a new email is addressed with, and
which batch or command last wrote it. It never holds a password, an account key
or an EAK.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.deliver.disk import ensure_dir
from pipeline.errors import RegistryError, UnknownAccountError
from pipeline.keys import AccountState

SCHEMA = """
CREATE TABLE IF NOT EXISTS account (
    account_id     TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE COLLATE NOCASE,
    name           TEXT NOT NULL,
    locale         TEXT NOT NULL,
    key_generation INTEGER NOT NULL CHECK (key_generation >= 1),
    password_epoch INTEGER NOT NULL CHECK (password_epoch >= 1),
    key_check      TEXT NOT NULL CHECK (length(key_check) = 32),
    issued         TEXT NOT NULL,
    written_by     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class Entry:
    """A registry row: the account's state, whom to write to, who wrote it last."""

    state: AccountState
    email: str
    name: str
    locale: str
    written_by: str


class Registry:
    """A SQLite registry; each write is its own durable transaction."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        if not create and not path.exists():
            raise RegistryError(
                f"no registry at {path}; give --registry, or generate a batch first"
            )
        if create:
            ensure_dir(path.parent)
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(SCHEMA)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise RegistryError(f"cannot open the registry {path}: {exc}") from None
        path.chmod(0o600)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, account_id: uuid.UUID) -> Entry | None:
        row = self._db.execute(
            "SELECT * FROM account WHERE account_id = ?", (str(account_id),)
        ).fetchone()
        return _entry(row) if row else None

    def by_email(self, email: str) -> Entry:
        entry = self.find_email(email)
        if entry is None:
            raise UnknownAccountError(
                f"no account with email {email!r} in the registry {self.path}; "
                "check the address, or give the right --registry"
            )
        return entry

    def find_email(self, email: str) -> Entry | None:
        row = self._db.execute(
            "SELECT * FROM account WHERE email = ? COLLATE NOCASE", (email.strip(),)
        ).fetchone()
        return _entry(row) if row else None

    def claim(
        self, state: AccountState, email: str, name: str, locale: str, batch_id: str
    ) -> None:
        """Write a new account for `batch_id`, or update one that batch wrote.

        One statement, so two batches sharing a registry cannot both give the
        same account a key: the second is refused.
        """
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        try:
            cursor = self._db.execute(
                "INSERT INTO account VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (account_id) DO UPDATE SET email = excluded.email, "
                "name = excluded.name, locale = excluded.locale, "
                "key_generation = excluded.key_generation, "
                "password_epoch = excluded.password_epoch, "
                "key_check = excluded.key_check, issued = excluded.issued, "
                "updated_at = excluded.updated_at "
                "WHERE account.written_by = excluded.written_by",
                (*_values(state, email, name, locale), batch_id, now),
            )
        except sqlite3.IntegrityError:
            raise RegistryError(
                f"cannot register account {state.account_id}: its email {email!r} "
                "is already another account's"
            ) from None
        if cursor.rowcount == 0:
            raise RegistryError(
                f"account {state.account_id} was registered by another batch while "
                "this one ran; its email from this batch was not committed"
            )

    def put(
        self, state: AccountState, email: str, name: str, locale: str, written_by: str
    ) -> None:
        """Insert or replace the account's row."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        try:
            self._db.execute(
                "INSERT INTO account VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (account_id) DO UPDATE SET email = excluded.email, "
                "name = excluded.name, locale = excluded.locale, "
                "key_generation = excluded.key_generation, "
                "password_epoch = excluded.password_epoch, "
                "key_check = excluded.key_check, issued = excluded.issued, "
                "written_by = excluded.written_by, updated_at = excluded.updated_at",
                (*_values(state, email, name, locale), written_by, now),
            )
        except sqlite3.IntegrityError as exc:
            raise RegistryError(
                f"cannot record account {state.account_id}: {exc} (is {email!r} "
                "already used by another account?)"
            ) from None

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM account").fetchone()[0])


def _values(
    state: AccountState, email: str, name: str, locale: str
) -> tuple[str, str, str, str, int, int, str, str]:
    return (
        str(state.account_id),
        email,
        name,
        locale,
        state.key_generation,
        state.password_epoch,
        state.key_check,
        state.issued.isoformat(),
    )


def _entry(row: tuple[str, str, str, str, int, int, str, str, str, str]) -> Entry:
    account_id, email, name, locale, generation, epoch, check, issued, written_by, _ = (
        row
    )
    state = AccountState(
        account_id=uuid.UUID(account_id),
        key_generation=generation,
        password_epoch=epoch,
        key_check=check,
        issued=dt.date.fromisoformat(issued),
    )
    return Entry(
        state=state, email=email, name=name, locale=locale, written_by=written_by
    )
