"""Verify: a fresh batch passes, every tampering is caught by the check named for it."""

from __future__ import annotations

import csv
import dataclasses
import email.policy
import hashlib
import io
import json
import re
import shutil
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from xml.etree import ElementTree

import pytest
import zxingcpp
from PIL import Image
from typer.testing import CliRunner

from pipeline import keys
from pipeline.batch import BatchOptions, BatchSummary, run_batch
from pipeline.keys import _testing
from pipeline.registry import Registry
from pipeline.verify import CHECK_NAMES, degrade, verify_batch

from conftest import FIXTURES, invoke, write_records

RECORDS = FIXTURES / "accounts.csv"


def make_batch(
    records: Path, root: Path, **options: object
) -> tuple[Path, Path, BatchSummary]:
    """Generate `records` into root/made with the cheap test KDF, one worker:
    (batch folder, registry, summary)."""
    out, registry = root / "made", root / "made.sqlite3"
    with _testing.weak_kdf():
        summary = run_batch(
            BatchOptions(
                records=records,
                out=out,
                registry=registry,
                workers=1,
                kdf_params=_testing.FAST,
                **options,  # type: ignore[arg-type]
            )
        )
    return out, registry, summary


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One batch of the 8 fixture accounts, made once: (batch folder, registry)."""
    out, registry, summary = make_batch(RECORDS, tmp_path_factory.mktemp("made"))
    assert summary.generated == 8, summary
    return out, registry


@pytest.fixture
def batch(made: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the made batch, to tamper with."""
    return Path(shutil.copytree(made[0], tmp_path / "batch"))


@pytest.fixture
def registry(made: tuple[Path, Path]) -> Path:
    return made[1]


def manifest(batch: Path) -> list[dict[str, object]]:
    lines = (batch / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def account_ids(batch: Path) -> list[str]:
    return [str(row["account_id"]) for row in manifest(batch)]


def passwords() -> dict[str, str]:
    with RECORDS.open(newline="") as handle:
        return {row["account_id"]: row["password"] for row in csv.DictReader(handle)}


def rehash(batch: Path, account_id: str, name: str) -> None:
    """Rewrite the manifest's SHA-256 of one artifact, as a forger would."""
    rows = manifest(batch)
    for row in rows:
        if row["account_id"] == account_id:
            data = (batch / account_id / name).read_bytes()
            artifacts = row["artifacts"]
            assert isinstance(artifacts, dict)
            artifacts[name]["sha256"] = hashlib.sha256(data).hexdigest()
    text = "".join(json.dumps(row) + "\n" for row in rows)
    (batch / "manifest.jsonl").write_text(text)


def edit_message(
    batch: Path, account_id: str, change: Callable[[EmailMessage], None]
) -> None:
    path = batch / account_id / "message.eml"
    message = BytesParser(policy=email.policy.default).parsebytes(path.read_bytes())
    assert isinstance(message, EmailMessage)
    change(message)
    path.write_bytes(message.as_bytes(policy=email.policy.SMTP))


def forge_message(
    batch: Path, account_id: str, change: Callable[[EmailMessage], None]
) -> None:
    """Edit an account's message.eml and rewrite its hash, as a forger would, so
    only the checks of its content can notice."""
    edit_message(batch, account_id, change)
    rehash(batch, account_id, "message.eml")


def find_part(message: EmailMessage, content_type: str) -> EmailMessage:
    for part in message.walk():
        if part.get_content_type() == content_type:
            assert isinstance(part, EmailMessage)
            return part
    raise AssertionError(content_type)


def verify_cli(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path, *extra: str
) -> tuple[int, str, str, dict[tuple[str, str], str]]:
    """Run `keymail verify` with a JUnit report; return exit, stdout, stderr and
    the failures {(account_id, check): message} read back from the XML."""
    junit = tmp_path / "verify.xml"
    files = sorted(path.name for path in batch.rglob("*"))
    code, out, err = invoke(
        cli,
        "verify",
        str(batch),
        "--registry",
        str(registry),
        "--junit",
        str(junit),
        "--workers",
        "2",
        *extra,
    )
    assert sorted(path.name for path in batch.rglob("*")) == files  # reads only
    suite = ElementTree.parse(junit).getroot()  # noqa: S314  (our own report)
    assert suite.tag == "testsuite"
    failures = {}
    for case in suite.iter("testcase"):
        failure = case.find("failure")
        if failure is not None:
            failures[(case.get("classname", ""), case.get("name", ""))] = failure.get(
                "message", ""
            )
    assert int(suite.get("failures", "-1")) == len(failures)
    return code, out, err, failures


# A fresh batch -------------------------------------------------------------------


def test_a_fresh_batch_passes_every_check(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    report = tmp_path / "verify.json"
    code, out, err, failures = verify_cli(
        cli, batch, registry, tmp_path, "--records", str(RECORDS), "--json", str(report)
    )

    assert (code, err, failures) == (0, "", {})
    assert "8 passed, 0 failed" in out
    data = json.loads(report.read_text())
    assert data["ok"] is True
    assert len(data["results"]) == 8
    for result in data["results"]:
        statuses = {check["name"]: check["status"] for check in result["checks"]}
        assert list(statuses) == list(CHECK_NAMES)
        assert set(statuses.values()) == {"pass"}, statuses


def test_the_junit_report_has_a_testcase_per_account_and_check(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    verify_cli(cli, batch, registry, tmp_path)

    junit = tmp_path / "verify.xml"
    suite = ElementTree.parse(junit).getroot()  # noqa: S314  (our own report)
    cases = [(c.get("classname"), c.get("name")) for c in suite.iter("testcase")]
    expected = [("batch", "batch.finished"), ("batch", "batch.records")]
    expected += [(a, name) for a in account_ids(batch) for name in CHECK_NAMES]
    assert cases == expected
    assert suite.get("tests") == str(len(expected))
    # eak.unwrap without passwords, batch.records without --records
    assert suite.get("skipped") == "9"


def test_the_library_reports_without_printing(
    batch: Path, registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    by_id = passwords()
    report = verify_batch(
        batch,
        registry_path=registry,
        passwords=lambda account_id: by_id.get(str(account_id)),
        workers=1,
    )

    assert report.ok
    assert [a.account_id for a in report.accounts] == account_ids(batch)
    assert all(a.check("eak.unwrap").status == "pass" for a in report.accounts)
    assert capsys.readouterr() == ("", "")


def test_passwords_from_a_secrets_file(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets.csv"
    with secrets.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["account_id", "password"])
        writer.writerows(passwords().items())

    code, _, err, failures = verify_cli(
        cli, batch, registry, tmp_path, "--secrets", str(secrets)
    )

    assert (code, err, failures) == (0, "", {})


def test_a_secrets_file_without_these_accounts_fails_unwrap(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    secrets = tmp_path / "other.csv"
    secrets.write_text("account_id,password\n" + f"{uuid.uuid4()},whatever-pw\n")

    code, _, _, failures = verify_cli(
        cli, batch, registry, tmp_path, "--secrets", str(secrets)
    )

    assert code == 1
    assert {check for _, check in failures} == {"eak.unwrap"}
    assert len(failures) == len(account_ids(batch))


def test_a_bad_secrets_line_fails_only_its_accounts_unwrap(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    by_id = passwords()
    victim = account_ids(batch)[3]
    lines = ["account_id,password"]
    for account_id, password in by_id.items():
        if account_id == victim:
            lines.append(f'{account_id},"CANARY-unclosed {password}')
        else:
            lines.append(f"{account_id},{password}")
    secrets = tmp_path / "secrets.csv"
    secrets.write_text("\n".join(lines) + "\n")

    code, out, err, failures = verify_cli(
        cli, batch, registry, tmp_path, "--secrets", str(secrets)
    )

    assert code == 1
    assert list(failures) == [(victim, "eak.unwrap")]
    assert "its line in secrets.csv" in failures[(victim, "eak.unwrap")]
    assert "Traceback" not in err
    assert "CANARY" not in out + err + (tmp_path / "verify.xml").read_text()


# Tampering: each is caught, by the check named for it ----------------------------


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_byte_flipped_in_the_kit(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    victim = account_ids(batch)[0]
    kit = batch / victim / "kit.pdf"
    flip_byte(kit, len(kit.read_bytes()) // 2)

    code, _, err, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert set(failures) == {
        (victim, "artifacts.sha256"),
        (victim, "artifacts.consistent"),  # the email's copy is not the file
    }
    assert "kit.pdf changed" in failures[(victim, "artifacts.sha256")]
    assert err.startswith("keymail: error: 1 of 8 account(s) failed")


def test_a_byte_flipped_in_the_kit_and_its_hash_rewritten(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    victim = account_ids(batch)[0]
    kit = batch / victim / "kit.pdf"
    flip_byte(kit, len(kit.read_bytes()) // 2)
    rehash(batch, victim, "kit.pdf")

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert (victim, "artifacts.sha256") not in failures
    assert "kit.pdf" in failures[(victim, "artifacts.consistent")]


def test_another_accounts_kit(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    victim, other = account_ids(batch)[:2]
    shutil.copyfile(batch / other / "kit.pdf", batch / victim / "kit.pdf")
    rehash(batch, victim, "kit.pdf")

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    for name in ("qr.pdf", "code.pdf"):
        assert "different account" in failures[(victim, name)]
    assert (victim, "qr.inline") not in failures
    assert (victim, "eak.registry") not in failures


@pytest.mark.parametrize("rehashed", [False, True])
def test_another_accounts_qr_png(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path, rehashed: bool
) -> None:
    victim, other = account_ids(batch)[:2]
    shutil.copyfile(batch / other / "qr.png", batch / victim / "qr.png")
    if rehashed:
        rehash(batch, victim, "qr.png")

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert "different account" in failures[(victim, "qr.png")]
    assert ((victim, "artifacts.sha256") in failures) is not rehashed
    for name in ("qr.inline", "qr.pdf", "code.text", "eak.registry"):
        assert (victim, name) not in failures


def change_one_code_symbol(message: EmailMessage) -> None:
    part = find_part(message, "text/plain")
    text = part.get_content()
    match = re.search(r"^\s+[0-9A-Z]{6}-[0-9A-Z]{2}([0-9A-Z])", text, re.MULTILINE)
    assert match, text
    old = match.group(1)
    new = "7" if old != "7" else "8"
    changed = text[: match.start(1)] + new + text[match.end(1) :]
    part.set_content(changed, subtype="plain", charset="utf-8", cte="quoted-printable")


def test_one_symbol_of_the_code_changed_in_the_text_body(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    victim = account_ids(batch)[3]
    forge_message(batch, victim, change_one_code_symbol)

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert "group 2 looks mistyped" in failures[(victim, "code.text")]
    for name in ("code.html", "code.pdf", "qr.inline", "mime.tree"):
        assert (victim, name) not in failures


def drop_the_kit(message: EmailMessage) -> None:
    parts = message.get_payload()
    assert isinstance(parts, list)
    message.set_payload([p for p in parts if p.get_content_type() != "application/pdf"])


def test_the_kit_removed_from_the_message(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    victim = account_ids(batch)[2]
    forge_message(batch, victim, drop_the_kit)

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert "application/pdf" in failures[(victim, "mime.tree")]
    assert "no PDF attachment" in failures[(victim, "mime.pdf_attached")]
    assert (victim, "qr.pdf") not in failures  # kit.pdf itself is still fine


def test_an_artifact_edited_after_the_manifest(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    victim = account_ids(batch)[5]
    text = batch / victim / "email.txt"
    text.write_text(text.read_text().replace("Hello", "Hi"))

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert "email.txt changed" in failures[(victim, "artifacts.sha256")]
    assert "email.txt" in failures[(victim, "artifacts.consistent")]


@pytest.mark.parametrize(
    ("snippet", "check"),
    [
        ('<img src="data:image/png;base64,iVBORw0KGgo=" alt="">', "html.no_data_uri"),
        ('<img src="https://tracker.example/pixel.gif" alt="">', "html.no_external"),
        ('<div style="background:url(//cdn.example/x.png)"></div>', "html.no_external"),
        ('<img src="cid:missing@example.com" alt="">', "mime.cid"),
        # What a stdlib parser would pass over unless told to look.
        (
            '<!--[if mso]><v:image src="https://t.example/o.gif"/><![endif]-->',
            "html.no_external",
        ),
        (
            '<meta http-equiv="refresh" content="0; URL = https://t.example/">',
            "html.no_external",
        ),
        (
            '<div style="background: u\\72l(https://t.example/e.gif)">.</div>',
            "html.no_external",
        ),
        (
            "<div style='background: image-set(\"https://t.example/s.png\")'>.</div>",
            "html.no_external",
        ),
        (
            '<iframe srcdoc="&lt;img src=&quot;https://t.example/f.gif&quot;&gt;"></iframe>',
            "html.no_external",
        ),
    ],
)
def test_the_html_body_refers_to_nothing_but_cid_and_mailto(
    cli: CliRunner,
    batch: Path,
    registry: Path,
    tmp_path: Path,
    snippet: str,
    check: str,
) -> None:
    victim = account_ids(batch)[1]

    def add_snippet(message: EmailMessage) -> None:
        part = find_part(message, "text/html")
        html = part.get_content().replace("</body>", snippet + "</body>")
        part.set_content(html, subtype="html", charset="utf-8", cte="quoted-printable")

    forge_message(batch, victim, add_snippet)

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert (victim, check) in failures


def transparent(png: bytes) -> bytes:
    """The QR image with its white made transparent, as a careless theme would."""
    grey = Image.open(io.BytesIO(png)).convert("L")
    image = Image.new("RGBA", grey.size, (0, 0, 0, 0))
    image.putalpha(grey.point(lambda level: 255 - level))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_transparent_qr_image_fails_in_dark_mode(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    victim = account_ids(batch)[4]
    clear = transparent((batch / victim / "qr.png").read_bytes())
    (batch / victim / "qr.png").write_bytes(clear)

    def swap_image(message: EmailMessage) -> None:
        part = find_part(message, "image/png")
        cid = part["Content-ID"]
        part.set_content(
            clear, "image", "png", disposition="inline", filename="qr.png", cid=cid
        )

    forge_message(batch, victim, swap_image)
    rehash(batch, victim, "qr.png")

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert (
        "the email's QR image, over a dark ground" in failures[(victim, "qr.dark_mode")]
    )
    assert (victim, "qr.quiet_zone") in failures
    assert (victim, "qr.inline") not in failures  # on white it still reads


def test_an_svg_without_its_white_background(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    victim = account_ids(batch)[6]
    svg = batch / victim / "qr.svg"
    svg.write_text(re.sub(r"<rect [^>]*/>", "", svg.read_text()))
    rehash(batch, victim, "qr.svg")

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert "white rect" in failures[(victim, "qr.svg")]


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (('<path fill="#000000"', '<path opacity="0" fill="#000000"'), "opacity"),
        (("</svg>", '<circle r="99" fill="#fff"/></svg>'), "<circle>"),
        (
            ('<path fill="#000000"', '<path style="display:none" fill="#000000"'),
            "style",
        ),
        (('<path fill="#000000"', '<g fill="#fff"/><path fill="#000000"'), "<g>"),
    ],
)
def test_an_svg_that_could_hide_its_code(
    cli: CliRunner,
    batch: Path,
    registry: Path,
    tmp_path: Path,
    edit: tuple[str, str],
    words: str,
) -> None:
    victim = account_ids(batch)[5]
    svg = batch / victim / "qr.svg"
    text = svg.read_text()
    assert edit[0] in text
    svg.write_text(text.replace(edit[0], edit[1], 1))
    rehash(batch, victim, "qr.svg")

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert words in failures[(victim, "qr.svg")]


def test_a_code_outdated_by_a_password_change(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    victim = account_ids(batch)[7]
    moved = tmp_path / "registry.sqlite3"
    shutil.copyfile(registry, moved)
    with Registry(moved, create=False) as copy:
        entry = copy.get(uuid.UUID(victim))
        assert entry is not None
        # A password change elsewhere: same key, the next password epoch.
        newer = dataclasses.replace(
            entry.state, password_epoch=entry.state.password_epoch + 1
        )
        copy.put(newer, entry.email, entry.name, entry.locale, "test")

    code, _, _, failures = verify_cli(cli, batch, moved, tmp_path)

    assert code == 1
    assert "outdated" in failures[(victim, "eak.registry")]


def test_a_wrong_password_fails_the_unwrap(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    victim = account_ids(batch)[0]
    secrets = tmp_path / "secrets.csv"
    secrets.write_text(f"account_id,password\n{victim},not-the-password\n")

    code, _, _, failures = verify_cli(
        cli, batch, registry, tmp_path, "--secrets", str(secrets)
    )

    assert code == 1
    assert {check for _, check in failures} == {"eak.unwrap"}
    assert failures.pop((victim, "eak.unwrap")).startswith("wrong password")
    assert all("hold none for this account" in why for why in failures.values())


# Secrets never leave --------------------------------------------------------------


def decoded_payload(png: Path) -> str:
    found = zxingcpp.read_barcodes(Image.open(png))
    assert len(found) == 1
    return found[0].text


def test_no_password_account_key_or_code_in_any_output(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    # A mix of passing, failing and wrongly-unwrapped accounts, with debug logs.
    ids = account_ids(batch)
    edit_message(batch, ids[3], change_one_code_symbol)
    secrets = tmp_path / "secrets.csv"
    known = passwords()
    with secrets.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["account_id", "password"])
        writer.writerow([ids[0], known[ids[1]]])  # the first row of an account counts
        writer.writerows(known.items())
    report = tmp_path / "verify.json"

    code, out, err, _ = verify_cli(
        cli, batch, registry, tmp_path, "--secrets", str(secrets), "--json", str(report)
    )
    _, debug_out, debug_err = invoke(
        cli, "-vv", "verify", str(batch), "--registry", str(registry), "--records",
        str(RECORDS), "--workers", "1",
    )  # fmt: skip

    assert code == 1
    junit = (tmp_path / "verify.xml").read_text()
    outputs = "\n".join([out, err, debug_out, debug_err, report.read_text(), junit])
    assert "wrong password" in junit
    with Registry(registry, create=False) as store:
        for account_id, password in passwords().items():
            payload = decoded_payload(batch / account_id / "qr.png")
            eak = keys.parse_payload(payload)
            entry = store.get(uuid.UUID(account_id))
            assert entry is not None
            unlocked = keys.unlock(eak, uuid.UUID(account_id), password, entry.state)
            for secret in (
                password,
                unlocked.account_key.hex(),
                unlocked.account_key.hex().upper(),
                payload,
                payload[4:],
                keys.format_code(eak),
            ):
                assert secret not in outputs


# Usage errors ------------------------------------------------------------------------


def test_usage_errors_exit_2(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database, just bytes" * 100)
    cases = [
        (tmp_path / "missing", registry, "no batch folder"),
        (empty, registry, "no manifest.jsonl"),
        (batch, tmp_path / "none.sqlite3", "no registry"),
        (batch, garbage, "cannot open the registry"),
    ]
    for folder, store, words in cases:
        code, out, err = invoke(
            cli, "verify", str(folder), "--registry", str(store), "--workers", "1"
        )
        assert (code, out) == (2, "")
        assert err.startswith("keymail: error: ")
        assert words in err


# Pieces ------------------------------------------------------------------------------


def test_print_and_scan_is_reproducible() -> None:
    page = Image.effect_mandelbrot((120, 90), (-2, -1.2, 1, 1.2), 40).convert("L")

    first = degrade.print_and_scan(page, "seed-a").tobytes()

    assert degrade.print_and_scan(page, "seed-a").tobytes() == first
    assert degrade.print_and_scan(page, "seed-b").tobytes() != first


def test_a_crafted_manifest_line_is_a_failure_not_a_crash(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    rows = manifest(batch)
    forged = {**rows[0], "account_id": "../../etc", "artifacts": {"kit.pdf": 5}}
    text = "".join(json.dumps(row) + "\n" for row in [*rows, forged])
    (batch / "manifest.jsonl").write_text(text)

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert "not a UUID" in failures[("../../etc", "manifest.row")]
    assert {account for account, _ in failures} == {"../../etc"}


def test_an_empty_manifest_verifies_nothing_and_fails(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    (batch / "manifest.jsonl").write_text("")

    code, out, err, failures = verify_cli(cli, batch, registry, tmp_path)

    assert (code, failures) == (1, {})
    assert "verified 0 account(s)" in out
    assert "lists no account" in err


def test_a_batch_whose_run_did_not_finish_fails_batch_finished(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    meta = json.loads((batch / "batch.json").read_text())
    del meta["finished"]
    (batch / "batch.json").write_text(json.dumps(meta))

    code, _, err, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert list(failures) == [("batch", "batch.finished")]
    assert "keymail generate --resume" in failures[("batch", "batch.finished")]
    assert "batch: batch.finished:" in err


def test_a_record_missing_from_the_batch_fails_batch_records(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    rows = manifest(batch)
    del rows[5]  # the sixth record: line 7 of the CSV, after the header
    (batch / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    code, _, err, failures = verify_cli(
        cli, batch, registry, tmp_path, "--records", str(RECORDS)
    )

    assert code == 1
    assert list(failures) == [("batch", "batch.records")]
    reason = failures[("batch", "batch.records")]
    assert "1 record(s) of accounts.csv are neither in the manifest" in reason
    assert "(line 7)" in reason
    assert "batch: batch.records:" in err


def test_rejected_records_count_as_accounted_for(tmp_path: Path) -> None:
    bad = FIXTURES / "bad-accounts.csv"
    out, registry, summary = make_batch(bad, tmp_path)
    assert summary.rejected > 0

    report = verify_batch(out, registry_path=registry, records=bad, workers=1)

    assert report.ok
    statuses = {check.name: check.status for check in report.batch_checks}
    assert statuses == {"batch.finished": "pass", "batch.records": "pass"}


def test_a_batch_cut_short_by_limit_says_so(tmp_path: Path) -> None:
    out, registry, _ = make_batch(RECORDS, tmp_path, limit=3)

    report = verify_batch(out, registry_path=registry, records=RECORDS, workers=1)

    assert not report.ok
    finished, records = report.batch_checks
    assert finished.status == "pass"
    assert records.status == "fail"
    assert "5 record(s)" in records.reason
    assert "--limit 3" in records.reason


def _verify_records(
    cli: CliRunner, out: Path, registry: Path, tmp_path: Path, *extra: str
) -> tuple[int, str, dict[tuple[str, str], str]]:
    code, _, err, failures = verify_cli(cli, out, registry, tmp_path, *extra)
    return code, err, failures


def test_records_without_passwords_verify_with_their_secrets(
    cli: CliRunner, tmp_path: Path
) -> None:
    ids = write_records(tmp_path / "full.csv", 3)
    with (tmp_path / "full.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    records, secrets = tmp_path / "records.csv", tmp_path / "secrets.csv"
    with records.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["account_id", "email", "name"])
        writer.writerows([r["account_id"], r["email"], r["name"]] for r in rows)
    with secrets.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["account_id", "password"])
        writer.writerows([r["account_id"], r["password"]] for r in rows)
    out, registry, _ = make_batch(records, tmp_path, secrets=secrets)

    alone = _verify_records(cli, out, registry, tmp_path, "--records", str(records))
    both = _verify_records(
        cli,
        out,
        registry,
        tmp_path,
        "--records",
        str(records),
        "--secrets",
        str(secrets),
    )

    assert alone == (0, "", {})  # eak.unwrap skipped: no password to try
    assert both == (0, "", {})
    assert len(manifest(out)) == len(ids)


def test_records_with_cr_line_endings_and_upper_case_ids(
    cli: CliRunner, tmp_path: Path
) -> None:
    plain = tmp_path / "plain.csv"
    write_records(plain, 3)
    lines = plain.read_text().splitlines()
    shouted = [lines[0]] + [
        line.split(",", 1)[0].upper() + "," + line.split(",", 1)[1]
        for line in lines[1:]
    ]
    records = tmp_path / "cr.csv"
    records.write_bytes("\r".join(shouted).encode() + b"\r")
    out, registry, _ = make_batch(records, tmp_path)

    result = _verify_records(cli, out, registry, tmp_path, "--records", str(records))

    assert result == (0, "", {})
    assert len(manifest(out)) == 3


def test_a_duplicate_record_is_verified_with_the_password_generate_used(
    cli: CliRunner, tmp_path: Path
) -> None:
    records = FIXTURES / "bad-accounts.csv"
    out, registry, _ = make_batch(records, tmp_path)

    code, err, failures = _verify_records(
        cli, out, registry, tmp_path, "--records", str(records)
    )

    assert (code, err, failures) == (0, "", {})
    report = verify_batch(out, registry_path=registry, records=records, workers=1)
    assert report.ok


def test_the_password_is_read_from_the_line_the_account_wasmake_batch(
    cli: CliRunner, tmp_path: Path
) -> None:
    account = str(uuid.uuid4())
    records = tmp_path / "records.csv"
    records.write_text(
        "account_id,email,name,password\n"
        f"{account},not-an-email,Typo First,OldTypo-pass-1\n"  # rejected
        f"{account},a@example.com,Right Second,Correct-horse-9\n"  # generated
    )
    out, registry, _ = make_batch(records, tmp_path)
    assert [row["line"] for row in manifest(out)] == [3]

    code, err, failures = _verify_records(
        cli, out, registry, tmp_path, "--records", str(records)
    )

    assert (code, err, failures) == (0, "", {})


# Each remaining check, made to fail on its own ------------------------------------


def _set_header(name: str, value: str) -> Callable[[EmailMessage], None]:
    def change(message: EmailMessage) -> None:
        del message[name]
        message[name] = value

    return change


def _pad_html(message: EmailMessage) -> None:
    html = find_part(message, "text/html")
    padding = "<!-- " + "x" * 95_000 + " -->"
    html.set_content(html.get_content() + padding, subtype="html")


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (_set_header("To", "someone.else@example.com"), "mime.to"),
        (_set_header("Message-ID", "<other@example.com>"), "mime.message_id"),
        (_set_header("Subject", "A different subject"), "mime.subject"),
        (_pad_html, "html.size"),
    ],
    ids=["to", "message-id", "subject", "html-size"],
)
def test_a_changed_message_fails_its_own_check(
    cli: CliRunner,
    batch: Path,
    registry: Path,
    tmp_path: Path,
    change: Callable[[EmailMessage], None],
    check: str,
) -> None:
    victim = account_ids(batch)[2]
    forge_message(batch, victim, change)

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert (victim, check) in failures


def test_a_manifest_that_disagrees_with_the_code_fails_eak_manifest(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    rows = manifest(batch)
    victim = str(rows[4]["account_id"])
    rows[4]["password_epoch"] = 7
    (batch / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert (victim, "eak.manifest") in failures


def test_a_missing_artifact_fails_artifacts_present(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    victim = account_ids(batch)[1]
    (batch / victim / "qr.svg").unlink()

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert (victim, "artifacts.present") in failures


def test_a_two_page_kit_fails_pdf_pages(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    import pypdfium2

    ids = account_ids(batch)
    victim, other = ids[3], ids[4]
    merged = pypdfium2.PdfDocument(batch / victim / "kit.pdf")
    merged.import_pages(pypdfium2.PdfDocument(batch / other / "kit.pdf"))
    merged.save(batch / victim / "kit.pdf")
    merged.close()
    rehash(batch, victim, "kit.pdf")

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert (victim, "pdf.pages") in failures


def test_a_kit_qr_printed_too_small_fails_module_size_and_print_scan(
    cli: CliRunner, tmp_path: Path
) -> None:
    from pipeline.render.env import DEFAULT_TEMPLATES

    theme = Path(shutil.copytree(DEFAULT_TEMPLATES, tmp_path / "theme"))
    css = theme / "kit.css"
    css.write_text(css.read_text().replace("62mm", "14mm"))  # 49 modules: 0.29 mm
    out, registry, summary = make_batch(RECORDS, tmp_path, templates=theme, limit=1)
    assert summary.generated == 1

    code, _, _, failures = verify_cli(cli, out, registry, tmp_path)

    assert code == 1
    failed = {check for _, check in failures}
    assert {"qr.module_size", "qr.print_scan"} <= failed


def _unknown_charset(message: EmailMessage) -> None:
    text = find_part(message, "text/plain")
    text.set_param("charset", "x-no-such-charset")


def test_a_body_in_an_unknown_charset_fails_only_the_checks_that_read_it(
    cli: CliRunner, batch: Path, registry: Path, tmp_path: Path
) -> None:
    victim = account_ids(batch)[1]
    forge_message(batch, victim, _unknown_charset)

    code, _, _, failures = verify_cli(cli, batch, registry, tmp_path)

    assert code == 1
    assert {account for account, _ in failures} == {victim}
    reasons = set(failures.values())
    assert reasons == {
        "message.eml: the text/plain part has an unknown charset 'x-no-such-charset'"
    }
    assert {check for _, check in failures} == {"artifacts.consistent", "code.text"}
