"""A damaged batch folder gives a clear usage error naming the line, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import invoke
from smtp_server import write_batch


@pytest.mark.parametrize("junk", ["[1, 2]", '"text"', "{not json"])
@pytest.mark.parametrize("command", ["verify", "send"])
def test_a_damaged_manifest_line_is_named(
    cli: CliRunner, tmp_path: Path, junk: str, command: str
) -> None:
    batch = tmp_path / "batch"
    write_batch(batch, 2)
    manifest = batch / "manifest.jsonl"
    first, second = manifest.read_text().splitlines()
    manifest.write_text(f"{first}\n{junk}\n{second}\n")
    extra = ["--dry-run"] if command == "send" else []

    code, stdout, stderr = invoke(cli, command, str(batch), *extra)

    assert code == 2
    assert "manifest.jsonl line 2 is not a JSON object" in stderr
    assert "Traceback" not in stdout + stderr
