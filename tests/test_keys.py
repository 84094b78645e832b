"""The EAK library: round trips, typo location, diagnoses, bounds and secrecy."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import keys
from pipeline.errors import (
    CodeBeforeResetError,
    CodeError,
    DifferentAccountError,
    KdfParametersError,
    KeymailError,
    MalformedCodeError,
    OutdatedCodeError,
    UnrecognizedCodeError,
    UsageError,
    WeakKdfParametersError,
    WrongPasswordError,
)
from pipeline.keys import _testing, kdf
from pipeline.keys import code as account_code
from pipeline.keys import eak as eak_format
from pipeline.keys.eak import EAK_SIZE, Eak, Header

ISSUED = dt.date(2026, 12, 3)
LATER = dt.date(2026, 12, 20)
FAST = _testing.FAST


@pytest.fixture(autouse=True)
def _weak_kdf() -> Iterator[None]:
    with _testing.weak_kdf():
        yield


def make(password: str = "pw-one", account_id: uuid.UUID | None = None) -> keys.Issued:
    return keys.create(account_id or uuid.uuid4(), password, issued=ISSUED, params=FAST)


headers = st.builds(
    Header,
    version=st.just(1),
    kdf_id=st.just(1),
    kdf_params=st.builds(
        keys.KdfParams,
        memory_kib=st.integers(16, kdf.CAP.memory_kib),
        iterations=st.integers(1, 10),
        lanes=st.integers(1, 2),
    ),
    fingerprint=st.binary(min_size=4, max_size=4),
    key_generation=st.integers(1, 0xFFFF),
    password_epoch=st.integers(1, 0xFFFF),
    issued=st.dates(dt.date(1970, 1, 1), dt.date(2149, 6, 6)),
    salt=st.binary(min_size=16, max_size=16),
)
eaks = st.builds(Eak, header=headers, ciphertext=st.binary(min_size=48, max_size=48))


# Round trips ---------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    password=st.text(min_size=1, max_size=40), key=st.binary(min_size=32, max_size=32)
)
def test_wrap_unwrap_round_trip(password: str, key: bytes) -> None:
    account_id = uuid.uuid4()
    issued = keys.create(
        account_id, password, issued=ISSUED, params=FAST, _account_key=key
    )

    unlocked = keys.unlock(issued.eak, account_id, password, issued.state)

    assert unlocked.account_key == key
    assert unlocked.key_check == issued.state.key_check == keys.key_check(key)


@settings(max_examples=200)
@given(eak=eaks)
def test_bytes_round_trip(eak: Eak) -> None:
    assert Eak.from_bytes(eak.to_bytes()) == eak
    assert len(eak.to_bytes()) == EAK_SIZE


def loosen(text: str, data: st.DataObject) -> str:
    """Retype a code the way a person might: case, spacing, look-alikes."""
    symbols = text.replace("-", "")
    size = len(symbols)
    choices = data.draw(st.lists(st.integers(0, 99), min_size=size, max_size=size))
    out = []
    for symbol, choice in zip(symbols, choices, strict=True):
        if symbol == "1":
            symbol = "1IiLl"[choice % 5]
        elif symbol == "0":
            symbol = "0Oo"[choice % 3]
        elif choice % 2:
            symbol = symbol.lower()
        out.append(symbol + ["", "", " ", "-", "  ", "\n"][choice % 6])
    return "".join(out)


@settings(max_examples=200)
@given(eak=eaks, data=st.data())
def test_parse_format_is_identity_under_loose_typing(
    eak: Eak, data: st.DataObject
) -> None:
    code = keys.format_code(eak)

    assert keys.parse_code(code) == eak
    assert keys.parse_code(loosen(code, data)) == eak
    assert keys.parse_any(keys.format_payload(eak)) == eak
    assert keys.parse_any(keys.format_payload(eak).lower()) == eak


def test_code_shape() -> None:
    groups = keys.format_groups(make().eak)
    assert len(groups) == account_code.GROUPS == 27
    assert {len(group) for group in groups} == {6}
    assert set("".join(groups)) <= set(account_code.ALPHABET)


# Typos: detected and located ---------------------------------------------


def substitutions(symbols: str) -> Iterator[tuple[int, str]]:
    for index, symbol in enumerate(symbols):
        for other in account_code.ALPHABET:
            if other != symbol:
                yield index, symbols[:index] + other + symbols[index + 1 :]


def group_of(index: int) -> int:
    return index // account_code.GROUP_SIZE + 1


def test_every_substitution_is_located_exhaustively() -> None:
    symbols = keys.format_code(make().eak).replace("-", "")
    count = 0
    for index, typo in substitutions(symbols):
        with pytest.raises(MalformedCodeError) as caught:
            keys.parse_code(typo)
        assert caught.value.groups == (group_of(index),), (index, typo)
        count += 1
    assert count == 162 * 31


def test_every_adjacent_transposition_is_located_exhaustively() -> None:
    symbols = keys.format_code(make().eak).replace("-", "")
    checked = 0
    for index in range(len(symbols) - 1):
        a, b = symbols[index], symbols[index + 1]
        if a == b:
            continue
        typo = symbols[:index] + b + a + symbols[index + 2 :]
        with pytest.raises(MalformedCodeError) as caught:
            keys.parse_code(typo)
        expected = tuple(sorted({group_of(index), group_of(index + 1)}))
        assert caught.value.groups == expected, (index, typo)
        checked += 1
    assert checked > 140


@settings(max_examples=300)
@given(eak=eaks, data=st.data())
def test_random_typos_are_located(eak: Eak, data: st.DataObject) -> None:
    symbols = keys.format_code(eak).replace("-", "")
    index = data.draw(st.integers(0, len(symbols) - 1))
    if data.draw(st.booleans()) and index < len(symbols) - 1:
        if symbols[index] == symbols[index + 1]:
            return
        typo = (
            symbols[:index] + symbols[index + 1] + symbols[index] + symbols[index + 2 :]
        )
        expected = tuple(sorted({group_of(index), group_of(index + 1)}))
    else:
        other = data.draw(
            st.sampled_from(account_code.ALPHABET).filter(lambda s: s != symbols[index])
        )
        typo = symbols[:index] + other + symbols[index + 1 :]
        expected = (group_of(index),)

    with pytest.raises(MalformedCodeError) as caught:
        keys.parse_code(typo)
    assert caught.value.groups == expected
    assert f"group {expected[0]}" in str(
        caught.value
    ) or f"groups {expected[0]}" in str(caught.value)


def test_missing_symbol_names_the_group() -> None:
    symbols = keys.format_code(make().eak).replace("-", "")
    typo = symbols[:50] + symbols[51:]
    with pytest.raises(MalformedCodeError, match="161 characters") as caught:
        keys.parse_code(typo)
    assert caught.value.groups == (group_of(50),)


@pytest.mark.parametrize("group", [1, 4, 13, 27])
@pytest.mark.parametrize("change", ["extra", "missing"])
def test_a_group_typed_too_long_or_short_is_named(group: int, change: str) -> None:
    groups = list(keys.format_groups(make().eak))
    typed = groups[group - 1]
    groups[group - 1] = typed + "7" if change == "extra" else typed[1:]
    with pytest.raises(MalformedCodeError, match=f"near group {group}:") as caught:
        keys.parse_code("-".join(groups))
    assert caught.value.groups == (group,)
    # Typed with spaces instead of hyphens, the group is found just the same.
    with pytest.raises(MalformedCodeError, match=f"near group {group}:"):
        keys.parse_code(" ".join(groups))


def test_a_missing_symbol_is_placed_past_groups_typed_together() -> None:
    groups = list(keys.format_groups(make().eak))
    groups[19] = groups[19][:3] + groups[19][4:]  # a symbol of group 20 dropped
    typed = [groups[0] + groups[1], *groups[2:]]  # groups 1 and 2 run together
    with pytest.raises(MalformedCodeError, match="near group 20:") as caught:
        keys.parse_code(" ".join(typed))
    assert caught.value.groups == (20,)

    both = [groups[18] + groups[19]]  # the short group run into the one before
    with pytest.raises(MalformedCodeError, match="near group 20:"):
        keys.parse_code("-".join([*groups[:18], *both, *groups[20:]]))


def test_swapped_groups_fail_the_whole_code_check() -> None:
    groups = list(keys.format_groups(make().eak))
    groups[0], groups[1] = groups[1], groups[0]
    with pytest.raises(MalformedCodeError, match="whole-code check"):
        keys.parse_code("-".join(groups))


def test_letter_u_is_refused_with_its_group() -> None:
    symbols = keys.format_code(make().eak).replace("-", "")
    with pytest.raises(MalformedCodeError, match="'U' in group 3") as caught:
        keys.parse_code(symbols[:14] + "U" + symbols[15:])
    assert caught.value.groups == (3,)


@pytest.mark.parametrize("text", ["", "   ", "KM1:", "KM1:ABC", "KM9:" + "0" * 132])
def test_junk_is_malformed(text: str) -> None:
    with pytest.raises(MalformedCodeError):
        keys.parse_any(text)


# Every single-bit flip of an EAK is refused ---------------------------------


def test_every_bit_flip_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    account_id = uuid.uuid4()
    issued = make("pw-flip", account_id)
    good = issued.eak.to_bytes()

    # A flip of a high memory bit could ask for up to 1 GiB legitimately under
    # the cap; the KDF is replaced by a cheap stand-in that gives the real key
    # only for the real parameters, so any other parameters wrap differently.
    real_derive = kdf.derive_wrapping_key

    def cheap(password: str, salt: bytes, params: keys.KdfParams) -> bytes:
        if params != FAST:
            return bytes(32)
        return real_derive(password, salt, params)

    monkeypatch.setattr(kdf, "derive_wrapping_key", cheap)
    refused = 0
    for bit in range(len(good) * 8):
        flipped = bytearray(good)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CodeError):
            code = Eak.from_bytes(bytes(flipped))
            keys.unlock(code, account_id, "pw-flip", issued.state)
        refused += 1
    assert refused == EAK_SIZE * 8


# The diagnoses, each for its case and only for it ---------------------------


def lifecycle() -> dict[str, object]:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    first = keys.create(alice, "old-pw", issued=ISSUED, params=FAST)
    changed = keys.change_password(
        first.eak, alice, "old-pw", "new-pw", first.state, issued=LATER, params=FAST
    )
    reset = keys.reset_password(
        alice, "reset-pw", changed.state, issued=LATER, params=FAST
    )
    return {
        "alice": alice,
        "bob": bob,
        "first": first,
        "changed": changed,
        "reset": reset,
    }


def test_change_password_keeps_the_key_and_bumps_the_epoch() -> None:
    world = lifecycle()
    first, changed = world["first"], world["changed"]
    assert isinstance(first, keys.Issued) and isinstance(changed, keys.Issued)
    assert changed.account_key == first.account_key
    assert (changed.state.key_generation, changed.state.password_epoch) == (1, 2)
    assert changed.eak.header.salt != first.eak.header.salt


def test_reset_replaces_the_key_and_bumps_the_generation() -> None:
    world = lifecycle()
    reset, changed = world["reset"], world["changed"]
    assert isinstance(reset, keys.Issued) and isinstance(changed, keys.Issued)
    assert reset.account_key != changed.account_key
    assert (reset.state.key_generation, reset.state.password_epoch) == (2, 1)


def diagnose(
    code: Eak, account_id: uuid.UUID, password: str, state: keys.AccountState
) -> str:
    try:
        keys.unlock(code, account_id, password, state)
    except CodeError as exc:
        return type(exc).__name__
    return "ok"


def test_each_diagnosis_for_its_case_only() -> None:
    w = lifecycle()
    alice, bob = w["alice"], w["bob"]
    first, changed, reset = w["first"], w["changed"], w["reset"]
    assert isinstance(alice, uuid.UUID) and isinstance(bob, uuid.UUID)
    assert isinstance(first, keys.Issued) and isinstance(changed, keys.Issued)
    assert isinstance(reset, keys.Issued)
    bob_state = keys.create(bob, "b", issued=ISSUED, params=FAST).state

    cases = {
        # name: (code, account, password, state) -> diagnosis
        "current": (reset.eak, alice, "reset-pw", reset.state, "ok"),
        "other account": (first.eak, bob, "old-pw", bob_state, "DifferentAccountError"),
        "before reset": (
            changed.eak,
            alice,
            "new-pw",
            reset.state,
            "CodeBeforeResetError",
        ),
        "outdated": (first.eak, alice, "old-pw", changed.state, "OutdatedCodeError"),
        "wrong password": (reset.eak, alice, "nope", reset.state, "WrongPasswordError"),
        "newer than registry": (
            reset.eak,
            alice,
            "reset-pw",
            changed.state,
            "UnrecognizedCodeError",
        ),
    }
    found = {name: diagnose(*case[:4]) for name, case in cases.items()}  # type: ignore[arg-type]
    assert found == {name: case[4] for name, case in cases.items()}


def test_diagnoses_come_in_the_documented_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where two causes hold at once, the earlier diagnosis wins, and 2 to 4
    are made from the header alone: the KDF never runs for them."""
    w = lifecycle()
    alice, bob = w["alice"], w["bob"]
    first, changed, reset = w["first"], w["changed"], w["reset"]
    assert isinstance(alice, uuid.UUID) and isinstance(bob, uuid.UUID)
    assert isinstance(first, keys.Issued) and isinstance(changed, keys.Issued)
    assert isinstance(reset, keys.Issued)
    bob_first = keys.create(bob, "b", issued=ISSUED, params=FAST).state
    bob_reset = keys.reset_password(
        bob, "b2", bob_first, issued=LATER, params=FAST
    ).state

    def no_kdf(*_: object) -> bytes:
        raise AssertionError("the KDF ran before a header diagnosis")

    monkeypatch.setattr(kdf, "derive_wrapping_key", no_kdf)
    cases = {
        # Alice's oldest code, for Bob after his reset: a different account
        # before anything else, though it is also from before a reset.
        "other account, older generation": (first.eak, bob, "b2", bob_reset),
        # A code from before the reset that is also outdated within its own
        # generation, with a wrong password: before reset.
        "before reset, outdated, wrong password": (first.eak, alice, "x", reset.state),
        "before reset, wrong password": (changed.eak, alice, "x", reset.state),
        "outdated, wrong password": (first.eak, alice, "x", changed.state),
    }
    found = {name: diagnose(*case) for name, case in cases.items()}
    assert found == {
        "other account, older generation": "DifferentAccountError",
        "before reset, outdated, wrong password": "CodeBeforeResetError",
        "before reset, wrong password": "CodeBeforeResetError",
        "outdated, wrong password": "OutdatedCodeError",
    }


def test_a_state_of_another_account_is_refused() -> None:
    issued = make("pw")
    other = make("pw", uuid.uuid4())
    with pytest.raises(UsageError, match="another account's"):
        keys.unlock(issued.eak, issued.state.account_id, "pw", other.state)


def test_unwrap_refuses_parameters_above_the_cap_of_a_built_eak() -> None:
    issued = make("pw")
    over = kdf.KdfParams(memory_kib=4 * 1024 * 1024, iterations=1, lanes=1)
    header = dataclasses.replace(issued.eak.header, kdf_params=over)
    built = dataclasses.replace(issued.eak, header=header)
    with pytest.raises(KdfParametersError, match="above the cap"):
        eak_format.unwrap(built, "pw", issued.state.account_id)


def test_outdated_names_the_issue_date() -> None:
    w = lifecycle()
    first, changed = w["first"], w["changed"]
    assert isinstance(first, keys.Issued) and isinstance(changed, keys.Issued)
    with pytest.raises(OutdatedCodeError, match=str(ISSUED)) as caught:
        keys.unlock(first.eak, first.state.account_id, "old-pw", changed.state)
    assert caught.value.issued == ISSUED
    assert caught.value.exit_code == 13


def test_key_check_mismatch_is_unrecognized() -> None:
    issued = make("pw")
    other = keys.create(issued.state.account_id, "pw", issued=ISSUED, params=FAST)
    with pytest.raises(UnrecognizedCodeError):
        keys.unlock(issued.eak, issued.state.account_id, "pw", other.state)


def test_exit_codes_are_distinct() -> None:
    classes = [
        MalformedCodeError,
        DifferentAccountError,
        CodeBeforeResetError,
        OutdatedCodeError,
        WrongPasswordError,
        UnrecognizedCodeError,
    ]
    assert [cls.exit_code for cls in classes] == [10, 11, 12, 13, 14, 15]


# KDF bounds -------------------------------------------------------------------


def test_wrapping_refuses_below_the_minimum() -> None:
    with kdf_floor(kdf.MINIMUM), pytest.raises(WeakKdfParametersError, match="below"):
        keys.create(
            uuid.uuid4(), "pw", issued=ISSUED, params=keys.KdfParams(19 * 1024, 1, 1)
        )


def kdf_floor(params: keys.KdfParams) -> AbstractContextManager[keys.KdfParams]:
    return _testing.weak_kdf(params)


def test_default_and_minimum_are_the_documented_values() -> None:
    assert keys.DEFAULT == keys.KdfParams(65536, 3, 4)
    assert keys.MINIMUM == keys.KdfParams(19456, 2, 1)
    assert kdf.current_floor() == FAST  # inside the test seam
    with kdf_floor(kdf.MINIMUM):
        keys.create(uuid.uuid4(), "pw", issued=ISSUED, params=keys.MINIMUM)


def test_over_cap_is_refused_before_any_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    issued = make("pw")
    raw = bytearray(issued.eak.to_bytes())
    raw[2:6] = (4 * 1024 * 1024).to_bytes(4, "big")  # 4 GiB of memory

    def forbidden(*args: object) -> bytes:
        raise AssertionError("the KDF ran for a code over the cap")

    monkeypatch.setattr(kdf, "derive_wrapping_key", forbidden)
    text = keys.format_code(Eak(header=_header(raw), ciphertext=bytes(raw[34:])))
    with pytest.raises(KdfParametersError, match="above the cap") as caught:
        keys.unlock(keys.parse_code(text), issued.state.account_id, "pw", issued.state)
    assert caught.value.exit_code == 10


def _header(raw: bytearray) -> Header:
    return Header(
        version=1,
        kdf_id=1,
        kdf_params=keys.KdfParams(int.from_bytes(raw[2:6], "big"), raw[6], raw[7]),
        fingerprint=bytes(raw[8:12]),
        key_generation=1,
        password_epoch=1,
        issued=ISSUED,
        salt=bytes(raw[18:34]),
    )


def test_parse_params() -> None:
    assert kdf.parse_params("m=65536,t=3,p=4") == keys.DEFAULT
    with pytest.raises(KeymailError, match="must look like"):
        kdf.parse_params("65536/3/4")


# Secrets never leak -------------------------------------------------------------


def test_no_secret_in_errors_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password = "CANARY-password-7f3a9"
    new_password = "CANARY-newpass-1b2c"
    account_id = uuid.uuid4()
    first = keys.create(account_id, password, issued=ISSUED, params=FAST)
    changed = keys.change_password(
        first.eak,
        account_id,
        password,
        new_password,
        first.state,
        issued=LATER,
        params=FAST,
    )
    texts = [repr(first), repr(changed), repr(first.state)]
    attempts = [
        lambda: keys.unlock(first.eak, account_id, "CANARY-wrong-pw", first.state),
        lambda: keys.unlock(first.eak, account_id, password, changed.state),
        lambda: keys.unlock(first.eak, uuid.uuid4(), password, None),
        lambda: keys.parse_code(keys.format_code(first.eak)[:-1] + "U"),
        lambda: keys.create(account_id, "", issued=ISSUED, params=FAST),
    ]
    for attempt in attempts:
        with pytest.raises(KeymailError) as caught:
            attempt()
        texts += [str(caught.value), repr(caught.value)]
    unlocked = keys.unlock(changed.eak, account_id, new_password, changed.state)
    texts.append(repr(unlocked))
    # The key library logs nothing at all, so nothing can leak through a log;
    # the CLI's logs are scanned by the generate, unlock and send tests.
    assert caplog.records == []

    canaries = [password, new_password, "CANARY-wrong-pw", first.account_key.hex()]
    canaries.append(first.account_key.hex().upper())
    for text in texts:
        for canary in canaries:
            assert canary not in text
