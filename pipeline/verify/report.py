"""Verify results: per check, per account and per batch, as JSON, JUnit or rows."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal
from xml.etree import ElementTree

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class CheckResult:
    """One check of one account: its stable name, status and, unless it passed,
    the reason (never a password, an account key or a code)."""

    name: str
    status: Status
    reason: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == "fail"


@dataclass(frozen=True)
class AccountResult:
    """Every check of one manifest line."""

    account_id: str
    line: int
    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return not any(check.failed for check in self.checks)

    @property
    def passed(self) -> int:
        return sum(check.status == "pass" for check in self.checks)

    @property
    def failed(self) -> int:
        return sum(check.failed for check in self.checks)

    @property
    def skipped(self) -> int:
        return sum(check.status == "skip" for check in self.checks)

    @property
    def first_failure(self) -> CheckResult | None:
        return next((check for check in self.checks if check.failed), None)

    def check(self, name: str) -> CheckResult:
        """The result of the check called `name`; KeyError if it did not run."""
        for result in self.checks:
            if result.name == name:
                return result
        raise KeyError(name)


@dataclass
class VerifyReport:
    """A verified batch. `ok` needs at least one account and no failed check."""

    batch_id: str
    batch_dir: str
    accounts: list[AccountResult] = field(default_factory=list)
    rejected: int = 0
    seconds: float = 0.0
    # Checks of the batch as a whole: did the run finish, is every record of
    # the records file generated or rejected.
    batch_checks: tuple[CheckResult, ...] = ()

    @property
    def ok(self) -> bool:
        return (
            bool(self.accounts)
            and all(account.ok for account in self.accounts)
            and not any(check.failed for check in self.batch_checks)
        )

    @property
    def batch_failure(self) -> CheckResult | None:
        return next((check for check in self.batch_checks if check.failed), None)

    @property
    def failed_accounts(self) -> list[AccountResult]:
        return [account for account in self.accounts if not account.ok]

    def summary(self) -> str:
        """One line: how many accounts passed, failed, and how long it took."""
        failed = len(self.failed_accounts)
        checks = sum(len(account.checks) for account in self.accounts)
        skipped = sum(account.skipped for account in self.accounts)
        text = (
            f"verified {len(self.accounts)} account(s) of batch {self.batch_id}: "
            f"{len(self.accounts) - failed} passed, {failed} failed "
            f"({checks} checks, {skipped} skipped) in {self.seconds:.1f} s"
        )
        if self.rejected:
            text += f"; {self.rejected} record(s) were rejected when generating"
        if self.batch_failure is not None:
            text += f"; the batch fails {self.batch_failure.name}"
        return text


def to_dict(report: VerifyReport) -> dict[str, Any]:
    return {
        "batch_id": report.batch_id,
        "batch_dir": report.batch_dir,
        "ok": report.ok,
        "accounts": len(report.accounts),
        "failed_accounts": len(report.failed_accounts),
        "rejected": report.rejected,
        "seconds": round(report.seconds, 3),
        "batch_checks": [_check_dict(check) for check in report.batch_checks],
        "results": [
            {
                "account_id": account.account_id,
                "line": account.line,
                "ok": account.ok,
                "checks": [_check_dict(check) for check in account.checks],
            }
            for account in report.accounts
        ],
    }


def _check_dict(check: CheckResult) -> dict[str, str]:
    return {"name": check.name, "status": check.status, "reason": check.reason}


def to_json(report: VerifyReport) -> str:
    return json.dumps(to_dict(report), indent=2, ensure_ascii=False) + "\n"


def to_junit(report: VerifyReport) -> bytes:
    """One <testsuite>; a <testcase classname=account_id name=check> per check,
    and classname "batch" for the checks of the batch as a whole."""
    cases = [("batch", check) for check in report.batch_checks]
    cases += [
        (account.account_id, check)
        for account in report.accounts
        for check in account.checks
    ]
    results = [check for _, check in cases]
    suite = ElementTree.Element(
        "testsuite",
        {
            "name": f"keymail verify {report.batch_id}",
            "tests": str(len(results)),
            "failures": str(sum(check.failed for check in results)),
            "errors": "0",
            "skipped": str(sum(check.status == "skip" for check in results)),
            "time": f"{report.seconds:.3f}",
        },
    )
    for classname, check in cases:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            {
                "classname": classname,
                "name": check.name,
                "time": f"{check.seconds:.3f}",
            },
        )
        if check.failed:
            failure = ElementTree.SubElement(case, "failure", {"message": check.reason})
            failure.text = check.reason
        elif check.status == "skip":
            ElementTree.SubElement(case, "skipped", {"message": check.reason})
    ElementTree.indent(suite)
    body: bytes = ElementTree.tostring(suite, encoding="utf-8", xml_declaration=True)
    return body + b"\n"


def table_rows(report: VerifyReport) -> list[tuple[str, str, str, str]]:
    """(account, passed, failed, first failure) for each account, as text."""
    rows = []
    for account in report.accounts:
        first = account.first_failure
        rows.append(
            (
                account.account_id,
                str(account.passed),
                str(account.failed),
                f"{first.name}: {first.reason}" if first else "",
            )
        )
    return rows
