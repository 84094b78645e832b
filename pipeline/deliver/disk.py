"""Crash-safe file writes: a file is either absent or complete, never half."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pipeline.errors import BatchError

FILE_MODE = 0o600
DIR_MODE = 0o700


def ensure_dir(path: Path) -> Path:
    """Create `path` (and parents) with owner-only access; return it.

    A folder that already exists keeps its mode: it may be shared, like /tmp.
    """
    if not path.is_dir():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        path.chmod(DIR_MODE)
        fsync_dir(path.parent)  # the new folder's name is durable too
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file, fsync and rename.

    A reader, or a rerun after a crash, sees either the old file or the new one.
    The temp file lives in the same folder so the rename stays on one file system.
    """
    atomic_write_many(path.parent, {path.name: data})


def atomic_write_many(folder: Path, files: dict[str, bytes]) -> None:
    """Atomically write several files of one folder, with one folder fsync.

    Each file is complete or absent; the folder is synced once at the end
    rather than once a file (about 1 ms each here).
    """
    for name, data in files.items():
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), FILE_MODE)
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fsync_dir(folder)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and fsync it, so a crash loses at most that line.

    A line is written with one `write` call on an O_APPEND descriptor; a crash in
    the middle can leave a torn last line, which `read_jsonl` skips.
    """
    line = (json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n").encode()
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read the complete rows of a JSON-lines file; a torn last line is dropped.

    Raises BatchError naming the line when a complete line is not a JSON
    object: the file was damaged or edited, and guessing would be worse.
    """
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), 1):
        if not raw.endswith(b"\n"):
            break
        try:
            row = json.loads(raw)
        except (ValueError, RecursionError):
            row = None
        if not isinstance(row, dict):
            raise BatchError(
                f"{path.name} line {number} is not a JSON object; the batch folder "
                "was damaged or edited by hand"
            )
        rows.append(row)
    return rows


def repair_jsonl(path: Path) -> None:
    """Cut a torn last line (a crash mid-append) so the next append starts clean."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
            os.fsync(handle.fileno())
