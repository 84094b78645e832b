"""Time send_batch against a bare smtplib loop, both on one local STARTTLS server."""

# Run from the repository root: `.venv/bin/python benchmarks/send_bench.py -n 200`.
#
# The server is aiosmtpd with STARTTLS and AUTH, a self-signed certificate and a
# free port on 127.0.0.1, in a child process: a real server never shares the
# sender's interpreter lock. Both senders use one connection with TCP_NODELAY.
# The bare loop only calls smtplib.sendmail; send_batch also checks each message
# against the manifest and keeps the ledger (one fsync a message, so the ratio
# falls when other work keeps the disk busy). The senders take turns, round
# after round, against the same server; the ratio is the median of each round's
# ratio. It measures; it asserts nothing.

from __future__ import annotations

import argparse
import logging
import multiprocessing
import shutil
import smtplib
import socket
import ssl
import statistics
import sys
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.deliver.smtp import SmtpSettings
from pipeline.send import send_batch
from tests.smtp_server import (
    HOST,
    SENDER,
    Certificate,
    Recorder,
    Server,
    make_certificate,
    smtp_server,
    write_batch,
)

USER, PASSWORD = "bench", "bench-password"


def serve(cert: Certificate, ports: Any, stop: Event) -> None:
    """The child process: run the server until told to stop."""
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    handler = Recorder(keep_data=False)
    with smtp_server(
        handler, mode="starttls", certificate=cert, users={USER: PASSWORD}
    ) as server:
        ports.put(server.port)
        stop.wait()


def bare_loop(
    server: Server, cert: Certificate, messages: list[tuple[str, bytes]]
) -> float:
    """Messages/s of smtplib.sendmail on one connection."""
    start = time.perf_counter()
    smtp = smtplib.SMTP(server.host, server.port, timeout=30)
    assert smtp.sock is not None
    smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    smtp.starttls(context=ssl.create_default_context(cafile=str(cert.cert)))
    smtp.login(USER, PASSWORD)
    for recipient, data in messages:
        smtp.sendmail(SENDER, [recipient], data)
    smtp.quit()
    return len(messages) / (time.perf_counter() - start)


def keymail_run(server: Server, cert: Certificate, batch: Path) -> float:
    """Messages/s of send_batch over a batch with an empty ledger."""
    settings = SmtpSettings.from_url(
        server.url(USER), password=PASSWORD, cafile=cert.cert
    )
    start = time.perf_counter()
    summary = send_batch(batch, settings)
    elapsed = time.perf_counter() - start
    assert summary.ok and summary.sent, summary
    return summary.sent / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="messages per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each sender")
    parser.add_argument("--kit-bytes", type=int, default=15_000, help="PDF size")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="keymail-bench-") as tmp:
        root = Path(tmp)
        cert = make_certificate(root / "tls")
        template = root / "batch"
        rows = write_batch(template, args.n, attachment_size=args.kit_bytes)
        messages = [
            (
                row["email"],
                (template / row["artifacts"]["message.eml"]["path"]).read_bytes(),
            )
            for row in rows
        ]

        context = multiprocessing.get_context("spawn")
        ports, stop = context.Queue(), context.Event()
        child = context.Process(target=serve, args=(cert, ports, stop))
        child.start()
        try:
            server = Server(HOST, ports.get(timeout=30), Recorder(), "smtp")
            bare, ours = [], []
            for round_ in range(args.rounds):
                batch = root / f"run{round_}"
                shutil.copytree(template, batch)
                bare.append(bare_loop(server, cert, messages))
                ours.append(keymail_run(server, cert, batch))
        finally:
            stop.set()
            child.join()

    size = statistics.mean(len(data) for _, data in messages) / 1024
    ratio = statistics.median(o / b for o, b in zip(ours, bare, strict=True))
    print(f"{args.n} messages of {size:.1f} KiB, STARTTLS + AUTH, 127.0.0.1")
    print(f"rounds: {args.rounds}; medians:")
    print(f"  smtplib loop, TCP_NODELAY: {statistics.median(bare):7.1f} messages/s")
    print(f"  send_batch with ledger:    {statistics.median(ours):7.1f} messages/s")
    print(f"  ratio (per round):         {ratio:7.2f}")


if __name__ == "__main__":
    main()
