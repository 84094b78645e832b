"""Time `generate` on N records against the floor measured in the same run.

The floor of a batch is N x (one Argon2id derivation + one warm kit render)
divided by the number of workers: the two costs no pipeline can avoid. Two
floors are measured:

- serial: each cost timed alone in one process, then divided by the workers
  (the textbook floor; it assumes W processes run as fast as one);
- parallel: W processes doing nothing but a KDF run and a kit render for each
  of the N records, timed by the wall clock. Argon2id at 64 MiB is bound by
  memory bandwidth, so two at once each run slower than one alone; this is the
  floor this machine can actually reach.

It prints records/s, per-stage milliseconds, the workers' peak RSS and both
ratios floor / actual (1.0 would be a perfect pipeline). It measures; it
asserts nothing.

    .venv/bin/python benchmarks/generate_bench.py --records 40 --workers 2
    .venv/bin/python benchmarks/generate_bench.py --records 1000 --kdf m=19456,t=2,p=1
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pipeline import keys  # noqa: E402
from pipeline.batch import BatchOptions, run_batch  # noqa: E402
from pipeline.config import Settings  # noqa: E402
from pipeline.keys import kdf  # noqa: E402
from pipeline.produce import Account, Producer  # noqa: E402
from pipeline.render.context import EmailContext  # noqa: E402
from pipeline.render.env import Templates  # noqa: E402
from pipeline.render.kit import KitRenderer  # noqa: E402
from pipeline.render.qr import qr_svg  # noqa: E402

from conftest import write_records  # noqa: E402


def measure_floor(params: kdf.KdfParams, samples: int) -> tuple[float, float]:
    """Median seconds of one KDF run and of one warm kit render, in this process."""
    kdf_times = []
    for _ in range(samples):
        start = time.perf_counter()
        kdf.derive_wrapping_key("benchmark password", os.urandom(16), params)
        kdf_times.append(time.perf_counter() - start)

    producer = Producer(Settings())
    issued = keys.create(uuid.uuid4(), "pw", issued=dt.date.today(), params=params)
    account = Account(str(issued.state.account_id), "bench@example.com", "Bench Mark")
    render_times = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in range(samples + 1):
            timings: dict[str, float] = {}
            producer.produce(
                account,
                issued.eak,
                "new",
                Path(scratch),
                now=dt.datetime.now(dt.UTC),
                timings=timings,
            )
            if n:  # the first render is cold
                render_times.append(timings["render_kit"] / 1000)
    return statistics.median(kdf_times), statistics.median(render_times)


_kit: KitRenderer | None = None
_page: tuple[EmailContext, str] | None = None


def _init_floor_worker(params: kdf.KdfParams) -> None:
    """Build a renderer and one account's kit inputs; render once to warm up."""
    global _kit, _page
    issued = keys.create(uuid.uuid4(), "pw", issued=dt.date.today(), params=params)
    groups = keys.format_groups(issued.eak)
    payload = keys.format_payload(issued.eak)
    ctx = EmailContext(
        account_id=str(issued.state.account_id),
        email="bench@example.com",
        name="Bench Mark",
        account_code="-".join(groups),
        account_code_groups=groups,
        qr_payload=payload,
        issued=issued.eak.header.issued,
        key_generation=1,
        password_epoch=1,
        reason="new",
        product="Keymail Demo",
        support_email="support@example.com",
        sender="Keymail Demo <no-reply@example.com>",
        subject="Your Keymail Demo authentication email",
    )
    _kit = KitRenderer(Templates())
    _page = (ctx, qr_svg(payload))
    _kit.render(*_page)


def _floor_task(params: kdf.KdfParams) -> None:
    """The unavoidable work of one record: one KDF run and one kit render."""
    assert _kit is not None and _page is not None
    kdf.derive_wrapping_key("benchmark password", os.urandom(16), params)
    _kit.render(*_page)


def parallel_floor(params: kdf.KdfParams, records: int, workers: int) -> float:
    """Wall seconds for `workers` processes to do only the floor's work."""
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_floor_worker, initargs=(params,)
    ) as pool:
        list(pool.map(_init_noop, range(workers)))  # start and warm every worker
        start = time.perf_counter()
        list(pool.map(_floor_task, [params] * records))
        return time.perf_counter() - start


def _init_noop(_: int) -> None:
    time.sleep(0.2)  # holds this worker so each worker gets one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--kdf", default=str(kdf.DEFAULT), help="m=KiB,t=,p=")
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    params = kdf.parse_params(args.kdf)

    kdf_s, pdf_s = measure_floor(params, args.samples)
    floor = args.records * (kdf_s + pdf_s) / args.workers
    parallel = parallel_floor(params, args.records, args.workers)

    with tempfile.TemporaryDirectory() as scratch:
        records = Path(scratch) / "bench.csv"
        write_records(records, args.records)
        options = BatchOptions(
            records=records,
            out=Path(scratch) / "out",
            registry=Path(scratch) / "registry.sqlite3",
            workers=args.workers,
            kdf_params=params,
        )
        start = time.perf_counter()
        summary = run_batch(options)
        elapsed = time.perf_counter() - start

    print(f"records              {args.records} ({summary.generated} generated)")
    print(f"workers              {args.workers} of {os.cpu_count()} cores")
    print(f"kdf                  argon2id {params}")
    print(f"floor per record     kdf {kdf_s * 1000:.1f} ms + kit {pdf_s * 1000:.1f} ms")
    print(f"serial floor         {floor:.2f} s")
    print(f"parallel floor       {parallel:.2f} s")
    print(
        f"actual               {elapsed:.2f} s ({args.records / elapsed:.2f} records/s)"
    )
    print(f"ratio to serial floor    {floor / elapsed:.3f}")
    print(f"ratio to parallel floor  {parallel / elapsed:.3f}")
    print(f"worker peak RSS      {summary.worker_peak_rss_mib:.1f} MiB")
    for stage, ms in summary.stage_ms.items():
        print(f"  {stage:<18} {ms:8.1f} ms/record")


if __name__ == "__main__":
    main()
