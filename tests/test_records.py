"""Records: streaming reads, one clear reason per bad record, passwords kept out."""

from __future__ import annotations

import csv
import json
import tracemalloc
import uuid
from pathlib import Path

import pytest

from pipeline.batch import row_id
from pipeline.errors import RecordError, UsageError
from pipeline.records import (
    DuplicateFilter,
    SecretsFile,
    SecretsRowError,
    check_header,
    read_rows,
    scratch_db,
    validate,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"
GOOD = {
    "account_id": "0b7e1f0a-5d0c-4a38-9a53-1d1c4b7a2e01",
    "email": "a@example.com",
    "name": "Ann",
    "password": "CANARY-records-pw",
}


def reason(row: dict[str, object], **extra: object) -> tuple[str, str]:
    with pytest.raises(RecordError) as caught:
        validate(7, {**row, **extra})
    assert caught.value.line == 7
    assert "CANARY" not in str(caught.value)
    return caught.value.field, caught.value.reason


def test_a_good_record() -> None:
    record = validate(2, GOOD)
    assert record.account_id == uuid.UUID(GOOD["account_id"])
    assert record.locale == "en"
    assert "CANARY" not in repr(record)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"email": "bob@"}, "email", "not an address: 'bob@'"),
        ({"account_id": "../../etc/passwd"}, "account_id", "not a UUID"),
        ({"account_id": "0B7E1F0A5D0C4A389A531D1C4B7A2E01"}, "account_id", "canonical"),
        ({"password": ""}, "password", "missing"),
        ({"name": "Eve\r\nBcc: x@example.com"}, "name", "control character"),
        ({"name": "Eve\u2028Bcc"}, "name", "line break"),
        ({"email": "a@example.com\n"}, "email", "control character"),
        ({"name": "N" * 201}, "name", "too long: 201"),
        ({"password": "p" * 2000}, "password", "too long"),
        ({"locale": "en_US.UTF-8"}, "locale", "language tag"),
        ({"password": "", "encrypted_key": "KM1:NOTACODE"}, "encrypted_key", "QR"),
        ({"encrypted_key": "ABC"}, "encrypted_key", "not both"),
        ({"name": 5}, "name", "must be text"),
        ({"colour": "blue"}, "colour", "unknown field"),
    ],
)
def test_each_bad_field_is_named_with_a_reason(
    change: dict[str, object], field: str, words: str
) -> None:
    found_field, found_reason = reason(GOOD, **change)
    assert found_field == field
    assert words in found_reason


def test_bad_fixture_rows_are_read_with_their_lines() -> None:
    rows = list(read_rows(FIXTURES / "bad-accounts.csv"))
    lines = [line for line, _ in rows]
    # Line 7 opens a quoted name with a line break in it; line 8, the rest of
    # that name, is read (and refused) as a record of its own.
    assert lines == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    errors = {line: row for line, row in rows if isinstance(row, RecordError)}
    assert errors[7].field == "name" and "line break" in errors[7].reason
    assert errors[8].field == "line"


def test_an_unclosed_quote_loses_no_record_after_it(tmp_path: Path) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3000)]
    path = tmp_path / "r.csv"
    with path.open("w", newline="") as handle:
        handle.write("account_id,email,name,locale,password\n")
        handle.write(f'{ids[0]},a0@example.com,"Ann O,en,CANARY-open-quote\n')
        for n, account_id in enumerate(ids[1:], start=1):
            handle.write(f"{account_id},a{n}@example.com,Name {n},en,pw-{n}-long\r\n")

    rows = list(read_rows(path))

    assert len(rows) == 3000
    first_line, first = rows[0]
    assert first_line == 2 and isinstance(first, RecordError)
    assert first.field == "name" and "CANARY" not in first.reason
    good = [row for _, row in rows[1:]]
    assert all(isinstance(row, dict) for row in good)
    assert [row["account_id"] for row in good if isinstance(row, dict)] == ids[1:]
    assert [line for line, _ in rows[1:]] == list(range(3, 3002))


def test_a_line_longer_than_the_limit_is_refused_alone(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(
        "account_id,email,name,locale,password\n"
        + "x" * 100_000
        + "\n"
        + f"{GOOD['account_id']},a@example.com,Ann,en,pw-123456\n"
    )
    rows = list(read_rows(path))
    assert [line for line, _ in rows] == [2, 3]
    assert isinstance(rows[0][1], RecordError) and "16 KiB" in rows[0][1].reason
    assert isinstance(rows[1][1], dict)


def test_a_password_with_a_line_break_is_refused() -> None:
    field, why = reason(GOOD, password="two\nlines")
    assert field == "password" and "line break" in why


def test_jsonl_reports_broken_lines_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        json.dumps(GOOD).encode()
        + b"\n{not json\n[1, 2]\n\xff\xfe\n\n"
        + json.dumps(GOOD).encode()
    )
    rows = list(read_rows(path))
    assert [line for line, _ in rows] == [1, 2, 3, 4, 6]
    errors = [row for _, row in rows if isinstance(row, RecordError)]
    assert [error.reason.split(":")[0] for error in errors] == [
        "not valid JSON",
        "not a JSON object",
        "not UTF-8 text",
    ]


def test_unknown_csv_column_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("account_id,email,nickname\n")
    with pytest.raises(UsageError, match="unknown column number"):
        list(read_rows(path))


def test_duplicates_by_id_and_by_email(tmp_path: Path) -> None:
    seen = DuplicateFilter(scratch_db(tmp_path / "s.db"))
    seen.check(validate(2, GOOD))
    with pytest.raises(RecordError, match="duplicate of record 2") as caught:
        seen.check(validate(3, {**GOOD, "email": "b@example.com"}))
    assert caught.value.field == "account_id"
    other = {**GOOD, "account_id": str(uuid.uuid4()), "email": "A@example.com"}
    with pytest.raises(RecordError, match="duplicate of record 2") as caught:
        seen.check(validate(4, other))
    assert caught.value.field == "email"


def test_secrets_file_gives_passwords_by_account(tmp_path: Path) -> None:
    secrets = SecretsFile(FIXTURES / "secrets.csv", scratch_db(tmp_path / "s.db"))
    first = next(
        line for line in (FIXTURES / "accounts.jsonl").read_text().splitlines()
    )
    account_id = uuid.UUID(json.loads(first)["account_id"])
    assert secrets.password(account_id) == "COBOL-was-a-good-idea-1959"
    assert secrets.password(uuid.uuid4()) is None
    secrets.close()
    assert b"COBOL" not in (tmp_path / "s.db").read_bytes()


def test_reading_is_a_stream(tmp_path: Path) -> None:
    """Peak memory while reading 20,000 records is that of a few records."""
    path = tmp_path / "big.jsonl"
    with path.open("w") as handle:
        for _ in range(20_000):
            handle.write(json.dumps({**GOOD, "account_id": str(uuid.uuid4())}) + "\n")

    tracemalloc.start()
    count = sum(1 for _ in read_rows(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert count == 20_000
    assert peak < 256 * 1024, peak


def test_a_file_without_header_does_not_echo_its_first_record(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(f"{GOOD['account_id']},a@example.com,Ann,en,CANARY-records-pw\n")
    with pytest.raises(UsageError, match="header line missing") as caught:
        check_header(path)
    assert "CANARY" not in str(caught.value) and "Ann" not in str(caught.value)


def test_short_and_long_rows_are_refused_without_quoting(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(
        "account_id,email,name,locale,password\n"
        f"{GOOD['account_id']},a@example.com,Ann,CANARY-short-pw\n"
        f"{GOOD['account_id']},a@example.com,Ann,en,CANARY-long,pw\n"
    )
    rows = list(read_rows(path))
    reasons = [row.reason for _, row in rows if isinstance(row, RecordError)]
    assert reasons == ["4 values for 5 columns", "6 values for 5 columns"]


@pytest.mark.parametrize("field", ["locale", "email", "account_id"])
def test_password_in_the_wrong_field_is_never_quoted(field: str) -> None:
    found, why = reason(GOOD, **{field: "CANARY-wrong-column", "password": "en"})
    assert found == field
    assert "not shown" in why  # and reason() checked that CANARY is absent


def test_the_records_own_password_is_hidden_when_quoted() -> None:
    found, why = reason(GOOD, locale="en_US.UTF-8", password="en_US.UTF-8")
    assert found == "locale"
    assert why.endswith("(hidden: it is the password)")


def test_bad_bytes_and_hostile_json_reject_only_their_line(tmp_path: Path) -> None:
    csv_path = tmp_path / "r.csv"
    csv_path.write_bytes(
        b"account_id,email,name,password\n"
        + f"{GOOD['account_id']},a@example.com,Ann\xff,pw-123456\n".encode("latin-1")
        + f"{uuid.uuid4()},b@example.com,Bob,pw-123456\n".encode()
    )
    first, second = [row for _, row in read_rows(csv_path)]
    assert isinstance(first, dict) and isinstance(second, dict)
    with pytest.raises(RecordError, match="not valid UTF-8"):
        validate(2, first)
    assert validate(3, second).name == "Bob"

    jsonl = tmp_path / "r.jsonl"
    jsonl.write_bytes(b"[" * 5000 + b"\n" + b'{"n": ' + b"9" * 5000 + b"}\n")
    reasons = [
        row.reason for _, row in read_rows(jsonl) if isinstance(row, RecordError)
    ]
    assert len(reasons) == 2
    assert all(r.startswith("not valid JSON") for r in reasons)


def test_lone_surrogates_and_unicode_local_parts_are_rejected() -> None:
    assert reason(GOOD, name="Ann \udc80")[0] == "name"
    field, why = reason(GOOD, email="jos\u00e9@example.com")
    assert field == "email"
    assert (
        "SMTPUTF8" in why
        or "internationalized" in why.lower()
        or "not an address" in why
    )


def test_secrets_are_taken_exactly_as_written(tmp_path: Path) -> None:
    ids = [uuid.uuid4() for _ in range(4)]
    path = tmp_path / "s.csv"
    path.write_bytes(
        b"account_id,password\n"
        + f'{ids[0]},"correct,horse battery"\n'.encode()
        + f"{ids[1]}, leading and trailing \n".encode()
        + f"{ids[2]},unquoted,comma\n".encode()
        + f"{ids[3]},".encode()
        + b"\xff\xfe\n"
    )
    secrets = SecretsFile(path, scratch_db(tmp_path / "s.db"))
    assert secrets.password(ids[0]) == "correct,horse battery"
    assert secrets.password(ids[1]) == " leading and trailing "
    for broken in ids[2:]:
        with pytest.raises(SecretsRowError, match="quote a password"):
            secrets.password(broken)
    secrets.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("locale", "CANARYxpw7"),
        ("locale", "canaryxpw"),
        ("email", "CANARY@pw"),
        ("account_id", "CANARY8x"),
        ("account_id", "deadbeefCANARY"),
    ],
)
def test_short_passwords_in_the_wrong_column_are_never_quoted(
    field: str, value: str
) -> None:
    found, why = reason(GOOD, **{field: value, "password": "en"})
    assert found == field
    assert value not in why and "(hidden" not in why


def test_a_reject_names_an_account_only_by_a_uuid() -> None:
    assert row_id({"account_id": GOOD["account_id"]}) == GOOD["account_id"]
    assert row_id({"account_id": "CANARY-pw", "password": "CANARY-pw"}) == ""
    assert row_id({"account_id": "../../etc/passwd"}) == ""


def test_a_secret_with_a_line_break_is_refused_not_cut(tmp_path: Path) -> None:
    ids = [uuid.uuid4() for _ in range(2)]
    path = tmp_path / "s.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["account_id", "password"])
        writer.writerow([str(ids[0]), "multi\nline password"])
        writer.writerow([str(ids[1]), "one line password"])
    secrets = SecretsFile(path, scratch_db(tmp_path / "s.db"))
    with pytest.raises(SecretsRowError, match="line break"):
        secrets.password(ids[0])
    assert secrets.password(ids[1]) == "one line password"
    secrets.close()


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_secrets_lines_are_the_lines_the_records_reader_counts(
    tmp_path: Path, end: str, request: pytest.FixtureRequest
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(4)]
    lines = [
        "\ufeffaccount_id,email,name,password",
        f"{ids[0]},a@example.com,A,first-pass-0",
        f"{ids[1]},b@example.com,B," + "x" * 20_000,  # too long to be a record
        "",
        f'{ids[2]},c@example.com,C,"with, comma"',
        f"{ids[3]},d@example.com,D,last-pass-3",
    ]
    path = tmp_path / "records.csv"
    path.write_bytes(end.join(lines).encode() + end.encode())
    secrets = SecretsFile(path, scratch_db(tmp_path / "s.db"), optional=True)
    request.addfinalizer(secrets.close)

    by_line = {line: row for line, row in read_rows(path) if isinstance(row, dict)}

    assert sorted(by_line) == [2, 5, 6]
    for line, row in by_line.items():
        account_id = uuid.UUID(row["account_id"])
        assert secrets.password_on_line(line, account_id) == row["password"]
        assert secrets.password(account_id) == row["password"]
    assert secrets.password(uuid.UUID(ids[1])) is None
    assert secrets.password_on_line(5, uuid.UUID(ids[0])) is None  # not its line
