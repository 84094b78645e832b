"""The device keystore: a folder that keeps each account's EAK after an unlock.

One file per account, named by account_id (not secret), holding the QR payload
text. It holds what the email already holds: no password, no account key.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from pipeline import keys
from pipeline.deliver.disk import atomic_write, ensure_dir
from pipeline.errors import CodeError, KeystoreError

log = logging.getLogger("pipeline.keystore")


class Keystore:
    def __init__(self, folder: Path) -> None:
        if folder.exists() and not folder.is_dir():
            raise KeystoreError(f"keystore {folder} is not a folder")
        self.folder = folder

    def path(self, account_id: uuid.UUID) -> Path:
        return self.folder / f"{account_id}.eak"

    def load(self, account_id: uuid.UUID) -> keys.Eak | None:
        """The stored EAK, or None when there is none or it no longer parses."""
        path = self.path(account_id)
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise KeystoreError(
                f"cannot read {path.name} in the keystore: {exc}"
            ) from None
        try:
            return keys.parse_payload(text)
        except CodeError as exc:
            log.warning(
                "stored code for %s is unreadable (%s); ignoring it", account_id, exc
            )
            return None

    def store(self, account_id: uuid.UUID, eak: keys.Eak) -> Path:
        ensure_dir(self.folder)
        path = self.path(account_id)
        atomic_write(path, (keys.format_payload(eak) + "\n").encode("ascii"))
        return path
