"""`keymail send`: exit codes, stdout, stderr and the JSON report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import pipeline.cli.send  # noqa: F401  (registers the command)
from pipeline.cli.app import app
from pipeline.deliver.ledger import LEDGER_NAME, Ledger, MessageState, read_ledger

from smtp_server import (
    DROP,
    Certificate,
    RawScript,
    Recorder,
    Server,
    make_certificate,
    raw_smtp_server,
    smtp_server,
    write_batch,
)

PASSWORD = "canary-5d2e81-password"
SUMMARY_OK = "sent 3, failed 0, uncertain 0, skipped 0, pending 0\n"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    write_batch(tmp_path / "batch", 3)
    return tmp_path / "batch"


def keymail(*args: Any, env: dict[str, str] | None = None) -> Result:
    environment = {"KEYMAIL_SMTP_PASSWORD": None, **(env or {})}
    return CliRunner().invoke(app, [str(a) for a in args], env=environment)


def plain(server: Server, batch: Path, *args: Any) -> Result:
    return keymail("send", batch, "--smtp", server.url(), "--allow-plaintext", *args)


def first_message_id(batch: Path) -> str:
    first = (batch / "manifest.jsonl").read_text().splitlines()[0]
    return str(json.loads(first)["message_id"])


# Success


def test_send_prints_the_summary_and_nothing_on_stderr(batch: Path) -> None:
    with smtp_server() as server:
        result = plain(server, batch)
        again = plain(server, batch)
    assert (result.exit_code, result.stdout, result.stderr) == (0, SUMMARY_OK, "")
    assert again.exit_code == 0
    assert again.stdout == "sent 0, failed 0, uncertain 0, skipped 3, pending 0\n"


def test_starttls_auth_with_a_password_file(
    batch: Path, certificate: Certificate, tmp_path: Path
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    report = tmp_path / "report.json"
    with smtp_server(
        mode="starttls", certificate=certificate, users={"mailer": PASSWORD}
    ) as server:
        result = keymail(
            "send",
            batch,
            "--smtp",
            server.url("mailer"),
            "--smtp-password-file",
            password_file,
            "--cafile",
            certificate.cert,
            "--json",
            report,
        )
        assert server.handler.logins == [("mailer", "PLAIN")]
    assert (result.exit_code, result.stdout, result.stderr) == (0, SUMMARY_OK, "")
    assert json.loads(report.read_text()) == {
        "dry_run": False,
        "failed": 0,
        "ok": True,
        "pending": 0,
        "problems": [],
        "sent": 3,
        "skipped": 0,
        "stopped": None,
        "uncertain": 0,
    }


def test_smtps_with_the_password_in_the_environment(
    batch: Path, certificate: Certificate
) -> None:
    with smtp_server(
        mode="smtps", certificate=certificate, users={"mailer": PASSWORD}
    ) as server:
        result = keymail(
            "send",
            batch,
            "--smtp",
            server.url("mailer"),
            "--cafile",
            certificate.cert,
            env={"KEYMAIL_SMTP_PASSWORD": PASSWORD},
        )
    assert (result.exit_code, result.stderr) == (0, "")


def test_dry_run_prints_the_plan(batch: Path) -> None:
    result = keymail("send", batch, "--dry-run")
    assert (result.exit_code, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("send")
    assert "user0@example.com" in lines[0] and "Your sign-in kit" in lines[0]
    assert lines[-1] == "dry run: 3 to send, 0 sent before, 0 failed, 0 uncertain"
    assert not (batch / LEDGER_NAME).exists()


# Failures: exit 1 and a report


def test_permanent_failure_exits_1_with_the_reply_in_the_report(
    batch: Path, tmp_path: Path
) -> None:
    target = first_message_id(batch)
    report = tmp_path / "report.json"
    handler = Recorder(script={target: ["550 5.1.1 no such user"]})
    with smtp_server(handler) as server:
        result = plain(server, batch, "--json", report)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0].startswith("failed-permanent  ")
    assert result.stdout.endswith(
        "sent 2, failed 1, uncertain 0, skipped 0, pending 0\n"
    )
    (problem,) = json.loads(report.read_text())["problems"]
    assert problem["state"] == "failed-permanent"
    assert problem["message_id"] == target
    assert problem["reply"] == "550 5.1.1 no such user"
    assert set(problem) == {
        "account_id",
        "message_id",
        "recipient",
        "state",
        "reply",
        "attempts",
    }


def test_uncertain_exits_1_with_a_hint_until_resent(batch: Path) -> None:
    target = first_message_id(batch)
    with smtp_server(Recorder(script={target: [DROP]})) as server:
        first = plain(server, batch)
        rerun = plain(server, batch)
        resent = plain(server, batch, "--resend-uncertain")
        received = server.handler.ids()
    assert first.exit_code == 1
    assert "--resend-uncertain" in first.stderr
    assert rerun.exit_code == 1
    assert rerun.stdout.endswith(
        "sent 0, failed 0, uncertain 1, skipped 2, pending 0\n"
    )
    assert (resent.exit_code, resent.stderr) == (0, "")
    assert received[target] == 2


def test_quiet_keeps_the_summary_and_drops_the_hint(batch: Path) -> None:
    target = first_message_id(batch)
    with smtp_server(Recorder(script={target: [DROP]})) as server:
        args = ["--smtp", server.url(), "--allow-plaintext"]
        result = keymail("-q", "send", batch, *args)
    assert (result.exit_code, result.stderr) == (1, "")
    assert result.stdout.endswith("uncertain 1, skipped 0, pending 0\n")


# Usage errors: exit 2, nothing sent


def test_wrong_password_exits_2_and_sends_nothing(
    batch: Path, certificate: Certificate
) -> None:
    with smtp_server(
        mode="starttls", certificate=certificate, users={"mailer": PASSWORD}
    ) as server:
        result = keymail(
            "send",
            batch,
            "--smtp",
            server.url("mailer"),
            "--cafile",
            certificate.cert,
            env={"KEYMAIL_SMTP_PASSWORD": "not-the-password"},
        )
        assert server.handler.data_commands == {}
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"keymail: error: {server.url('mailer')} refused the login of 'mailer': 535"
    )
    assert "not-the-password" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--smtp", "smtp://me:hunter2@127.0.0.1:25"], "URL holds a password"),
        (
            ["--smtp", "smtp://mail.example.com:25", "--allow-plaintext"],
            "refusing plaintext SMTP to 'mail.example.com'",
        ),
        (["--smtp", "ftp://mail.example.com"], "not an SMTP URL"),
        ([], "no SMTP server given"),
        (["--smtp", "smtp://me@127.0.0.1:25"], "no SMTP password for user 'me'"),
        (
            ["--smtp", "smtp://127.0.0.1:25", "--smtp-password-file", "x"],
            "cannot read --smtp-password-file",
        ),
        (["--dry-run", "--dkim-key", "k.pem"], "DKIM signing needs"),
        (["--dry-run", "--from", "Bob <bob@x>"], "--from is not a bare email"),
        (["--dry-run", "--rate", "0"], "rate must be above 0"),
        (["--dry-run", "--json", "nowhere/report.json"], "--json: no folder"),
    ],
)
def test_usage_errors_exit_2(batch: Path, args: list[str], message: str) -> None:
    result = keymail("send", batch, *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("keymail: error: ")
    assert message in result.stderr
    assert "hunter2" not in result.stderr


def test_missing_batch_exits_2(tmp_path: Path) -> None:
    result = keymail("send", tmp_path / "nowhere", "--dry-run")
    assert result.exit_code == 2
    assert "not found" in result.stderr


def test_batch_in_use_exits_2(batch: Path) -> None:
    with smtp_server() as server, Ledger.open(batch):
        result = plain(server, batch)
        assert server.handler.data_commands == {}
    assert result.exit_code == 2
    assert "being sent by another keymail process" in result.stderr


def test_server_down_exits_1_with_a_hint(batch: Path) -> None:
    with smtp_server() as server:
        url = server.url()
    result = keymail("send", batch, "--smtp", url, "--allow-plaintext")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"keymail: error: cannot connect to {url}: connection refused; "
        "is the server running?",
        "keymail: hint: rerun keymail send when the server is back; "
        "sent messages stay sent",
    ]


def test_the_password_never_shows(
    batch: Path, certificate: Certificate, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    handler = Recorder(script={first_message_id(batch): ["550 5.7.1 refused"]})
    with smtp_server(
        handler, mode="starttls", certificate=certificate, users={"mailer": PASSWORD}
    ) as server:
        result = keymail(
            "-vv",
            "send",
            batch,
            "--smtp",
            server.url("mailer"),
            "--cafile",
            certificate.cert,
            "--json",
            report,
            env={"KEYMAIL_SMTP_PASSWORD": PASSWORD},
        )
    assert result.exit_code == 1
    assert "keymail: info: sent <km1." in result.stderr  # the log did reach stderr
    for text in (result.stdout, result.stderr, report.read_text()):
        assert PASSWORD not in text
    for ledger_file in batch.glob(f"{LEDGER_NAME}*"):
        assert PASSWORD.encode() not in ledger_file.read_bytes()


def test_an_untrusted_certificate_is_a_usage_error(
    batch: Path, certificate: Certificate
) -> None:
    with smtp_server(mode="starttls", certificate=certificate) as server:
        result = keymail("send", batch, "--smtp", server.url())  # no --cafile
        assert server.handler.messages == []
    assert result.exit_code == 2
    assert "--cafile" in result.stderr
    assert "rerun keymail send" not in result.stderr


def test_a_server_gone_mid_batch_still_gets_a_report(
    batch: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    script = RawScript(stop_after=1)
    with raw_smtp_server(script) as server:
        result = plain(server, batch, "--retries", "1", "--json", report)

    assert result.exit_code == 1
    assert "sent 1," in result.stdout
    assert "stopped early: cannot connect" in result.stderr
    summary = json.loads(report.read_text())
    assert (summary["sent"], summary["ok"]) == (1, False)
    assert summary["stopped"].startswith("cannot connect")
    # The message marked ahead while the server went away was put back:
    # nothing is left "sending", so nothing is reported uncertain.
    states = {row.state for row in read_ledger(batch).values()}
    assert states <= {
        MessageState.SENT,
        MessageState.PENDING,
        MessageState.FAILED_TRANSIENT,
    }
    assert summary["uncertain"] == 0
