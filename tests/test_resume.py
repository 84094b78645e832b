"""Kill a real `keymail generate` mid-batch, resume it: every account exactly once."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.deliver.disk import read_jsonl
from pipeline.produce import ARTIFACTS

from conftest import write_records

pytestmark = pytest.mark.slow
# The CLI cannot lower the KDF below the minimum; this is the cheapest it allows.
MINIMUM_KDF = "m=19456,t=2,p=1"


def keymail(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "--quiet", *args]


def manifest_ids(out: Path) -> list[str]:
    return [row["account_id"] for row in read_jsonl(out / "manifest.jsonl")]


def test_kill_then_resume_finishes_each_account_once(tmp_path: Path) -> None:
    records = tmp_path / "accounts.csv"
    ids = write_records(records, 24)
    out = tmp_path / "batch"
    args = ["generate", str(records), "--out", str(out), "--kdf", MINIMUM_KDF]
    args += ["--registry", str(tmp_path / "registry.sqlite3"), "--workers", "2"]

    # Kill the whole process group (parent and workers) once a few are done.
    child = subprocess.Popen(keymail(*args), start_new_session=True)
    deadline = time.monotonic() + 120
    while len(manifest_ids(out)) < 4 and time.monotonic() < deadline:
        assert child.poll() is None, "the batch ended before it could be killed"
        time.sleep(0.02)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    done_before = manifest_ids(out)
    assert 4 <= len(done_before) < 24
    registry = ["--registry", str(tmp_path / "registry.sqlite3")]
    unfinished = subprocess.run(
        keymail("verify", str(out), *registry), capture_output=True, text=True
    )
    assert unfinished.returncode == 1
    assert "batch: batch.finished: the run that made this batch" in unfinished.stderr

    finished = subprocess.run(
        keymail(*args, "--resume"), capture_output=True, text=True
    )

    assert finished.returncode == 0, finished.stderr
    assert finished.stderr == ""
    final = manifest_ids(out)
    assert sorted(final) == sorted(ids)
    assert final[: len(done_before)] == done_before
    for row in read_jsonl(out / "manifest.jsonl"):
        for name in ARTIFACTS:
            data = (out / row["account_id"] / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row["artifacts"][name]["sha256"]
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    verified = subprocess.run(
        keymail("verify", str(out), *registry, "--records", str(records)),
        capture_output=True,
        text=True,
    )
    assert (verified.returncode, verified.stderr) == (0, "")


def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    """Only the parent is killed: its workers must not keep the batch locked."""
    records = tmp_path / "accounts.csv"
    ids = write_records(records, 12)
    out = tmp_path / "batch"
    args = ["generate", str(records), "--out", str(out), "--kdf", MINIMUM_KDF]
    args += ["--registry", str(tmp_path / "registry.sqlite3"), "--workers", "2"]

    child = subprocess.Popen(keymail(*args), start_new_session=True)
    deadline = time.monotonic() + 120
    while len(manifest_ids(out)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    finished = subprocess.run(
        keymail(*args, "--resume"), capture_output=True, text=True
    )

    assert finished.returncode == 0, finished.stderr
    assert sorted(manifest_ids(out)) == sorted(ids)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)  # nothing should be left to kill
