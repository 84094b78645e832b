"""The `keymail` command line: a thin layer over the library."""

from __future__ import annotations

from pipeline.cli import inspect as _inspect  # noqa: F401  (registers commands)
from pipeline.cli.app import app


def main() -> None:
    app()
