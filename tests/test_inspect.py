"""`keymail inspect`: an EAK's header from a code or payload, without a password."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from pipeline import keys

from conftest import FIXTURES, invoke

VECTORS = FIXTURES / "vectors"


def vector(name: str) -> dict[str, object]:
    (path,) = VECTORS.glob(f"*-{name}.json")
    data: dict[str, object] = json.loads(path.read_text())
    return data


def test_the_header_of_an_account_code(cli: CliRunner) -> None:
    ok = vector("ok-account-code")
    code = str(ok["input"])
    header = keys.parse_code(code).header

    status, stdout, stderr = invoke(cli, "inspect", code)

    assert (status, stderr) == (0, "")
    shown = {
        line[:19].strip(): line[21:] for line in stdout.splitlines()
    }  # "name" padded to the longest, two spaces, "value"
    fingerprint = keys.account_fingerprint(uuid.UUID(str(ok["account_id"]))).hex()
    assert shown == {
        "version": "1",
        "kdf": "argon2id",
        "kdf memory kib": str(header.kdf_params.memory_kib),
        "kdf iterations": str(header.kdf_params.iterations),
        "kdf lanes": str(header.kdf_params.lanes),
        "account fingerprint": fingerprint,
        "key generation": str(header.key_generation),
        "password epoch": str(header.password_epoch),
        "issued": header.issued.isoformat(),
    }
    assert str(ok["password"]) not in stdout


def test_a_qr_payload_from_stdin_as_json(cli: CliRunner) -> None:
    payload = str(vector("ok-qr-payload")["input"])
    header = keys.parse_payload(payload).header

    status, stdout, _ = invoke(cli, "inspect", "--json", "-", input=payload + "\n")

    assert status == 0
    fields = json.loads(stdout)
    assert fields["version"] == 1 and fields["kdf"] == "argon2id"
    assert fields["key_generation"] == header.key_generation
    assert fields["issued"] == header.issued.isoformat()


def test_a_mistyped_code_names_its_group_and_exits_10(cli: CliRunner) -> None:
    typo = vector("malformed-substitution")
    expected = typo["expected"]
    assert isinstance(expected, dict)

    status, stdout, stderr = invoke(cli, "inspect", str(typo["input"]))

    assert (status, stdout) == (10, "")
    assert f"group {expected['groups'][0]} looks mistyped" in stderr
    assert "keymail: hint: type the code again" in stderr


def test_a_code_above_the_kdf_cap_is_refused_without_a_typing_hint(
    cli: CliRunner,
) -> None:
    status, _, stderr = invoke(cli, "inspect", str(vector("kdf-over-cap")["input"]))

    assert status == 10
    assert "above the cap" in stderr
    assert "hint" not in stderr  # typing it again cannot help


@pytest.mark.parametrize("given", ["", "   "])
def test_no_code_is_a_usage_error(cli: CliRunner, given: str) -> None:
    status, _, stderr = invoke(cli, "inspect", given)
    assert status == 2
    assert "no code given" in stderr
