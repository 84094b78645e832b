"""Time `verify` of a batch against the `generate` run that made it."""

# Generates N records (default 40) at the given KDF cost (default: the
# production default) with W workers (default 2), then verifies the batch with
# the same workers: without passwords (every check but eak.unwrap; the median of
# a few rounds) and once with the passwords of the records file (one KDF run an
# account). Prints the seconds of each and the ratio generate / verify. It
# measures; it asserts nothing.
#
#     .venv/bin/python benchmarks/verify_bench.py
#     .venv/bin/python benchmarks/verify_bench.py --records 200 --workers 4

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pipeline.batch import BatchOptions, run_batch  # noqa: E402
from pipeline.keys import kdf  # noqa: E402
from pipeline.records import SecretsFile, scratch_db  # noqa: E402
from pipeline.verify import VerifyReport, verify_batch  # noqa: E402

from conftest import write_records  # noqa: E402


def timed_verify(
    out: Path, registry: Path, workers: int, records: Path | None, scratch: Path
) -> tuple[float, VerifyReport]:
    lookup = None
    if records is not None:
        lookup = SecretsFile(records, scratch_db(scratch / "passwords.sqlite3"))

    def passwords(account_id: uuid.UUID) -> str | None:
        return lookup.password(account_id) if lookup else None

    start = time.perf_counter()
    report = verify_batch(
        out,
        registry_path=registry,
        passwords=passwords if lookup else None,
        workers=workers,
    )
    seconds = time.perf_counter() - start
    if lookup is not None:
        lookup.close()
    if not report.ok:
        failed = report.failed_accounts[0]
        first = failed.first_failure
        print(f"verify FAILED: {failed.account_id}: {first}", file=sys.stderr)
    return seconds, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kdf", default=str(kdf.DEFAULT), help="m=KiB,t=,p=")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    params = kdf.parse_params(args.kdf)

    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        records = scratch / "bench.csv"
        write_records(records, args.records)
        out, registry = scratch / "batch", scratch / "registry.sqlite3"

        start = time.perf_counter()
        summary = run_batch(
            BatchOptions(
                records=records,
                out=out,
                registry=registry,
                workers=args.workers,
                kdf_params=params,
            )
        )
        generate_s = time.perf_counter() - start

        rounds = [
            timed_verify(out, registry, args.workers, None, scratch)
            for _ in range(args.rounds)
        ]
        verify_s = statistics.median(seconds for seconds, _ in rounds)
        checks = len(rounds[0][1].accounts[0].checks) if summary.generated else 0
        with_passwords_s, _ = timed_verify(
            out, registry, args.workers, records, scratch
        )

    n = summary.generated
    print(f"records      {n} generated, KDF {params}, {args.workers} workers")
    print(f"generate     {generate_s:7.2f} s  ({n / generate_s:.1f} records/s)")
    print(
        f"verify       {verify_s:7.2f} s  ({n / verify_s:.1f} records/s, "
        f"{checks} checks each, no passwords, median of {args.rounds})"
    )
    print(f"ratio        {generate_s / verify_s:7.1f} x  (generate / verify)")
    print(
        f"verify+pw    {with_passwords_s:7.2f} s  "
        f"({(with_passwords_s - verify_s) / n * 1000 * args.workers:.0f} ms "
        "of one core an account for the unwrap)"
    )
    print(f"machine      {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
