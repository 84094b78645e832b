"""A batch: one records file in, one folder of emails out, safe to kill and resume.

The parent process reads and validates records as a stream and owns every
durable write that commits an account (registry row, then manifest line);
worker processes wrap, render and write the artifacts. An account is done when
its manifest line exists; a rerun with `resume=True` skips exactly those.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import re
import resource
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline import __version__, keys
from pipeline.config import Settings
from pipeline.deliver.disk import (
    append_jsonl,
    atomic_write,
    atomic_write_many,
    ensure_dir,
    read_jsonl,
    repair_jsonl,
)
from pipeline.errors import (
    BatchError,
    CodeError,
    FetchRefusedError,
    KeymailError,
    RecordError,
    RegistryError,
    RenderError,
    UsageError,
)
from pipeline.keys import kdf
from pipeline.keys.kdf import KdfParams
from pipeline.produce import STAGES, Account, Producer, _timed, manifest_row
from pipeline.records import (
    AccountRecord,
    DuplicateFilter,
    SecretsFile,
    SecretsRowError,
    check_header,
    read_rows,
    scratch_db,
    validate,
)
from pipeline.registry import Registry
from pipeline.render.context import Reason

log = logging.getLogger("pipeline.batch")

MANIFEST = "manifest.jsonl"
REJECTS = "rejects.jsonl"
BATCH_FILE = "batch.json"
LOCK_FILE = ".lock"
SCRATCH = ".scratch.sqlite3"


@dataclass(frozen=True)
class BatchOptions:
    """Everything a batch run needs; the CLI fills it from options."""

    records: Path
    out: Path
    registry: Path
    settings: Settings = field(default_factory=Settings)
    templates: Path | None = None
    secrets: Path | None = None
    workers: int = 1
    kdf_params: KdfParams = kdf.DEFAULT
    resume: bool = False
    limit: int | None = None
    issued: dt.date | None = None


@dataclass
class BatchSummary:
    """What a run did; `as_dict` is the JSON summary."""

    batch_id: str
    out: str
    generated: int = 0
    skipped: int = 0
    rejected: int = 0
    failed: int = 0
    seconds: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    largest_html_bytes: int = 0
    worker_peak_rss_mib: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rejected == 0 and self.failed == 0

    @property
    def records_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["records_per_second"] = round(self.records_per_second, 2)
        data["seconds"] = round(self.seconds, 3)
        data["stage_ms"] = {k: round(v, 2) for k, v in self.stage_ms.items()}
        data["worker_peak_rss_mib"] = round(self.worker_peak_rss_mib, 1)
        return data


@dataclass(frozen=True)
class Job:
    """One account's work for a worker: everything pickles, nothing is shared."""

    line: int
    account: Account
    password: str | None = field(repr=False)
    eak: bytes | None = field(repr=False)
    issued: dt.date
    now: dt.datetime
    params: KdfParams


@dataclass(frozen=True)
class Outcome:
    """A worker's answer: the manifest row to commit, or why the account failed."""

    line: int
    account_id: str
    row: dict[str, Any] | None = None
    state: keys.AccountState | None = None
    account: Account | None = None
    peak_rss_kib: int = 0
    error_field: str = ""
    error: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)


Progress = Callable[[str, int], None]


def run_batch(options: BatchOptions, progress: Progress | None = None) -> BatchSummary:
    """Generate the emails of every valid record; see the module docstring."""
    out = options.out
    check_header(options.records)
    _check_templates(options)
    if out.exists() and not (out / BATCH_FILE).exists() and not _unstarted(out):
        raise BatchError(f"{out} exists and is not empty; choose another --out")
    lock = _lock(ensure_dir(out))
    try:
        batch = _open_batch(options)
    except BaseException:
        os.close(lock)
        raise
    summary = BatchSummary(batch_id=batch["batch_id"], out=str(out))
    started = time.perf_counter()
    try:
        with Registry(options.registry) as registry:
            runner = _Runner(options, batch["batch_id"], registry, summary, progress)
            runner.run()
        finish_batch(out, batch, limit=options.limit)
    finally:
        os.close(lock)
        (out / SCRATCH).unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - started
    log.info(
        "batch %s: %d generated, %d skipped, %d rejected, %d failed in %.1f s",
        summary.batch_id,
        summary.generated,
        summary.skipped,
        summary.rejected,
        summary.failed,
        summary.seconds,
    )
    return summary


def _check_templates(options: BatchOptions) -> None:
    """Refuse a template folder whose kit.css cannot load, or whose email
    refers to what an email must not, before any work.

    Workers load it as they start; a refusal there would break the pool
    rather than fail records, and it would fail every record alike.
    """
    try:
        Producer(options.settings, options.templates).check_email_html()
    except RenderError as exc:
        raise UsageError(f"templates {str(options.templates)!r}: {exc}") from None


def count_records(path: Path) -> int:
    """Number of non-blank lines (less the CSV header): the progress bar's total."""
    with path.open("rb") as handle:
        lines = sum(1 for raw in handle if raw.strip())
    return max(lines - 1, 0) if path.suffix.lower() == ".csv" else lines


class _Runner:
    """The parent's loop: validate, submit, commit in completion order."""

    def __init__(
        self,
        options: BatchOptions,
        batch_id: str,
        registry: Registry,
        summary: BatchSummary,
        progress: Progress | None,
    ) -> None:
        self.options = options
        self.batch_id = batch_id
        self.registry = registry
        self.summary = summary
        self.progress = progress or (lambda event, line: None)
        self.out = options.out
        self.done = {row["account_id"] for row in read_jsonl(self.out / MANIFEST)}
        self.rejected_before = {
            (row["line"], row["field"]) for row in read_jsonl(self.out / REJECTS)
        }
        self.issued = options.issued or dt.datetime.now(dt.UTC).date()
        self.timings: dict[str, float] = {}

    def run(self) -> None:
        scratch = scratch_db(self.out / SCRATCH)
        duplicates = DuplicateFilter(scratch)
        secrets = (
            SecretsFile(self.options.secrets, scratch) if self.options.secrets else None
        )
        try:
            jobs = self._jobs(duplicates, secrets)
            if self.options.workers <= 1:
                self._run_inline(jobs)
            else:
                self._run_pool(jobs)
        finally:
            if secrets is not None:
                secrets.close()
            scratch.close()
        generated = max(self.summary.generated, 1)
        self.summary.stage_ms = {
            stage: self.timings[stage] / generated
            for stage in STAGES
            if stage in self.timings
        }

    def _jobs(
        self, duplicates: DuplicateFilter, secrets: SecretsFile | None
    ) -> Iterator[Job]:
        submitted = 0
        for line, row in read_rows(self.options.records):
            if self.options.limit is not None and submitted >= self.options.limit:
                return
            try:
                if isinstance(row, RecordError):
                    raise row
                record = self._validate(line, row, secrets)
                duplicates.check(record)
                if str(record.account_id) in self.done:
                    self.summary.skipped += 1
                    self.progress("skipped", line)
                    continue
                job = self._job(record)
            except RecordError as exc:
                self._reject(exc.line, exc.field, exc.reason, str(row_id(row)))
                continue
            submitted += 1
            yield job

    def _validate(
        self, line: int, row: dict[str, Any], secrets: SecretsFile | None
    ) -> AccountRecord:
        password = None
        if secrets is not None and not row.get("password"):
            try:
                password = secrets.password(uuid.UUID(str(row.get("account_id"))))
            except ValueError:
                password = None  # not a UUID: validate says so
            except SecretsRowError as exc:
                raise RecordError(line, "password", str(exc)) from None
        return validate(line, row, password)

    def _job(self, record: AccountRecord) -> Job:
        """Check the record against the registry and turn it into a Job."""
        entry = self.registry.get(record.account_id)
        owner = self.registry.find_email(record.email)
        if owner is not None and owner.state.account_id != record.account_id:
            raise RecordError(
                record.line,
                "email",
                f"{record.email!r} belongs to account {owner.state.account_id} in "
                "the registry",
            )
        if record.encrypted_key is not None:
            if entry is None:
                raise RecordError(
                    record.line,
                    "encrypted_key",
                    "the account is not in the registry, so its code cannot be "
                    "resent; generate it with a password instead",
                )
            if entry.email.lower() != record.email.lower():
                raise RecordError(
                    record.line,
                    "email",
                    f"the registry sends this account's email to {entry.email!r}, "
                    f"not {record.email!r}; a resend goes to the registered address",
                )
            try:
                keys.check_current(record.encrypted_key, record.account_id, entry.state)
            except CodeError as exc:
                raise RecordError(record.line, "encrypted_key", str(exc)) from None
        elif entry is not None and entry.written_by != self.batch_id:
            state = entry.state
            raise RecordError(
                record.line,
                "account_id",
                f"already registered (key generation {state.key_generation}, password "
                f"epoch {state.password_epoch}, issued {state.issued}); use `keymail "
                "reset-password` for a new key, or give the code as encrypted_key "
                "to resend it",
            )

        account = Account(
            str(record.account_id), record.email, record.name, record.locale
        )
        eak = record.encrypted_key.to_bytes() if record.encrypted_key else None
        return Job(
            line=record.line,
            account=account,
            password=record.password,
            eak=eak,
            issued=self.issued,
            now=dt.datetime.now(dt.UTC).replace(microsecond=0),
            params=self.options.kdf_params,
        )

    def _run_inline(self, jobs: Iterator[Job]) -> None:
        _init_worker(self.options.settings, self.options.templates, kdf.current_floor())
        for job in jobs:
            self._commit(_work(job, self.out, self._state_for(job)))

    def _run_pool(self, jobs: Iterator[Job]) -> None:
        # fork: workers inherit the renderer already imported here (forkserver
        # or spawn would import WeasyPrint and the command line again, about
        # 1 s a batch). The parent starts no thread before this (the progress
        # bar refreshes from the callback), so no lock is copied mid-use; the
        # workers never touch the parent's SQLite handles and end with _exit.
        context = multiprocessing.get_context("fork")
        in_flight: set[Future[Outcome]] = set()
        limit = self.options.workers * 4
        with ProcessPoolExecutor(
            max_workers=self.options.workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(
                self.options.settings,
                self.options.templates,
                kdf.current_floor(),
            ),
        ) as pool:
            for job in jobs:
                in_flight.add(pool.submit(_work, job, self.out, self._state_for(job)))
                if len(in_flight) >= limit:
                    in_flight = self._drain(in_flight, FIRST_COMPLETED)
            self._drain(in_flight, "ALL_COMPLETED")

    def _drain(self, futures: set[Future[Outcome]], how: str) -> set[Future[Outcome]]:
        finished, pending = wait(futures, return_when=how)
        for future in finished:
            self._commit(future.result())
        return pending

    def _state_for(self, job: Job) -> keys.AccountState | None:
        if job.eak is None:
            return None
        entry = self.registry.get(uuid.UUID(job.account.account_id))
        return entry.state if entry else None

    def _commit(self, outcome: Outcome) -> None:
        """Registry first, manifest last: the manifest line is the commit point."""
        for stage, ms in outcome.timings_ms.items():
            self.timings[stage] = self.timings.get(stage, 0.0) + ms
        self.summary.worker_peak_rss_mib = max(
            self.summary.worker_peak_rss_mib, outcome.peak_rss_kib / 1024
        )
        if outcome.row is None or outcome.state is None:
            self.summary.failed += 1
            self._reject(
                outcome.line, outcome.error_field, outcome.error, outcome.account_id
            )
            return

        if outcome.row["reason"] != "resend":
            account = outcome.account
            assert account is not None
            try:
                self.registry.claim(
                    outcome.state,
                    account.email,
                    account.name,
                    account.locale,
                    self.batch_id,
                )
            except RegistryError as exc:
                self.summary.failed += 1
                self._reject(outcome.line, "account_id", str(exc), outcome.account_id)
                return
        append_jsonl(self.out / MANIFEST, outcome.row)
        self.summary.generated += 1
        self.summary.largest_html_bytes = max(
            self.summary.largest_html_bytes, outcome.row["html_bytes"]
        )
        self.progress("generated", outcome.line)

    def _reject(self, line: int, field_name: str, reason: str, account_id: str) -> None:
        if field_name not in ("render", "template", "internal"):
            self.summary.rejected += 1
        log.warning("record %d: field %r: %s", line, field_name, reason)
        if (line, field_name) not in self.rejected_before:
            row = {"line": line, "account_id": account_id, "field": field_name}
            append_jsonl(self.out / REJECTS, {**row, "reason": reason})
        self.progress("rejected", line)


def row_id(row: object) -> str:
    """The account_id of a raw row for rejects.jsonl, when it is a UUID.

    Anything else stays out: in a row whose columns shifted, the account_id
    column may hold the password.
    """
    if isinstance(row, dict):
        value = row.get("account_id")
        if isinstance(value, str) and UUID_TEXT.fullmatch(value):
            return value
    return ""


UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


# Worker side -------------------------------------------------------------------

_producer: Producer | None = None
# The batch lock's descriptor: forked workers close their copy, so the lock
# dies with the parent and a resume is not refused by orphaned workers.
_lock_fd: int | None = None
PR_SET_PDEATHSIG = 1


def _init_worker(settings: Settings, templates: Path | None, floor: KdfParams) -> None:
    global _producer
    _leave_with_parent()
    kdf._set_floor(floor)
    _producer = Producer(settings, templates)


def _leave_with_parent() -> None:
    """In a forked worker: drop the batch lock, and die when the parent dies.

    Without this a parent killed with SIGKILL leaves its workers waiting on the
    task queue for ever, still holding the lock file open.
    """
    if multiprocessing.parent_process() is None:
        return  # --workers 1 runs in the parent itself
    if _lock_fd is not None:
        os.close(_lock_fd)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _work(job: Job, out: Path, state: keys.AccountState | None) -> Outcome:
    """Wrap (or take the given EAK), render and write one account's email."""
    assert _producer is not None, "worker not initialised"
    timings: dict[str, float] = {}
    account_id = uuid.UUID(job.account.account_id)
    try:
        if job.eak is None:
            assert job.password is not None
            with _timed(timings, "wrap"):
                issued = keys.create(
                    account_id, job.password, issued=job.issued, params=job.params
                )
            eak, state = issued.eak, issued.state
            reason: Reason = "new"
        else:
            eak, reason = keys.Eak.from_bytes(job.eak), "resend"
            if state is None:
                raise BatchError("the account left the registry during the batch")
        produced = _producer.produce(
            job.account, eak, reason, out, now=job.now, timings=timings
        )
    except KeymailError as exc:
        field_name = "template" if isinstance(exc, FetchRefusedError) else "render"
        return Outcome(
            job.line,
            job.account.account_id,
            error_field=field_name,
            error=str(exc),
            timings_ms=timings,
        )
    except Exception as exc:  # a bug: fail this account, keep the batch going
        log.exception("record %d: internal error", job.line)
        return Outcome(
            job.line,
            job.account.account_id,
            error_field="internal",
            error=f"internal error: {type(exc).__name__}",
            timings_ms=timings,
        )

    row = manifest_row(job.line, job.account, produced, eak, reason, state.key_check)
    return Outcome(
        job.line,
        job.account.account_id,
        row=row,
        state=state,
        account=job.account,
        peak_rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        timings_ms=timings,
    )


# Batch folder ------------------------------------------------------------------


def _open_batch(options: BatchOptions) -> dict[str, Any]:
    """Start batch.json, or reopen it for `resume`; the caller holds the lock."""
    out = options.out
    meta_path = out / BATCH_FILE
    wanted = _run_settings(options)
    if not meta_path.exists():
        _sweep_temp_files(out)
        meta = {
            "batch_id": uuid.uuid4().hex,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "keymail_version": __version__,
            **wanted,
        }
        _write_meta(out, meta)
        # Both files exist from the start, empty until a record lands there,
        # so a script can read them whatever happened to the records.
        atomic_write_many(out, {MANIFEST: b"", REJECTS: b""})
        return meta

    if not options.resume:
        raise BatchError(
            f"{out} already holds a batch; give --resume to finish it, or "
            "choose another --out"
        )
    meta = json.loads(meta_path.read_text())
    changed = [key for key, value in wanted.items() if meta.get(key) != value]
    if changed:
        raise BatchError(
            f"batch {meta['batch_id']} was started with another "
            f"{', '.join(changed)}; resume it as it was started, or start a new batch"
        )
    _sweep_temp_files(out)
    repair_jsonl(out / MANIFEST)
    repair_jsonl(out / REJECTS)
    if "finished" in meta:
        # This run may go further than the one that finished (a larger
        # --limit); until it ends, the batch is not finished.
        meta = {k: v for k, v in meta.items() if k not in ("finished", "limit")}
        _write_meta(out, meta)
    return dict(meta)


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    atomic_write(out / BATCH_FILE, (json.dumps(meta, indent=2) + "\n").encode())


def finish_batch(out: Path, meta: dict[str, Any], *, limit: int | None) -> None:
    """Mark in batch.json that a run went through every record (or its --limit).

    `keymail verify` fails a batch without the mark: a run that was killed or
    is still going has accounts that are neither in the manifest nor rejected.
    """
    finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    meta = {**meta, "finished": finished, "limit": limit}
    _write_meta(out, meta)


def _run_settings(options: BatchOptions) -> dict[str, Any]:
    """What a resumed run must share with the run that started the batch."""
    return {
        "records": options.records.name,
        "records_sha256": _sha256(options.records),
        "secrets": options.secrets.name if options.secrets else None,
        "templates": str(options.templates) if options.templates else "default",
        "kdf": str(options.kdf_params),
        "settings": options.settings.model_dump(),
        "registry": str(options.registry.resolve()),
    }


def open_single_batch(out: Path, reason: str, registry: Path) -> dict[str, Any]:
    """A batch folder for one reissued email (change, reset, resend); its
    batch.json, for `finish_batch` once the email is written."""
    if out.exists() and any(out.iterdir()):
        raise BatchError(f"{out} exists and is not empty; choose another --out")
    ensure_dir(out)
    meta = {
        "batch_id": uuid.uuid4().hex,
        "kind": reason,
        "registry": str(registry.resolve()),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "keymail_version": __version__,
    }
    _write_meta(out, meta)
    atomic_write_many(out, {MANIFEST: b"", REJECTS: b""})
    return meta


def _lock(out: Path) -> int:
    global _lock_fd
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BatchError(f"another keymail process is working on {out}") from None
    _lock_fd = fd
    return fd


def _unstarted(out: Path) -> bool:
    """True when `out` holds at most what a run killed before writing batch.json
    leaves: the lock file and temp files."""
    return all(
        entry.name == LOCK_FILE or _TEMP_NAME.fullmatch(entry.name)
        for entry in out.iterdir()
    )


_TEMP_NAME = re.compile(r"\..+\.tmp")


def _sweep_temp_files(out: Path) -> None:
    """Remove temp files an interrupted run left behind (never a finished file)."""
    for leftover in out.glob("**/.*.tmp"):
        log.info("removing leftover temp file %s", leftover.name)
        leftover.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()
