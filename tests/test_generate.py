"""`keymail generate` end to end: real templates, WeasyPrint, QR decoding, SQLite."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import re
import shutil
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pypdfium2
import pytest
import zxingcpp
from PIL import Image
from typer.testing import CliRunner

from pipeline import keys
from pipeline.produce import ARTIFACTS

from conftest import FAST_KDF, FIXTURES, ROOT, invoke, write_records
from smtp_server import smtp_server

pytestmark = pytest.mark.usefixtures("weak_kdf")
SEPARATORS = re.compile(r"[\s\-\u2010\u00ad\x02]+")


def generate(
    cli: CliRunner, records: Path, out: Path, *extra: str
) -> tuple[int, str, str]:
    return invoke(
        cli,
        "generate",
        str(records),
        "--out",
        str(out),
        "--registry",
        str(out.parent / "registry.sqlite3"),
        "--kdf",
        FAST_KDF,
        *extra,
    )


def manifest(out: Path) -> list[dict[str, object]]:
    return [
        json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()
    ]


def rejects(out: Path) -> list[dict[str, object]]:
    path = out / "rejects.jsonl"
    return (
        [json.loads(line) for line in path.read_text().splitlines()]
        if path.exists()
        else []
    )


def qr_payloads(image: Image.Image) -> list[str]:
    return [code.text for code in zxingcpp.read_barcodes(image)]


def squash(text: str) -> str:
    return SEPARATORS.sub("", text).upper()


def mime_tree(part: EmailMessage) -> object:
    if part.is_multipart():
        return [part.get_content_type(), [mime_tree(sub) for sub in part.iter_parts()]]  # type: ignore[arg-type]
    return part.get_content_type()


EXPECTED_TREE = [
    "multipart/mixed",
    [
        [
            "multipart/alternative",
            ["text/plain", ["multipart/related", ["text/html", "image/png"]]],
        ],
        "application/pdf",
    ],
]


def test_generate_writes_every_artifact_that_round_trips(
    cli: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "batch"
    code, stdout, stderr = generate(
        cli, FIXTURES / "accounts.csv", out, "--workers", "2"
    )

    assert (code, stderr) == (0, "")
    assert "8 generated" in stdout
    rows = manifest(out)
    assert len(rows) == 8
    assert (out / "rejects.jsonl").read_bytes() == b""  # there, and empty
    assert stat.S_IMODE((out / "rejects.jsonl").stat().st_mode) == 0o600
    for row in rows:
        folder = out / str(row["account_id"])
        assert sorted(p.name for p in folder.iterdir()) == sorted(ARTIFACTS)
        check_account(folder, row)


def check_account(folder: Path, row: dict[str, object]) -> None:
    artifacts = row["artifacts"]
    assert isinstance(artifacts, dict)
    for name, meta in artifacts.items():
        data = (folder / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700

    # The QR: from qr.png and from the kit rendered to pixels.
    payload = qr_payloads(Image.open(folder / "qr.png"))[0]
    eak = keys.parse_payload(payload)
    pdf = pypdfium2.PdfDocument(folder / "kit.pdf")
    assert len(pdf) == 1
    page = pdf[0]
    assert qr_payloads(page.render(scale=150 / 72).to_pil()) == [payload]
    pdf_text = page.get_textpage().get_text_range()
    pdf.close()

    # The account code: in the PDF text and in both bodies.
    code = squash(keys.format_code(eak))
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        (folder / "message.eml").read_bytes()
    )
    assert isinstance(message, EmailMessage)
    assert mime_tree(message) == EXPECTED_TREE
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    html_text = re.sub(r"<[^>]+>", " ", html.get_content())
    for body in (pdf_text, text.get_content(), html_text):
        assert code in squash(body)
    assert "data:" not in html.get_content()
    assert message["Message-ID"] == row["message_id"]
    assert message["To"].addresses[0].addr_spec == row["email"]
    assert eak.header.key_generation == row["key_generation"] == 1


def test_registry_holds_state_and_nothing_secret(
    cli: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "batch"
    assert generate(cli, FIXTURES / "accounts.csv", out)[0] == 0

    db = sqlite3.connect(tmp_path / "registry.sqlite3")
    rows = db.execute(
        "SELECT account_id, key_generation, password_epoch, key_check FROM account"
    )
    by_id = {row[0]: row[1:] for row in rows}
    for entry in manifest(out):
        assert by_id[entry["account_id"]] == (1, 1, entry["key_check"])


def test_bad_records_are_rejected_and_the_rest_generated(
    cli: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "batch"
    code, stdout, stderr = generate(cli, FIXTURES / "bad-accounts.csv", out)

    assert code == 1
    assert "2 generated" in stdout and "9 rejected" in stdout
    assert "rejects.jsonl" in stderr
    found = {(row["line"], row["field"]) for row in rejects(out)}
    assert found == {
        (3, "email"),
        (4, "account_id"),
        (5, "account_id"),
        (6, "password"),
        (7, "name"),
        (8, "line"),  # the rest of line 7's quoted name
        (9, "name"),
        (10, "encrypted_key"),
        (11, "locale"),
    }
    assert {row["line"] for row in manifest(out)} == {2, 12}
    assert not (out / "..").resolve().joinpath("etc").exists()


def test_existing_account_is_not_silently_rekeyed(
    cli: CliRunner, tmp_path: Path
) -> None:
    assert generate(cli, FIXTURES / "accounts.csv", tmp_path / "one")[0] == 0
    code, _, _ = generate(cli, FIXTURES / "accounts.csv", tmp_path / "two")

    assert code == 1
    assert {row["field"] for row in rejects(tmp_path / "two")} == {"account_id"}
    assert "already registered" in str(rejects(tmp_path / "two")[0]["reason"])


def test_resend_from_encrypted_key_re_renders_the_same_code(
    cli: CliRunner, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    assert generate(cli, FIXTURES / "accounts.csv", first)[0] == 0
    row = manifest(first)[0]
    payload = qr_payloads(Image.open(first / str(row["account_id"]) / "qr.png"))[0]
    records = tmp_path / "resend.jsonl"
    record = {"account_id": row["account_id"], "email": row["email"], "name": "Again"}
    records.write_text(json.dumps({**record, "encrypted_key": payload}) + "\n")

    code, _, stderr = generate(cli, records, tmp_path / "again")

    assert (code, stderr) == (0, "")
    again = manifest(tmp_path / "again")[0]
    assert again["reason"] == "resend"
    assert again["message_id"] != row["message_id"]
    new_png = tmp_path / "again" / str(row["account_id"]) / "qr.png"
    assert qr_payloads(Image.open(new_png)) == [payload]


def test_secrets_file_and_jsonl_records(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "batch"
    code, _, stderr = generate(
        cli,
        FIXTURES / "accounts.jsonl",
        out,
        "--secrets",
        str(FIXTURES / "secrets.csv"),
    )
    assert (code, stderr) == (0, "")
    assert len(manifest(out)) == 4


def test_existing_batch_needs_resume(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "batch"
    assert generate(cli, FIXTURES / "accounts.csv", out)[0] == 0
    code, _, stderr = generate(cli, FIXTURES / "accounts.csv", out)
    assert code == 2
    assert "--resume" in stderr

    code, stdout, _ = generate(cli, FIXTURES / "accounts.csv", out, "--resume")
    assert code == 0
    assert "0 generated, 8 already done" in stdout
    assert len(manifest(out)) == 8


@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_left_by_a_kill_at_start_is_taken(
    cli: CliRunner, tmp_path: Path, resume: bool
) -> None:
    # What a run killed between taking the lock and writing batch.json leaves.
    out = tmp_path / "batch"
    out.mkdir(mode=0o700)
    (out / ".lock").touch()
    (out / ".batch.json.k1ll3d.tmp").write_text('{"batch_id": ')

    extra = ("--resume",) if resume else ()
    code, stdout, stderr = generate(cli, FIXTURES / "accounts.csv", out, *extra)

    assert (code, stderr) == (0, "")
    assert "8 generated" in stdout
    assert not list(out.glob("**/*.tmp"))


def test_canary_passwords_appear_nowhere(cli: CliRunner, tmp_path: Path) -> None:
    records = tmp_path / "canary.csv"
    write_records(records, 5, password="CANARY-{n}-s3cret-pw")
    (tmp_path / "bad.csv").write_text(
        "account_id,email,name,locale,password\n"
        "not-a-uuid,x@example.com,X,en,CANARY-0-s3cret-pw\n"
        f"{uuid.uuid4()},y@example.com,Y,CANARY-1-s3cret-pw\n"  # a value short
        f"{uuid.uuid4()},z@example.com,Z,CANARY-2-s3cret-pw,en\n"  # swapped
    )
    out = tmp_path / "batch"

    # -vv sends every log record of the library, debug included, to stderr.
    code, stdout, stderr = invoke(
        cli,
        "-vv",
        "generate",
        str(records),
        "--out",
        str(out),
        "--kdf",
        FAST_KDF,
        "--registry",
        str(tmp_path / "registry.sqlite3"),
        "--workers",
        "2",
        "--json",
    )
    bad = invoke(
        cli,
        "-vv",
        "generate",
        str(tmp_path / "bad.csv"),
        "--out",
        str(tmp_path / "b"),
        "--registry",
        str(tmp_path / "registry.sqlite3"),
    )

    assert (code, bad[0]) == (0, 1)
    assert "keymail: info" in stderr
    texts = [stdout, stderr, bad[1], bad[2]]
    blobs = [path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()]
    inputs = {records.read_bytes(), (tmp_path / "bad.csv").read_bytes()}
    blobs = [blob for blob in blobs if blob not in inputs]
    assert len(blobs) > 5 * 6
    for n in range(5):
        canary = f"CANARY-{n}-s3cret-pw"
        assert all(canary not in text for text in texts)
        assert all(canary.encode() not in blob for blob in blobs)


class _CountingHandler(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"body { color: red }")

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("target", ["file:///etc/passwd", "{http}/steal.css"])
def test_template_fetching_outside_its_folder_fails_the_record(
    cli: CliRunner, tmp_path: Path, http_server: str, target: str
) -> None:
    templates = tmp_path / "theme"
    templates.mkdir()
    url = target.format(http=http_server)
    (templates / "kit.html.j2").write_text(
        f'<html><head><link rel="stylesheet" href="{url}"></head>'
        "<body><p>{{ account_code }}</p>{{ qr_svg | safe }}</body></html>"
    )
    _CountingHandler.hits = 0
    out = tmp_path / "batch"

    code, _, _ = generate(
        cli, FIXTURES / "accounts.csv", out, "--templates", str(templates)
    )

    assert code == 1
    assert (out / "manifest.jsonl").read_bytes() == b""
    reasons = [str(row["reason"]) for row in rejects(out)]
    assert len(reasons) == 8
    assert all(url in reason for reason in reasons)
    assert _CountingHandler.hits == 0


def _theme_with(tmp_path: Path, extra: str) -> Path:
    """The default theme with `extra` markup at the end of the email's body."""
    templates = Path(shutil.copytree(ROOT / "templates" / "default", tmp_path / "t"))
    html = (templates / "email.html.j2").read_text()
    (templates / "email.html.j2").write_text(html.replace("</body>", extra + "</body>"))
    return templates


@pytest.mark.parametrize(
    ("image", "shown"),
    [
        ("data:image/gif;base64,R0lGODlhAQABAAAAACw=", "a data: URI in <img src>"),
        # Only the scheme and host are quoted: a path may hold anything.
        (
            "{http}/pixel.gif?c={{{{ qr_payload }}}}",
            "http://127.0.0.1/... in <img src>",
        ),
    ],
    ids=["data-uri", "tracking-pixel"],
)
def test_an_email_template_that_loads_more_than_its_cid_image_is_refused(
    cli: CliRunner, tmp_path: Path, http_server: str, image: str, shown: str
) -> None:
    src = image.format(http=http_server)
    templates = _theme_with(tmp_path, f'<img src="{src}" width="1" height="1">')
    _CountingHandler.hits = 0
    out = tmp_path / "batch"

    code, stdout, stderr = generate(
        cli, FIXTURES / "accounts.csv", out, "--templates", str(templates)
    )

    # Every account's email would be refused alike: refused before any work.
    assert (code, stdout) == (2, "")
    assert stderr.startswith("keymail: error: templates ")
    assert shown.format(http=http_server) in stderr
    assert "may load only its own cid: images" in stderr
    assert "KM1:" not in stderr and "Traceback" not in stderr
    assert not out.exists()
    assert _CountingHandler.hits == 0


def test_a_reference_in_some_accounts_emails_only_fails_those_records(
    cli: CliRunner, tmp_path: Path, http_server: str
) -> None:
    pixel = (
        f'{{% if name == "Ada Lovelace" %}}<img src="{http_server}/p.gif">{{% endif %}}'
    )
    templates = _theme_with(tmp_path, pixel)
    _CountingHandler.hits = 0
    out = tmp_path / "batch"

    code, _, _ = generate(
        cli, FIXTURES / "accounts.csv", out, "--templates", str(templates)
    )

    assert code == 1
    assert len(manifest(out)) == 7
    (reject,) = rejects(out)
    assert "http://127.0.0.1/... in <img src>" in str(reject["reason"])
    assert _CountingHandler.hits == 0


@pytest.mark.parametrize("css", ["@import url('{http}/b.css');", "symlink"])
def test_a_kit_css_that_fetches_outside_is_a_usage_error(
    cli: CliRunner, tmp_path: Path, http_server: str, css: str
) -> None:
    templates = tmp_path / "theme"
    templates.mkdir()
    shutil.copy(ROOT / "templates" / "default" / "kit.html.j2", templates)
    if css == "symlink":
        (templates / "kit.css").symlink_to("/etc/passwd")
    else:
        (templates / "kit.css").write_text(css.format(http=http_server))
    _CountingHandler.hits = 0
    out = tmp_path / "batch"

    code, stdout, stderr = generate(
        cli, FIXTURES / "accounts.csv", out, "--templates", str(templates)
    )

    assert (code, stdout) == (2, "")
    assert stderr.startswith("keymail: error: templates ")
    assert "outside the template folder" in stderr
    assert "Traceback" not in stderr
    assert not out.exists()
    assert _CountingHandler.hits == 0


def test_generate_and_send_in_one_run(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "batch"
    with smtp_server() as server:
        code, stdout, stderr = generate(
            cli,
            FIXTURES / "accounts.csv",
            out,
            "--send",
            "--smtp",
            server.url(),
            "--allow-plaintext",
        )
        received = server.handler.ids()

    assert (code, stderr) == (0, "")
    assert "8 generated" in stdout and "sent 8, failed 0" in stdout
    assert received == {row["message_id"]: 1 for row in manifest(out)}


def test_generate_and_send_needs_starttls_as_send_does(
    cli: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "batch"
    with smtp_server() as server:  # plain SMTP, no STARTTLS offered
        code, stdout, stderr = generate(
            cli, FIXTURES / "accounts.csv", out, "--send", "--smtp", server.url()
        )
        received = server.handler.ids()

    assert code == 2
    assert "8 generated" in stdout
    assert "does not offer STARTTLS" in stderr
    assert f"send it later: keymail send {out}" in stderr
    assert not received


def test_smtp_options_without_send_are_refused(cli: CliRunner, tmp_path: Path) -> None:
    code, _, stderr = generate(
        cli, FIXTURES / "accounts.csv", tmp_path / "b", "--smtp", "smtp://127.0.0.1:25"
    )
    assert code == 2
    assert "need --send" in stderr
    assert not (tmp_path / "b").exists()


def test_an_email_owned_by_another_account_rejects_only_that_record(
    cli: CliRunner, tmp_path: Path
) -> None:
    assert generate(cli, FIXTURES / "accounts.csv", tmp_path / "one")[0] == 0
    records = tmp_path / "more.csv"
    ids = write_records(records, 2)
    text = records.read_text().replace("user0@example.com", "ada.lovelace@example.com")
    records.write_text(text)

    code, stdout, _ = generate(cli, records, tmp_path / "two")

    assert code == 1
    assert "1 generated" in stdout
    (reject,) = rejects(tmp_path / "two")
    assert (reject["account_id"], reject["field"]) == (ids[0], "email")
    assert "belongs to account" in str(reject["reason"])


def test_a_resend_goes_only_to_the_registered_address(
    cli: CliRunner, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    assert generate(cli, FIXTURES / "accounts.csv", first)[0] == 0
    row = manifest(first)[0]
    payload = qr_payloads(Image.open(first / str(row["account_id"]) / "qr.png"))[0]
    records = tmp_path / "resend.jsonl"
    record = {"account_id": row["account_id"], "email": "mallory@example.net"}
    records.write_text(json.dumps({**record, "name": "M", "encrypted_key": payload}))

    code, _, _ = generate(cli, records, tmp_path / "again")

    assert code == 1
    (reject,) = rejects(tmp_path / "again")
    assert reject["field"] == "email"
    assert not (tmp_path / "again" / str(row["account_id"])).exists()


def test_a_bad_header_creates_nothing(cli: CliRunner, tmp_path: Path) -> None:
    records = tmp_path / "r.csv"
    records.write_text("account_id,mail,name,password\n")
    code, _, stderr = generate(cli, records, tmp_path / "batch")
    assert code == 2
    assert "unknown column number(s): 2" in stderr
    assert not (tmp_path / "batch").exists()


def test_resume_refuses_other_settings(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "batch"
    assert generate(cli, FIXTURES / "accounts.csv", out, "--limit", "2")[0] == 0
    code, _, stderr = generate(
        cli, FIXTURES / "accounts.csv", out, "--resume", "--product", "Other"
    )
    assert code == 2
    assert "started with another settings" in stderr
    assert generate(cli, FIXTURES / "accounts.csv", out, "--resume")[0] == 0
    assert len(manifest(out)) == 8
