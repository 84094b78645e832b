"""`keymail unlock` and the password lifecycle, end to end through the CLI."""

from __future__ import annotations

import email.parser
import email.policy
import json
import shutil
import stat
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest
import qrcode
import zxingcpp
from PIL import Image
from typer.testing import CliRunner

from pipeline import keys

from conftest import FAST_KDF, FIXTURES, invoke
from smtp_server import smtp_server

pytestmark = pytest.mark.usefixtures("weak_kdf")
ADA = "ada.lovelace@example.com"
ADA_PASSWORD = "Analytical-Engine-1843!"
JOSE = "jose.garcia@example.org"


class World:
    """A generated batch, its registry, and password files in a temp folder."""

    def __init__(self, cli: CliRunner, root: Path) -> None:
        self.cli = cli
        self.root = root
        self.out = root / "batch"
        self.registry = root / "registry.sqlite3"
        code, _, stderr = invoke(
            cli,
            "generate",
            str(FIXTURES / "accounts.csv"),
            "--out",
            str(self.out),
            "--registry",
            str(self.registry),
            "--kdf",
            FAST_KDF,
        )
        assert (code, stderr) == (0, "")
        self.rows = {
            row["email"]: row
            for row in map(
                json.loads, (self.out / "manifest.jsonl").read_text().splitlines()
            )
        }

    def folder(self, email: str, out: Path | None = None) -> Path:
        return (out or self.out) / self.rows[email]["account_id"]

    def password_file(self, password: str) -> Path:
        path = self.root / f"pw-{abs(hash(password))}.txt"
        path.write_text(password + "\n")
        return path

    def unlock(self, *args: str, password: str = ADA_PASSWORD) -> tuple[int, str, str]:
        return invoke(
            self.cli,
            "unlock",
            "--registry",
            str(self.registry),
            "--password-file",
            str(self.password_file(password)),
            *args,
        )

    def change(self, code_args: list[str], old: str, new: str, out: Path) -> None:
        code, _, stderr = invoke(
            self.cli,
            "change-password",
            "--email",
            ADA,
            *code_args,
            "--old-password-file",
            str(self.password_file(old)),
            "--new-password-file",
            str(self.password_file(new)),
            "--registry",
            str(self.registry),
            "--out",
            str(out),
            "--kdf",
            FAST_KDF,
        )
        assert (code, stderr) == (0, "")

    def reset(self, new: str, out: Path) -> None:
        code, _, stderr = invoke(
            self.cli,
            "reset-password",
            "--email",
            ADA,
            "--new-password-file",
            str(self.password_file(new)),
            "--registry",
            str(self.registry),
            "--out",
            str(out),
            "--kdf",
            FAST_KDF,
        )
        assert (code, stderr) == (0, "")


@pytest.fixture
def world(cli: CliRunner, tmp_path: Path) -> World:
    return World(cli, tmp_path)


def typed_code(folder: Path) -> str:
    payload = zxingcpp.read_barcodes(Image.open(folder / "qr.png"))[0].text
    return keys.format_code(keys.parse_payload(payload))


@pytest.mark.parametrize("source", ["qr", "pdf", "eml", "code"])
def test_unlock_succeeds_from_each_source(world: World, source: str) -> None:
    folder = world.folder(ADA)
    files = {"qr": "qr.png", "pdf": "kit.pdf", "eml": "message.eml"}
    value = typed_code(folder) if source == "code" else str(folder / files[source])

    code, stdout, stderr = world.unlock("--email", ADA, f"--{source}", value)

    assert (code, stderr) == (0, "")
    assert f"key check: {world.rows[ADA]['key_check']}" in stdout


def test_mistyped_code_names_the_group(world: World) -> None:
    groups = typed_code(world.folder(ADA)).split("-")
    groups[6] = groups[6][:2] + ("Z" if groups[6][2] != "Z" else "Y") + groups[6][3:]

    code, stdout, stderr = world.unlock("--email", ADA, "--code", "-".join(groups))

    assert code == 10
    assert stdout == ""
    assert "group 7 looks mistyped" in stderr


def test_code_of_another_account(world: World) -> None:
    code, _, stderr = world.unlock(
        "--email", ADA, "--qr", str(world.folder(JOSE) / "qr.png")
    )
    assert code == 11
    assert "different account" in stderr


def test_wrong_password(world: World) -> None:
    qr = str(world.folder(ADA) / "qr.png")
    code, _, stderr = world.unlock(
        "--email", ADA, "--qr", qr, password="not-her-password"
    )
    assert code == 14
    assert "password does not open this code" in stderr


def test_outdated_then_before_reset(world: World) -> None:
    old_qr = str(world.folder(ADA) / "qr.png")
    world.change(
        ["--qr", old_qr], ADA_PASSWORD, "second-password-22", world.root / "chg"
    )
    new_qr = str(world.folder(ADA, world.root / "chg") / "qr.png")

    code, _, stderr = world.unlock("--email", ADA, "--qr", old_qr)
    assert code == 13
    assert f"issued on {world.rows[ADA]['issued']}" in stderr
    assert (
        world.unlock("--email", ADA, "--qr", new_qr, password="second-password-22")[0]
        == 0
    )

    world.reset("third-password-333", world.root / "rst")
    code, _, stderr = world.unlock(
        "--email", ADA, "--qr", new_qr, password="second-password-22"
    )
    assert code == 12
    assert "was made before a password reset" in stderr
    reset_qr = str(world.folder(ADA, world.root / "rst") / "qr.png")
    assert (
        world.unlock("--email", ADA, "--qr", reset_qr, password="third-password-333")[0]
        == 0
    )


def test_keystore_flow(world: World) -> None:
    store = world.root / "device"
    qr = str(world.folder(ADA) / "qr.png")

    code, stdout, _ = world.unlock("--email", ADA, "--qr", qr, "--keystore", str(store))
    assert code == 0 and "stored in keystore" in stdout
    stored = next(store.iterdir())
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stored.name == f"{world.rows[ADA]['account_id']}.eak"

    code, stdout, _ = world.unlock("--email", ADA, "--keystore", str(store))
    assert (code, "code used: keystore" in stdout) == (0, True)

    world.change(
        ["--keystore", str(store)], ADA_PASSWORD, "new-pass-4444", world.root / "c"
    )
    new_qr = str(world.folder(ADA, world.root / "c") / "qr.png")
    code, stdout, _ = world.unlock(
        "--email",
        ADA,
        "--qr",
        new_qr,
        "--keystore",
        str(store),
        password="new-pass-4444",
    )
    assert code == 0
    assert "code used: given code" in stdout
    code, stdout, _ = world.unlock(
        "--email", ADA, "--keystore", str(store), password="new-pass-4444"
    )
    assert (code, "code used: keystore" in stdout) == (0, True)


def test_resend_from_keystore_needs_no_password(world: World) -> None:
    store = world.root / "device"
    qr = str(world.folder(ADA) / "qr.png")
    assert world.unlock("--email", ADA, "--qr", qr, "--keystore", str(store))[0] == 0

    out = world.root / "resend"
    code, stdout, stderr = invoke(
        world.cli,
        "resend",
        "--email",
        ADA,
        "--keystore",
        str(store),
        "--registry",
        str(world.registry),
        "--out",
        str(out),
    )

    assert (code, stderr) == (0, "")
    assert "resend: account" in stdout
    assert typed_code(world.folder(ADA, out)) == typed_code(world.folder(ADA))


def test_resend_refuses_a_stale_keystore(world: World) -> None:
    store = world.root / "device"
    qr = str(world.folder(ADA) / "qr.png")
    assert world.unlock("--email", ADA, "--qr", qr, "--keystore", str(store))[0] == 0
    stale = world.root / "stale"
    shutil.copytree(store, stale)
    world.change(["--qr", qr], ADA_PASSWORD, "changed-pw-555", world.root / "c")

    code, _, stderr = invoke(
        world.cli,
        "resend",
        "--email",
        ADA,
        "--keystore",
        str(stale),
        "--registry",
        str(world.registry),
        "--out",
        str(world.root / "r"),
    )
    assert code == 13
    assert "newest authentication email" in stderr


def test_unknown_email_is_a_usage_error(world: World) -> None:
    qr = str(world.folder(ADA) / "qr.png")
    code, _, stderr = world.unlock("--email", "nobody@example.com", "--qr", qr)
    assert code == 2
    assert "no account with email 'nobody@example.com'" in stderr


def test_no_password_or_key_in_any_output(world: World) -> None:
    store = world.root / "device"
    qr = str(world.folder(ADA) / "qr.png")
    outputs = [world.unlock("--email", ADA, "--qr", qr, "--keystore", str(store))]
    outputs.append(world.unlock("--email", ADA, "--qr", qr, password="CANARY-wrong-1"))
    world.change(["--qr", qr], ADA_PASSWORD, "CANARY-new-pw-2", world.root / "c")
    eak = keys.parse_payload(zxingcpp.read_barcodes(Image.open(qr))[0].text)
    account_id = uuid.UUID(world.rows[ADA]["account_id"])
    account_key = keys.unlock(eak, account_id, ADA_PASSWORD, None).account_key.hex()

    texts = [text for _, out, err in outputs for text in (out, err)]
    blobs = [
        p.read_bytes()
        for p in world.root.rglob("*")
        if p.is_file() and "pw-" not in p.name
    ]
    for secret in (ADA_PASSWORD, "CANARY-wrong-1", "CANARY-new-pw-2", account_key):
        assert all(secret not in text for text in texts)
        assert all(secret.encode() not in blob for blob in blobs)


def test_unreadable_inputs_are_usage_errors(world: World) -> None:
    not_an_image = world.root / "note.png"
    not_an_image.write_text("hello")
    code, _, stderr = world.unlock("--email", ADA, "--qr", str(not_an_image))
    assert code == 2 and "not an image" in stderr

    bad_password = world.root / "latin1.txt"
    bad_password.write_bytes(b"caf\xe9-CANARY\n")
    qr = str(world.folder(ADA) / "qr.png")
    code, _, stderr = invoke(
        world.cli,
        "unlock",
        "--email",
        ADA,
        "--qr",
        qr,
        "--registry",
        str(world.registry),
        "--password-file",
        str(bad_password),
    )
    assert code == 2 and "not UTF-8 text" in stderr
    assert "CANARY" not in stderr and "xe9" not in stderr

    code, _, stderr = invoke(
        world.cli,
        "unlock",
        "--email",
        ADA,
        "--qr",
        qr,
        "--registry",
        str(world.root / "missing.sqlite3"),
        "--password-file",
        str(bad_password),
    )
    assert code == 2 and "no registry" in stderr


def test_send_refuses_an_email_made_before_a_password_change(world: World) -> None:
    qr = str(world.folder(ADA) / "qr.png")
    world.change(["--qr", qr], ADA_PASSWORD, "changed-pw-777", world.root / "chg")
    # The dry run plans what the real run will do: the outdated email refused.
    dry_code, dry_out, _ = invoke(world.cli, "send", str(world.out), "--dry-run")
    assert dry_code == 1
    assert f"refuse        {ADA}" in dry_out
    assert "dry run: 7 to send, 0 sent before, 1 failed" in dry_out

    with smtp_server() as server:
        code, stdout, _ = invoke(
            world.cli,
            "send",
            str(world.out),
            "--smtp",
            server.url(),
            "--allow-plaintext",
        )
        received = server.handler.ids()
        code_new, _, stderr_new = invoke(
            world.cli,
            "send",
            str(world.root / "chg"),
            "--smtp",
            server.url(),
            "--allow-plaintext",
        )

    assert code == 1
    assert "sent 7, failed 1" in stdout
    assert (
        "outdated: this email holds the code of key generation 1, password epoch 1"
        in stdout
    )
    assert world.rows[ADA]["message_id"] not in received
    assert len(received) == 7
    assert (code_new, stderr_new) == (0, "")


def test_an_eml_in_an_unknown_charset_still_gives_its_code(world: World) -> None:
    raw = (world.folder(ADA) / "message.eml").read_bytes()
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    for part in list(message.walk()):
        if part.get_content_type() == "text/plain":
            part.set_param("charset", "x-no-such-charset")
    for part in message.iter_parts():
        # Keep the text body alone: no image, no kit, so the code must come
        # from the text in its unknown charset.
        if part.get_content_type() == "application/pdf":
            message.get_payload().remove(part)  # type: ignore[union-attr]
    alternative = next(message.iter_parts())
    related = [p for p in alternative.iter_parts()][1]
    alternative.get_payload().remove(related)  # type: ignore[union-attr]
    kinds = [part.get_content_type() for part in message.walk()]
    assert kinds == ["multipart/mixed", "multipart/alternative", "text/plain"]
    text = next(part for part in message.walk() if not part.is_multipart())
    assert isinstance(text, EmailMessage)
    with pytest.raises(LookupError):
        text.get_content()
    eml = world.root / "odd-charset.eml"
    eml.write_bytes(message.as_bytes(policy=email.policy.SMTP))

    code, stdout, stderr = world.unlock("--email", ADA, "--eml", str(eml))

    assert (code, stderr) == (0, "")
    assert f"key check: {world.rows[ADA]['key_check']}" in stdout


def test_a_qr_code_of_another_app_is_named_as_such(world: World) -> None:
    other = world.root / "wifi.png"
    qrcode.make("WIFI:T:WPA;S:cafe;P:hunter2;;").save(other)

    code, _, stderr = world.unlock("--email", ADA, "--qr", str(other))

    assert code == 10
    assert "does not hold a keymail code (it may belong to another app)" in stderr
    assert "version" not in stderr


def test_a_broken_image_in_an_eml_names_the_part(world: World) -> None:
    raw = (world.folder(ADA) / "message.eml").read_bytes()
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    for part in message.walk():
        if part.get_content_type() == "image/png":
            assert isinstance(part, EmailMessage)
            part.set_content(b"not a png", maintype="image", subtype="png", cid="x")
    eml = world.root / "broken-image.eml"
    eml.write_bytes(message.as_bytes(policy=email.policy.SMTP))

    code, _, stderr = world.unlock("--email", ADA, "--eml", str(eml))

    assert code == 2
    assert "the image/png of broken-image.eml is not an image keymail can read" in (
        stderr
    )
    assert "BytesIO" not in stderr


def test_an_image_with_another_apps_qr_code_too_reads_ours(world: World) -> None:
    ours = Image.open(world.folder(ADA) / "qr.png").convert("L")
    theirs = qrcode.make("https://example.com/app", border=4).get_image().convert("L")
    # The other code above ours: zxing-cpp then reports it first.
    both = Image.new("L", (400, theirs.height + ours.height + 40), 255)
    both.paste(theirs, (0, 0))
    both.paste(ours, (0, theirs.height + 40))
    path = world.root / "two-codes.png"
    both.save(path)
    found = [r.text for r in zxingcpp.read_barcodes(both)]
    assert len(found) == 2 and not found[0].startswith("KM1:")

    code, stdout, stderr = world.unlock("--email", ADA, "--qr", str(path))

    assert (code, stderr) == (0, "")
    assert f"key check: {world.rows[ADA]['key_check']}" in stdout
