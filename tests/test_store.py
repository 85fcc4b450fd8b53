"""The SQLite history/usage store: schema, durability, concurrency, safety (design.md 7, 9)."""

from __future__ import annotations

import math
import os
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from agent_magics import store as store_module
from agent_magics.config import scrub_secrets
from agent_magics.errors import ConfigError
from agent_magics.store import (
    APPLICATION_ID,
    CALL_COLUMNS,
    LABELLED_CALL_COLUMNS,
    METRICS_FORMAT,
    MIGRATIONS,
    CallRecord,
    Store,
    default_store,
    format_ts,
    parse_ts,
    shared_store,
)
from agent_magics.types import Step, UsageMetadata

T0 = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=timezone.utc)
FAKE_KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7dEf0h"  # 8 + 40 characters
REPO = Path(__file__).resolve().parents[1]


def call(agent="a", conversation_id="c1", turn=1, attempt=0, status="ok", **kw) -> CallRecord:
    kw.setdefault("model", "scripted:echo")
    kw.setdefault("usage", UsageMetadata.of(10, 5))
    kw.setdefault("started_at", T0)
    return CallRecord(agent, conversation_id, turn, attempt, kw.pop("model"), status, **kw)


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "store" / "history.sqlite3"


@pytest.fixture
def store(db):
    s = Store(db)
    yield s
    s.close()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(path))


def run_python(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- opening, schema ------------------------------------------------------------------------------

def test_file_store_uses_wal_busy_timeout_and_a_schema_version(store, db):
    assert db.exists()  # parent directories were created
    assert store.path == str(db)
    assert store.journal_mode == "wal"
    assert store._read("PRAGMA busy_timeout")[0][0] >= 10_000
    assert store._read("PRAGMA synchronous")[0][0] == 1  # NORMAL
    assert store.schema_version == len(MIGRATIONS) >= 1
    with raw(db) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"schema_version", "agents", "conversations", "steps", "calls"} <= tables
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))


def test_lookups_use_indexes(store):
    for sql, params in [
        ("SELECT * FROM steps WHERE conversation_id = ? AND turn = ?", ("c", 1)),
        ("SELECT * FROM steps WHERE agent = ?", ("a",)),
        ("SELECT * FROM calls WHERE conversation_id = ?", ("c",)),
        ("SELECT * FROM calls WHERE agent = ?", ("a",)),
        ("SELECT * FROM conversations WHERE agent = ?", ("a",)),
    ]:
        plan = " ".join(str(r) for r in store._read("EXPLAIN QUERY PLAN " + sql, params))
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, (sql, plan)


def test_memory_store(tmp_path):
    s = Store(":memory:")
    assert s.path == ":memory:"
    s.add_call(call())
    assert len(s.calls()) == 1
    assert not list(tmp_path.iterdir())
    assert len(Store(":memory:").calls()) == 0  # each Store(":memory:") is private
    s.close()


def test_default_path_honours_agent_magics_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_MAGICS_HOME", str(tmp_path / "home"))
    assert Store.default_path() == tmp_path / "home" / "history.sqlite3"
    s = Store()
    assert Path(s.path) == tmp_path / "home" / "history.sqlite3"
    assert Path(s.path).exists()
    s.close()


def test_default_path_without_env_is_the_platform_user_data_dir(tmp_path, monkeypatch):
    import platformdirs

    monkeypatch.delenv("AGENT_MAGICS_HOME", raising=False)
    seen = []

    def fake_user_data_dir(appname, *args, **kwargs):
        seen.append(appname)
        return str(tmp_path / "data" / appname)

    monkeypatch.setattr(platformdirs, "user_data_dir", fake_user_data_dir)
    assert Store.default_path() == tmp_path / "data" / "agent_magics" / "history.sqlite3"
    assert seen == ["agent_magics"]


def test_shared_store_is_one_instance_per_path(tmp_path, monkeypatch):
    a = shared_store(tmp_path / "x.sqlite3")
    assert shared_store(str(tmp_path / "x.sqlite3")) is a
    a.close()
    b = shared_store(tmp_path / "x.sqlite3")
    assert b is not a and not b.closed
    assert shared_store(":memory:") is shared_store(":memory:")
    monkeypatch.setenv("AGENT_MAGICS_HOME", str(tmp_path / "h1"))
    first = default_store()
    assert first.path == str(tmp_path / "h1" / "history.sqlite3")
    monkeypatch.setenv("AGENT_MAGICS_HOME", str(tmp_path / "h2"))
    assert default_store().path == str(tmp_path / "h2" / "history.sqlite3")
    b.close()


def test_a_directory_or_empty_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="directory"):
        Store(tmp_path)
    with pytest.raises(ConfigError):
        Store("")


def test_empty_file_is_initialised(tmp_path):
    path = tmp_path / "empty.sqlite3"
    path.write_bytes(b"")
    s = Store(path)
    assert s.schema_version == len(MIGRATIONS)
    s.add_call(call())
    s.close()
    assert len(Store(path).calls()) == 1


# -- files that are not ours are never touched ----------------------------------------------------

def _assert_refused(path: Path, *patterns: str) -> None:
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        Store(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for pattern in patterns:
        assert pattern in message, message
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


def test_random_bytes_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "history.sqlite3"
    path.write_bytes(os.urandom(8192))
    _assert_refused(path, "AGENT_MAGICS_HOME", "not an SQLite database")
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()


def test_damaged_database_with_a_valid_header_is_refused(tmp_path):
    path = tmp_path / "history.sqlite3"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4096 - 16))
    _assert_refused(path, "AGENT_MAGICS_HOME")


def test_short_garbage_file_is_refused(tmp_path):
    path = tmp_path / "history.sqlite3"
    path.write_text("hello")
    _assert_refused(path, "AGENT_MAGICS_HOME")


def test_foreign_sqlite_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "history.sqlite3"
    with raw(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO notes (body) VALUES (?)", [("a",), ("b",)])
    conn.close()
    _assert_refused(path, "did not create", "AGENT_MAGICS_HOME")
    with raw(path) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 2
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_foreign_database_with_its_own_schema_version_table_is_refused(tmp_path):
    path = tmp_path / "history.sqlite3"
    with raw(path) as conn:  # a common table name in other applications
        conn.execute("CREATE TABLE schema_version (version INTEGER)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.close()
    _assert_refused(path, "did not create")


def test_newer_schema_version_asks_to_upgrade(db):
    Store(db).close()
    with raw(db) as conn:
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                     (len(MIGRATIONS) + 5, format_ts(T0)))
    conn.close()
    _assert_refused(db, "upgrade agent_magics", f"v{len(MIGRATIONS) + 5}")


# -- migrations -----------------------------------------------------------------------------------

def test_new_migrations_are_applied_in_order_and_keep_data(db, monkeypatch):
    s = Store(db)
    s.add_call(call())
    s.close()
    applied = []

    def backfill(conn):
        applied.append("backfill")
        conn.execute("UPDATE calls SET note = 'old' WHERE note IS NULL")

    monkeypatch.setattr(store_module, "MIGRATIONS", [
        *MIGRATIONS, ("ALTER TABLE calls ADD COLUMN note TEXT",), backfill])
    s = Store(db)
    assert s.schema_version == len(MIGRATIONS) + 2
    assert applied == ["backfill"]
    assert s._read("SELECT note FROM calls") == [("old",)]
    assert len(s.calls()) == 1
    s.close()
    Store(db).close()  # already up to date: nothing re-applied
    assert applied == ["backfill"]


def test_a_failing_migration_rolls_back_and_leaves_the_old_version(db, monkeypatch):
    Store(db).close()
    monkeypatch.setattr(store_module, "MIGRATIONS", [
        *MIGRATIONS, ("CREATE TABLE extra (x)",), ("THIS IS NOT SQL",)])
    with pytest.raises(ConfigError, match=f"schema v{len(MIGRATIONS) + 2}"):
        Store(db)
    with raw(db) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == \
            len(MIGRATIONS)
        assert conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'extra'").fetchone()[0] == 0
    conn.close()


# -- writing and reading --------------------------------------------------------------------------

def test_steps_get_indexes_per_turn_and_round_trip(store):
    store.ensure_agent("a", "scripted:echo", {"temperature": 0.5})
    store.ensure_conversation("c1", "a", "scripted:echo")
    assert store.next_turn("c1") == 1
    ids = [
        store.add_step("c1", "a", Step("user", "text", "hi", turn=1, started_at=T0)),
        store.add_step("c1", "a", Step("assistant", "tool_call", "add(...)", turn=1,
                                       tool_name="add", tool_call_id="call_1",
                                       data={"a": 2, "b": [3]},
                                       started_at=T0 + timedelta(seconds=1))),
        store.add_step("c1", "a", Step("tool", "tool_result", "5", turn=1, tool_name="add",
                                       tool_call_id="call_1", data=5,
                                       started_at=T0 + timedelta(seconds=2))),
        store.add_step("c1", "a", Step("user", "text", "again", turn=2,
                                       started_at=T0 + timedelta(seconds=3))),
    ]
    assert len(set(ids)) == 4
    rows = store.steps(conversation_id="c1")
    assert [(r["turn"], r["step"]) for r in rows] == [(1, 0), (1, 1), (1, 2), (2, 0)]
    assert rows[1]["data"] == {"a": 2, "b": [3]} and rows[2]["data"] == 5
    assert rows[1]["tool_name"] == "add" and rows[1]["tool_call_id"] == "call_1"
    assert rows[0]["started_at"] == T0 and rows[0]["started_at"].tzinfo is timezone.utc
    assert store.next_turn("c1") == 3
    loaded = store.load_steps("c1")
    assert [s.text for s in loaded] == ["hi", "add(...)", "5", "again"]
    assert loaded[1] == Step("assistant", "tool_call", "add(...)", turn=1, tool_name="add",
                             tool_call_id="call_1", data={"a": 2, "b": [3]},
                             started_at=T0 + timedelta(seconds=1))
    assert store.load_steps("nope") == []


def test_update_step(store):
    step_id = store.add_step("c1", "a", Step("assistant", "text", "", turn=1, started_at=T0))
    store.update_step(step_id, text="partial reply")
    store.update_step(step_id, status="interrupted", finished_at=T0 + timedelta(seconds=3))
    store.update_step(step_id)  # nothing to change
    (row,) = store.steps()
    assert row["text"] == "partial reply"
    assert row["status"] == "interrupted"
    assert row["finished_at"] == T0 + timedelta(seconds=3)
    assert row["started_at"] == T0


def test_calls_round_trip(store):
    usage = UsageMetadata.of(100, 20, cached_tokens=30, thought_tokens=7)
    store.add_call(call(usage=usage, duration_s=1.25, ttft_s=0.3, retry_after_s=None,
                        waited_s=2.0, key_id="abcdef012345", parent="boss"))
    store.add_call(call(attempt=1, status="quota", usage=UsageMetadata(), error="429",
                        retry_after_s=4.5, started_at=T0 + timedelta(seconds=2), call=2))
    first, second = store.calls()
    assert first == {
        "agent": "a", "conversation_id": "c1", "turn": 1, "call": 0, "attempt": 0,
        "model": "scripted:echo", "status": "ok", "input_tokens": 100, "cached_tokens": 30,
        "output_tokens": 20, "thought_tokens": 7, "total_tokens": 127, "started_at": T0,
        "duration_s": 1.25, "ttft_s": 0.3, "retry_after_s": None, "waited_s": 2.0,
        "key_id": "abcdef012345", "parent": "boss", "error": None,
    }
    assert (second["status"], second["retry_after_s"], second["error"]) == ("quota", 4.5, "429")
    assert (second["call"], second["attempt"]) == (2, 1)
    assert store.next_turn("c1") == 2  # calls count as recorded turns too


def test_filters_accept_one_value_or_several(store):
    for agent, cid in [("a", "c1"), ("a", "c2"), ("b", "c3")]:
        store.add_call(call(agent=agent, conversation_id=cid))
        store.add_step(cid, agent, Step("user", "text", cid, turn=1))
    assert [c["conversation_id"] for c in store.calls(agent="a")] == ["c1", "c2"]
    assert [c["conversation_id"] for c in store.calls(conversation_id=["c3", "c1"])] == \
        ["c1", "c3"]
    assert store.calls(conversation_id=[]) == []
    assert [s["text"] for s in store.steps(agent=["b"], conversation_id="c3")] == ["c3"]


def test_datetimes_are_stored_as_utc_iso_text_and_read_back_aware(store):
    cet = timezone(timedelta(hours=1))
    local = datetime(2025, 3, 4, 6, 6, 7, 890123, tzinfo=cet)  # == T0
    naive = datetime(2025, 3, 4, 5, 6, 7, 890123)  # taken as UTC
    store.add_step("c1", "a", Step("user", "text", "x", turn=1, started_at=local))
    store.add_step("c1", "a", Step("user", "text", "y", turn=1, started_at=naive))
    store.add_call(call(started_at=local))
    assert {r[0] for r in store._read("SELECT started_at FROM steps")} == \
        {"2025-03-04T05:06:07.890123+00:00"}
    for row in [*store.steps(), *store.calls()]:
        assert row["started_at"] == T0
        assert row["started_at"].utcoffset() == timedelta(0)
    assert parse_ts(format_ts(1_700_000_000.5)) == \
        datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=timezone.utc)
    assert format_ts("2025-03-04T05:06:07.890123Z") == "2025-03-04T05:06:07.890123+00:00"


def test_data_that_is_not_json_is_stored_as_text(store):
    loop: list = []
    loop.append(loop)
    store.add_step("c1", "a", Step("tool", "tool_result", "r", turn=1, data={"when": T0}))
    store.add_step("c1", "a", Step("tool", "tool_result", "r", turn=1, data=loop))
    store.add_step("c1", "a", Step("tool", "tool_result", "r", turn=1, data={1, 2}))
    rows = store.steps()
    assert rows[0]["data"] == {"when": str(T0)}
    assert rows[1]["data"] == "[[...]]"
    assert rows[2]["data"] == "{1, 2}"


def test_conversations_and_latest(store):
    store.ensure_conversation("old", "a", "m1")
    store.ensure_conversation("old", "a", "m-other")  # idempotent, keeps the first model
    store.ensure_conversation("new", "a", "m2", parent="boss")
    store.add_step("old", "a", Step("user", "text", "hi", turn=3,
                                    started_at=datetime.now(timezone.utc) + timedelta(hours=1)))
    store.add_call(call(agent="b", conversation_id="auto", model="m3", parent="p"))
    convs = {c["id"]: c for c in store.conversations()}
    assert set(convs) == {"old", "new", "auto"}
    assert convs["old"]["model"] == "m1" and convs["old"]["last_turn"] == 3
    assert convs["old"]["steps"] == 1 and convs["old"]["calls"] == 0
    assert convs["new"]["parent"] == "boss" and convs["new"]["last_turn"] == 0
    assert convs["auto"] == {**convs["auto"], "agent": "b", "model": "m3", "parent": "p",
                             "calls": 1}
    assert [c["id"] for c in store.conversations("a")] == ["old", "new"]
    assert store.latest_conversation("a") == "old"  # most recent activity, not creation
    assert store.latest_conversation("b") == "auto"
    assert store.latest_conversation("nobody") is None


def test_ensure_agent_upserts_and_masks_key_like_config_values(store):
    store.ensure_agent("a", "m1", {"temperature": 0.1})
    store.ensure_agent("a", "m2", {"temperature": 0.2, "api_key": FAKE_KEY,
                                   "options": {"Authorization": "Bearer abc"}})
    (agent,) = store.agents()
    assert agent["model"] == "m2"
    assert agent["config"]["temperature"] == 0.2
    assert FAKE_KEY not in str(agent) and "Bearer abc" not in str(agent)


def test_close_is_idempotent_and_use_after_close_is_a_config_error(db):
    s = Store(db)
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(ConfigError, match="closed"):
        s.add_call(call())


def test_metrics_copy_is_dropped_when_a_mirrored_column_changes(store):
    store.add_call(call())
    assert store.packed_call_rows()[0][0] is not None
    store._write("UPDATE calls SET error = 'x'")  # not mirrored: stays
    assert store.packed_call_rows()[0][0] is not None
    store._write("UPDATE calls SET input_tokens = 999")
    assert store.packed_call_rows()[0][0] is None
    assert store.calls()[0]["input_tokens"] == 999
    for column in ("agent", "conversation_id", "model", "status", "key_id", "parent"):
        store.add_call(call())
        (metrics, _), = store.packed_call_rows()[-1:]
        assert metrics is not None
        store._write(f"UPDATE calls SET {column} = 'edited' WHERE id = (SELECT MAX(id) FROM calls)")
        assert store.packed_call_rows()[-1][0] is None, column
        assert store.calls()[-1][column] == "edited"


# -- labels (dictionary-encoded text columns) -----------------------------------------------------

def _codes(store: Store) -> list[tuple[int, ...]]:
    size = struct.calcsize(METRICS_FORMAT)
    return [struct.unpack(METRICS_FORMAT, metrics)[-len(LABELLED_CALL_COLUMNS):]
            for metrics, _ in store.packed_call_rows() if metrics and len(metrics) == size]


def test_text_columns_are_stored_as_label_ids_too(store):
    store.add_call(call(agent="a", key_id="k1", parent=None))
    store.add_call(call(agent="b", key_id="k1", parent="a", conversation_id="c2"))
    store.add_calls([call(agent="a", conversation_id="c3", status="quota"),
                     call(agent="c", conversation_id="c3", model="other:m")])
    first, second, third, fourth = _codes(store)
    assert first[-1] == 0  # parent NULL
    labels = store.labels([code for row in (first, second, third, fourth) for code in row
                           if code])
    for row, codes in zip(store.calls(), (first, second, third, fourth), strict=True):
        assert tuple(row[c] for c in LABELLED_CALL_COLUMNS) == \
            tuple(labels.get(code) for code in codes)
    assert second[-1] == first[0]  # one id per distinct text, whatever the column
    ids = store._read("SELECT id FROM labels ORDER BY id")
    assert len(ids) == len({v for row in store.calls() for c in LABELLED_CALL_COLUMNS
                            if (v := row[c]) is not None})
    assert store.labels([10**6]) == {}


def test_labels_are_shared_by_every_connection_and_never_change(db):
    one, two = Store(db), Store(db)
    one.add_call(call(agent="x", conversation_id="shared"))
    two.add_call(call(agent="y", conversation_id="shared"))  # learns "shared" from the file
    one.add_call(call(agent="y", conversation_id="c9"))
    assert _codes(one)[0][1] == _codes(one)[1][1]  # "shared" got one id
    assert _codes(one)[1][0] == _codes(one)[2][0]  # so did "y"
    assert one.labels([_codes(one)[1][0]]) == two.labels([_codes(one)[1][0]])
    with pytest.raises(sqlite3.DatabaseError, match="never change"):
        one._write("UPDATE labels SET text = 'other' WHERE text = 'x'")
    one.close()
    two.close()


def test_a_value_that_is_not_text_gets_no_metrics(store):
    store.add_call(call(model=123))  # type: ignore[arg-type]
    assert store.packed_call_rows()[0][0] is None  # readers use the plain columns
    assert store.calls()[0]["model"] == "123"


def test_labels_are_committed_before_the_calls_that_use_them(db):
    s = Store(db)
    failing = [call(conversation_id="new-conv", model="new-model"),
               call(agent=None, conversation_id="c2")]  # NOT NULL: the batch rolls back
    with pytest.raises(sqlite3.IntegrityError):
        s.add_calls(failing)
    assert s.calls() == []
    s.add_call(call(conversation_id="new-conv", model="new-model"))  # cached label ids
    (codes,) = _codes(s)
    other = Store(db)  # no cache: the ids are in the file, with these texts
    assert other.labels(codes[:3]) == {codes[0]: "a", codes[1]: "new-conv",
                                       codes[2]: "new-model"}
    other.close()
    s.close()


# -- upgrading a v1 store -------------------------------------------------------------------------

#: The INSERT of the v1 and v2 writers (their ``calls`` had no ``call`` column).
_V1_CALL_INSERT = (
    "INSERT INTO calls (agent, conversation_id, turn, attempt, model, status, input_tokens, "
    "cached_tokens, output_tokens, thought_tokens, total_tokens, started_at, duration_s, ttft_s, "
    "retry_after_s, waited_s, key_id, error, parent, metrics) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _v1_row(record: CallRecord) -> tuple:
    """The row the v1 store wrote for ``record``: the plain columns (today's, but ``call``),
    v1 metrics."""
    row = record._params(None)
    row = row[:3] + row[4:]  # no call column
    usage = record.usage
    started = record.started_at.astimezone(timezone.utc)
    metrics = struct.pack(
        "<8q4d", record.turn, record.attempt, usage.input_tokens, usage.cached_tokens,
        usage.output_tokens, usage.thought_tokens, usage.total_tokens,
        (started - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1),
        record.duration_s, math.nan if record.ttft_s is None else record.ttft_s,
        math.nan if record.retry_after_s is None else record.retry_after_s, record.waited_s)
    return (*row[:-1], metrics)


def _v1_store(db: Path, monkeypatch, records: list[CallRecord]) -> None:
    """A v1 store (schema v1, rows as the v1 writer wrote them) at ``db``."""
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:1])
        s = Store(db)
        assert s.schema_version == 1
        s.close()
    with raw(db) as conn:
        conn.executemany(_V1_CALL_INSERT, [_v1_row(r) for r in records])
    conn.close()


def _old_calls(db: Path) -> tuple[pd.DataFrame, list[dict]]:
    """The calls of a v1 or v2 file, read from its plain columns as today's ``usage_df()``
    and ``Store.calls()`` should give them after the upgrade (``call`` 0)."""
    from agent_magics.frames import _USAGE_SPEC, _frame

    select = ", ".join("0" if column == "call" else column for column in CALL_COLUMNS)
    with raw(db) as conn:
        rows = conn.execute(f"SELECT {select} FROM calls ORDER BY id").fetchall()
    conn.close()
    frame = _frame(_USAGE_SPEC, rows).sort_values("started_at", kind="stable",
                                                  ignore_index=True)
    at = CALL_COLUMNS.index("started_at")
    calls = [{**dict(zip(CALL_COLUMNS, row, strict=True)), "started_at": parse_ts(row[at])}
             for row in rows]
    return frame, calls


def _v1_records() -> list[CallRecord]:
    out = []
    for i in range(300):
        quota = i % 7 == 0
        out.append(call(
            agent=f"agent{i % 3}", conversation_id=f"conv-{i % 40}", turn=1 + i // 40,
            attempt=i % 2, model=("gemini:flash", "openai:mini")[i % 2],
            status="quota" if quota else "ok",
            usage=UsageMetadata.of(i, 2 * i, cached_tokens=i % 5),
            started_at=T0 + timedelta(seconds=i * 1.5), duration_s=0.25 * i,
            ttft_s=None if quota else 0.01 * i, retry_after_s=2.0 if quota else None,
            waited_s=0.5 * (i % 3), key_id=("", "k1", "k2")[i % 3],
            parent=None if i % 4 else "boss", error=f"429 #{i}" if quota else None))
    return out


def test_a_v1_store_is_upgraded_in_place_and_keeps_every_row(db, monkeypatch):
    from agent_magics.frames import _USAGE_SPEC, _frame, _packed_usage_frame, usage_df

    records = _v1_records()
    _v1_store(db, monkeypatch, records)
    with raw(db) as conn:  # a v1 row whose metrics copy an edit had dropped
        conn.execute("UPDATE calls SET metrics = NULL WHERE id = 5")
    conn.close()
    before, calls_before = _old_calls(db)  # read as v1, from the plain columns
    assert len(before) == len(records)

    s = Store(db)  # upgrades
    assert s.schema_version == len(MIGRATIONS) >= 3
    assert s.calls() == calls_before
    assert all(metrics is not None for metrics, _ in s.packed_call_rows())  # all repacked
    fast = _packed_usage_frame(s.packed_call_rows(), s)
    assert fast is not None
    pd.testing.assert_frame_equal(usage_df(s), before)
    pd.testing.assert_frame_equal(_frame(_USAGE_SPEC, s.call_rows()), before)
    s.add_call(call(agent="agent1", conversation_id="conv-3", started_at=T0 + timedelta(days=1)))
    after = usage_df(s)
    assert len(after) == len(records) + 1 and after["conversation_id"].iloc[-1] == "conv-3"
    s.close()
    with raw(db) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_version")] == \
            list(range(1, len(MIGRATIONS) + 1))
    conn.close()


def test_upgrading_leaves_rows_it_cannot_pack_exactly_to_the_plain_columns(db, monkeypatch):
    from agent_magics.frames import _USAGE_SPEC, _frame, usage_df

    _v1_store(db, monkeypatch, _v1_records()[:10])
    with raw(db) as conn:  # hand edits: a timestamp in another format, a fractional count
        conn.execute("UPDATE calls SET started_at = '2025-03-04 05:06:07' WHERE id = 2")
        conn.execute("UPDATE calls SET input_tokens = 2.5 WHERE id = 3")
    conn.close()
    s = Store(db)
    assert [metrics is None for metrics, _ in s.packed_call_rows()][:4] == \
        [False, True, True, False]
    df = usage_df(s)
    pd.testing.assert_frame_equal(df, _frame(_USAGE_SPEC, s.call_rows()).sort_values(
        "started_at", kind="stable", ignore_index=True))
    assert df["started_at"].iloc[0] == pd.Timestamp("2025-03-04 05:06:07", tz="UTC")
    assert df["input_tokens"].iloc[2] == 2
    s.close()


def test_a_v2_store_gains_the_call_column_and_its_rows_read_back_as_call_0(db, monkeypatch):
    from agent_magics.frames import _USAGE_SPEC, _frame, _packed_usage_frame, usage_df

    records = _v1_records()[:50]
    _v1_store(db, monkeypatch, records)
    with monkeypatch.context() as patch:  # a v2 file, as the v2 code left it
        patch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:2])
        Store(db).close()
    with raw(db) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 2
        assert "call" not in [r[1] for r in conn.execute("PRAGMA table_info(calls)")]
        conn.execute("UPDATE calls SET metrics = x'0102' WHERE id = 7")  # a stray blob
    conn.close()
    before, calls_before = _old_calls(db)

    s = Store(db)  # upgrades to v3
    assert s.schema_version == len(MIGRATIONS) == 3
    assert s.calls() == calls_before and all(row["call"] == 0 for row in s.calls())
    packed = s.packed_call_rows()
    assert [metrics is None for metrics, _ in packed] == [i == 6 for i in range(len(records))]
    del packed[6]
    fast = _packed_usage_frame(packed, s)  # the v2 copies, with call 0 put in
    assert fast is not None
    pd.testing.assert_frame_equal(fast, before.drop(index=6).reset_index(drop=True))
    df = usage_df(s)
    pd.testing.assert_frame_equal(df, before)
    assert list(df.columns[2:5]) == ["turn", "call", "attempt"]
    assert df["call"].dtype == "int64" and (df["call"] == 0).all()

    s.add_call(call(agent="agent1", conversation_id="conv-3", turn=9, call=2, attempt=1,
                    started_at=T0 + timedelta(days=1)))
    assert s.packed_call_rows()[-1][0] is not None
    assert usage_df(s)[["turn", "call", "attempt"]].iloc[-1].tolist() == [9, 2, 1]
    s._write("UPDATE calls SET call = 4 WHERE id = 1")  # the stale-copy trigger watches call
    assert s.packed_call_rows()[0][0] is None
    assert usage_df(s)["call"].iloc[0] == 4
    pd.testing.assert_frame_equal(usage_df(s), _frame(_USAGE_SPEC, s.call_rows()))
    s.close()
    with raw(db) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_version")] == [1, 2, 3]
    conn.close()


# -- durability, threads, processes ---------------------------------------------------------------

def test_every_write_is_committed_at_once(store, db):
    store.add_call(call())
    store.add_step("c1", "a", Step("user", "text", "hi", turn=1))
    with raw(db) as other:  # another connection sees it while the store is still open
        assert other.execute("SELECT count(*) FROM calls").fetchone()[0] == 1
        assert other.execute("SELECT count(*) FROM steps").fetchone()[0] == 1
    other.close()


def test_a_crashing_process_loses_nothing_it_wrote(db):
    proc = run_python(f"""
        import os
        from agent_magics.store import Store, CallRecord
        from agent_magics.types import Step
        s = Store({str(db)!r})
        for i in range(20):
            s.add_call(CallRecord("a", "c1", 1, i, "scripted:echo", "ok"))
        s.add_step("c1", "a", Step("assistant", "text", "partial", turn=1, status="interrupted"))
        os._exit(1)  # no close, no atexit, no checkpoint
    """)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    s = Store(db)
    assert len(s.calls()) == 20
    assert [(r["text"], r["status"]) for r in s.steps()] == [("partial", "interrupted")]
    s.close()


def test_threads_share_one_store_safely(store):
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(100):
                store.add_step("c1", f"w{n}", Step("assistant", "text", str(i), turn=1))
                store.add_call(call(agent=f"w{n}", attempt=i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(20):
                store.steps(conversation_id="c1")
                store.calls()
                store.next_turn("c1")
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r["step"] for r in store.steps()) == list(range(400))
    assert len(store.calls()) == 400


def test_two_processes_writing_one_file_lose_no_rows(db):
    # Neither process finds an initialised file: they also race to create the schema.
    barrier = db.parent / "ready"
    code = f"""
        import pathlib, time
        from agent_magics.store import Store, CallRecord
        from agent_magics.types import Step
        s = Store({str(db)!r})
        ready = pathlib.Path({str(barrier)!r})
        ready.mkdir(parents=True, exist_ok=True)
        (ready / NAME).touch()
        deadline = time.monotonic() + 30  # both write at the same time
        while len(list(ready.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        for i in range(200):
            s.add_call(CallRecord(NAME, "shared", 1, i, "scripted:echo", "ok"))
            s.add_step("shared", NAME, Step("assistant", "text", str(i), turn=1))
        s.close()
    """
    procs = [run_python(code.replace("NAME", repr(f"p{n}"))) for n in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    s = Store(db)
    calls = s.calls()
    assert len(calls) == 400
    assert {c["agent"] for c in calls} == {"p0", "p1"}
    steps = s.steps(conversation_id="shared")
    assert len(steps) == 400
    assert sorted(r["step"] for r in steps) == list(range(400))  # no duplicate index
    assert s.schema_version == len(MIGRATIONS)
    s.close()


# -- secrets --------------------------------------------------------------------------------------

def test_key_like_text_never_reaches_the_file(store, db):
    assert scrub_secrets(FAKE_KEY) != FAKE_KEY  # the premise of the test
    store.ensure_agent("a", "m", {"system_instructions": f"use {FAKE_KEY}"})
    store.add_call(call(error=f"401 Unauthorized: invalid key {FAKE_KEY}"))
    step_id = store.add_step("c1", "a", Step("user", "text", f"my key is {FAKE_KEY}", turn=1,
                                             data={"headers": {"x-key": FAKE_KEY}}))
    store.update_step(step_id, text=f"edited {FAKE_KEY}")
    needle = FAKE_KEY.encode()

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in db.parent.iterdir() if p.is_file())

    assert Path(f"{db}-wal").exists()
    assert needle not in on_disk()
    assert needle[-20:] not in on_disk()
    assert "…" in store.calls()[0]["error"]
    store.close()
    assert needle not in db.read_bytes()
