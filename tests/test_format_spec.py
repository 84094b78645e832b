"""An EAK v1 decoder written from docs/format.md alone, run against every vector."""

import datetime
import hashlib
import json
import re
import struct
import unicodedata
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VECTORS = sorted((Path(__file__).parent.parent / "fixtures" / "vectors").glob("*.json"))

# §4 Crockford Base32 and the normalization of typed text.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
VALUE = {c: i for i, c in enumerate(ALPHABET)}
SEPARATORS = set("-_.\u2212") | {chr(c) for c in range(0x2010, 0x2015)}
FOLD = str.maketrans("ILO", "110")
ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
SEPARATOR_RUN = "[" + re.escape("".join(sorted(SEPARATORS))) + r"\s]+"

# §2: version, KDF id, m, t, p, fingerprint, generation, epoch, date, salt.
HEADER = struct.Struct(">BBIBB4sHHH16s")
EAK_SIZE, MEMORY_CAP, ITERATIONS_CAP, LANES_CAP = 82, 1 << 20, 10, 16
CODE_SYMBOLS, BODY_SYMBOLS, QR_PREFIX = 162, 132, "KM1:"


class Header(NamedTuple):
    """The 34 clear bytes of §2."""

    version: int
    kdf: int
    memory: int
    iterations: int
    lanes: int
    fingerprint: bytes
    generation: int
    epoch: int
    days: int
    salt: bytes


class Refused(Exception):
    """Any diagnosis but ok, with what its vector expects alongside."""

    def __init__(self, outcome: str, groups: list[int] | None = None, **extra: str):
        super().__init__(outcome)
        self.result = {"outcome": outcome, **extra}
        if groups is not None:
            self.result["groups"] = groups


def malformed(groups: list[int] | None = None) -> Refused:
    return Refused("malformed", groups or [])


def b32encode(data: bytes) -> str:
    pad = -len(data) * 8 % 5
    number = int.from_bytes(data) << pad
    count = (len(data) * 8 + pad) // 5
    return "".join(ALPHABET[number >> 5 * (count - 1 - i) & 31] for i in range(count))


def b32decode(text: str) -> bytes:
    number = 0
    for char in text:
        number = number << 5 | VALUE[char]
    pad = len(text) * 5 % 8
    if number & ((1 << pad) - 1):
        raise malformed()
    return (number >> pad).to_bytes(len(text) * 5 // 8)


# §5 GF(32) modulo x^5 + x^2 + 1; group weight w_j = alpha^(j+1), alpha = 2.
def gf_mul(a: int, b: int) -> int:
    product = 0
    for _ in range(5):
        product ^= a if b & 1 else 0
        a, b = a << 1, b >> 1
        a ^= 0b100101 if a & 32 else 0
    return product


def alpha_pow(n: int) -> int:
    value = 1
    for _ in range(n % 31):
        value = gf_mul(value, 2)
    return value


def weighted_sum(symbols: str) -> int:
    total = 0
    for j, char in enumerate(symbols):
        total ^= gf_mul(alpha_pow(j + 1), VALUE[char])
    return total


def check_symbol(chunk: str) -> str:
    return ALPHABET[gf_mul(alpha_pow(25), weighted_sum(chunk))]


def whole_check(body: str) -> str:
    digest = hashlib.sha256(b"keymail/v1/account-code" + body.encode("ascii")).digest()
    bits = int.from_bytes(digest[:2]) >> 1
    return "".join(ALPHABET[bits >> shift & 31] for shift in (10, 5, 0))


def account_code(eak: bytes) -> str:
    body = b32encode(eak)
    data = body + whole_check(body)
    chunks = [data[i : i + 5] for i in range(0, len(data), 5)]
    return "-".join(chunk + check_symbol(chunk) for chunk in chunks)


def normalize(text: str) -> str:
    return "".join(c for c in text if not c.isspace() and c not in SEPARATORS)


def failing_groups(symbols: str) -> list[int]:
    groups = [symbols[i : i + 6] for i in range(0, len(symbols) - 5, 6)]
    return [n for n, group in enumerate(groups, 1) if weighted_sum(group)]


def length_error_places(text: str, symbols: str) -> list[int]:
    """§5, a length other than 162: rules 1, 2 and 3, the first that answers."""
    pieces = [p for p in re.split(SEPARATOR_RUN, text) if p]
    pieces = [p.translate(ASCII_UPPER).translate(FOLD) for p in pieces]
    if len(pieces) >= 2:
        before = 0
        for piece in pieces:
            w, r = divmod(len(piece), 6)
            if r:
                f = before // 6 + 1
                failing = failing_groups(piece[: 6 * w])
                last = f + w - 1 if (w > 0 and r <= 3) else f + w
                return [min(f + failing[0] - 1 if failing else last, 27)]
            before += len(piece)
    if len(symbols) in (161, 163):
        step = 1 if len(symbols) == 163 else -1
        places = [
            g
            for g in range(1, 28)
            if not failing_groups(symbols[: 6 * (g - 1)])
            and not failing_groups(symbols[6 * g + step :])
        ]
        if places:
            return places
    failing = failing_groups(symbols)
    return failing[:1] or [min(len(symbols) // 6 + 1, 27)]


def read_account_code(text: str) -> bytes:
    symbols = normalize(text).translate(ASCII_UPPER).translate(FOLD)
    bad = [i // 6 + 1 for i, c in enumerate(symbols) if c not in VALUE]
    if bad:
        raise malformed(bad[:1])  # §5: the first such character
    groups = [symbols[i : i + 6] for i in range(0, len(symbols) - 5, 6)]
    failing = [n for n, group in enumerate(groups, 1) if weighted_sum(group)]
    if len(symbols) != CODE_SYMBOLS:
        raise malformed(length_error_places(text, symbols))
    if failing:
        raise malformed(failing)
    data = "".join(group[:5] for group in groups)
    if whole_check(data[:BODY_SYMBOLS]) != data[BODY_SYMBOLS:]:
        raise malformed()
    return b32decode(data[:BODY_SYMBOLS])


def read_qr_payload(text: str) -> bytes:
    body = text.removeprefix(QR_PREFIX)
    if body == text or len(text) != len(QR_PREFIX) + BODY_SYMBOLS:
        raise malformed()
    if any(c not in VALUE for c in body):
        raise malformed()
    return b32decode(body)


def read_text(text: str) -> bytes:
    # §6: strip white space at both ends, upper-case ASCII letters only.
    stripped = text.strip().translate(ASCII_UPPER)
    if stripped.startswith("KM") and ":" in stripped[:6]:
        return read_qr_payload(stripped)
    return read_account_code(text)


def parse_header(eak: bytes) -> Header:
    if len(eak) != EAK_SIZE or eak[0] != 1:
        raise malformed()
    h = Header(*HEADER.unpack(eak[: HEADER.size]))
    if h.kdf != 1:
        raise malformed()
    if h.memory > MEMORY_CAP or h.iterations > ITERATIONS_CAP or h.lanes > LANES_CAP:
        raise Refused("kdf_over_cap", [])
    if not h.iterations or not h.lanes or h.memory < 8 * h.lanes:
        raise malformed()
    if not h.generation or not h.epoch:
        raise malformed()
    return h


# §1 and §3 key derivations.
def hkdf(ikm: bytes, label: str, length: int) -> bytes:
    kdf = HKDF(hashes.SHA256(), length, salt=None, info=label.encode("ascii"))
    return kdf.derive(ikm)


def fingerprint(account_id: bytes) -> bytes:
    return hashlib.sha256(b"keymail/v1/account-fingerprint" + account_id).digest()[:4]


def key_check(account_key: bytes) -> str:
    return hkdf(account_key, "keymail/v1/key-check", 16).hex()


def unwrap(eak: bytes, h: Header, password: str, account_id: bytes) -> bytes:
    argon = Argon2id(
        salt=h.salt,
        length=32,
        iterations=h.iterations,
        lanes=h.lanes,
        memory_cost=h.memory,
    )
    stretched = argon.derive(unicodedata.normalize("NFC", password).encode("utf-8"))
    aead = AESGCM(hkdf(stretched, "keymail/v1/wrapping-key", 32))
    ad = eak[: HEADER.size] + account_id
    try:
        return aead.decrypt(bytes(12), eak[HEADER.size :], ad)
    except InvalidTag:
        raise Refused("wrong_password") from None


# §7 diagnoses, in order; state is the registry's view of the account, or None.
def check_state(h: Header, state: dict | None) -> None:
    if state is None:
        return
    if h.generation < state["key_generation"]:
        raise Refused("before_reset")
    if h.generation == state["key_generation"] and h.epoch < state["password_epoch"]:
        issued = datetime.date(1970, 1, 1) + datetime.timedelta(days=h.days)
        raise Refused("outdated", issued=issued.isoformat())
    if h.generation > state["key_generation"] or h.epoch > state["password_epoch"]:
        raise Refused("unrecognized")


def recover(eak: bytes, account_id: bytes, password: str, state: dict | None) -> dict:
    header = parse_header(eak)
    if header.fingerprint != fingerprint(account_id):
        raise Refused("different_account")
    check_state(header, state)
    account_key = unwrap(eak, header, password, account_id)
    check = key_check(account_key)
    if state is not None and check != state["key_check"]:
        raise Refused("unrecognized")
    return {"outcome": "ok", "account_key": account_key.hex(), "key_check": check}


def diagnose(text: str, account_id: str, password: str, state: dict | None) -> dict:
    try:
        eak = read_text(text)
    except Refused as refusal:
        return refusal.result
    try:
        result = recover(eak, uuid.UUID(account_id).bytes, password, state)
    except Refused as refusal:
        result = refusal.result
    return {**result, "eak_hex": eak.hex()}


CASES = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in VECTORS}
PARSED = [name for name, case in CASES.items() if "eak_hex" in case]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_vector_outcome(case: dict) -> None:
    got = diagnose(case["input"], case["account_id"], case["password"], case["state"])
    expected = case["expected"]
    assert {key: got.get(key) for key in expected} == expected
    if "eak_hex" in case:
        assert got["eak_hex"] == case["eak_hex"]


@pytest.mark.parametrize("name", PARSED)
def test_vector_text_form_rebuilds(name: str) -> None:
    case = CASES[name]
    eak, text = bytes.fromhex(case["eak_hex"]), case["input"]
    if text.startswith(QR_PREFIX):
        assert QR_PREFIX + b32encode(eak) == text
    else:
        typed = normalize(text).upper().translate(FOLD)
        assert account_code(eak).replace("-", "") == typed
