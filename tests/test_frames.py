"""history_df / usage_df: columns, dtypes, order, aggregates, speed (design.md section 7)."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agent_magics.errors import ConfigError
from agent_magics.frames import (
    _USAGE_SPEC,
    HISTORY_COLUMNS,
    USAGE_COLUMNS,
    USAGE_SUMMARY_COLUMNS,
    _frame,
    _packed_usage_frame,
    empty_history_df,
    empty_usage_df,
    empty_usage_summary_df,
    history_df,
    history_df_from_steps,
    usage_df,
)
from agent_magics.store import CallRecord, Store, default_store
from agent_magics.types import Step, UsageMetadata

T0 = datetime(2025, 3, 4, 23, 59, 0, 123456, tzinfo=timezone.utc)
REPO = Path(__file__).resolve().parents[1]
TEXT = pd.Series(["x"]).dtype  # pandas' default string dtype (str on pandas 3, object before)
UTC_NS = pd.DatetimeTZDtype("ns", "UTC")

USAGE_DTYPES = {
    "agent": TEXT, "conversation_id": TEXT, "turn": np.int64, "call": np.int64,
    "attempt": np.int64, "model": TEXT, "status": TEXT, "input_tokens": np.int64,
    "cached_tokens": np.int64, "output_tokens": np.int64, "thought_tokens": np.int64,
    "total_tokens": np.int64,
    "started_at": UTC_NS, "duration_s": np.float64, "ttft_s": np.float64,
    "retry_after_s": np.float64, "waited_s": np.float64, "key_id": TEXT, "parent": TEXT,
    "error": TEXT,
}
HISTORY_DTYPES = {
    "agent": TEXT, "conversation_id": TEXT, "turn": np.int64, "step": np.int64, "role": TEXT,
    "kind": TEXT, "text": TEXT, "tool_name": TEXT, "started_at": UTC_NS, "finished_at": UTC_NS,
    "status": TEXT, "parent": TEXT,
}


def assert_dtypes(df: pd.DataFrame, expected: dict) -> None:
    for name, dtype in expected.items():
        assert df[name].dtype == dtype, (name, df[name].dtype, dtype)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "h.sqlite3")
    yield s
    s.close()


def record(store: Store, agent="a", cid="c1", turn=1, attempt=0, status="ok", seconds=0.0,
           **kw) -> None:
    kw.setdefault("model", "gemini:gemini-2.5-flash")
    store.add_call(CallRecord(agent, cid, turn, attempt, kw.pop("model"), status,
                              started_at=T0 + timedelta(seconds=seconds), **kw))


# -- shapes ---------------------------------------------------------------------------------------

def test_empty_store_gives_empty_frames_with_columns_and_dtypes(store):
    for df in (usage_df(store), empty_usage_df()):
        assert len(df) == 0
        assert tuple(df.columns) == USAGE_COLUMNS
        assert_dtypes(df, USAGE_DTYPES)
    for df in (history_df(store), empty_history_df()):
        assert len(df) == 0
        assert tuple(df.columns) == HISTORY_COLUMNS
        assert_dtypes(df, HISTORY_DTYPES)
    for by in ("model", "agent", "day"):
        for df in (usage_df(store, by=by), empty_usage_summary_df(by)):
            assert len(df) == 0 and df.index.name == by
            assert tuple(df.columns) == USAGE_SUMMARY_COLUMNS
            assert df["calls"].dtype == np.int64 and df["mean_ttft_s"].dtype == np.float64
    assert usage_df(store, by="day").index.dtype == UTC_NS


def test_usage_df_one_row_per_call_with_values_and_dtypes(store):
    record(store, usage=UsageMetadata.of(100, 20, cached_tokens=40, thought_tokens=5),
           duration_s=1.5, ttft_s=0.25, waited_s=0.5, key_id="0123456789ab")
    record(store, attempt=1, status="quota", seconds=2, usage=UsageMetadata(),
           retry_after_s=3.0, error="429 RESOURCE_EXHAUSTED")
    record(store, agent="helper", cid="c2", seconds=3, parent="a", model="openai:gpt-4.1-mini")
    df = usage_df(store)
    assert tuple(df.columns) == USAGE_COLUMNS
    assert_dtypes(df, USAGE_DTYPES)
    assert isinstance(df.index, pd.RangeIndex) and len(df) == 3
    first = df.iloc[0]
    assert (first.input_tokens, first.cached_tokens, first.output_tokens, first.thought_tokens,
            first.total_tokens) == (100, 40, 20, 5, 125)
    assert first.started_at == pd.Timestamp(T0)
    assert (first.duration_s, first.ttft_s, first.waited_s) == (1.5, 0.25, 0.5)
    assert math.isnan(first.retry_after_s) and pd.isna(first.parent) and pd.isna(first.error)
    assert first.key_id == "0123456789ab"
    assert df["status"].tolist() == ["ok", "quota", "ok"]
    assert df["retry_after_s"].iloc[1] == 3.0 and math.isnan(df["ttft_s"].iloc[1])
    assert df["error"].iloc[1] == "429 RESOURCE_EXHAUSTED"
    assert df["parent"].iloc[2] == "a"
    assert usage_df(store, agent="helper")["model"].tolist() == ["openai:gpt-4.1-mini"]
    assert usage_df(store, conversation_id=["c1"])["attempt"].tolist() == [0, 1]


def test_usage_df_is_sorted_by_start_time_ties_in_recording_order(store):
    for attempt, seconds in [(0, 5), (1, 1), (2, 3), (3, 1)]:
        record(store, attempt=attempt, seconds=seconds)
    df = usage_df(store)
    assert df["attempt"].tolist() == [1, 3, 2, 0]
    assert df["started_at"].is_monotonic_increasing
    assert isinstance(df.index, pd.RangeIndex)


def _plain(store: Store, **filters) -> pd.DataFrame:
    """usage_df built from the plain columns only (the fallback path)."""
    frame = _frame(_USAGE_SPEC, store.call_rows(**filters))
    return frame.sort_values("started_at", kind="stable", ignore_index=True)


def test_plain_column_fallback_matches_the_packed_fast_path(store):
    for i in range(5):
        record(store, attempt=i, seconds=i, ttft_s=None if i % 2 else 0.1 * i,
               usage=UsageMetadata.of(i, 2 * i), retry_after_s=i or None,
               error=None if i == 2 else f"e{i}", parent="boss" if i % 2 else None,
               key_id="" if i == 4 else f"k{i % 2}", cid=f"c{i % 3}", agent=f"a{i % 2}")
    assert _packed_usage_frame(store.packed_call_rows(), store) is not None  # fast path used
    fast = usage_df(store)
    assert fast["error"].isna().tolist() == [False, False, True, False, False]
    assert fast["parent"].isna().tolist() == [True, False, True, False, True]
    assert fast["key_id"].tolist() == ["k0", "k1", "k0", "k1", ""]
    pd.testing.assert_frame_equal(fast, _plain(store))
    for filters in ({"agent": "a1"}, {"conversation_id": ["c2", "c0"]}, {"agent": "nobody"}):
        pd.testing.assert_frame_equal(usage_df(store, **filters), _plain(store, **filters))
    store._write("UPDATE calls SET metrics = NULL WHERE attempt = 3")
    slow = usage_df(store)
    pd.testing.assert_frame_equal(fast, slow)
    store._write("UPDATE calls SET output_tokens = 777 WHERE attempt = 1")  # drops its metrics
    assert usage_df(store)["output_tokens"].tolist() == [0, 777, 4, 6, 8]
    store._write("UPDATE calls SET model = 'renamed' WHERE attempt = 2")  # so does a text
    assert usage_df(store)["model"].tolist()[1:3] == ["gemini:gemini-2.5-flash", "renamed"]


def test_fast_path_with_many_and_sparse_labels_matches_the_plain_columns(store):
    store._write("INSERT INTO labels (id, text) VALUES (1500000000, 'far away')")
    for i in range(60):
        record(store, agent="far away" if i % 5 == 0 else f"a{i % 4}", cid=f"conv-{i}",
               seconds=i, model=f"m{i % 7}", parent=None if i % 3 else "far away",
               key_id=f"key{i % 11}", status=("ok", "quota", "error")[i % 3])
    assert _packed_usage_frame(store.packed_call_rows(), store) is not None
    fast = usage_df(store)
    assert fast["agent"].iloc[0] == "far away" and fast["conversation_id"].iloc[59] == "conv-59"
    pd.testing.assert_frame_equal(fast, _plain(store))
    assert_dtypes(fast, USAGE_DTYPES)


def test_a_missing_label_makes_usage_df_read_the_plain_columns(tmp_path):
    path = tmp_path / "h.sqlite3"
    with Store(path) as writer:
        record(writer, agent="a")
        record(writer, agent="gone", seconds=1)
        writer._write("DELETE FROM labels WHERE text = 'gone'")  # by hand
    with Store(path) as reader:  # no cached labels
        assert _packed_usage_frame(reader.packed_call_rows(), reader) is None
        df = usage_df(reader)
        assert df["agent"].tolist() == ["a", "gone"]
        pd.testing.assert_frame_equal(df, _plain(reader))


def test_history_df_columns_order_and_parent(store):
    store.ensure_conversation("sub", "helper", "scripted:echo", parent="a")
    store.add_step("c1", "a", Step("user", "text", "hi", turn=1, started_at=T0))
    store.add_step("sub", "helper", Step("user", "text", "sub task", turn=1,
                                         started_at=T0 + timedelta(seconds=1)))
    # same start time as the next one: step order decides
    later = T0 + timedelta(seconds=2)
    store.add_step("c1", "a", Step("assistant", "tool_call", "add(2, 3)", turn=1,
                                   tool_name="add", tool_call_id="k1", data={"a": 2, "b": 3},
                                   started_at=later))
    store.add_step("c1", "a", Step("tool", "tool_result", "5", turn=1, tool_name="add",
                                   tool_call_id="k1", data=5, started_at=later))
    store.add_step("c1", "a", Step("assistant", "text", "", turn=1, status="interrupted",
                                   started_at=T0 + timedelta(seconds=3),
                                   finished_at=T0 + timedelta(seconds=9)))
    df = history_df(store)
    assert tuple(df.columns) == HISTORY_COLUMNS
    assert_dtypes(df, HISTORY_DTYPES)
    assert df["text"].tolist() == ["hi", "sub task", "add(2, 3)", "5", ""]
    assert df["step"].tolist() == [0, 0, 1, 2, 3]
    assert df["parent"].isna().tolist() == [True, False, True, True, True]
    assert df["parent"].iloc[1] == "a"
    assert df["data"].iloc[2] == {"a": 2, "b": 3} and df["data"].iloc[3] == 5
    assert df["data"].iloc[0] is None
    assert df["status"].iloc[4] == "interrupted"
    assert df["finished_at"].iloc[4] - df["started_at"].iloc[4] == pd.Timedelta(seconds=6)
    assert df["started_at"].iloc[0] == pd.Timestamp(T0)
    assert history_df(store, agent="helper")["text"].tolist() == ["sub task"]
    assert len(history_df(store, conversation_id=["c1", "sub"])) == 5


def test_history_df_from_in_memory_steps():
    steps = [Step("user", "text", "hi", turn=1, started_at=T0),
             Step("assistant", "text", "yo", turn=1, started_at=T0),
             Step("user", "text", "again", turn=2, started_at=T0, data={"k": [1]})]
    df = history_df_from_steps(steps, agent="a", conversation_id="c")
    assert tuple(df.columns) == HISTORY_COLUMNS
    assert_dtypes(df, HISTORY_DTYPES)
    assert df["step"].tolist() == [0, 1, 0]
    assert df["data"].iloc[2] == {"k": [1]}


# -- aggregates -----------------------------------------------------------------------------------

def _populated(store: Store) -> None:
    specs = [  # agent, model, status, seconds, ttft
        ("a", "gemini:flash", "ok", 0, 0.2), ("a", "gemini:flash", "quota", 10, None),
        ("a", "openai:mini", "ok", 20, 0.4), ("b", "gemini:flash", "error", 30, None),
        ("b", "gemini:flash", "ok", 86_400, 0.6),  # the next UTC day
    ]
    for i, (agent, model, status, seconds, ttft) in enumerate(specs):
        record(store, agent=agent, cid=f"c-{agent}", attempt=i, model=model, status=status,
               seconds=seconds, ttft_s=ttft, duration_s=1.0 + i, waited_s=0.5 * i,
               usage=UsageMetadata.of(10 * (i + 1), i, cached_tokens=i, thought_tokens=1))


@pytest.mark.parametrize("by", ["model", "agent", "day"])
def test_usage_by_matches_a_pandas_groupby_of_the_rows(store, by):
    _populated(store)
    rows = usage_df(store)
    key = rows["started_at"].dt.floor("D") if by == "day" else rows[by]
    grouped = rows.groupby(key)
    expected = pd.DataFrame({
        "calls": grouped.size(),
        "ok": grouped["status"].agg(lambda s: int((s == "ok").sum())),
        "quota": grouped["status"].agg(lambda s: int((s == "quota").sum())),
        "errors": grouped["status"].agg(lambda s: int((s == "error").sum())),
        **{name: grouped[name].sum() for name in
           ("input_tokens", "cached_tokens", "output_tokens", "thought_tokens", "total_tokens",
            "duration_s", "waited_s")},
        "mean_ttft_s": grouped["ttft_s"].mean(),
    }).astype({"calls": "int64", "ok": "int64", "quota": "int64", "errors": "int64"})
    summary = usage_df(store, by=by)
    assert summary.index.name == by
    assert tuple(summary.columns) == USAGE_SUMMARY_COLUMNS
    pd.testing.assert_frame_equal(summary, expected, check_names=False, check_index_type=False)
    assert summary["calls"].sum() == 5


def test_usage_by_day_is_indexed_by_utc_midnights(store):
    _populated(store)
    summary = usage_df(store, by="day")
    assert summary.index.dtype == UTC_NS
    assert list(summary.index) == [pd.Timestamp("2025-03-04", tz="UTC"),
                                   pd.Timestamp("2025-03-05", tz="UTC")]
    assert summary["calls"].tolist() == [4, 1]
    assert usage_df(store, by="model", agent="b")["calls"].to_dict() == {"gemini:flash": 2}


def test_usage_by_something_else_lists_the_allowed_values(store):
    with pytest.raises(ConfigError) as info:
        usage_df(store, by="week")
    for allowed in ("'model'", "'agent'", "'day'"):
        assert allowed in str(info.value)


# -- default store, imports, speed ----------------------------------------------------------------

def test_store_none_reads_the_default_store(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_MAGICS_HOME", str(tmp_path / "home"))
    record(default_store(), agent="dflt")
    default_store().add_step("c1", "dflt", Step("user", "text", "hi", turn=1))
    assert usage_df()["agent"].tolist() == ["dflt"]
    assert history_df()["text"].tolist() == ["hi"]
    assert (tmp_path / "home" / "history.sqlite3").exists()
    assert usage_df(tmp_path / "home" / "history.sqlite3")["agent"].tolist() == ["dflt"]
    with pytest.raises(ConfigError):
        usage_df(42)  # type: ignore[arg-type]


def test_importing_store_and_frames_does_not_import_pandas():
    code = ("import sys, agent_magics.store, agent_magics.frames; "
            "print(sorted(m for m in ('pandas', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.strip() == "[]"
