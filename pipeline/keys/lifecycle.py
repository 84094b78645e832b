"""Account key lifecycle: create, change password, reset, and diagnosed unlock.

Pure functions: the caller loads the account's current state from the registry
and stores what these return. Nothing here touches a file or the network.
"""

from __future__ import annotations

import datetime as dt
import hmac
import uuid
from dataclasses import dataclass

from pipeline.errors import (
    CodeBeforeResetError,
    DifferentAccountError,
    OutdatedCodeError,
    UnrecognizedCodeError,
    UsageError,
)
from pipeline.keys import eak as eak_format
from pipeline.keys import kdf
from pipeline.keys.eak import Eak
from pipeline.keys.kdf import KdfParams


@dataclass(frozen=True)
class AccountState:
    """The server's view of an account: what the registry keeps, nothing secret."""

    account_id: uuid.UUID
    key_generation: int
    password_epoch: int
    key_check: str
    issued: dt.date


@dataclass(frozen=True)
class Issued:
    """A freshly wrapped EAK, the account key inside it and the new state."""

    eak: Eak
    account_key: bytes
    state: AccountState

    def __repr__(self) -> str:
        return f"Issued(state={self.state!r})"


@dataclass(frozen=True)
class Unlocked:
    """The result of a successful unlock."""

    account_key: bytes
    key_check: str
    eak: Eak

    def __repr__(self) -> str:
        return f"Unlocked(key_check={self.key_check!r})"


def create(
    account_id: uuid.UUID,
    password: str,
    *,
    issued: dt.date,
    params: KdfParams = kdf.DEFAULT,
    _account_key: bytes | None = None,
    _salt: bytes | None = None,
) -> Issued:
    """A new account: a new account key, key generation 1, password epoch 1."""
    account_key = _account_key or eak_format.new_account_key()
    return _issue(account_id, account_key, password, 1, 1, issued, params, _salt)


def change_password(
    code: Eak,
    account_id: uuid.UUID,
    old_password: str,
    new_password: str,
    state: AccountState,
    *,
    issued: dt.date,
    params: KdfParams = kdf.DEFAULT,
) -> Issued:
    """Re-wrap the same account key under a new password: password epoch + 1.

    The old code must unlock first, so a change cannot be made from a stale or
    foreign code, nor without the old password.
    """
    unlocked = unlock(code, account_id, old_password, state)
    return _issue(
        account_id,
        unlocked.account_key,
        new_password,
        state.key_generation,
        state.password_epoch + 1,
        issued,
        params,
        None,
    )


def reset_password(
    account_id: uuid.UUID,
    new_password: str,
    state: AccountState,
    *,
    issued: dt.date,
    params: KdfParams = kdf.DEFAULT,
) -> Issued:
    """Replace the account key (the old data is lost): key generation + 1.

    The password epoch starts again at 1: it counts password changes within one
    key generation.
    """
    account_key = eak_format.new_account_key()
    generation = state.key_generation + 1
    return _issue(
        account_id, account_key, new_password, generation, 1, issued, params, None
    )


def check_current(code: Eak, account_id: uuid.UUID, state: AccountState | None) -> None:
    """Diagnoses 2 to 4, and a code newer than the registry, without a password."""
    if state is not None and state.account_id != account_id:
        raise UsageError(
            "the account state given is another account's; look the state up "
            "by the account being signed in to"
        )
    header = code.header
    if not hmac.compare_digest(
        header.fingerprint, eak_format.account_fingerprint(account_id)
    ):
        raise DifferentAccountError(
            "this code belongs to a different account. Check that you are signing "
            "in with the email address the code was sent to, and use the "
            "authentication email addressed to this account."
        )
    if state is None:
        return

    if header.key_generation < state.key_generation:
        raise CodeBeforeResetError(
            f"this code (key generation {header.key_generation}, issued "
            f"{header.issued}) was made before a password reset; the reset replaced "
            "the account key, so this code can never open the account again. Use "
            "the authentication email sent after the reset.",
            code_generation=header.key_generation,
            generation=state.key_generation,
        )
    if header.key_generation > state.key_generation:
        raise UnrecognizedCodeError(
            "this code is newer than the account's records; contact support and "
            "do not share the code or your password with anyone"
        )
    if header.password_epoch < state.password_epoch:
        raise OutdatedCodeError(
            f"this code was issued on {header.issued}, before the password was "
            f"changed (the current code was issued on {state.issued}). It no "
            "longer matches your password: use the newest authentication email.",
            issued=header.issued,
        )
    if header.password_epoch > state.password_epoch:
        raise UnrecognizedCodeError(
            "this code is newer than the account's records; contact support and "
            "do not share the code or your password with anyone"
        )


def unlock(
    code: Eak, account_id: uuid.UUID, password: str, state: AccountState | None
) -> Unlocked:
    """Open `code` as a new device would, diagnosing in the documented order.

    Malformed codes never reach here (parsing raised already); then a different
    account, a code from before a reset, an outdated code, and last, running
    the KDF, a wrong password. With a state, the key check must match too.
    """
    check_current(code, account_id, state)

    account_key = eak_format.unwrap(code, password, account_id)
    check = eak_format.key_check(account_key)
    if state is not None and not hmac.compare_digest(check, state.key_check):
        raise UnrecognizedCodeError(
            "the code opened, but its key is not the account's current key; "
            "contact support"
        )
    return Unlocked(account_key=account_key, key_check=check, eak=code)


def _issue(
    account_id: uuid.UUID,
    account_key: bytes,
    password: str,
    generation: int,
    epoch: int,
    issued: dt.date,
    params: KdfParams,
    salt: bytes | None,
) -> Issued:
    code = eak_format.wrap(
        account_key,
        password,
        account_id,
        key_generation=generation,
        password_epoch=epoch,
        issued=issued,
        params=params,
        _salt=salt,
    )
    state = AccountState(
        account_id=account_id,
        key_generation=generation,
        password_epoch=epoch,
        key_check=eak_format.key_check(account_key),
        issued=issued,
    )
    return Issued(eak=code, account_key=account_key, state=state)
