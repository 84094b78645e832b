"""The account code: an EAK as typed text, in groups that locate their own typos.

The EAK's 82 bytes become 132 Crockford Base32 symbols; three symbols of a
whole-code check follow. The 135 symbols are cut into 27 groups of five, and each
group gains a sixth, check symbol: a weighted sum over GF(32) in which every
position has its own non-zero weight, so any single substitution and any swap of
two characters inside a group changes the sum (docs/format.md, "Account code").
"""

from __future__ import annotations

import hashlib
import re

from pipeline.errors import MalformedCodeError
from pipeline.keys.eak import EAK_SIZE, Eak

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {symbol: value for value, symbol in enumerate(ALPHABET)}
_VALUE.update({"I": 1, "L": 1, "O": 0})

DATA_SYMBOLS = (EAK_SIZE * 8 + 4) // 5
WHOLE_CHECK_SYMBOLS = 3
WHOLE_CHECK_LABEL = b"keymail/v1/account-code"
GROUP_DATA = 5
GROUP_SIZE = GROUP_DATA + 1
GROUPS = (DATA_SYMBOLS + WHOLE_CHECK_SYMBOLS) // GROUP_DATA
CODE_LENGTH = GROUPS * GROUP_SIZE
SEPARATORS = re.compile(r"[\s\-\u2010\u2011\u2012\u2013\u2014\u2212_.]+")
# Only ASCII letters are folded: str.upper would turn a Turkish dotless i into
# I and so into 1, and other letters into several.
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")

# GF(32) built on x^5 + x^2 + 1; alpha = x generates all 31 non-zero elements.
_EXP = [0] * 62
_LOG = [0] * 32
_element = 1
for _power in range(31):
    _EXP[_power] = _EXP[_power + 31] = _element
    _LOG[_element] = _power
    _element <<= 1
    if _element & 0b100000:
        _element ^= 0b100101

# Position p of a group (0..5) has weight alpha^(p+1); the check symbol is the
# last position. Distinct non-zero weights are what make every single
# substitution and every transposition inside a group visible.
_WEIGHT_LOGS = [position + 1 for position in range(GROUP_SIZE)]


def _gf_mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _group_sum(values: list[int]) -> int:
    total = 0
    for position, value in enumerate(values):
        total ^= _gf_mul(_EXP[_WEIGHT_LOGS[position]], value)
    return total


def group_check(data: list[int]) -> int:
    """The check symbol value that makes the group's weighted sum zero."""
    partial = _group_sum(data)
    last_log = _WEIGHT_LOGS[GROUP_DATA]
    return _gf_mul(partial, _EXP[(31 - last_log) % 31])


def b32encode(data: bytes) -> str:
    """Crockford Base32, most significant bits first, zero-padded to 5 bits."""
    bits = int.from_bytes(data, "big")
    pad = (-len(data) * 8) % 5
    bits <<= pad
    count = (len(data) * 8 + pad) // 5
    return "".join(ALPHABET[(bits >> (5 * (count - 1 - i))) & 31] for i in range(count))


def b32decode(symbols: str, size: int) -> bytes:
    """Inverse of b32encode for exactly `size` bytes; padding bits must be zero."""
    bits = 0
    for symbol in symbols:
        bits = (bits << 5) | _VALUE[symbol]
    pad = len(symbols) * 5 - size * 8
    if pad < 0 or pad >= 5 or bits & ((1 << pad) - 1):
        raise MalformedCodeError("the code's last symbol carries stray bits")
    return (bits >> pad).to_bytes(size, "big")


def whole_check(data_symbols: str) -> str:
    digest = hashlib.sha256(WHOLE_CHECK_LABEL + data_symbols.encode()).digest()
    value = int.from_bytes(digest[:2], "big") >> 1
    return "".join(ALPHABET[(value >> shift) & 31] for shift in (10, 5, 0))


def format_groups(eak: Eak) -> tuple[str, ...]:
    """The account code of `eak` as its 27 groups of six symbols."""
    data = b32encode(eak.to_bytes())
    data += whole_check(data)

    groups = []
    for start in range(0, len(data), GROUP_DATA):
        chunk = data[start : start + GROUP_DATA]
        check = group_check([_VALUE[symbol] for symbol in chunk])
        groups.append(chunk + ALPHABET[check])
    return tuple(groups)


def format_code(eak: Eak) -> str:
    """The account code as one line, groups joined by hyphens."""
    return "-".join(format_groups(eak))


def normalize(text: str) -> str:
    """Uppercase, drop separators, read I and L as 1 and O as 0."""
    cleaned = SEPARATORS.sub("", text).translate(_ASCII_UPPER)
    return cleaned.replace("I", "1").replace("L", "1").replace("O", "0")


def _odd_typed_group(text: str) -> int | None:
    """Where a symbol is missing or extra, when the code was typed in groups.

    The first chunk between separators whose length is not a multiple of six
    holds the mistake (earlier chunks may join whole groups). A chunk a few
    symbols too long is read as its whole groups with extra symbols, one a few
    too short as one group more with symbols missing; the mistake is in the
    first of its whole groups that fails its check, else in its last group.
    """
    typed = [part for part in map(normalize, SEPARATORS.split(text)) if part]
    if len(typed) < 2:
        return None
    offset = 0
    for part in typed:
        whole, rest = divmod(len(part), GROUP_SIZE)
        if rest:
            first = offset // GROUP_SIZE + 1
            spans = whole if (rest <= GROUP_SIZE // 2 and whole) else whole + 1
            bad = _failing_groups(part[: whole * GROUP_SIZE])
            return min(first + (bad[0] if bad else spans) - 1, GROUPS)
        offset += len(part)
    return None


def _shifted_groups(symbols: str) -> tuple[int, ...]:
    """The groups whose lost or extra symbol would make every other group check.

    With one symbol too few or too many, the groups before the mistake are
    intact and those after it are intact once shifted back by one. The place
    is one of the groups for which both hold; more than one qualify where
    neighbouring groups read the same shifted (runs of zeros in the header).
    """
    shift = len(symbols) - CODE_LENGTH
    if abs(shift) != 1:
        return ()
    return tuple(
        number
        for number in range(1, GROUPS + 1)
        if not _failing_groups(symbols[: GROUP_SIZE * (number - 1)])
        and not _failing_groups(symbols[GROUP_SIZE * number + shift :])
    )


def parse_code(text: str) -> Eak:
    """Parse a typed account code; a typo is reported with its group number."""
    symbols = normalize(text)
    if not symbols:
        raise MalformedCodeError("the account code is empty")
    _check_alphabet(symbols)

    failing = _failing_groups(symbols)
    if len(symbols) != CODE_LENGTH:
        typed = _odd_typed_group(text)
        places = (typed,) if typed else _shifted_groups(symbols)
        if not places:
            places = (
                failing[0] if failing else min(len(symbols) // GROUP_SIZE + 1, GROUPS),
            )
        where = (
            f"near group {places[0]}"
            if len(places) == 1
            else f"in one of groups {places[0]} to {places[-1]}"
        )
        raise MalformedCodeError(
            f"the code has {len(symbols)} characters; an account code has "
            f"{CODE_LENGTH} ({GROUPS} groups of {GROUP_SIZE}). A character seems "
            f"missing or extra {where}: compare it with the email.",
            groups=places,
        )
    if failing:
        raise MalformedCodeError(_mistyped_message(failing), groups=tuple(failing))

    data = "".join(
        symbols[i : i + GROUP_DATA] for i in range(0, CODE_LENGTH, GROUP_SIZE)
    )
    body, check = data[:DATA_SYMBOLS], data[DATA_SYMBOLS:]
    if whole_check(body) != check:
        raise MalformedCodeError(
            "every group looks right on its own but the whole-code check fails: a "
            "group may be missing, repeated or out of order, or one group holds two "
            "typos. Compare the code with the email group by group."
        )
    return Eak.from_bytes(b32decode(body, EAK_SIZE))


def _check_alphabet(symbols: str) -> None:
    for index, symbol in enumerate(symbols):
        if symbol not in _VALUE:
            group, position = divmod(index, GROUP_SIZE)
            raise MalformedCodeError(
                f"character {symbol!r} in group {group + 1} (position {position + 1}) "
                "is not used in account codes; they hold 0-9 and A-Z without U",
                groups=(group + 1,),
            )


def _failing_groups(symbols: str) -> list[int]:
    failing = []
    for number, start in enumerate(range(0, len(symbols), GROUP_SIZE), start=1):
        group = symbols[start : start + GROUP_SIZE]
        if len(group) == GROUP_SIZE and _group_sum([_VALUE[s] for s in group]) != 0:
            failing.append(number)
    return failing


def _mistyped_message(groups: list[int]) -> str:
    if len(groups) == 1:
        where = f"group {groups[0]} looks mistyped"
    else:
        listed = ", ".join(str(g) for g in groups[:-1])
        where = f"groups {listed} and {groups[-1]} look mistyped"
    return f"{where}: compare it with the email or the PDF kit and type it again."
