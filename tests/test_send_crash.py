"""SIGKILL `keymail send` mid-batch, again and again: nothing lost, nothing doubled."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.deliver.ledger import MessageState, read_ledger

from smtp_server import Recorder, Server, make_certificate, smtp_server, write_batch

PASSWORD = "canary-0c41be-password"
KILLS = 10
MESSAGES = 50


def start_send(
    batch: Path, server: Server, cafile: Path, *args: str
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-c",
        "from pipeline.cli import main; main()",
        "send",
        str(batch),
        "--smtp",
        server.url("mailer"),
        "--cafile",
        str(cafile),
        *args,
    ]
    env = {**os.environ, "KEYMAIL_SMTP_PASSWORD": PASSWORD}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_for_deliveries(
    handler: Recorder, more_than: int, child: subprocess.Popen[bytes]
) -> None:
    """Wait until the server has taken more than `more_than` messages in all."""
    deadline = time.monotonic() + 20
    while sum(handler.data_commands.values()) <= more_than:
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the sender made no progress"
        time.sleep(0.005)


def cmdline(child: subprocess.Popen[bytes]) -> bytes:
    return Path(f"/proc/{child.pid}/cmdline").read_bytes()


@pytest.mark.slow
def test_kill_at_random_points_then_finish(tmp_path: Path) -> None:
    chance = random.Random()
    certificate = make_certificate(tmp_path / "tls")
    batch = tmp_path / "batch"
    rows = write_batch(batch, MESSAGES, attachment_size=2_000)
    expected = {row["message_id"] for row in rows}
    uncertain: set[str] = set()
    outputs: list[bytes] = []

    # A slow server, so that each kill lands in the middle of a batch and
    # sometimes while a message waits for its reply.
    handler = Recorder(delay=0.02)
    with smtp_server(
        handler, mode="starttls", certificate=certificate, users={"mailer": PASSWORD}
    ) as server:
        for _ in range(KILLS):
            child = start_send(batch, server, certificate.cert)
            before = sum(handler.data_commands.values())
            wait_for_deliveries(handler, before + chance.randint(0, 3), child)
            time.sleep(chance.uniform(0, 0.03))
            assert PASSWORD.encode() not in cmdline(child)
            child.send_signal(signal.SIGKILL)
            outputs.extend(child.communicate())
            assert child.returncode == -signal.SIGKILL
            uncertain |= {
                key[1]
                for key, row in read_ledger(batch).items()
                if row.state in (MessageState.SENDING, MessageState.UNCERTAIN)
            }

        # Run to the end: what may have reached the server is left alone...
        finish = start_send(
            batch, server, certificate.cert, "--json", str(tmp_path / "r1")
        )
        outputs.extend(finish.communicate(timeout=30))
        first_report = json.loads((tmp_path / "r1").read_text())
        reported = {p["message_id"] for p in first_report["problems"]}
        assert finish.returncode == (1 if reported else 0)
        assert {p["state"] for p in first_report["problems"]} <= {"uncertain"}
        assert reported == uncertain

        # ...until asked for.
        resend = start_send(
            batch,
            server,
            certificate.cert,
            "--resend-uncertain",
            "--json",
            str(tmp_path / "r2"),
        )
        outputs.extend(resend.communicate(timeout=30))
        final_report = json.loads((tmp_path / "r2").read_text())
        received = handler.ids()

    assert resend.returncode == 0, outputs[-1]
    assert final_report["ok"] and final_report["sent"] == len(uncertain)
    assert set(received) == expected
    doubled = {message_id for message_id, count in received.items() if count > 1}
    assert doubled <= uncertain
    assert max(received.values()) <= 2
    assert {row.state for row in read_ledger(batch).values()} == {MessageState.SENT}
    assert all(PASSWORD.encode() not in output for output in outputs)
    for ledger_file in batch.glob("ledger*"):
        assert PASSWORD.encode() not in ledger_file.read_bytes()
