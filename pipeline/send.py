"""Send a batch over SMTP: the plan, the ledger, pacing, retries and the summary."""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from email.utils import getaddresses
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from pipeline.deliver.disk import read_jsonl
from pipeline.deliver.dkim import DkimSigner
from pipeline.deliver.ledger import Ledger, LedgerRow, MessageState, read_ledger
from pipeline.deliver.smtp import Delivery, Envelope, SmtpClient, SmtpSettings
from pipeline.errors import (
    BatchError,
    SmtpAuthError,
    SmtpConnectionError,
    UsageError,
)

__all__ = [
    "DEFAULT_RETRIES",
    "Backoff",
    "Clock",
    "MessageResult",
    "PlannedMessage",
    "ProgressCallback",
    "SendSummary",
    "report_json",
    "send_batch",
]

log = logging.getLogger("pipeline.deliver.send")

MANIFEST_NAME = "manifest.jsonl"
DEFAULT_RETRIES = 3
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_PROBLEMS = (
    MessageState.FAILED_PERMANENT,
    MessageState.FAILED_TRANSIENT,
    MessageState.UNCERTAIN,
)


# What the caller gets back


@dataclass(frozen=True)
class MessageResult:
    """Where one message stands after this run, with the server's last reply."""

    account_id: str
    message_id: str
    recipient: str
    state: MessageState
    reply: str | None
    attempts: int


@dataclass(frozen=True)
class PlannedMessage:
    """One line of a dry run: what a real run would do with this message."""

    account_id: str
    message_id: str
    recipient: str
    subject: str
    size: int
    action: str


@dataclass
class SendSummary:
    """Counts over the whole batch once the run is over.

    `sent` counts this run's deliveries, `skipped` those sent by an earlier run;
    `failed` and `uncertain` count every message in those states, whichever run
    left it there; `pending` counts messages left for a later run (--limit, or a
    dry run). `problems` lists the failed and uncertain messages.
    """

    sent: int = 0
    skipped: int = 0
    failed: int = 0
    uncertain: int = 0
    pending: int = 0
    dry_run: bool = False
    stopped: str | None = None
    problems: list[MessageResult] = field(default_factory=list)
    plan: list[PlannedMessage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing failed, nothing is uncertain, and the run was not cut short."""
        return self.failed == 0 and self.uncertain == 0 and self.stopped is None

    def to_json(self) -> dict[str, Any]:
        report = asdict(self)
        report["ok"] = self.ok
        if not self.dry_run:
            del report["plan"]
        return report


ProgressCallback = Callable[[int, int, MessageResult], None]
"""Called as (done, total, result) each time a message is settled for this run."""


# Seams: tests make time and backoff fast and predictable; the CLI cannot.


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits base*2^(n-1), capped."""

    base: float = 2.0
    cap: float = 60.0

    def delay(self, attempt: int) -> float:
        # Half-fixed, half-random, so senders that failed together spread out
        # without ever retrying at once.
        ceiling = min(self.cap, self.base * 2.0 ** (attempt - 1))
        return ceiling * random.uniform(0.5, 1.0)


# The batch folder


@dataclass(frozen=True)
class _Message:
    """One manifest row: the message to send and what its file must hold."""

    account_id: str
    message_id: str
    recipient: str
    subject: str
    relpath: str | None
    sha256: str | None
    key_generation: int = 0
    password_epoch: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.account_id, self.message_id)


def _load_manifest(batch_dir: Path) -> list[_Message]:
    """The batch's generated messages, the last row of each account winning."""
    if not batch_dir.is_dir():
        raise BatchError(
            f"batch folder {str(batch_dir)!r} not found; give the folder that "
            "keymail generate wrote"
        )
    manifest = batch_dir / MANIFEST_NAME
    if not manifest.is_file():
        raise BatchError(
            f"no {MANIFEST_NAME} in {str(batch_dir)!r}; is it a batch folder?"
        )
    try:
        rows = read_jsonl(manifest)
    except (OSError, ValueError) as exc:
        raise BatchError(f"cannot read {str(manifest)!r}: {exc}") from None

    messages: dict[str, _Message] = {}
    for line, row in enumerate(rows, start=1):
        if row.get("status") != "generated":
            continue
        message = _manifest_row(row, line)
        messages.pop(message.account_id, None)
        messages[message.account_id] = message
    return list(messages.values())


def _manifest_row(row: dict[str, Any], line: int) -> _Message:
    def text(name: str) -> str:
        value = row.get(name)
        if not isinstance(value, str) or not value:
            raise BatchError(
                f"{MANIFEST_NAME} line {line}: field {name!r}: missing or not text"
            )
        return value

    account_id = text("account_id")
    try:
        uuid.UUID(account_id)
    except ValueError:
        raise BatchError(
            f"{MANIFEST_NAME} line {line}: field 'account_id': not a UUID: "
            f"{account_id!r}"
        ) from None
    artifacts = row.get("artifacts")
    eml = artifacts.get("message.eml") if isinstance(artifacts, dict) else None
    if not isinstance(eml, dict):
        eml = {}
    path, sha256 = eml.get("path"), eml.get("sha256")
    return _Message(
        account_id=account_id,
        message_id=text("message_id"),
        recipient=text("email"),
        subject=str(row.get("subject", "")),
        relpath=path if isinstance(path, str) else None,
        sha256=sha256 if isinstance(sha256, str) else None,
        key_generation=_counter(row.get("key_generation")),
        password_epoch=_counter(row.get("password_epoch")),
    )


def _counter(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# (account_id, key generation, password epoch) -> why the code is no longer the
# account's, or None when it is current.
CurrentCheck = Callable[[str, int, int], "str | None"]


class _Refused(Exception):
    """keymail refuses to send this message; the reason says why."""


def _read_message(batch_dir: Path, message: _Message) -> bytes:
    if not message.relpath:
        raise _Refused("the manifest names no message.eml for this account")
    relpath = PurePosixPath(message.relpath)
    if relpath.is_absolute() or ".." in relpath.parts:
        raise _Refused(f"message path {message.relpath!r} leaves the batch folder")
    try:
        data = (batch_dir / relpath).read_bytes()
    except OSError as exc:
        raise _Refused(f"cannot read {message.relpath!r}: {exc.strerror}") from None
    if message.sha256 and hashlib.sha256(data).hexdigest() != message.sha256:
        raise _Refused(
            f"{message.relpath!r} does not match the sha256 in the manifest; "
            "restore it, or generate the batch into a new folder"
        )
    return data


def _envelope(message: _Message, data: bytes, mail_from: str | None) -> Envelope:
    """Check the message against its manifest row and address its envelope."""
    headers = _header_fields(data)
    to = _addresses(headers, "to")
    if [a.lower() for a in to] != [message.recipient.lower()]:
        raise _Refused(
            f"To {', '.join(to) or 'is missing'} differs from the manifest email "
            f"{message.recipient!r}; generate the message again"
        )
    found_id = " ".join(headers.get("message-id", []))
    if found_id != message.message_id:
        raise _Refused(
            f"Message-ID {found_id!r} differs from the manifest's "
            f"{message.message_id!r}"
        )
    if mail_from is None:
        senders = _addresses(headers, "from")
        if len(senders) != 1:
            raise _Refused(
                f"From holds {len(senders)} addresses; pass --from ADDR for the "
                "envelope sender"
            )
        mail_from = senders[0]
    return Envelope(mail_from, message.recipient, data)


def _header_fields(data: bytes) -> dict[str, list[str]]:
    """The header section's fields by lowercase name, unfolded (RFC 5322 2.2.3).

    A tenth of the cost of email.parser's header objects: it matters at
    hundreds of messages a second. Only addresses and the Message-ID are read.
    """
    head = _BLANK_LINE.split(data, maxsplit=1)[0].decode("utf-8", "replace")
    fields: dict[str, list[str]] = {}
    for line in _FOLD.sub("", head).splitlines():
        name, colon, value = line.partition(":")
        if colon:
            fields.setdefault(name.strip().lower(), []).append(value.strip())
    return fields


def _addresses(headers: dict[str, list[str]], name: str) -> list[str]:
    return [address for _, address in getaddresses(headers.get(name, [])) if address]


# The run


@dataclass(frozen=True)
class _Options:
    limit: int | None
    rate: float | None
    per_minute: int | None
    retries: int
    resend_uncertain: bool
    mail_from: str | None
    dkim: DkimSigner | None
    current: CurrentCheck | None = None


def send_batch(
    batch_dir: Path,
    settings: SmtpSettings | None,
    *,
    limit: int | None = None,
    rate: float | None = None,
    per_minute: int | None = None,
    retries: int = DEFAULT_RETRIES,
    resend_uncertain: bool = False,
    dry_run: bool = False,
    mail_from: str | None = None,
    dkim: DkimSigner | None = None,
    current: CurrentCheck | None = None,
    progress: ProgressCallback | None = None,
    backoff: Backoff | None = None,
    clock: Clock | None = None,
) -> SendSummary:
    """Send the batch in `batch_dir` through one SMTP session; never send twice.

    Only pending and failed-transient messages are sent (and uncertain ones
    with `resend_uncertain`). A dry run needs no `settings`, sends nothing and
    leaves the ledger as it is. With `current`, a message whose code is no
    longer the account's (a password change or reset came after it) is failed
    permanently instead of sent. Raises BatchError (missing batch, batch in use),
    SmtpAuthError or SmtpConnectionError (before any message, or when the
    server stays out of reach); every other failure is per message, in the
    summary.
    """
    options = _Options(
        limit, rate, per_minute, retries, resend_uncertain, mail_from, dkim, current
    )
    _check(options)
    messages = _load_manifest(batch_dir)
    if dry_run:
        return _plan(batch_dir, messages, options)
    if settings is None:
        raise UsageError("sending needs SMTP settings; pass --smtp URL")

    client = SmtpClient(settings)  # checks --cafile before the ledger is touched
    with Ledger.open(batch_dir) as ledger, client:
        for row in ledger.recover():
            log.warning(
                "uncertain %s to %s: %s", row.message_id, row.recipient, row.reply
            )
        ledger.add((m.account_id, m.message_id, m.recipient) for m in messages)
        run = _Run(
            batch_dir,
            ledger,
            options,
            backoff or Backoff(),
            clock or SystemClock(),
            progress,
        )
        sent_before = {
            k for k, r in run.states().items() if r.state is MessageState.SENT
        }
        try:
            run.send_all(client, [m for m in messages if run.wants(m)])
        except (SmtpConnectionError, SmtpAuthError) as exc:
            if not run.attempted:
                raise  # no message was tried: the error is the whole story
            # The server went away mid-batch: report what did go out.
            summary = _summary(messages, run.states(), sent_before, run.sent)
            summary.stopped = str(exc)
            return summary
        return _summary(messages, run.states(), sent_before, run.sent)


def _check(options: _Options) -> None:
    if options.limit is not None and options.limit < 0:
        raise UsageError(f"limit must be 0 or more, not {options.limit}")
    if options.rate is not None and not (0 < options.rate < math.inf):
        raise UsageError(f"rate must be above 0 messages/s, not {options.rate}")
    if options.per_minute is not None and options.per_minute < 1:
        raise UsageError(f"per-minute must be 1 or more, not {options.per_minute}")
    if options.retries < 0:
        raise UsageError(f"retries must be 0 or more, not {options.retries}")


@dataclass(order=True)
class _Retry:
    due: float
    seq: int
    message: _Message = field(compare=False)
    attempt: int = field(compare=False)


class _Run:
    """One pass over the messages to send: pacing, retries and the ledger.

    The SMTP conversation stays on the calling thread. A helper thread does the
    rest, in order, while this one waits for the server: ledger commits, and
    reading and checking the next message. The data of a message waits for
    its `sending` commit, which is made while MAIL, RCPT and DATA go back and
    forth, never earlier: a message is marked only once it is being sent.
    """

    def __init__(
        self,
        batch_dir: Path,
        ledger: Ledger,
        options: _Options,
        backoff: Backoff,
        clock: Clock,
        progress: ProgressCallback | None,
    ) -> None:
        self.batch_dir = batch_dir
        self.ledger = ledger
        self.options = options
        self.backoff = backoff
        self.clock = clock
        self.progress = progress
        self.pacer = _Pacer(options.rate, options.per_minute, clock)
        self.sent: set[tuple[str, str]] = set()
        self._rows = self.states()
        self._retries: list[_Retry] = []
        self._seq = 0
        self._done = 0
        self._total = 0
        self.attempted = 0  # messages handed to the SMTP client
        self._helper: ThreadPoolExecutor | None = None
        self._writes: deque[Future[None]] = deque()
        self._unsaved: list[tuple[tuple[str, str], MessageState, str]] = []
        self._prefetched: tuple[tuple[str, str], Future[Envelope]] | None = None

    def states(self) -> dict[tuple[str, str], LedgerRow]:
        return {(r.account_id, r.message_id): r for r in self.ledger.rows()}

    def wants(self, message: _Message) -> bool:
        return _wanted(self._rows[message.key].state, self.options.resend_uncertain)

    def send_all(self, client: SmtpClient, todo: list[_Message]) -> None:
        limit = self.options.limit
        fresh = deque(todo if limit is None else todo[:limit])
        self._total = len(fresh)
        if not fresh:
            return
        # Log in before touching any message: a wrong password sends nothing.
        client.open()
        with ThreadPoolExecutor(1, thread_name_prefix="keymail-send") as helper:
            self._helper = helper
            try:
                self._send_each(client, fresh)
            finally:
                self._save_outcomes()
                self._settle_writes(wait=True)

    def _send_each(self, client: SmtpClient, fresh: deque[_Message]) -> None:
        connect_failures = 0
        while (item := self._next(fresh)) is not None:
            message, attempt = item
            if self.pacer.delay() > 0:
                self._save_outcomes()
            self.pacer.wait()
            try:
                self._attempt(client, message, attempt, fresh[0] if fresh else None)
            except SmtpConnectionError:
                connect_failures += 1
                if connect_failures > self.options.retries:
                    raise
                delay = self.backoff.delay(connect_failures)
                log.warning("cannot reconnect; trying again in %.1f s", delay)
                self.clock.sleep(delay)
                if attempt == 1:
                    fresh.appendleft(message)
                else:  # a retry keeps its count, so --retries still bounds it
                    self._seq += 1
                    retry = _Retry(self.clock.monotonic(), self._seq, message, attempt)
                    heapq.heappush(self._retries, retry)
                continue
            connect_failures = 0

    def _next(self, fresh: deque[_Message]) -> tuple[_Message, int] | None:
        """The next message: a retry that is due, else a fresh one, else wait."""
        retries = self._retries
        if retries and (not fresh or retries[0].due <= self.clock.monotonic()):
            retry = heapq.heappop(retries)
            wait = retry.due - self.clock.monotonic()
            if wait > 0:
                self._save_outcomes()
                self.clock.sleep(wait)
            return retry.message, retry.attempt
        if fresh:
            return fresh.popleft(), 1
        return None

    def _attempt(
        self,
        client: SmtpClient,
        message: _Message,
        attempt: int,
        upcoming: _Message | None,
    ) -> None:
        envelope = self._checked_envelope(message)
        if envelope is None:
            return

        # One fsynced transaction, while MAIL, RCPT and DATA go back and forth
        # (an fsync takes about as long as those round trips on loopback):
        # the outcome of the message before, and `sending` for this one. Once
        # the data is out, while the server takes it (the longest wait of the
        # four), the helper reads the next message, so that work does not
        # stand between a short reply and this thread.
        helper = self._helper
        assert helper is not None
        self._settle_writes(wait=False)  # raise the error of an earlier write
        outcomes, self._unsaved = self._unsaved, []
        marked = helper.submit(self.ledger.record_and_mark, outcomes, *message.key)
        data_started = False

        def before_the_data() -> None:
            nonlocal data_started
            marked.result()
            data_started = True  # from here on, the server may get it all

        def while_the_server_takes_it() -> None:
            if upcoming is not None:
                future = helper.submit(self._prepare, upcoming)
                self._prefetched = (upcoming.key, future)

        try:
            self.attempted += 1
            delivery = client.send(envelope, before_the_data, while_the_server_takes_it)
        except SmtpConnectionError as exc:
            marked.result()
            self._record(message, MessageState.FAILED_TRANSIENT, str(exc), now=True)
            raise
        except BaseException:
            # A refused login on reconnect, an interrupt: if the data had not
            # started, the mark goes back, or a rerun would call the message
            # uncertain although the server never saw it. Once it started,
            # the mark stays: the server may have all of it.
            if not data_started:
                self._unmark(marked, message)
            raise
        marked.result()

        state = MessageState(delivery.outcome.value)
        if state is MessageState.FAILED_TRANSIENT and attempt <= self.options.retries:
            self._retry_later(message, attempt, delivery)
            return
        self._settle(message, state, str(delivery.reply))

    def _checked_envelope(self, message: _Message) -> Envelope | None:
        """The message's envelope; None when it must not go out (its outcome
        is then recorded): a code no longer current, or a file that fails its
        checks."""
        stale = _stale(self.options, message)
        if stale:
            self._settle(message, MessageState.FAILED_PERMANENT, stale)
            return None
        try:
            return self._envelope(message)
        except _Refused as refused:
            # Nothing reached the server, and the cause is local (a file
            # edited or missing): failed-transient, so a rerun tries again
            # once it is fixed, but no retry within this run.
            self._settle(message, MessageState.FAILED_TRANSIENT, str(refused))
            return None

    def _unmark(self, marked: Future[None], message: _Message) -> None:
        """Put a `sending` mark that no data followed back to the last state."""
        try:
            marked.result()
        except BatchError:
            return  # the mark was refused: nothing to put back
        self.ledger.unmark(*message.key, self._rows[message.key].state)

    def _envelope(self, message: _Message) -> Envelope:
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[0] == message.key:
            return prefetched[1].result()
        return self._prepare(message)

    def _prepare(self, message: _Message) -> Envelope:
        data = _read_message(self.batch_dir, message)
        envelope = _envelope(message, data, self.options.mail_from)
        if self.options.dkim is not None:
            signed = self.options.dkim.sign(envelope.data)
            envelope = Envelope(envelope.mail_from, envelope.recipient, signed)
        return envelope

    def _retry_later(self, message: _Message, attempt: int, delivery: Delivery) -> None:
        delay = self.backoff.delay(attempt)
        reply = str(delivery.reply)
        self._record(message, MessageState.FAILED_TRANSIENT, reply, now=True)
        log.info(
            "failed-transient %s to %s: %s; retry %d of %d in %.1f s",
            message.message_id,
            message.recipient,
            delivery.reply,
            attempt,
            self.options.retries,
            delay,
        )
        self._seq += 1
        due = self.clock.monotonic() + delay
        heapq.heappush(self._retries, _Retry(due, self._seq, message, attempt + 1))

    def _settle(self, message: _Message, state: MessageState, reply: str) -> None:
        """Record the message's last state for this run, log it, report it."""
        self._record(message, state, reply)
        if state is MessageState.SENT:
            self.sent.add(message.key)
        log.info("%s %s to %s: %s", state, message.message_id, message.recipient, reply)

        self._done += 1
        if self.progress is not None:
            row = self._rows[message.key]
            result = MessageResult(
                row.account_id,
                row.message_id,
                row.recipient,
                state,
                reply,
                row.attempts,
            )
            self.progress(self._done, self._total, result)

    def _record(
        self, message: _Message, state: MessageState, reply: str, *, now: bool = False
    ) -> None:
        """Save an outcome: `now`, or with the next message's `sending` commit.

        A last outcome rides in the same fsynced transaction as the next
        message's mark, unless nothing follows at once, when it is saved
        before any sleep or at the end of the run. An outcome the same message
        will be retried after is saved `now`, before its next attempt.
        """
        row = self._rows[message.key]
        self._rows[message.key] = replace(row, state=state, attempts=row.attempts + 1)
        self._unsaved.append((message.key, state, reply))
        if now:
            self._save_outcomes()

    def _save_outcomes(self) -> None:
        """Queue the unsaved outcomes' commits behind the helper's earlier work."""
        assert self._helper is not None
        for key, state, reply in self._unsaved:
            self._writes.append(
                self._helper.submit(self.ledger.record, *key, state, reply)
            )
        self._unsaved.clear()
        self._settle_writes(wait=False)

    def _settle_writes(self, *, wait: bool) -> None:
        """Raise the error of a failed ledger write, if any; `wait` for them all."""
        while self._writes and (wait or self._writes[0].done()):
            self._writes.popleft().result()


class _Pacer:
    """Spaces out attempts: at most `rate` a second and `per_minute` in any 60 s."""

    def __init__(self, rate: float | None, per_minute: int | None, clock: Clock):
        self._interval = 1.0 / rate if rate else 0.0
        self._window: deque[float] | None = (
            deque(maxlen=per_minute) if per_minute else None
        )
        self._clock = clock
        self._next = float("-inf")

    def delay(self) -> float:
        """Seconds until the next attempt may start."""
        now = self._clock.monotonic()
        return self._start(now) - now

    def wait(self) -> None:
        now = self._clock.monotonic()
        start = self._start(now)
        if start > now:
            self._clock.sleep(start - now)
        self._next = start + self._interval
        if self._window is not None:
            self._window.append(start)

    def _start(self, now: float) -> float:
        start = max(now, self._next)
        window = self._window
        if window is not None and len(window) == window.maxlen:
            start = max(start, window[0] + 60.0)
        return start


def _stale(options: _Options, message: _Message) -> str | None:
    """Why the message's code is no longer the account's, or None."""
    current = options.current
    if current is None:
        return None
    return current(message.account_id, message.key_generation, message.password_epoch)


def _wanted(state: MessageState, resend_uncertain: bool) -> bool:
    if state is MessageState.UNCERTAIN:
        return resend_uncertain
    return state in (MessageState.PENDING, MessageState.FAILED_TRANSIENT)


def _result(row: LedgerRow) -> MessageResult:
    return MessageResult(
        row.account_id,
        row.message_id,
        row.recipient,
        row.state,
        row.reply,
        row.attempts,
    )


def _summary(
    messages: list[_Message],
    states: dict[tuple[str, str], LedgerRow],
    sent_before: set[tuple[str, str]],
    sent_now: set[tuple[str, str]],
) -> SendSummary:
    summary = SendSummary()
    for message in messages:
        row = states[message.key]
        if message.key in sent_before:
            summary.skipped += 1
        elif message.key in sent_now:
            summary.sent += 1
        elif row.state is MessageState.UNCERTAIN:
            summary.uncertain += 1
        elif row.state in _PROBLEMS:
            summary.failed += 1
        else:
            summary.pending += 1
        if row.state in _PROBLEMS:
            summary.problems.append(_result(row))
    return summary


# The dry run


def _plan(batch_dir: Path, messages: list[_Message], options: _Options) -> SendSummary:
    """What a real run would do, read from the files and the ledger, changing none."""
    known = read_ledger(batch_dir)
    summary = SendSummary(dry_run=True)
    budget = options.limit
    for message in messages:
        row = known.get(message.key)
        state = MessageState.PENDING if row is None else row.state
        if state is MessageState.SENDING:
            state = MessageState.UNCERTAIN
        action, reply, size = _planned_action(batch_dir, message, state, options)
        if action in ("send", "resend"):
            if budget is not None and budget <= 0:
                action = "later (--limit)"
            elif budget is not None:
                budget -= 1
        summary.plan.append(
            PlannedMessage(
                message.account_id,
                message.message_id,
                message.recipient,
                message.subject,
                size,
                action,
            )
        )
        _count_planned(summary, message, action, state, reply, row)
    return summary


def _planned_action(
    batch_dir: Path, message: _Message, state: MessageState, options: _Options
) -> tuple[str, str | None, int]:
    size = 0
    try:
        data = _read_message(batch_dir, message)
        size = len(data)
        _envelope(message, data, options.mail_from)
    except _Refused as refused:
        if _wanted(state, options.resend_uncertain):
            return "refuse", str(refused), size
    stale = _stale(options, message)
    if stale and _wanted(state, options.resend_uncertain):
        return "refuse", stale, size
    if state is MessageState.SENT:
        return "skip (sent)", None, size
    if state is MessageState.FAILED_PERMANENT:
        return "skip (failed-permanent)", None, size
    if state is MessageState.UNCERTAIN and not options.resend_uncertain:
        return "skip (uncertain; --resend-uncertain sends it)", None, size
    return ("resend" if state is MessageState.UNCERTAIN else "send"), None, size


def _count_planned(
    summary: SendSummary,
    message: _Message,
    action: str,
    state: MessageState,
    reply: str | None,
    row: LedgerRow | None,
) -> None:
    attempts = 0 if row is None else row.attempts
    if action == "refuse":
        summary.failed += 1
        summary.problems.append(
            MessageResult(
                message.account_id,
                message.message_id,
                message.recipient,
                MessageState.FAILED_PERMANENT,
                reply,
                attempts,
            )
        )
    elif state is MessageState.SENT:
        summary.skipped += 1
    elif action.startswith("skip"):
        if state is MessageState.UNCERTAIN:
            summary.uncertain += 1
        else:
            summary.failed += 1
        assert row is not None
        summary.problems.append(_result(replace(row, state=state)))
    else:
        summary.pending += 1


def report_json(summary: SendSummary) -> bytes:
    """The summary as the JSON report that --json writes."""
    return (json.dumps(summary.to_json(), indent=2, sort_keys=True) + "\n").encode()
