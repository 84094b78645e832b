"""The `keymail` command line: a thin layer over the library."""

from __future__ import annotations

from pipeline.cli import account as _account  # noqa: F401  (registers commands)
from pipeline.cli import generate as _generate  # noqa: F401
from pipeline.cli import inspect as _inspect  # noqa: F401
from pipeline.cli import send as _send  # noqa: F401
from pipeline.cli import verify as _verify  # noqa: F401
from pipeline.cli.app import app


def main() -> None:
    app()
