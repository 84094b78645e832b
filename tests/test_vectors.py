"""Known-answer vectors: every file in fixtures/vectors gives its named outcome."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline import keys
from pipeline.errors import (
    CodeBeforeResetError,
    CodeError,
    DifferentAccountError,
    KdfParametersError,
    MalformedCodeError,
    OutdatedCodeError,
    UnrecognizedCodeError,
    WrongPasswordError,
)

VECTORS = sorted((Path(__file__).parent.parent / "fixtures" / "vectors").glob("*.json"))
OUTCOMES: dict[str, type[CodeError]] = {
    "malformed": MalformedCodeError,
    "kdf_over_cap": KdfParametersError,
    "different_account": DifferentAccountError,
    "before_reset": CodeBeforeResetError,
    "outdated": OutdatedCodeError,
    "wrong_password": WrongPasswordError,
    "unrecognized": UnrecognizedCodeError,
}


def test_there_are_enough_vectors() -> None:
    outcomes = {json.loads(path.read_text())["expected"]["outcome"] for path in VECTORS}
    assert len(VECTORS) >= 12
    assert outcomes == {"ok", *OUTCOMES}


def run(vector: dict[str, Any]) -> keys.Unlocked:
    account_id = uuid.UUID(vector["account_id"])
    state = None
    if vector["state"] is not None:
        raw = vector["state"]
        state = keys.AccountState(
            account_id=account_id,
            key_generation=raw["key_generation"],
            password_epoch=raw["password_epoch"],
            key_check=raw["key_check"],
            issued=dt.date.fromisoformat(raw["issued"]),
        )
    code = keys.parse_any(vector["input"])
    if "eak_hex" in vector:
        assert code.to_bytes().hex() == vector["eak_hex"]
    return keys.unlock(code, account_id, vector["password"], state)


@pytest.mark.parametrize("path", VECTORS, ids=[path.stem for path in VECTORS])
def test_vector(path: Path) -> None:
    vector = json.loads(path.read_text())
    expected = vector["expected"]

    if expected["outcome"] == "ok":
        unlocked = run(vector)
        assert unlocked.account_key.hex() == expected["account_key"]
        assert unlocked.key_check == expected["key_check"]
        return

    with pytest.raises(CodeError) as caught:
        run(vector)
    assert type(caught.value) is OUTCOMES[expected["outcome"]]
    if "groups" in expected:
        assert list(caught.value.groups) == expected["groups"]  # type: ignore[attr-defined]
    if "issued" in expected:
        assert caught.value.issued.isoformat() == expected["issued"]  # type: ignore[attr-defined]
