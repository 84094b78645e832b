"""The SMTP client: URLs, TLS, AUTH, TCP_NODELAY and reconnects, on a real server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.deliver.smtp import (
    Envelope,
    Outcome,
    SmtpClient,
    SmtpSettings,
    classify,
    classify_refusal,
    is_loopback,
)
from pipeline.errors import SmtpAuthError, SmtpConnectionError, UsageError

from smtp_server import (
    DROP,
    SENDER,
    Certificate,
    Recorder,
    make_certificate,
    smtp_server,
)

PASSWORD = "correct horse battery staple"
MESSAGE = (
    b"From: <keys@vendor.example>\r\nTo: <a@example.com>\r\nSubject: hi\r\n"
    b"Message-ID: <m1@vendor.example>\r\n\r\nfirst line\r\n.\r\n..two dots\r\n"
)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def envelope(data: bytes = MESSAGE) -> Envelope:
    return Envelope(SENDER, "a@example.com", data)


def send_one(client: SmtpClient, data: bytes = MESSAGE) -> Outcome:
    """Send one message; a sent one called `before_data`, then `after_data`."""
    calls: list[str] = []
    delivery = client.send(
        envelope(data), lambda: calls.append("before"), lambda: calls.append("after")
    )
    assert calls == ["before", "after"] or delivery.outcome is not Outcome.SENT
    return delivery.outcome


# URLs and settings


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "user"),
    [
        ("smtp://mail.example.com:2525", "smtp", "mail.example.com", 2525, None),
        ("smtp://mail.example.com", "smtp", "mail.example.com", 587, None),
        ("smtps://mailer@mail.example.com", "smtps", "mail.example.com", 465, "mailer"),
        ("smtp://me%40example.com@[::1]:25", "smtp", "::1", 25, "me@example.com"),
        ("smtp://me@example.com@host:25", "smtp", "host", 25, "me@example.com"),
    ],
)
def test_url_forms(
    url: str, scheme: str, host: str, port: int, user: str | None
) -> None:
    settings = SmtpSettings.from_url(url, password="x")
    assert (settings.scheme, settings.host, settings.port) == (scheme, host, port)
    assert settings.user == user


@pytest.mark.parametrize(
    "url",
    [
        "http://mail.example.com:25",
        "mail.example.com:25",
        "smtp://:25",
        "smtp://host:99999",
        "smtp://host:25/path",
        "smtp://host:0",
    ],
)
def test_bad_url_is_a_usage_error(url: str) -> None:
    with pytest.raises(UsageError, match=r"SMTP URL|port"):
        SmtpSettings.from_url(url)


@pytest.mark.parametrize(
    "url", ["smtp://me:hunter2@host:25", "smtps://me:hunter2@host", "smtp://:hunter2@h"]
)
def test_password_in_url_is_refused_without_echo(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        SmtpSettings.from_url(url)
    assert "password" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["smtp://me:hun/ter2@host:25", "smtp://me:hun?ter2@host", "smtp://me:hun#ter2@h"],
)
def test_a_url_the_parser_cannot_split_quotes_no_piece_of_its_password(
    url: str,
) -> None:
    with pytest.raises(UsageError) as caught:
        SmtpSettings.from_url(url)
    assert "hun" not in str(caught.value) and "ter2" not in str(caught.value)


def test_url_shown_in_messages_has_no_password() -> None:
    settings = SmtpSettings.from_url("smtp://me@[::1]:25", password="hunter2")
    assert settings.url == "smtp://me@[::1]:25"
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("mail.example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_plaintext_is_refused_off_loopback() -> None:
    with pytest.raises(UsageError, match="loopback host only"):
        SmtpSettings.from_url("smtp://mail.example.com:25", allow_plaintext=True)
    with pytest.raises(UsageError, match="smtp:// only"):
        SmtpSettings.from_url("smtps://127.0.0.1:465", allow_plaintext=True)


def test_a_user_needs_a_password() -> None:
    with pytest.raises(UsageError, match="KEYMAIL_SMTP_PASSWORD"):
        SmtpSettings.from_url("smtp://me@host:25")


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (250, Outcome.SENT),
        (421, Outcome.FAILED_TRANSIENT),
        (451, Outcome.FAILED_TRANSIENT),
        (550, Outcome.FAILED_PERMANENT),
        (554, Outcome.FAILED_PERMANENT),
        (354, Outcome.UNCERTAIN),
        (150, Outcome.UNCERTAIN),
        (-1, Outcome.UNCERTAIN),  # smtplib's code for a reply it could not read
    ],
)
def test_reply_classes(code: int, outcome: Outcome) -> None:
    assert classify(code) is outcome


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (250, Outcome.FAILED_TRANSIENT),
        (252, Outcome.FAILED_TRANSIENT),
        (452, Outcome.FAILED_TRANSIENT),
        (550, Outcome.FAILED_PERMANENT),
    ],
)
def test_refusals_before_the_data_never_count_as_sent(
    code: int, outcome: Outcome
) -> None:
    assert classify_refusal(code) is outcome


# Sessions on a real server


def test_plain_session_on_loopback() -> None:
    with smtp_server() as server:
        settings = SmtpSettings.from_url(server.url(), allow_plaintext=True)
        with SmtpClient(settings) as client:
            assert send_one(client) is Outcome.SENT
        (received,) = server.handler.messages
    assert received.recipients == ["a@example.com"]
    assert received.data == MESSAGE  # dot-stuffed on the wire, intact on arrival


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_with_auth(certificate: Certificate, mechanism: str) -> None:
    other = {"PLAIN": "LOGIN", "LOGIN": "PLAIN"}[mechanism]
    with smtp_server(
        mode="starttls",
        certificate=certificate,
        users={"mailer": PASSWORD},
        exclude_mechanisms=(other,),
    ) as server:
        settings = SmtpSettings.from_url(
            server.url("mailer"), password=PASSWORD, cafile=certificate.cert
        )
        with SmtpClient(settings) as client:
            assert send_one(client) is Outcome.SENT
            assert send_one(client) is Outcome.SENT
        assert server.handler.logins == [("mailer", mechanism)]
        assert len(server.handler.messages) == 2


def test_smtps_with_auth(certificate: Certificate) -> None:
    with smtp_server(
        mode="smtps", certificate=certificate, users={"mailer": PASSWORD}
    ) as server:
        settings = SmtpSettings.from_url(
            server.url("mailer"), password=PASSWORD, cafile=certificate.cert
        )
        assert settings.scheme == "smtps"
        with SmtpClient(settings) as client:
            assert send_one(client) is Outcome.SENT
        assert len(server.handler.messages) == 1


def test_socket_has_tcp_nodelay(certificate: Certificate) -> None:
    with smtp_server(mode="starttls", certificate=certificate) as server:
        settings = SmtpSettings.from_url(server.url(), cafile=certificate.cert)
        with SmtpClient(settings) as client:
            client.open()
            sock = client._smtp.sock if client._smtp else None
            assert sock is not None
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_wrong_password_is_an_auth_error(certificate: Certificate) -> None:
    with smtp_server(
        mode="starttls", certificate=certificate, users={"mailer": PASSWORD}
    ) as server:
        settings = SmtpSettings.from_url(
            server.url("mailer"), password="wrong", cafile=certificate.cert
        )
        with pytest.raises(SmtpAuthError, match="refused the login of 'mailer'"):
            SmtpClient(settings).open()
        assert server.handler.messages == []


def test_untrusted_certificate_says_what_to_do(certificate: Certificate) -> None:
    with smtp_server(mode="starttls", certificate=certificate) as server:
        settings = SmtpSettings.from_url(server.url())
        with pytest.raises(SmtpConnectionError, match="--cafile"):
            SmtpClient(settings).open()


def test_starttls_is_required(certificate: Certificate) -> None:
    with smtp_server() as server:
        settings = SmtpSettings.from_url(server.url(), cafile=certificate.cert)
        with pytest.raises(SmtpConnectionError, match="does not offer STARTTLS"):
            SmtpClient(settings).open()


def test_smtps_against_a_plain_port(certificate: Certificate) -> None:
    with smtp_server() as server:
        url = server.url().replace("smtp://", "smtps://")
        settings = SmtpSettings.from_url(url, cafile=certificate.cert, timeout=5)
        with pytest.raises(SmtpConnectionError, match=r"smtps://.*STARTTLS"):
            SmtpClient(settings).open()


def test_connection_refused_message(unused_port: int) -> None:
    settings = SmtpSettings.from_url(
        f"smtp://127.0.0.1:{unused_port}", allow_plaintext=True
    )
    with pytest.raises(SmtpConnectionError) as caught:
        SmtpClient(settings).open()
    assert str(caught.value) == (
        f"cannot connect to smtp://127.0.0.1:{unused_port}: connection refused; "
        "is the server running?"
    )


def test_unreadable_cafile_is_a_usage_error(tmp_path: Path) -> None:
    settings = SmtpSettings.from_url("smtp://host:25", cafile=tmp_path / "none.pem")
    with pytest.raises(UsageError, match="--cafile"):
        SmtpClient(settings)


# Replies and broken connections


def test_reconnects_after_the_server_drops_an_idle_session() -> None:
    with smtp_server() as server:
        settings = SmtpSettings.from_url(server.url(), allow_plaintext=True)
        with SmtpClient(settings) as client:
            assert send_one(client) is Outcome.SENT
            # Hang up under the client, as a server's idle timeout would.
            assert client._smtp is not None and client._smtp.sock is not None
            client._smtp.sock.shutdown(socket.SHUT_RDWR)
            assert send_one(client) is Outcome.SENT
        assert len(server.handler.messages) == 2


def test_refusals_keep_the_session() -> None:
    handler = Recorder(script={"<m1@vendor.example>": ["550 5.1.1 no such user"]})
    with smtp_server(handler) as server:
        settings = SmtpSettings.from_url(server.url(), allow_plaintext=True)
        with SmtpClient(settings) as client:
            first = client.send(envelope(), lambda: None)
            assert first.outcome is Outcome.FAILED_PERMANENT
            assert str(first.reply) == "550 5.1.1 no such user"
            assert send_one(client) is Outcome.SENT
            assert client.connected


def test_lost_reply_after_data_is_uncertain() -> None:
    handler = Recorder(script={"<m1@vendor.example>": [DROP]})
    with smtp_server(handler) as server:
        settings = SmtpSettings.from_url(server.url(), allow_plaintext=True)
        with SmtpClient(settings) as client:
            assert send_one(client) is Outcome.UNCERTAIN
            assert not client.connected
            assert send_one(client) is Outcome.SENT
        assert len(server.handler.messages) == 2


@pytest.fixture
def unused_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])
