"""Shared fixtures: a cheap KDF for tests, a CLI runner, batch helpers."""

from __future__ import annotations

import csv
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pipeline.cli  # noqa: F401  (registers every command)
from pipeline.cli.app import app
from pipeline.keys import _testing

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
