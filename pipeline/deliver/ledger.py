"""The send ledger: one durable row per message, so no email goes out twice."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from types import TracebackType

from pipeline.deliver.disk import FILE_MODE
from pipeline.errors import BatchError

__all__ = ["LEDGER_NAME", "Ledger", "LedgerRow", "MessageState", "read_ledger"]

LEDGER_NAME = "ledger.sqlite3"
LOCK_NAME = "ledger.lock"
SCHEMA_VERSION = 1
STOPPED_WHILE_SENDING = (
    "keymail stopped while the message data was going out; the server may have it"
)


class MessageState(StrEnum):
    """Where one message stands; `sending` is committed before its data goes out."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED_PERMANENT = "failed-permanent"
    FAILED_TRANSIENT = "failed-transient"
    UNCERTAIN = "uncertain"


_MARK = (
    "UPDATE messages SET state = ?, updated = ? "
    "WHERE account_id = ? AND message_id = ? AND state NOT IN (?, ?)"
)
_RECORD = (
    "UPDATE messages SET state = ?, reply = ?, updated = ?, "
    "sent_at = COALESCE(?, sent_at), attempts = attempts + 1 "
    "WHERE account_id = ? AND message_id = ? AND state != ?"
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS messages (
    account_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({", ".join(f"'{s}'" for s in MessageState)})),
    attempts INTEGER NOT NULL DEFAULT 0,
    reply TEXT,
    updated TEXT NOT NULL,
    sent_at TEXT,
    PRIMARY KEY (account_id, message_id)
);
PRAGMA user_version = {SCHEMA_VERSION};
"""


@dataclass(frozen=True)
class LedgerRow:
    """One message as the ledger knows it; `reply` is the server's last word."""

    account_id: str
    message_id: str
    recipient: str
    state: MessageState
    attempts: int
    reply: str | None
    updated: str
    sent_at: str | None


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ledger:
    """The ledger of one batch folder, held by one sender process at a time.

    `record_and_mark` (and `mark_sending`) commit with synchronous=FULL (an
    fsync): once it returns, not even a power cut takes the `sending` state
    back. A sender stores the outcome of one message in the same transaction
    as the next message's mark, so a message costs one fsync. `record` alone
    (before a pause, at the end of a run) commits with synchronous=NORMAL: it
    survives the process being killed, and the next FULL commit makes it
    durable too; a power cut in between can only roll a row back to
    `sending`, which the next run reports as uncertain and never sends again
    on its own.

    The methods may be called from more than one thread, one call at a time.
    """

    def __init__(
        self, path: Path, lock_fd: int, clock: Callable[[], str] = utc_now
    ) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._clock = clock
        self._db = _connect(path)
        self._mutex = threading.Lock()
        self._synchronous = "FULL"

    @classmethod
    def open(cls, batch_dir: Path, *, clock: Callable[[], str] = utc_now) -> Ledger:
        """Lock the batch for this process and open (or create) its ledger."""
        lock_fd = _lock(batch_dir)
        try:
            return cls(batch_dir / LEDGER_NAME, lock_fd, clock)
        except BaseException:
            os.close(lock_fd)
            raise

    def close(self) -> None:
        self._db.close()
        os.close(self._lock_fd)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def recover(self) -> list[LedgerRow]:
        """Turn rows a dead sender left in `sending` into `uncertain`; return them."""
        left = [r for r in self.rows() if r.state is MessageState.SENDING]
        now = self._clock()
        with self._write() as db:
            db.execute(
                "UPDATE messages SET state = ?, reply = ?, updated = ? WHERE state = ?",
                (
                    MessageState.UNCERTAIN,
                    STOPPED_WHILE_SENDING,
                    now,
                    MessageState.SENDING,
                ),
            )
        return [
            replace(
                r,
                state=MessageState.UNCERTAIN,
                reply=STOPPED_WHILE_SENDING,
                updated=now,
            )
            for r in left
        ]

    def add(self, messages: Iterable[tuple[str, str, str]]) -> None:
        """Add (account_id, message_id, recipient) rows as pending; keep known ones."""
        now = self._clock()
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO messages "
                "(account_id, message_id, recipient, state, updated) "
                "VALUES (?, ?, ?, ?, ?)",
                [(a, m, r, MessageState.PENDING, now) for a, m, r in messages],
            )

    def rows(self) -> list[LedgerRow]:
        with self._mutex:
            return [_row(values) for values in self._db.execute(_SELECT_ALL)]

    def get(self, account_id: str, message_id: str) -> LedgerRow | None:
        with self._mutex:
            values = self._db.execute(_SELECT_ONE, (account_id, message_id)).fetchone()
        return None if values is None else _row(values)

    def mark_sending(self, account_id: str, message_id: str) -> None:
        """Commit `sending` before the message data goes out; refuse a sent row."""
        self.record_and_mark([], account_id, message_id)

    def record_and_mark(
        self,
        outcomes: list[tuple[tuple[str, str], MessageState, str]],
        account_id: str,
        message_id: str,
    ) -> None:
        """Store earlier outcomes and commit `sending` for the next message, in
        one fsynced transaction. The outcomes are kept even when the mark is
        refused (the row is sent already, or unknown), which then raises."""
        now = self._clock()
        try:
            marked = self._record_and_mark(outcomes, account_id, message_id, now)
        except BatchError:
            # The transaction failed and took the outcomes with it: store them
            # on their own if the ledger still takes writes, then stop.
            for (account, message), state, reply in outcomes:
                with contextlib.suppress(BatchError):
                    self.record(account, message, state, reply)
            raise
        if not marked:
            raise BatchError(
                f"ledger {str(self.path)!r}: message {message_id} of account "
                f"{account_id} is not ready to send (sent already, or unknown)"
            )

    def _record_and_mark(
        self,
        outcomes: list[tuple[tuple[str, str], MessageState, str]],
        account_id: str,
        message_id: str,
        now: str,
    ) -> bool:
        """One transaction; whether the mark was made (the outcomes always are)."""
        with self._write() as db:
            for (account, message), state, reply in outcomes:
                sent_at = now if state is MessageState.SENT else None
                db.execute(
                    _RECORD,
                    (state, reply, now, sent_at, account, message, MessageState.SENT),
                )
            marked = db.execute(
                _MARK,
                (
                    MessageState.SENDING,
                    now,
                    account_id,
                    message_id,
                    MessageState.SENT,
                    MessageState.SENDING,
                ),
            ).rowcount
        return marked == 1

    def unmark(self, account_id: str, message_id: str, state: MessageState) -> None:
        """Put back a `sending` mark that was never followed by any data."""
        self._execute(
            "UPDATE messages SET state = ?, updated = ? "
            "WHERE account_id = ? AND message_id = ? AND state = ?",
            (state, self._clock(), account_id, message_id, MessageState.SENDING),
            synchronous="FULL",
        )

    def record(
        self, account_id: str, message_id: str, state: MessageState, reply: str
    ) -> None:
        """Store the outcome of one attempt and the reply behind it."""
        now = self._clock()
        sent_at = now if state is MessageState.SENT else None
        self._execute(
            _RECORD,
            (state, reply, now, sent_at, account_id, message_id, MessageState.SENT),
            synchronous="NORMAL",
        )

    def _execute(
        self, sql: str, params: tuple[object, ...], *, synchronous: str
    ) -> sqlite3.Cursor:
        """Run one statement as its own transaction (the connection autocommits)."""
        with self._mutex:
            try:
                self._synchronize(synchronous)
                return self._db.execute(sql, params)
            except sqlite3.Error as exc:
                raise BatchError(
                    f"cannot write ledger {str(self.path)!r}: {exc}"
                ) from exc

    def _synchronize(self, synchronous: str) -> None:
        if synchronous != self._synchronous:
            self._db.execute(f"PRAGMA synchronous = {synchronous}")
            self._synchronous = synchronous

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A transaction of several statements, committed with an fsync."""
        with self._mutex:
            try:
                self._synchronize("FULL")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise BatchError(
                    f"cannot write ledger {str(self.path)!r}: {exc}"
                ) from exc


def read_ledger(batch_dir: Path) -> dict[tuple[str, str], LedgerRow]:
    """The ledger's rows by (account_id, message_id), read without changing it."""
    path = batch_dir / LEDGER_NAME
    if not path.exists():
        return {}
    try:
        # A plain connection, not mode=ro: a read-only one leaves -wal and -shm
        # files behind. A SELECT writes nothing, and a running sender's
        # connection is not disturbed by a WAL reader.
        db = sqlite3.connect(path)
        try:
            cursor = db.execute(_SELECT_ALL)
            rows = [_row(values) for values in cursor]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise BatchError(_unreadable(path, exc)) from exc
    return {(r.account_id, r.message_id): r for r in rows}


_SELECT_ALL = (
    "SELECT account_id, message_id, recipient, state, attempts, reply, updated, "
    "sent_at FROM messages"
)
_SELECT_ONE = _SELECT_ALL + " WHERE account_id = ? AND message_id = ?"


def _row(
    values: tuple[str, str, str, str, int, str | None, str, str | None],
) -> LedgerRow:
    account_id, message_id, recipient, state, attempts, reply, updated, sent_at = values
    return LedgerRow(
        account_id,
        message_id,
        recipient,
        MessageState(state),
        attempts,
        reply,
        updated,
        sent_at,
    )


def _lock(batch_dir: Path) -> int:
    """Hold an exclusive lock on the batch; the kernel drops it if we die."""
    try:
        fd = os.open(batch_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as exc:
        raise BatchError(
            f"cannot lock batch {str(batch_dir)!r}: {exc.strerror}; check that the "
            "folder exists and is writable"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BatchError(
            f"batch {str(batch_dir)!r} is being sent by another keymail process; "
            "wait for it to finish, then run keymail send again"
        ) from None
    return fd


def _connect(path: Path) -> sqlite3.Connection:
    # Create the file owner-only; SQLite gives its -wal and -shm files the same
    # mode.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.executescript(_SCHEMA)
    except sqlite3.Error as exc:
        raise BatchError(_unreadable(path, exc)) from exc
    return db


def _unreadable(path: Path, exc: sqlite3.Error) -> str:
    return (
        f"ledger {str(path)!r} is unreadable ({exc}); it records which messages "
        "were sent: restore it rather than delete it"
    )
