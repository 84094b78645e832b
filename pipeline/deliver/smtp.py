"""SMTP client for delivery: the URL, TLS, AUTH, one reused connection, outcomes."""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import smtplib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from urllib.parse import SplitResult, unquote, urlsplit

from pipeline.errors import (
    SmtpAuthError,
    SmtpConnectionError,
    SmtpTlsError,
    UsageError,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "Delivery",
    "Envelope",
    "Outcome",
    "Reply",
    "SmtpClient",
    "SmtpSettings",
    "classify",
    "classify_refusal",
    "is_loopback",
]

log = logging.getLogger("pipeline.deliver.smtp")

DEFAULT_PORTS = {"smtp": 587, "smtps": 465}
DEFAULT_TIMEOUT = 30.0
URL_FORMS = "smtp://[user@]host:port (STARTTLS) or smtps://[user@]host:port"

_LINE_END = re.compile(rb"\r\n|\r|\n")


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine: localhost, 127.0.0.0/8 or ::1."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to connect; the password never shows in repr or messages."""

    scheme: str
    host: str
    port: int
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    allow_plaintext: bool = False
    cafile: Path | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if self.scheme not in DEFAULT_PORTS:
            raise UsageError(f"unknown SMTP scheme {self.scheme!r}; use {URL_FORMS}")
        if self.allow_plaintext and self.scheme == "smtps":
            raise UsageError("--allow-plaintext applies to smtp:// only")
        if self.allow_plaintext and not is_loopback(self.host):
            raise UsageError(
                f"refusing plaintext SMTP to {self.host!r}: the password and the "
                "emails would cross the network unencrypted; plaintext is allowed "
                "to a loopback host only (localhost, 127.0.0.1, ::1)"
            )
        if self.user is not None and not self.password:
            raise UsageError(
                f"no SMTP password for user {self.user!r}; set KEYMAIL_SMTP_PASSWORD "
                "or pass --smtp-password-file FILE"
            )
        if not (0 < self.timeout < math.inf):  # also refuses NaN
            raise UsageError(f"timeout must be above 0 seconds, not {self.timeout}")

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        password: str | None = None,
        allow_plaintext: bool = False,
        cafile: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> SmtpSettings:
        """Parse `smtp://[user@]host:port` or `smtps://...`; refuse a password in it."""
        parts = _split_url(url)
        user = unquote(parts.username) if parts.username else None
        return cls(
            scheme=parts.scheme,
            host=parts.hostname or "",
            port=parts.port or DEFAULT_PORTS[parts.scheme],
            user=user,
            password=password if user is not None else None,
            allow_plaintext=allow_plaintext,
            cafile=cafile,
            timeout=timeout,
        )

    @property
    def url(self) -> str:
        """The server as a URL with the user and without the password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        return f"{self.scheme}://{user}{host}:{self.port}"


def _split_url(url: str) -> SplitResult:
    # Check for a password before anything else, so no message repeats the URL
    # while it still holds one.
    shown = _without_userinfo(url)
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
        port = parts.port
    except ValueError:
        # The parser's own message may quote a piece of the password (a port
        # "could not be cast" from the text after its first colon).
        raise UsageError(
            f"not an SMTP URL: {shown!r} (bad host or port); use {URL_FORMS}"
        ) from None
    if has_password:
        raise UsageError(
            "the SMTP URL holds a password; remove it and set KEYMAIL_SMTP_PASSWORD "
            "or pass --smtp-password-file FILE instead"
        )
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise UsageError(f"not an SMTP URL: {shown!r}; use {URL_FORMS}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(
            f"an SMTP URL has no path or query: {shown!r}; use {URL_FORMS}"
        )
    if port == 0:
        raise UsageError(f"port 0 in SMTP URL {shown!r}; give the server's port")
    return parts


def _without_userinfo(url: str) -> str:
    """`url` with anything between `//` and the last `@` replaced, for messages."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, slashes, _ = head.partition("//")
    return f"{scheme}{slashes}...@{tail}" if slashes else f"...@{tail}"


@dataclass(frozen=True)
class Reply:
    """The server's reply; `code` is None when the connection gave none."""

    code: int | None
    text: str

    def __str__(self) -> str:
        if self.code is None:
            return self.text
        return f"{self.code} {self.text}".rstrip()


class Outcome(StrEnum):
    """What one attempt to send a message came to."""

    SENT = "sent"
    FAILED_PERMANENT = "failed-permanent"
    FAILED_TRANSIENT = "failed-transient"
    UNCERTAIN = "uncertain"


def classify(code: int) -> Outcome:
    """The reply to the end of the message data (RFC 5321 section 4.2.1).

    2yz: accepted. 5yz: refused, do not repeat. 4yz: try again later. Anything
    else (1yz, 3yz, or a reply smtplib could not parse, code -1) says neither
    yes nor no after the server has the whole message: uncertain, never
    retried on its own.
    """
    if 200 <= code < 300:
        return Outcome.SENT
    if 500 <= code < 600:
        return Outcome.FAILED_PERMANENT
    if 400 <= code < 500:
        return Outcome.FAILED_TRANSIENT
    return Outcome.UNCERTAIN


def classify_refusal(code: int) -> Outcome:
    """A reply that stopped a transaction before any message data was sent.

    Nothing was delivered, whatever the code says: a 5yz is permanent, and
    anything else (4yz, or a 2yz where 354 or 250 was expected) is transient.
    """
    if 500 <= code < 600:
        return Outcome.FAILED_PERMANENT
    return Outcome.FAILED_TRANSIENT


@dataclass(frozen=True)
class Delivery:
    """The outcome of one attempt and the reply (or the failure) behind it."""

    outcome: Outcome
    reply: Reply


@dataclass(frozen=True)
class Envelope:
    """Envelope sender, one recipient, and the finished message bytes."""

    mail_from: str
    recipient: str
    data: bytes


class _ConnectionLost(Exception):
    """The connection broke before the message data went out: safe to retry."""


class SmtpClient:
    """One SMTP session, opened on demand and reused for every message.

    `send` never raises for a message the server refuses or a connection that
    breaks mid-message: it returns a `Delivery`. It raises SmtpConnectionError or
    SmtpAuthError only when it cannot (re)open the session at all.
    """

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        self._context = None if settings.allow_plaintext else _tls_context(settings)

    def __enter__(self) -> SmtpClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            # Mid-message, a polite QUIT would read as message data: hang up.
            self._drop()

    @property
    def connected(self) -> bool:
        return self._smtp is not None

    def open(self) -> None:
        """Connect, secure the session with TLS and log in, as the settings ask."""
        self._drop()
        smtp = self._connect()
        try:
            self._start_session(smtp)
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        log.info("connected to %s", self.settings.url)

    def close(self) -> None:
        """End the session politely; a server that already left is fine."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()

    def send(
        self,
        envelope: Envelope,
        before_data: Callable[[], None],
        after_data: Callable[[], None] | None = None,
    ) -> Delivery:
        """Send one message; call `before_data` right before its bytes go out,
        and `after_data` once they are out, while the server takes them.

        A session the server closed while idle is reopened once, at no cost to
        the message: nothing of it had been sent.
        """
        reused = self._smtp is not None
        if not reused:
            self.open()
        try:
            return self._transaction(envelope, before_data, after_data)
        except _ConnectionLost as lost:
            if not reused:
                return Delivery(Outcome.FAILED_TRANSIENT, Reply(None, str(lost)))
        log.info("server closed the idle connection; reconnecting")
        self.open()
        try:
            return self._transaction(envelope, before_data, after_data)
        except _ConnectionLost as lost:
            return Delivery(Outcome.FAILED_TRANSIENT, Reply(None, str(lost)))

    # Connection

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        try:
            smtp: smtplib.SMTP
            if s.scheme == "smtps":
                smtp = smtplib.SMTP_SSL(
                    s.host, s.port, timeout=s.timeout, context=self._context
                )
            else:
                smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        except (OSError, smtplib.SMTPException) as exc:
            raise _connection_error(exc, self._connect_message(exc)) from None
        # Without TCP_NODELAY, Nagle's algorithm holds back the small writes of
        # each command until the peer's delayed ACK: about 45 ms per message.
        if smtp.sock is not None:
            smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return smtp

    def _start_session(self, smtp: smtplib.SMTP) -> None:
        s = self.settings
        try:
            self._hello(smtp)
            if s.scheme == "smtp" and not s.allow_plaintext:
                if not smtp.has_extn("starttls"):
                    raise SmtpTlsError(
                        f"{s.url} does not offer STARTTLS; use smtps:// if the port "
                        "speaks implicit TLS (usually 465), or --allow-plaintext for "
                        "a loopback test server"
                    )
                smtp.starttls(context=self._context)
                self._hello(smtp)
            if s.user is not None:
                self._login(smtp)
        except (OSError, smtplib.SMTPException) as exc:
            raise _connection_error(exc, self._connect_message(exc)) from None

    def _hello(self, smtp: smtplib.SMTP) -> None:
        code, text = smtp.ehlo()
        if code != 250:
            raise SmtpConnectionError(
                f"{self.settings.url} refused EHLO: {_reply(code, text)}"
            )

    def _login(self, smtp: smtplib.SMTP) -> None:
        s = self.settings
        assert s.user is not None and s.password is not None
        if not smtp.has_extn("auth"):
            raise SmtpAuthError(
                f"{s.url} offers no AUTH; remove the user from the URL if the "
                "server needs no login"
            )
        try:
            smtp.login(s.user, s.password)
        except smtplib.SMTPAuthenticationError as exc:
            reply = _reply(exc.smtp_code, exc.smtp_error)
            raise SmtpAuthError(
                f"{s.url} refused the login of {s.user!r}: {reply}; check the "
                "password in --smtp-password-file or KEYMAIL_SMTP_PASSWORD"
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise SmtpAuthError(
                f"{s.url} offers no AUTH mechanism keymail speaks "
                "(CRAM-MD5, PLAIN or LOGIN)"
            ) from None

    def _connect_message(self, exc: BaseException) -> str:
        where = f"cannot connect to {self.settings.url}"
        if isinstance(exc, ConnectionRefusedError):
            return f"{where}: connection refused; is the server running?"
        if isinstance(exc, socket.gaierror):
            return f"{where}: host not found; check the host in --smtp"
        if isinstance(exc, TimeoutError):
            return (
                f"{where}: no answer within {self.settings.timeout:g} s; check the "
                "host and port, or raise --timeout"
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (
                f"{where}: the server's TLS certificate was not accepted "
                f"({exc.verify_message}); pass --cafile FILE with the certificate "
                "authority that signed it"
            )
        if isinstance(exc, ssl.SSLError):
            return (
                f"{where}: TLS handshake failed ({exc.reason}); use smtps:// for a "
                "port that speaks implicit TLS and smtp:// for STARTTLS"
            )
        if isinstance(exc, smtplib.SMTPResponseException):
            return f"{where}: {_reply(exc.smtp_code, exc.smtp_error)}"
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return f"{where}: the server closed the connection"
        if isinstance(exc, OSError) and exc.strerror:
            return f"{where}: {exc.strerror.lower()}"
        return f"{where}: {exc}"

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    # One message

    def _transaction(
        self,
        envelope: Envelope,
        before_data: Callable[[], None],
        after_data: Callable[[], None] | None,
    ) -> Delivery:
        smtp = self._smtp
        assert smtp is not None
        payload = _data_payload(envelope.data)
        try:
            options = self._mail_options(smtp, envelope, len(payload))
            code, text = smtp.mail(envelope.mail_from, options)
            if code != 250:
                return self._refused(code, text)
            code, text = smtp.rcpt(envelope.recipient)
            if code not in (250, 251):
                return self._refused(code, text)
            code, text = smtp.docmd("DATA")
            if code != 354:
                return self._refused(code, text)
        except smtplib.SMTPServerDisconnected:
            self._drop()
            raise _ConnectionLost(
                "connection lost before the message was sent"
            ) from None
        except smtplib.SMTPResponseException as exc:
            # smtplib could not read the reply (a line over 8 KiB): nothing
            # was sent, and the session is in an unknown state.
            self._drop()
            return Delivery(
                Outcome.FAILED_TRANSIENT,
                Reply(None, f"unreadable reply before the data: {_text(exc)}"),
            )
        except _Refusal as refusal:
            return Delivery(Outcome.FAILED_PERMANENT, Reply(None, str(refusal)))

        try:
            before_data()
        except BaseException:
            # The server waits for data we will not send: this session is spent.
            self._drop()
            raise
        return self._transmit(smtp, payload, after_data)

    def _transmit(
        self,
        smtp: smtplib.SMTP,
        payload: bytes,
        after_data: Callable[[], None] | None,
    ) -> Delivery:
        # If the bytes cannot all be written, the final "." never reached the
        # server and the message cannot have been accepted. Once they are all
        # written, only the server's reply tells; without one, nobody knows.
        try:
            smtp.send(payload)
        except smtplib.SMTPServerDisconnected:
            self._drop()
            lost = "connection lost while sending the message"
            return Delivery(Outcome.FAILED_TRANSIENT, Reply(None, lost))
        if after_data is not None:
            after_data()
        try:
            code, text = smtp.getreply()
        except smtplib.SMTPServerDisconnected:
            self._drop()
            lost = "connection lost after the message was sent, before the reply"
            return Delivery(Outcome.UNCERTAIN, Reply(None, lost))
        except smtplib.SMTPResponseException as exc:
            self._drop()
            unread = f"the reply to the message could not be read: {_text(exc)}"
            return Delivery(Outcome.UNCERTAIN, Reply(None, unread))
        if code == 421:
            self._drop()
        return Delivery(classify(code), _reply(code, text))

    def _mail_options(
        self, smtp: smtplib.SMTP, envelope: Envelope, size: int
    ) -> list[str]:
        options = []
        if smtp.has_extn("size"):
            options.append(f"SIZE={size}")
        if not (envelope.mail_from + envelope.recipient).isascii():
            if not smtp.has_extn("smtputf8"):
                raise _Refusal(
                    "the server does not offer SMTPUTF8, which a non-ASCII address "
                    "needs"
                )
            options.append("SMTPUTF8")
        return options

    def _refused(self, code: int, text: bytes) -> Delivery:
        """A reply that ends this message's transaction; reset for the next one."""
        if code == 421:
            self._drop()
        else:
            try:
                assert self._smtp is not None
                self._smtp.rset()
            except smtplib.SMTPException:
                self._drop()
        return Delivery(classify_refusal(code), _reply(code, text))


def _connection_error(exc: BaseException, message: str) -> SmtpConnectionError:
    """A TLS failure is a configuration error; anything else may pass."""
    if isinstance(exc, ssl.SSLError):
        return SmtpTlsError(message)
    return SmtpConnectionError(message)


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    """Verify the server's certificate and name, against --cafile if given."""
    cafile = settings.cafile
    try:
        context = ssl.create_default_context(
            cafile=str(cafile) if cafile is not None else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            f"cannot read --cafile {str(cafile)!r}: {exc}; give a PEM file of "
            "the certificate authority that signed the server's certificate"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _Refusal(Exception):
    """keymail itself refuses to send a message to this server."""


def _data_payload(data: bytes) -> bytes:
    """The DATA bytes: CRLF lines, dot-stuffed, ending with the final "."

    RFC 5321 section 2.3.8: lines end in CRLF; section 4.5.2: a line that starts
    with a period gets one more, so that it cannot end the data.
    """
    # Messages from keymail generate are CRLF already: counting is about 100
    # times cheaper than rewriting every line ending (0.5 ms for 22 KB).
    crlf = data.count(b"\r\n")
    if not data.count(b"\r") == data.count(b"\n") == crlf:
        data = _LINE_END.sub(b"\r\n", data)
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _text(exc: smtplib.SMTPResponseException) -> str:
    error = exc.smtp_error
    text = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
    return " ".join(text.split())[:200]


def _reply(code: int, text: bytes | str) -> Reply:
    """A server reply on one line, whatever its line count and encoding."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return Reply(code, " ".join(text.split()))
