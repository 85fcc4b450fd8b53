"""Benchmark: recording calls into the store and reading them back with ``usage_df()``.

    python benchmarks/bench_usage_df.py [--rows 100000] [--repeat 3]

Records ``--rows`` model calls into a temporary file store, once one by one with
``Store.add_call`` (each call its own committed transaction, as the Agent handle writes them)
and once with the batch ``Store.add_calls``, then times ``usage_df()`` (best of ``--repeat``)
of the one-by-one store, as written (its WAL still in use), against the 0.5 s target. As
baselines measured in the same run it times a raw ``pd.read_sql_query("select * from calls")``
and the same query over the 19 readable columns only (``select *`` also carries the packed
``metrics`` blob), plus ``usage_df`` built from the plain columns (the fallback path, i.e.
without the packed metrics and labels), ``usage_df`` of the batch-written store, and of the
one-by-one store after ``PRAGMA wal_checkpoint(TRUNCATE)`` (whether the WAL matters).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_magics import frames
from agent_magics.store import CALL_COLUMNS, CallRecord, Store
from agent_magics.types import UsageMetadata

TARGET_S = 0.5
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def records(n: int) -> list[CallRecord]:
    """Realistic-looking calls: 8 agents, 1000 conversations, some quota hits and retries."""
    out = []
    for i in range(n):
        quota = i % 11 == 0
        out.append(CallRecord(
            agent=f"agent{i % 8}", conversation_id=f"conv-{i % 1000:04d}-9f1c2a7e",
            turn=1 + (i // 1000) % 200, attempt=i % 3 if quota else 0,
            model=("gemini:gemini-2.5-flash", "openai:gpt-4.1-mini")[i % 2],
            status="quota" if quota else "ok",
            usage=UsageMetadata() if quota else UsageMetadata.of(
                800 + i % 5000, 120 + i % 700, cached_tokens=i % 400, thought_tokens=i % 50),
            started_at=T0 + timedelta(milliseconds=1500 * i + i % 997),
            duration_s=0.2 + (i % 5000) / 1000, ttft_s=None if quota else 0.05 + (i % 300) / 1000,
            retry_after_s=2.0 if quota else None, waited_s=(i % 4) * 0.5,
            key_id=("3f9a1c0d5e7b", "a0b1c2d3e4f5")[i % 2],
            error="429 RESOURCE_EXHAUSTED" if quota else None))
    return out


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.rows

    import pandas as pd

    print(f"python {sys.version.split()[0]}, pandas {pd.__version__}, "
          f"sqlite {__import__('sqlite3').sqlite_version}, rows={n}")
    recs = records(n)
    with tempfile.TemporaryDirectory() as tmp:
        one = Store(Path(tmp) / "one_by_one.sqlite3")
        start = time.perf_counter()
        for rec in recs:
            one.add_call(rec)
        elapsed = time.perf_counter() - start
        print(f"record one by one (add_call, a commit each): {elapsed:7.2f} s "
              f"= {n / elapsed:10,.0f} rows/s")

        batch = Store(Path(tmp) / "batch.sqlite3")
        start = time.perf_counter()
        batch.add_calls(recs)
        elapsed = time.perf_counter() - start
        print(f"record in one batch (add_calls):             {elapsed:7.2f} s "
              f"= {n / elapsed:10,.0f} rows/s")

        frames.usage_df(one)  # warm-up: imports, caches
        t_df, df = best_of(args.repeat, lambda: frames.usage_df(one))
        assert len(df) == n
        verdict = "OK" if t_df <= TARGET_S else "OVER TARGET"
        print(f"usage_df() best of {args.repeat}:                   {t_df:7.3f} s "
              f"(target {TARGET_S} s: {verdict})")
        t_plain, plain = best_of(args.repeat, lambda: frames._frame(
            frames._USAGE_SPEC, one.call_rows()))
        pd.testing.assert_frame_equal(df, plain)
        print(f"  same frame from the plain columns:          {t_plain:7.3f} s")
        t_batch, _ = best_of(args.repeat, lambda: frames.usage_df(batch))
        print(f"  same, of the batch-written store:           {t_batch:7.3f} s")
        batch.close()
        t_by, _ = best_of(args.repeat, lambda: frames.usage_df(one, by="model"))
        print(f"usage_df(by='model') best of {args.repeat}:         {t_by:7.3f} s")

        conn = one._conn
        t_raw, _ = best_of(args.repeat, lambda: pd.read_sql_query("select * from calls", conn))
        columns = ", ".join(CALL_COLUMNS)
        t_cols, _ = best_of(args.repeat, lambda: pd.read_sql_query(
            f"select {columns} from calls", conn))
        print(f"baseline read_sql_query('select * from calls'):  {t_raw:7.3f} s "
              f"-> usage_df / baseline = {t_df / t_raw:.2f}")
        print(f"baseline read_sql_query(19 readable columns):    {t_cols:7.3f} s "
              f"-> usage_df / baseline = {t_df / t_cols:.2f}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        t_ckpt, _ = best_of(args.repeat, lambda: frames.usage_df(one))
        print(f"usage_df() after wal_checkpoint(TRUNCATE):  {t_ckpt:7.3f} s")
        one.close()
    return 0 if t_df <= TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
