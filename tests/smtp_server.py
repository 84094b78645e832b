"""Test helpers for sending: a real aiosmtpd server on loopback, and small batches."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import socket
import socketserver
import ssl
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
SENDER = "keys@vendor.example"
DROP = "drop"
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


def free_port() -> int:
    """A TCP port nobody listens on right now, for the server to bind."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


# Certificates


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, as PEM files."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_certificate(folder: Path) -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keymail test server")])
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address(HOST)),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public), False
        )
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_path, key_path)


# The server


@dataclass
class Received:
    mail_from: str
    recipients: list[str]
    message_id: str
    data: bytes


@dataclass
class Recorder:
    """An aiosmtpd handler that keeps every message and can misbehave on cue.

    `script` maps a Message-ID to the answers for its first deliveries, in
    order: an SMTP reply such as "451 4.3.0 try later", or DROP to close the
    connection without a reply once the message is in. Later deliveries, and
    messages not in the script, get 250. `delay` slows every DATA down;
    `keep_data` off keeps the envelope and Message-ID only.
    `messages` holds what the server accepted (a dropped one too: it arrived);
    `data_commands` counts every message data received, refused or not.
    """

    script: dict[str, list[str]] = field(default_factory=dict)
    delay: float = 0.0
    keep_data: bool = True
    messages: list[Received] = field(default_factory=list)
    data_commands: Counter[str] = field(default_factory=Counter)
    logins: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        data = envelope.original_content or b""
        found = _MESSAGE_ID.search(data)
        message_id = found.group(1).decode() if found else ""
        with self.lock:
            self.data_commands[message_id] += 1
            answers = self.script.get(message_id) or []
            answer = answers.pop(0) if answers else "250 2.0.0 queued"
            if answer == DROP or answer.startswith("250"):
                self.messages.append(
                    Received(
                        str(envelope.mail_from),
                        list(envelope.rcpt_tos),
                        message_id,
                        data if self.keep_data else b"",
                    )
                )
        if answer == DROP:
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
        return answer

    def ids(self) -> Counter[str]:
        with self.lock:
            return Counter(m.message_id for m in self.messages)


@dataclass
class Server:
    host: str
    port: int
    handler: Recorder
    scheme: str

    def url(self, user: str | None = None) -> str:
        login = f"{user}@" if user else ""
        return f"{self.scheme}://{login}{self.host}:{self.port}"


class _Authenticator:
    def __init__(self, users: dict[str, str], handler: Recorder) -> None:
        self.users = users
        self.handler = handler

    def __call__(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode()
        good = self.users.get(user) == auth_data.password.decode()
        if good:
            self.handler.logins.append((user, mechanism))
        return AuthResult(success=good, handled=False)


@contextmanager
def smtp_server(
    handler: Recorder | None = None,
    *,
    mode: str = "plain",
    certificate: Certificate | None = None,
    users: dict[str, str] | None = None,
    exclude_mechanisms: tuple[str, ...] = (),
) -> Iterator[Server]:
    """Run aiosmtpd on a free loopback port: "plain", "starttls" or "smtps"."""
    handler = handler or Recorder()
    kwargs: dict[str, Any] = {"hostname": HOST, "port": free_port()}
    if mode != "plain":
        assert certificate is not None
        context = certificate.server_context()
        if mode == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        else:
            kwargs.update(ssl_context=context)
    if users is not None:
        kwargs.update(
            authenticator=_Authenticator(users, handler),
            # aiosmtpd only counts STARTTLS as TLS; an smtps session is TLS
            # from its first byte.
            auth_require_tls=mode == "starttls",
            auth_exclude_mechanism=list(exclude_mechanisms),
        )
    controller = Controller(handler, server_hostname="mail.test", **kwargs)
    controller.start()
    try:
        yield Server(
            HOST, controller.port, handler, "smtps" if mode == "smtps" else "smtp"
        )
    finally:
        controller.stop()


# Batches


def write_batch(
    folder: Path,
    count: int,
    *,
    attachment_size: int = 15_000,
    recipients: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Write a batch folder like keymail generate's: messages and a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(count):
        account_id = str(uuid.uuid4())
        email = recipients[n] if recipients else f"user{n}@example.com"
        rows.append(_write_message(folder, account_id, email, attachment_size))
    manifest = "".join(json.dumps(row) + "\n" for row in rows)
    (folder / "manifest.jsonl").write_text(manifest)
    return rows


def _write_message(
    folder: Path, account_id: str, email: str, attachment_size: int, to: str = ""
) -> dict[str, Any]:
    message_id = f"<km1.{account_id.replace('-', '')}.g1.e1@vendor.example>"
    subject = "Your sign-in kit"
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = f"Vendor <{SENDER}>"
    message["To"] = to or email
    message["Subject"] = subject
    message["Date"] = "Thu, 03 Dec 2026 10:00:00 +0000"
    message["Message-ID"] = message_id
    message.set_content("Your account code is in the attached kit.\n.\nKeep it safe.\n")
    message.add_attachment(
        os.urandom(attachment_size),
        maintype="application",
        subtype="pdf",
        filename="kit.pdf",
    )
    data = message.as_bytes()
    (folder / account_id).mkdir()
    (folder / account_id / "message.eml").write_bytes(data)
    return {
        "account_id": account_id,
        "email": email,
        "status": "generated",
        "message_id": message_id,
        "subject": subject,
        "key_generation": 1,
        "password_epoch": 1,
        "issued": "2026-12-03",
        "artifacts": {
            "message.eml": {
                "path": f"{account_id}/message.eml",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        },
    }


def append_message(
    folder: Path, email: str, *, to: str = "", attachment_size: int = 2_000
) -> dict[str, Any]:
    """Add one more account to a batch, its To header optionally `to`."""
    row = _write_message(folder, str(uuid.uuid4()), email, attachment_size, to)
    with (folder / "manifest.jsonl").open("a") as manifest:
        manifest.write(json.dumps(row) + "\n")
    return row


# A scripted server that misbehaves in ways aiosmtpd will not


@dataclass
class RawScript:
    """Answers to give instead of the usual ones, by command, in order.

    Keys: "MAIL", "RCPT", "DATA" (the reply to the DATA command) and "END" (the
    reply after the message data). `bodies` collects each message data that
    reached the end marker.
    """

    answers: dict[str, list[str]] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)
    # After this many messages the server goes away: it hangs up and refuses
    # new connections.
    stop_after: int | None = None

    def answer(self, verb: str, usual: str) -> str:
        queue = self.answers.get(verb) or []
        return queue.pop(0) if queue else usual


class _RawHandler(socketserver.StreamRequestHandler):
    server: _RawServer

    def handle(self) -> None:
        script = self.server.script
        self._say("220 raw.test ESMTP")
        usual = {"MAIL": "250 ok", "RCPT": "250 ok", "RSET": "250 ok", "NOOP": "250 ok"}
        for raw in self.rfile:
            verb = raw.split(b" ", 1)[0].split(b":", 1)[0].strip().upper().decode()
            if verb in ("EHLO", "HELO"):
                self.wfile.write(b"250-raw.test\r\n250 8BITMIME\r\n")
            elif verb == "QUIT":
                self._say("221 bye")
                return
            elif verb == "DATA":
                reply = script.answer("DATA", "354 go on")
                self._say(reply)
                if reply.startswith("354"):
                    script.bodies.append(self._body())
                    self._say(script.answer("END", "250 queued"))
                    if script.stop_after and len(script.bodies) >= script.stop_after:
                        self.server.socket.close()
                        return
            elif verb in usual:
                self._say(script.answer(verb, usual[verb]))
            else:
                self._say("502 not here")

    def _body(self) -> bytes:
        lines = []
        for line in self.rfile:
            if line == b".\r\n":
                break
            lines.append(line)
        return b"".join(lines)

    def _say(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")


class _RawServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    script: RawScript


@contextmanager
def raw_smtp_server(script: RawScript) -> Iterator[Server]:
    """Run the scripted server on a free loopback port (plain SMTP)."""
    server = _RawServer((HOST, 0), _RawHandler)
    server.script = script
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(HOST, server.server_address[1], Recorder(), "smtp")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
