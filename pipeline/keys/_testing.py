"""Test seams: lower the KDF floor. Nothing on the command line reaches this."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.keys import kdf
from pipeline.keys.kdf import KdfParams

# Argon2's own minimum: well under a millisecond a derivation.
FAST = KdfParams(memory_kib=8, iterations=1, lanes=1)


@contextmanager
def weak_kdf(params: KdfParams = FAST) -> Iterator[KdfParams]:
    """Let wrapping use `params` inside the block."""
    previous = kdf.current_floor()
    kdf._set_floor(params)
    try:
        yield params
    finally:
        kdf._set_floor(previous)
