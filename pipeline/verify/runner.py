"""Verify a whole batch folder: read the manifest, fan accounts out to a pool."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from pipeline.deliver.disk import read_jsonl
from pipeline.errors import BatchError
from pipeline.records import SecretsRowError, read_rows
from pipeline.registry import Registry
from pipeline.verify.checks import AccountJob, verify_account
from pipeline.verify.report import AccountResult, CheckResult, VerifyReport

log = logging.getLogger("pipeline.verify")

# The batch folder's contract with `keymail generate` (pipeline/batch.py).
MANIFEST = "manifest.jsonl"
REJECTS = "rejects.jsonl"
BATCH_FILE = "batch.json"

Passwords = Callable[[uuid.UUID], str | None]
Progress = Callable[[AccountResult], None]


def verify_batch(
    batch_dir: Path,
    *,
    registry_path: Path,
    passwords: Passwords | None = None,
    records: Path | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check every account of the manifest in `batch_dir`; see checks.py.

    `passwords` maps an account_id to its password, or None when unknown; the
    EAK is unwrapped only for accounts that have one (one KDF run each).
    The batch as a whole must be finished and, given the `records` file it
    was made from, hold every record of it, generated or rejected.
    Raises BatchError for a folder without a manifest and RegistryError for a
    missing or unreadable registry; a failed check is a result, not an error.
    """
    started = time.perf_counter()
    rows = _manifest(batch_dir)
    rejects = read_jsonl(batch_dir / REJECTS)
    meta = _meta(batch_dir)
    report = VerifyReport(
        batch_id=str(meta.get("batch_id", batch_dir.name)),
        batch_dir=str(batch_dir),
        rejected=len(rejects),
        batch_checks=(
            _finished(meta),
            _every_record(records, rows, rejects, meta.get("limit")),
        ),
    )
    on_result = progress or (lambda result: None)
    pool_size = max(1, min(workers or os.cpu_count() or 1, len(rows)))
    log.info(
        "verifying %d account(s) of %s with %d worker(s)",
        len(rows),
        batch_dir,
        pool_size,
    )

    with Registry(registry_path, create=False) as registry:
        jobs = _jobs(batch_dir, rows, registry, passwords)
        if pool_size == 1:
            results = _run_inline(jobs, on_result)
        else:
            results = _run_pool(jobs, pool_size, on_result)

    report.accounts = sorted(results, key=lambda result: result.line)
    report.seconds = time.perf_counter() - started
    log.info("%s", report.summary())
    return report


def _manifest(batch_dir: Path) -> list[dict[str, Any]]:
    if not batch_dir.is_dir():
        raise BatchError(f"no batch folder at {batch_dir}")
    manifest = batch_dir / MANIFEST
    if not manifest.is_file():
        raise BatchError(
            f"{batch_dir} has no {MANIFEST}: give a folder made by keymail generate"
        )
    try:
        return read_jsonl(manifest)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BatchError(f"{manifest} is not JSON lines: {exc}") from None


def _meta(batch_dir: Path) -> dict[str, Any]:
    """batch.json, or {} when it is missing or unreadable."""
    try:
        meta = json.loads((batch_dir / BATCH_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _finished(meta: dict[str, Any]) -> CheckResult:
    """batch.finished: the run that made the batch went through every record."""
    name = "batch.finished"
    if not meta:
        return CheckResult(name, "fail", f"no readable {BATCH_FILE} in the folder")
    if "finished" not in meta:
        return CheckResult(
            name,
            "fail",
            "the run that made this batch did not finish (killed, or still "
            "running): finish it with keymail generate --resume",
        )
    return CheckResult(name, "pass")


def _every_record(
    records: Path | None,
    rows: list[dict[str, Any]],
    rejects: list[dict[str, Any]],
    limit: object,
) -> CheckResult:
    """batch.records: each record of the records file is generated or rejected."""
    name = "batch.records"
    if records is None:
        return CheckResult(name, "skip", "no --records file given")
    generated = {_canonical(row.get("account_id")) for row in rows} - {None}
    rejected = {row.get("line") for row in rejects}
    missing = []
    for line, row in read_rows(records):
        if line in rejected:
            continue
        if isinstance(row, dict) and _canonical(row.get("account_id")) in generated:
            continue
        missing.append(line)
    if not missing:
        return CheckResult(name, "pass")
    shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
    hint = (
        f"the batch was made with --limit {limit}; run keymail generate "
        "--resume without it"
        if isinstance(limit, int)
        else "finish the batch with keymail generate --resume, or give the "
        "records file it was made from"
    )
    return CheckResult(
        name,
        "fail",
        f"{len(missing)} record(s) of {records.name} are neither in the manifest "
        f"nor rejected (line {shown}): {hint}",
    )


def _canonical(account_id: object) -> str | None:
    """The UUID as generate writes it (lower case), whatever case it was typed in."""
    try:
        return str(uuid.UUID(str(account_id)))
    except ValueError:
        return None


def _jobs(
    batch_dir: Path,
    rows: list[dict[str, Any]],
    registry: Registry,
    passwords: Passwords | None,
) -> Iterator[AccountJob]:
    """One job per manifest line, with the registry row and password looked up
    here in the parent, so workers never open the registry or a secrets file."""
    for index, row in enumerate(rows, start=1):
        account_id = _uuid(row.get("account_id"))
        entry = registry.get(account_id) if account_id else None
        password, problem = None, None
        if passwords and account_id:
            try:
                password = passwords(account_id)
            except SecretsRowError as exc:
                problem = str(exc)  # names the line and the reason, not the value
        yield AccountJob(
            batch_dir=batch_dir,
            line=index,
            row=row,
            entry_state=entry.state if entry else None,
            entry_email=entry.email if entry else None,
            password=password,
            passwords_given=passwords is not None,
            password_problem=problem,
        )


def _uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _run_inline(jobs: Iterable[AccountJob], on_result: Progress) -> list[AccountResult]:
    results = []
    for job in jobs:
        results.append(_done(verify_account(job), on_result))
    return results


def _run_pool(
    jobs: Iterable[AccountJob], workers: int, on_result: Progress
) -> list[AccountResult]:
    # fork, not forkserver or spawn: those run the main module again in every
    # worker, and `keymail` imports the whole CLI with WeasyPrint (about 2 s a
    # worker) that verify never uses. A forked worker starts in milliseconds
    # with the decoders loaded; it never touches the registry connection it
    # inherits, and the CLI's progress bar runs no thread to be caught mid-lock.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    results: list[AccountResult] = []
    in_flight: set[Future[AccountResult]] = set()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for job in jobs:
            in_flight.add(pool.submit(verify_account, job))
            if len(in_flight) >= workers * 4:
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                results += [_done(future.result(), on_result) for future in finished]
        finished, _ = wait(in_flight)
        results += [_done(future.result(), on_result) for future in finished]
    return results


def _done(result: AccountResult, on_result: Progress) -> AccountResult:
    first = result.first_failure
    if first is None:
        log.debug("account %s: %d checks passed", result.account_id, result.passed)
    else:
        log.info(
            "account %s: %d check(s) failed, first %s: %s",
            result.account_id,
            result.failed,
            first.name,
            first.reason,
        )
    on_result(result)
    return result
