"""send_batch over real batches and a real server: ledger, faults, pacing, DKIM."""

from __future__ import annotations

import base64
import json
import logging
import smtplib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pipeline.deliver.dkim import DkimSigner
from pipeline.deliver.ledger import LEDGER_NAME, Ledger, MessageState, read_ledger
from pipeline.deliver.smtp import SmtpSettings
from pipeline.errors import BatchError, SmtpAuthError, SmtpConnectionError, UsageError
from pipeline.send import Backoff, MessageResult, SendSummary, _Run, send_batch

from smtp_server import (
    DROP,
    Certificate,
    RawScript,
    Recorder,
    Server,
    append_message,
    make_certificate,
    raw_smtp_server,
    smtp_server,
    write_batch,
)

FAST = Backoff(base=0.01, cap=0.05)
PASSWORD = "canary-7f3a9c-password"


def send(batch: Path, server: Server, **options: Any) -> SendSummary:
    settings = SmtpSettings.from_url(server.url(), allow_plaintext=True)
    options.setdefault("backoff", FAST)
    return send_batch(batch, settings, **options)


def states(batch: Path) -> dict[str, MessageState]:
    return {key[1]: row.state for key, row in read_ledger(batch).items()}


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    folder = tmp_path / "batch"
    write_batch(folder, 5)
    return folder


def manifest_rows(batch: Path) -> list[dict[str, Any]]:
    lines = (batch / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def message_ids(batch: Path) -> list[str]:
    return [row["message_id"] for row in manifest_rows(batch)]


# Sending and resending


def test_sends_every_message_once(batch: Path) -> None:
    with smtp_server() as server:
        first = send(batch, server)
        second = send(batch, server)
        received = server.handler.ids()

    assert (first.sent, first.skipped, first.ok) == (5, 0, True)
    assert (second.sent, second.skipped, second.ok) == (0, 5, True)
    assert received == {mid: 1 for mid in message_ids(batch)}
    rows = read_ledger(batch).values()
    assert {row.state for row in rows} == {MessageState.SENT}
    assert all(row.reply == "250 2.0.0 queued" and row.sent_at for row in rows)


def test_sent_bytes_are_the_files_bytes(batch: Path) -> None:
    with smtp_server() as server:
        send(batch, server)
        messages = list(server.handler.messages)
    for row in manifest_rows(batch):
        (received,) = [m for m in messages if m.message_id == row["message_id"]]
        eml = batch / row["artifacts"]["message.eml"]["path"]
        assert received.data == eml.read_bytes()
        assert received.recipients == [row["email"]]
        assert received.mail_from == "keys@vendor.example"


def test_from_override_sets_the_envelope_sender(batch: Path) -> None:
    with smtp_server() as server:
        send(batch, server, mail_from="bounces@vendor.example")
        senders = {m.mail_from for m in server.handler.messages}
    assert senders == {"bounces@vendor.example"}


def test_4xx_then_250_is_sent_after_a_retry(batch: Path) -> None:
    target = message_ids(batch)[2]
    handler = Recorder(script={target: ["451 4.3.0 try again later"]})
    with smtp_server(handler) as server:
        summary = send(batch, server)
    assert summary.sent == 5 and summary.ok
    row = read_ledger(batch)[next(k for k in read_ledger(batch) if k[1] == target)]
    assert (row.state, row.attempts) == (MessageState.SENT, 2)
    assert handler.data_commands[target] == 2
    assert handler.ids()[target] == 1


def test_4xx_until_retries_run_out_stays_transient(batch: Path) -> None:
    target = message_ids(batch)[0]
    handler = Recorder(script={target: ["452 4.2.2 mailbox full"] * 3})
    with smtp_server(handler) as server:
        summary = send(batch, server, retries=2)
        assert (summary.sent, summary.failed) == (4, 1)
        (problem,) = summary.problems
        assert problem.state is MessageState.FAILED_TRANSIENT
        assert (problem.reply, problem.attempts) == ("452 4.2.2 mailbox full", 3)

        rerun = send(batch, server)  # a rerun sends failed-transient again
    assert (rerun.sent, rerun.skipped, rerun.ok) == (1, 4, True)
    assert handler.ids()[target] == 1


def test_5xx_is_permanent_and_never_retried(batch: Path) -> None:
    target = message_ids(batch)[1]
    handler = Recorder(script={target: ["550 5.1.1 no such user"] * 5})
    with smtp_server(handler) as server:
        summary = send(batch, server)
        rerun = send(batch, server)
    assert (summary.sent, summary.failed, summary.ok) == (4, 1, False)
    (problem,) = summary.problems
    assert (problem.state, problem.reply) == (
        MessageState.FAILED_PERMANENT,
        "550 5.1.1 no such user",
    )
    assert handler.data_commands[target] == 1
    assert (rerun.sent, rerun.failed, rerun.skipped) == (0, 1, 4)
    assert rerun.problems == summary.problems


def test_421_closes_the_session_and_the_retry_reconnects(batch: Path) -> None:
    target = message_ids(batch)[0]
    handler = Recorder(script={target: ["421 4.3.2 closing down"]})
    with smtp_server(handler) as server:
        summary = send(batch, server)
    assert summary.sent == 5 and summary.ok
    assert handler.ids()[target] == 1


def test_lost_reply_is_uncertain_and_only_resent_when_asked(batch: Path) -> None:
    target = message_ids(batch)[3]
    handler = Recorder(script={target: [DROP]})
    with smtp_server(handler) as server:
        first = send(batch, server)
        assert (first.sent, first.uncertain, first.ok) == (4, 1, False)
        assert first.problems[0].state is MessageState.UNCERTAIN
        assert "before the reply" in (first.problems[0].reply or "")

        rerun = send(batch, server)
        assert (rerun.sent, rerun.uncertain, rerun.skipped) == (0, 1, 4)
        assert handler.data_commands[target] == 1

        resent = send(batch, server, resend_uncertain=True)
    assert (resent.sent, resent.uncertain, resent.ok) == (1, 0, True)
    assert handler.ids()[target] == 2  # the server had it; now it has it twice
    assert states(batch)[target] is MessageState.SENT


def test_sending_left_by_a_dead_sender_becomes_uncertain(batch: Path) -> None:
    target = message_ids(batch)[0]
    with smtp_server() as server:
        with Ledger.open(batch) as ledger:
            rows = manifest_rows(batch)
            ledger.add((r["account_id"], r["message_id"], r["email"]) for r in rows)
            ledger.mark_sending(rows[0]["account_id"], target)
        summary = send(batch, server)
        assert (summary.sent, summary.uncertain) == (4, 1)
        assert server.handler.data_commands[target] == 0
        assert states(batch)[target] is MessageState.UNCERTAIN


def test_limit_leaves_the_rest_pending(batch: Path) -> None:
    with smtp_server() as server:
        first = send(batch, server, limit=2)
        second = send(batch, server)
    assert (first.sent, first.pending, first.ok) == (2, 3, True)
    assert (second.sent, second.skipped) == (3, 2)


# Messages keymail refuses to send


def test_to_that_differs_from_the_manifest_is_refused(batch: Path) -> None:
    row = append_message(batch, "right@example.com", to="wrong@example.com")
    with smtp_server() as server:
        summary = send(batch, server)
        assert server.handler.data_commands[row["message_id"]] == 0
    (problem,) = summary.problems
    assert problem.state is MessageState.FAILED_TRANSIENT  # a rerun tries again
    assert problem.reply == (
        "To wrong@example.com differs from the manifest email 'right@example.com'; "
        "generate the message again"
    )


def test_changed_message_file_is_refused_until_restored(batch: Path) -> None:
    row = json.loads((batch / "manifest.jsonl").read_text().splitlines()[0])
    eml = batch / row["artifacts"]["message.eml"]["path"]
    original = eml.read_bytes()
    eml.write_bytes(original.replace(b"sign-in", b"sign-on"))
    with smtp_server() as server:
        summary = send(batch, server)
        assert summary.failed == 1
        assert "does not match the sha256" in (summary.problems[0].reply or "")
        assert server.handler.data_commands[row["message_id"]] == 0

        eml.write_bytes(original)
        again = send(batch, server)
    assert (again.sent, again.ok) == (1, True)


# Replies out of protocol (a scripted server; aiosmtpd keeps to the rules)


@pytest.mark.parametrize(
    ("verb", "reply"),
    [("DATA", "250 2.0.0 ok whatever"), ("RCPT", "252 2.1.5 cannot verify")],
)
def test_a_2xx_before_the_data_is_not_a_delivery(
    tmp_path: Path, verb: str, reply: str
) -> None:
    batch = tmp_path / "batch"
    write_batch(batch, 2)
    script = RawScript({verb: [reply]})
    with raw_smtp_server(script) as server:
        summary = send(batch, server, retries=0)
    assert summary.sent == len(script.bodies) == 1
    (problem,) = summary.problems
    assert problem.state is MessageState.FAILED_TRANSIENT
    assert problem.reply is not None and problem.reply.startswith(reply[:3])
    assert states(batch)[problem.message_id] is MessageState.FAILED_TRANSIENT


@pytest.mark.parametrize(
    ("verb", "expected"),
    [("MAIL", MessageState.FAILED_TRANSIENT), ("END", MessageState.UNCERTAIN)],
)
def test_a_reply_line_too_long_to_read_fails_that_message_only(
    tmp_path: Path, verb: str, expected: MessageState
) -> None:
    batch = tmp_path / "batch"
    write_batch(batch, 3)
    first = message_ids(batch)[0]
    script = RawScript({verb: ["250 " + "x" * 9000]})  # smtplib reads 8 KiB
    with raw_smtp_server(script) as server:
        summary = send(batch, server, retries=0)

    assert summary.sent == 2
    assert states(batch)[first] is expected
    (problem,) = summary.problems
    wording = "unreadable reply" if verb == "MAIL" else "could not be read"
    assert problem.reply is not None and wording in problem.reply


def test_an_unreadable_reply_after_the_data_is_uncertain(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    write_batch(batch, 2)
    script = RawScript({"END": ["OK queued as 12345"]})
    with raw_smtp_server(script) as server:
        first = send(batch, server)
        again = send(batch, server)
    assert (first.sent, first.uncertain) == (1, 1)
    assert (again.sent, again.uncertain) == (0, 1)
    assert len(script.bodies) == 2  # each message went out exactly once


def test_path_outside_the_batch_is_refused(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    (row,) = write_batch(batch, 1)
    row["artifacts"]["message.eml"]["path"] = "../../etc/hostname"
    (batch / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    with smtp_server() as server:
        summary = send(batch, server)
    assert "leaves the batch folder" in (summary.problems[0].reply or "")


def test_torn_last_manifest_line_is_ignored(batch: Path) -> None:
    with (batch / "manifest.jsonl").open("a") as manifest:
        manifest.write('{"account_id": "4d1')
    with smtp_server() as server:
        assert send(batch, server).sent == 5


# Batch and server problems


def test_missing_batch(tmp_path: Path) -> None:
    with smtp_server() as server, pytest.raises(BatchError, match="not found"):
        send(tmp_path / "nowhere", server)


def test_a_second_sender_on_the_same_batch_is_refused(batch: Path) -> None:
    with smtp_server() as server, Ledger.open(batch):
        with pytest.raises(BatchError, match="another keymail process"):
            send(batch, server)
        assert server.handler.data_commands == {}


def test_wrong_password_sends_nothing(batch: Path, certificate: Certificate) -> None:
    with smtp_server(
        mode="starttls", certificate=certificate, users={"mailer": PASSWORD}
    ) as server:
        settings = SmtpSettings.from_url(
            server.url("mailer"), password="not-it", cafile=certificate.cert
        )
        with pytest.raises(SmtpAuthError):
            send_batch(batch, settings)
        assert server.handler.data_commands == {}
    assert set(states(batch).values()) == {MessageState.PENDING}


class _OneLogin(dict[str, str]):
    """Users whose password is right once: every later login is refused."""

    logins = 0

    def get(self, key: str, default: Any = None) -> Any:
        self.logins += 1
        return super().get(key, default) if self.logins == 1 else None


def test_a_login_refused_on_reconnect_puts_the_next_message_back(
    batch: Path, certificate: Certificate
) -> None:
    first, second = message_ids(batch)[:2]
    handler = Recorder(script={first: [DROP]})  # the session ends after DATA
    with smtp_server(
        handler,
        mode="starttls",
        certificate=certificate,
        users=_OneLogin(mailer=PASSWORD),
    ) as server:
        settings = SmtpSettings.from_url(
            server.url("mailer"), password=PASSWORD, cafile=certificate.cert
        )
        summary = send_batch(batch, settings, backoff=FAST)
        received = server.handler.data_commands

    assert summary.stopped is not None and "refused the login" in summary.stopped
    assert summary.uncertain == 1 and summary.sent == 0
    assert set(received) == {first}
    found = states(batch)
    assert found[first] is MessageState.UNCERTAIN
    # Marked `sending` ahead while the first one went out, never sent: pending.
    assert found[second] is MessageState.PENDING
    assert {found[m] for m in message_ids(batch)[2:]} == {MessageState.PENDING}


def test_a_server_gone_after_the_first_message_still_reports(batch: Path) -> None:
    first = message_ids(batch)[0]
    script = RawScript(answers={"END": ["451 4.3.0 try later"]}, stop_after=1)
    with raw_smtp_server(script) as server:
        summary = send(batch, server, retries=1)

    assert summary.stopped is not None
    assert summary.sent == 0
    assert states(batch)[first] is MessageState.FAILED_TRANSIENT
    assert any(problem.message_id == first for problem in summary.problems)


def test_an_interrupt_once_the_data_is_written_leaves_it_uncertain(
    batch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C can land when sendall has written the last byte: the server has
    the message, so it must not be called unsent and sent again."""
    first = message_ids(batch)[0]
    written = smtplib.SMTP.send

    def send_then_interrupt(self: smtplib.SMTP, data: str | bytes) -> None:
        written(self, data)
        if isinstance(data, bytes) and data.endswith(b"\r\n.\r\n"):
            raise KeyboardInterrupt

    with smtp_server() as server:
        monkeypatch.setattr(smtplib.SMTP, "send", send_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            send(batch, server)
        monkeypatch.setattr(smtplib.SMTP, "send", written)
        assert states(batch)[first] is MessageState.SENDING
        rerun = send(batch, server)
        received = server.handler.ids()

    assert rerun.uncertain == 1 and rerun.sent == 4
    assert received[first] == 1  # not sent again without --resend-uncertain


def test_an_interrupt_before_a_marked_message_goes_out_puts_its_mark_back(
    batch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = message_ids(batch)[:2]
    prepared = _Run._envelope
    calls = []

    def interrupted_at_the_second(self: _Run, message: Any) -> Any:
        calls.append(message.message_id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # waiting for the second, marked ahead
        return prepared(self, message)

    monkeypatch.setattr(_Run, "_envelope", interrupted_at_the_second)
    with smtp_server() as server, pytest.raises(KeyboardInterrupt):
        send(batch, server)

    assert calls[1] == second
    found = states(batch)
    assert found[first] is MessageState.SENT
    assert found[second] is MessageState.PENDING


@pytest.mark.parametrize("failing_write", [1, 2, 3, 6])
def test_a_failed_ledger_write_leaves_no_unsent_message_marked(
    batch: Path, monkeypatch: pytest.MonkeyPatch, failing_write: int
) -> None:
    writes = 0

    def failing(method: Callable[..., None]) -> Callable[..., None]:
        def write(self: Ledger, *args: Any) -> None:
            nonlocal writes
            writes += 1
            if writes == failing_write:
                raise BatchError("disk full (simulated)")
            method(self, *args)

        return write

    for name in ("record", "record_and_mark"):
        monkeypatch.setattr(Ledger, name, failing(getattr(Ledger, name)))
    with smtp_server() as server, pytest.raises(BatchError, match="disk full"):
        send(batch, server)
    received = set(server.handler.ids())

    found = states(batch)
    for message_id, state in found.items():
        if state is MessageState.SENDING:
            # Only a message whose data went out may stay marked (uncertain).
            assert message_id in received, (failing_write, message_id)


def test_a_failed_mark_keeps_the_outcome_it_carried(
    batch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction of message 3's mark also holds message 2's outcome; if
    it fails, that outcome is still stored, on its own."""
    ids = message_ids(batch)
    transaction = Ledger._record_and_mark
    transactions = 0

    def third_fails(self: Ledger, *args: Any) -> bool:
        nonlocal transactions
        transactions += 1
        if transactions == 3:
            raise BatchError("disk full (simulated)")
        return transaction(self, *args)

    monkeypatch.setattr(Ledger, "_record_and_mark", third_fails)
    with smtp_server() as server:
        with pytest.raises(BatchError, match="disk full"):
            send(batch, server)
        received = server.handler.ids()

    rows = {key[1]: row for key, row in read_ledger(batch).items()}
    assert [rows[m].state for m in ids[:3]] == [
        MessageState.SENT,
        MessageState.SENT,  # its outcome rode with message 3's failed mark
        MessageState.PENDING,  # never marked, never sent
    ]
    assert rows[ids[1]].attempts == 1
    assert ids[2] not in received


def test_no_server_leaves_everything_pending(batch: Path) -> None:
    with smtp_server() as server:
        settings = SmtpSettings.from_url(server.url(), allow_plaintext=True)
    with pytest.raises(SmtpConnectionError, match="connection refused"):
        send_batch(batch, settings)
    assert set(states(batch).values()) == {MessageState.PENDING}


@pytest.mark.parametrize(
    "options",
    [{"limit": -1}, {"rate": 0}, {"per_minute": 0}, {"retries": -1}],
)
def test_bad_options(batch: Path, options: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        send_batch(batch, None, dry_run=True, **options)


# Dry run


def test_dry_run_sends_nothing_and_writes_no_ledger(batch: Path) -> None:
    summary = send_batch(batch, None, dry_run=True, limit=3)
    assert not (batch / LEDGER_NAME).exists()
    assert [p.action for p in summary.plan] == ["send"] * 3 + ["later (--limit)"] * 2
    assert summary.plan[0].size > 15_000
    assert summary.plan[0].subject == "Your sign-in kit"
    assert (summary.pending, summary.sent, summary.ok) == (5, 0, True)


def test_dry_run_reads_the_ledger_without_changing_it(batch: Path) -> None:
    target = message_ids(batch)[0]
    with smtp_server(Recorder(script={target: [DROP]})) as server:
        send(batch, server, limit=3)
    before = {p.name: p.read_bytes() for p in batch.glob("ledger*")}

    summary = send_batch(batch, None, dry_run=True)

    after = {p.name: p.read_bytes() for p in batch.glob("ledger*")}
    assert before == after
    actions = [p.action for p in summary.plan]
    assert actions[0].startswith("skip (uncertain")
    assert actions[1:] == ["skip (sent)"] * 2 + ["send"] * 2
    assert (summary.uncertain, summary.skipped, summary.pending) == (1, 2, 2)


def test_dry_run_shows_a_dead_senders_message_as_uncertain(batch: Path) -> None:
    first = manifest_rows(batch)[0]
    with Ledger.open(batch) as ledger:
        ledger.add([(first["account_id"], first["message_id"], first["email"])])
        ledger.mark_sending(first["account_id"], first["message_id"])

    summary = send_batch(batch, None, dry_run=True)

    (problem,) = summary.problems
    assert problem.state is MessageState.UNCERTAIN
    assert summary.plan[0].action.startswith("skip (uncertain")
    assert states(batch)[first["message_id"]] is MessageState.SENDING


# Pacing


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_rate_spaces_messages(batch: Path) -> None:
    clock = FakeClock()
    with smtp_server() as server:
        send(batch, server, rate=4, clock=clock)
    assert clock.sleeps == [0.25] * 4


def test_per_minute_waits_for_the_window(batch: Path) -> None:
    clock = FakeClock()
    with smtp_server() as server:
        send(batch, server, per_minute=2, clock=clock)
    assert clock.sleeps == [60.0, 60.0]


def test_backoff_grows_and_jitters() -> None:
    backoff = Backoff(base=2.0, cap=10.0)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)]:
        delays = {backoff.delay(attempt) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1


# DKIM


def test_dkim_signature_verifies(batch: Path, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "dkim.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    asked: list[bytes] = []

    def dns(name: bytes, timeout: float = 5) -> bytes:
        asked.append(name)
        return record

    signer = DkimSigner.from_file(pem, "kit2026", "vendor.example")
    with smtp_server() as server:
        send(batch, server, dkim=signer, limit=1)
        (received,) = server.handler.messages

    assert received.data.startswith(b"DKIM-Signature: ")
    assert dkim.verify(received.data, dnsfunc=dns)
    assert asked == [b"kit2026._domainkey.vendor.example."]
    tampered = received.data.replace(b"Your sign-in kit", b"Your sign-in kid")
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_dkim_key_problems_are_usage_errors(tmp_path: Path) -> None:
    not_rsa = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "ec.pem"
    pem.write_bytes(
        not_rsa.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(UsageError, match="not an RSA key"):
        DkimSigner.from_file(pem, "s", "vendor.example")
    with pytest.raises(UsageError, match="cannot read"):
        DkimSigner.from_file(tmp_path / "none.pem", "s", "vendor.example")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(UsageError, match="not an unencrypted PEM"):
        DkimSigner.from_file(tmp_path / "junk.pem", "s", "vendor.example")


# What the library tells its caller


def test_progress_and_one_info_line_per_message(
    batch: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[int, int, MessageResult]] = []
    caplog.set_level(logging.INFO, logger="pipeline")
    with smtp_server() as server:
        send(batch, server, progress=lambda *call: seen.append(call))

    assert [(done, total) for done, total, _ in seen] == [(n, 5) for n in range(1, 6)]
    assert {result.state for _, _, result in seen} == {MessageState.SENT}
    lines = [r for r in caplog.records if r.name == "pipeline.deliver.send"]
    assert len(lines) == 5
    assert all(r.levelno == logging.INFO for r in lines)
    assert lines[0].getMessage().startswith("sent <km1.")


def test_the_password_appears_nowhere(
    batch: Path, certificate: Certificate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    handler = Recorder(script={message_ids(batch)[0]: ["550 5.7.1 refused"]})
    with smtp_server(
        handler, mode="starttls", certificate=certificate, users={"mailer": PASSWORD}
    ) as server:
        settings = SmtpSettings.from_url(
            server.url("mailer"), password=PASSWORD, cafile=certificate.cert
        )
        summary = send_batch(batch, settings)
    assert summary.sent == 4

    report = json.dumps(summary.to_json())
    ledger_bytes = b"".join(p.read_bytes() for p in batch.glob(f"{LEDGER_NAME}*"))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    # AUTH PLAIN carries base64("\0user\0password"), AUTH LOGIN base64(password).
    plain = base64.b64encode(f"\0mailer\0{PASSWORD}".encode()).decode()
    login = base64.b64encode(PASSWORD.encode()).decode()
    for encoded in (PASSWORD, plain, login):
        assert encoded not in report
        assert encoded.encode() not in ledger_bytes
        assert encoded not in logged
    assert PASSWORD not in repr(settings)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))
