"""Shared fixtures: a cheap KDF for tests, a CLI runner, batch helpers."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import logging
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pipeline.cli  # noqa: F401  (registers every command)
from pipeline.cli.app import app
from pipeline.keys import _testing
from pipeline.render.context import EmailContext

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
FAST_KDF = str(_testing.FAST)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The CLI points the pipeline logger at its own stderr; undo that after."""
    logger = logging.getLogger("pipeline")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def weak_kdf() -> Iterator[None]:
    """Let wrapping use Argon2's minimum cost: tests run in milliseconds."""
    with _testing.weak_kdf():
        yield


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def invoke(
    runner: CliRunner, *args: str, input: str | None = None
) -> tuple[int, str, str]:
    """Run the CLI in-process; return exit code, stdout and stderr separately."""
    result = runner.invoke(app, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def make_context(seed: int = 1, **changes: object) -> EmailContext:
    """A realistic account: a 136-character payload and 27 groups of 6."""
    rng = random.Random(seed)
    payload = "KM1:" + "".join(rng.choice(CROCKFORD) for _ in range(132))
    groups = tuple("".join(rng.choice(CROCKFORD) for _ in range(6)) for _ in range(27))
    ctx = EmailContext(
        account_id="0f8e9a3c-5b2d-4e6f-8a1b-3c5d7e9f0a2b",
        email="ada@example.com",
        name="Ada Lovelace",
        account_code="-".join(groups),
        account_code_groups=groups,
        qr_payload=payload,
        issued=dt.date(2025, 3, 14),
        key_generation=1,
        password_epoch=1,
        reason="new",
        product="Acme Vault",
        support_email="support@example.com",
        sender="Acme Vault <noreply@mail.example.com>",
        subject="Your Acme Vault account key",
    )
    return dataclasses.replace(ctx, **changes)  # type: ignore[arg-type]


def write_records(
    path: Path, count: int, password: str = "pw-{n}-long-enough"
) -> list[str]:
    """A CSV of `count` valid accounts; returns their account_ids."""
    ids = []
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["account_id", "email", "name", "locale", "password"])
        for n in range(count):
            account_id = str(uuid.uuid4())
            ids.append(account_id)
            writer.writerow(
                [
                    account_id,
                    f"user{n}@example.com",
                    f"User {n}",
                    "en",
                    password.format(n=n),
                ]
            )
    return ids
