"""SQLite history and usage store (design.md section 7).

One file holds every agent's conversations, their steps (the history) and every model call (each
attempt, with its usage). It is written as things happen -- every write is its own committed
transaction -- so a crashed kernel loses nothing already written and a new kernel can resume.

* Only the standard library's :mod:`sqlite3` is used here; pandas lives in :mod:`.frames`.
* File stores use WAL journaling (readers never block the writer), ``synchronous=NORMAL`` and a
  10 s ``busy_timeout``, so several kernels (processes) can share one file.
* One connection per :class:`Store`, opened with ``check_same_thread=False`` and guarded by a
  lock: the handle writes from the background event-loop thread while the notebook thread reads.
* Datetimes are stored as ISO-8601 UTC text with microseconds (``2025-01-02T03:04:05.000006+00:00``:
  readable in any SQLite tool and sortable as text) and read back as tz-aware UTC datetimes.
  Naive datetimes given to the store are taken to be UTC.
* The text columns of a call that repeat (agent, conversation, model, status, key, parent) are
  also stored as ids into the append-only ``labels`` table, packed with the numeric columns in
  ``calls.metrics``: a cache for bulk readers (``usage_df``), dropped by a trigger when a
  mirrored column is edited; the plain columns stay the source of truth.
* API keys never reach the store; free text (step text, tool payloads, error texts, config
  values) is passed through :func:`agent_magics.config.scrub_secrets` anyway before it is written.
* A file that is not ours -- random bytes, a damaged database, another application's SQLite
  database -- is never modified: opening it raises :class:`~agent_magics.errors.ConfigError`.
  Our databases carry ``PRAGMA application_id`` = :data:`APPLICATION_ID` and a ``schema_version``
  table.

Schema changes (migrations)
---------------------------
:data:`MIGRATIONS` is the ordered list of schema steps; entry ``i`` brings the schema from version
``i`` to ``i + 1``, and the schema version a file is at is the highest ``version`` recorded in its
``schema_version`` table. To change the schema, **append** a new entry -- a tuple of SQL
statements, or a callable ``fn(connection)`` for data rewrites -- and never edit, reorder or remove
an existing one (files in the wild have already applied them). Opening a store applies the
missing entries in order inside one ``BEGIN IMMEDIATE`` transaction (so two processes opening an
old file at once upgrade it exactly once, and a failing step leaves the file at its old version).
A file whose version is higher than ``len(MIGRATIONS)`` was written by a newer agent_magics and is
refused with a message saying to upgrade.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .config import mask_key, scrub_secrets
from .errors import ConfigError
from .types import Step, UsageMetadata, utcnow

__all__ = [
    "APPLICATION_ID",
    "CALL_COLUMNS",
    "CALL_SUMMARY_BY",
    "CALL_SUMMARY_COLUMNS",
    "HOME_ENV",
    "LABELLED_CALL_COLUMNS",
    "METRICS_FIELDS",
    "METRICS_FORMAT",
    "MIGRATIONS",
    "PACKED_CALL_COLUMNS",
    "STEP_COLUMNS",
    "CallRecord",
    "Store",
    "default_store",
    "format_ts",
    "parse_ts",
    "shared_store",
    "to_utc",
]

#: Environment variable naming the directory of the default store.
HOME_ENV = "AGENT_MAGICS_HOME"
#: File name of the default store inside that directory.
DEFAULT_FILENAME = "history.sqlite3"
#: ``PRAGMA application_id`` of our databases ("AMgc"); tells our files from other SQLite files.
APPLICATION_ID = 0x414D6763
#: How long a write waits for another process's write to finish before failing.
BUSY_TIMEOUT_S = 10.0

#: Text columns of ``calls`` that are also stored dictionary-encoded: each distinct text is a
#: row of the ``labels`` table and a call's ``metrics`` carries the label ids ("codes"; 0 = NULL).
LABELLED_CALL_COLUMNS: tuple[str, ...] = (
    "agent", "conversation_id", "model", "status", "key_id", "parent",
)
#: ``calls.metrics``: the numeric columns of a call and the label codes of its text columns,
#: packed little-endian (9 int64, 4 float64, 6 int32; ``started_at`` as microseconds since the
#: Unix epoch, NaN for an unknown float), so bulk readers (``usage_df``) decode them all at once
#: instead of creating ~20 Python objects per row.
METRICS_FIELDS: tuple[str, ...] = (
    "turn", "call", "attempt", "input_tokens", "cached_tokens", "output_tokens", "thought_tokens",
    "total_tokens", "started_at_us", "duration_s", "ttft_s", "retry_after_s", "waited_s",
    *(f"{column}_label" for column in LABELLED_CALL_COLUMNS),
)
METRICS_FORMAT = "<9q4d6i"
_METRICS = struct.Struct(METRICS_FORMAT)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

_SQLITE_MAGIC = b"SQLite format 3\x00"
_MEMORY = ":memory:"

Migration = Sequence[str] | Callable[[sqlite3.Connection], None]
#: A read filter: one value, several values (any of them), or None (no filter).
Filter = str | Iterable[str] | None

#: The ``metrics`` layout the v2 migration writes (frozen with it).
_V2_METRICS = struct.Struct("<8q4d6i")
#: What the v3 migration puts into a v2 ``metrics`` after ``turn`` (its first 8 bytes): the
#: new ``call`` column's value for every existing row, 0 (frozen with it).
_V3_CALL_ZERO = struct.pack("<q", 0)


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """Schema v2: the ``labels`` table, and label codes in every call's ``metrics``.

    ``labels`` gives each distinct text of :data:`LABELLED_CALL_COLUMNS` an id. It is append
    only -- ids are never reused (AUTOINCREMENT) and a row never changes (a trigger refuses
    updates) -- so processes may cache it. ``metrics`` (a cache of the plain columns, which stay
    the source of truth) is recomputed for every call in the new format, and the trigger that
    drops a stale copy now also watches the labelled text columns. Frozen, like every migration.
    """
    for statement in (
        """CREATE TABLE labels (
            id   INTEGER PRIMARY KEY AUTOINCREMENT,
            text TEXT NOT NULL UNIQUE
        )""",
        """CREATE TRIGGER labels_append_only BEFORE UPDATE ON labels
            BEGIN SELECT RAISE(ABORT, 'agent_magics labels never change'); END""",
        "DROP TRIGGER calls_metrics_stale",
        """CREATE TRIGGER calls_metrics_stale
            AFTER UPDATE OF agent, conversation_id, turn, attempt, model, status, input_tokens,
                cached_tokens, output_tokens, thought_tokens, total_tokens, started_at,
                duration_s, ttft_s, retry_after_s, waited_s, key_id, parent ON calls
            WHEN NEW.metrics IS NOT NULL
            BEGIN UPDATE calls SET metrics = NULL WHERE id = NEW.id; END""",
    ):
        conn.execute(statement)
    _repack_calls(conn, _V2_METRICS)


def _repack_calls(conn: sqlite3.Connection, packer: struct.Struct, chunk: int = 20_000) -> None:
    """Recompute ``calls.metrics`` of every call from its plain columns, in ``packer``'s layout
    (the numeric columns, then the label codes), adding the labels it needs. Runs inside the
    caller's transaction; rows it cannot pack exactly get NULL (readers then use the columns).
    Part of the v2 migration: keep what it does (a later layout gets its own rebuild step)."""
    labels: dict[str, int] = dict(conn.execute("SELECT text, id FROM labels").fetchall())
    last = 0
    while True:
        rows = conn.execute(
            "SELECT id, turn, attempt, input_tokens, cached_tokens, output_tokens, "
            "thought_tokens, total_tokens, started_at, duration_s, ttft_s, retry_after_s, "
            "waited_s, agent, conversation_id, model, status, key_id, parent FROM calls "
            "WHERE id > ? ORDER BY id LIMIT ?", (last, chunk)).fetchall()
        if not rows:
            return
        last = rows[-1][0]
        new = {text for row in rows for text in row[13:]
               if type(text) is str and text not in labels}
        if new:
            ordered = sorted(new)
            conn.executemany(_LABEL_INSERT, [(text,) for text in ordered])
            for start in range(0, len(ordered), _LABEL_CHUNK):
                part = ordered[start:start + _LABEL_CHUNK]
                labels.update(conn.execute(
                    f"SELECT text, id FROM labels WHERE text IN ({', '.join('?' * len(part))})",
                    part).fetchall())
        conn.executemany("UPDATE calls SET metrics = ? WHERE id = ?",
                         [(_repack_row(row[1:], packer, labels), row[0]) for row in rows])


def _migrate_v3(conn: sqlite3.Connection, chunk: int = 20_000) -> None:
    """Schema v3: ``calls.call``, the index of the model call within its turn (each tool round
    and a structured-output repair is a call of its own; ``attempt`` counts the quota retries
    of one call). Rows written before it are call 0. ``metrics`` gains ``call`` after ``turn``:
    a v2 copy gets 8 zero bytes there (exactly what its columns now say); any other blob is
    dropped (readers then use the columns). Frozen, like every migration."""
    for statement in (
        "ALTER TABLE calls ADD COLUMN call INTEGER NOT NULL DEFAULT 0",
        "DROP TRIGGER calls_metrics_stale",
        """CREATE TRIGGER calls_metrics_stale
            AFTER UPDATE OF agent, conversation_id, turn, call, attempt, model, status,
                input_tokens, cached_tokens, output_tokens, thought_tokens, total_tokens,
                started_at, duration_s, ttft_s, retry_after_s, waited_s, key_id, parent ON calls
            WHEN NEW.metrics IS NOT NULL
            BEGIN UPDATE calls SET metrics = NULL WHERE id = NEW.id; END""",
    ):
        conn.execute(statement)
    size, zero, last = _V2_METRICS.size, _V3_CALL_ZERO, 0
    while True:
        rows = conn.execute("SELECT id, metrics FROM calls WHERE id > ? AND metrics IS NOT NULL "
                            "ORDER BY id LIMIT ?", (last, chunk)).fetchall()
        if not rows:
            return
        last = rows[-1][0]
        conn.executemany("UPDATE calls SET metrics = ? WHERE id = ?", [
            (old[:8] + zero + old[8:] if type(old) is bytes and len(old) == size else None,
             row_id) for row_id, old in rows])


_INT, _TEXT = {int}, {str}
_REAL_OR_NULL, _TEXT_OR_NULL = {int, float, type(None)}, {str, type(None)}


def _repack_row(row: tuple, packer: struct.Struct, labels: dict[str, int]) -> bytes | None:
    """One call's metrics from its plain column values (see :func:`_repack_calls`)."""
    ints, started, floats, texts = row[:7], row[7], row[8:12], row[12:]
    if (not set(map(type, ints)) <= _INT or not set(map(type, floats)) <= _REAL_OR_NULL
            or floats[0] is None or floats[3] is None  # duration_s, waited_s are NOT NULL
            or not set(map(type, texts[:-1])) <= _TEXT or type(texts[-1]) not in _TEXT_OR_NULL):
        return None
    try:  # only the store's own timestamp text converts exactly to microseconds
        moment = datetime.fromisoformat(started) if type(started) is str else None
    except ValueError:
        moment = None
    if moment is None or format_ts(moment) != started:
        return None
    codes = [0 if text is None else labels.get(text, -1) for text in texts]
    if min(codes) < 0:
        return None
    try:
        return packer.pack(*ints, (to_utc(moment) - _EPOCH) // _MICROSECOND,
                           *(_NAN if value is None else float(value) for value in floats),
                           *codes)
    except (struct.error, OverflowError):
        return None


#: Ordered schema steps; see the module docstring before touching this list (append only).
MIGRATIONS: list[Migration] = [
    # v1: the initial schema.
    (
        f"PRAGMA application_id = {APPLICATION_ID}",
        """CREATE TABLE schema_version (
            version    INTEGER PRIMARY KEY,
            applied_at TEXT NOT NULL
        )""",
        """CREATE TABLE agents (
            name       TEXT PRIMARY KEY,
            model      TEXT NOT NULL DEFAULT '',
            config     TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        """CREATE TABLE conversations (
            id         TEXT PRIMARY KEY,
            agent      TEXT NOT NULL,
            model      TEXT,
            parent     TEXT,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX conversations_by_agent ON conversations (agent, created_at)",
        """CREATE TABLE steps (
            id              INTEGER PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            agent           TEXT NOT NULL,
            turn            INTEGER NOT NULL,
            step            INTEGER NOT NULL,
            role            TEXT NOT NULL,
            kind            TEXT NOT NULL,
            text            TEXT NOT NULL DEFAULT '',
            tool_name       TEXT,
            tool_call_id    TEXT,
            data            TEXT,
            status          TEXT NOT NULL DEFAULT 'ok',
            started_at      TEXT NOT NULL,
            finished_at     TEXT
        )""",
        "CREATE UNIQUE INDEX steps_by_conversation ON steps (conversation_id, turn, step)",
        "CREATE INDEX steps_by_agent ON steps (agent, started_at)",
        """CREATE TABLE calls (
            id              INTEGER PRIMARY KEY,
            agent           TEXT NOT NULL,
            conversation_id TEXT NOT NULL,
            turn            INTEGER NOT NULL,
            attempt         INTEGER NOT NULL,
            model           TEXT NOT NULL,
            status          TEXT NOT NULL,
            input_tokens    INTEGER NOT NULL DEFAULT 0,
            cached_tokens   INTEGER NOT NULL DEFAULT 0,
            output_tokens   INTEGER NOT NULL DEFAULT 0,
            thought_tokens  INTEGER NOT NULL DEFAULT 0,
            total_tokens    INTEGER NOT NULL DEFAULT 0,
            started_at      TEXT NOT NULL,
            duration_s      REAL NOT NULL DEFAULT 0,
            ttft_s          REAL,
            retry_after_s   REAL,
            waited_s        REAL NOT NULL DEFAULT 0,
            key_id          TEXT NOT NULL DEFAULT '',
            error           TEXT,
            parent          TEXT,
            metrics         BLOB
        )""",
        "CREATE INDEX calls_by_conversation ON calls (conversation_id, turn)",
        "CREATE INDEX calls_by_agent ON calls (agent)",
        # metrics is a derived copy: any change to the columns it mirrors drops it, and readers
        # then use the columns themselves.
        """CREATE TRIGGER calls_metrics_stale
            AFTER UPDATE OF turn, attempt, input_tokens, cached_tokens, output_tokens,
                thought_tokens, total_tokens, started_at, duration_s, ttft_s, retry_after_s,
                waited_s ON calls
            WHEN NEW.metrics IS NOT NULL
            BEGIN UPDATE calls SET metrics = NULL WHERE id = NEW.id; END""",
    ),
    # v2: dictionary-encoded text columns (the labels table, label codes in metrics).
    _migrate_v2,
    # v3: calls.call, the model call's index within its turn (in metrics after turn).
    _migrate_v3,
]

#: Columns of :meth:`Store.call_rows` (the order of ``usage_df()``).
CALL_COLUMNS: tuple[str, ...] = (
    "agent", "conversation_id", "turn", "call", "attempt", "model", "status",
    "input_tokens", "cached_tokens", "output_tokens", "thought_tokens", "total_tokens",
    "started_at", "duration_s", "ttft_s", "retry_after_s", "waited_s", "key_id", "parent", "error",
)
#: Columns of :meth:`Store.step_rows` (the order of ``history_df()``).
STEP_COLUMNS: tuple[str, ...] = (
    "agent", "conversation_id", "turn", "step", "role", "kind", "text", "tool_name",
    "started_at", "finished_at", "status", "parent", "tool_call_id", "data",
)

#: Allowed ``by`` of :meth:`Store.call_summary` (and ``usage_df(by=...)``).
CALL_SUMMARY_BY: tuple[str, ...] = ("model", "agent", "day")
#: Columns of :meth:`Store.call_summary` after the group key.
CALL_SUMMARY_COLUMNS: tuple[str, ...] = (
    "calls", "ok", "quota", "errors", "input_tokens", "cached_tokens", "output_tokens",
    "thought_tokens", "total_tokens", "duration_s", "waited_s", "mean_ttft_s",
)
_SUMMARY_KEYS = {"model": "model", "agent": "agent", "day": "substr(started_at, 1, 10)"}
_SUMMARY_SELECT = (
    "COUNT(*), SUM(status = 'ok'), SUM(status = 'quota'), SUM(status = 'error'), "
    "SUM(input_tokens), SUM(cached_tokens), SUM(output_tokens), SUM(thought_tokens), "
    "SUM(total_tokens), TOTAL(duration_s), TOTAL(waited_s), AVG(ttft_s)"
)

_CALL_SELECT = "SELECT " + ", ".join(CALL_COLUMNS) + " FROM calls"
_STEP_SELECT = (
    "SELECT s.agent, s.conversation_id, s.turn, s.step, s.role, s.kind, s.text, s.tool_name, "
    "s.started_at, s.finished_at, s.status, c.parent, s.tool_call_id, s.data "
    "FROM steps AS s LEFT JOIN conversations AS c ON c.id = s.conversation_id"
)
_CALL_INSERT = (
    "INSERT INTO calls (agent, conversation_id, turn, call, attempt, model, status, "
    "input_tokens, cached_tokens, output_tokens, thought_tokens, total_tokens, started_at, "
    "duration_s, ttft_s, retry_after_s, waited_s, key_id, error, parent, metrics) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: Columns of :meth:`Store.packed_call_rows`.
PACKED_CALL_COLUMNS: tuple[str, ...] = ("metrics", "error")
_PACKED_CALL_SELECT = (
    f"SELECT CASE WHEN length(metrics) = {_METRICS.size} THEN metrics END, error FROM calls"
)
_LABEL_INSERT = "INSERT OR IGNORE INTO labels (text) VALUES (?)"
#: Labels looked up per statement (well below SQLite's smallest variable limit, 999).
_LABEL_CHUNK = 500
# The step's index within its (conversation, turn) is computed in the same statement, so it is
# atomic even with several processes writing one conversation (a single write statement holds
# the write lock from its first read).
_STEP_INSERT = (
    "INSERT INTO steps (conversation_id, agent, turn, step, role, kind, text, tool_name, "
    "tool_call_id, data, status, started_at, finished_at) "
    "SELECT :conversation_id, :agent, :turn, COALESCE(MAX(step) + 1, 0), :role, :kind, :text, "
    ":tool_name, :tool_call_id, :data, :status, :started_at, :finished_at "
    "FROM steps WHERE conversation_id = :conversation_id AND turn = :turn"
)
_CONVERSATION_UPSERT = (
    "INSERT INTO conversations (id, agent, model, parent, created_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET model = COALESCE(conversations.model, excluded.model), "
    "parent = COALESCE(conversations.parent, excluded.parent)"
)


# -- values in and out ----------------------------------------------------------------------------

def to_utc(value: datetime | float | str) -> datetime:
    """A datetime (naive = UTC), unix time or ISO-8601 string as a tz-aware UTC datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        if value.utcoffset():
            return value.astimezone(timezone.utc)
        return value if value.tzinfo is timezone.utc else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, timezone.utc)
    if isinstance(value, str):
        try:
            return to_utc(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
        except ValueError:
            pass
    raise TypeError(f"expected a datetime, got {value!r}")


def format_ts(value: datetime | float | str | None) -> str | None:
    """A datetime (naive = UTC), unix time or ISO string as the store's ISO-8601 UTC text."""
    if value is None:
        return None
    return to_utc(value).isoformat(timespec="microseconds")


def parse_ts(text: str | None) -> datetime | None:
    """The store's ISO text back as a tz-aware UTC datetime."""
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _dump_json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):  # circular structures, odd keys
        text = json.dumps(str(value), ensure_ascii=False)
    return scrub_secrets(text)


def _load_json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


_SENSITIVE_NAME = re.compile(
    r"(api[_-]?key|secret|password|passwd|authorization|access[_-]?token|auth[_-]?token|"
    r"bearer|credential)", re.IGNORECASE)


def _redact(value: Any) -> Any:
    """Mask values stored under key-like names (defensive: configs never carry keys)."""
    if isinstance(value, dict):
        return {k: (mask_key(str(v)) if v and isinstance(k, str) and _SENSITIVE_NAME.search(k)
                    else _redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    return value


def _is_busy(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (and their extended codes)
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _scrub(text: str | None) -> str | None:
    return None if text is None else scrub_secrets(str(text))


# -- records --------------------------------------------------------------------------------------

@dataclass
class CallRecord:
    """One attempt at one model call, as written to the ``calls`` table. ``call`` is the
    model call's 0-based index within its turn (the calls after each tool round, a repair
    call), ``attempt`` the 0-based quota retry within that call."""

    agent: str
    conversation_id: str
    turn: int
    attempt: int
    model: str
    status: str  # ok | quota | error | cancelled | interrupted
    usage: UsageMetadata = field(default_factory=UsageMetadata)
    started_at: datetime = field(default_factory=utcnow)
    duration_s: float = 0.0
    ttft_s: float | None = None
    retry_after_s: float | None = None
    waited_s: float = 0.0
    key_id: str = ""
    error: str | None = None
    parent: str | None = None  # name of the parent agent, for sub-agents
    call: int = 0  # (last, so positional construction keeps working)

    def _label_texts(self) -> tuple:
        """The values of :data:`LABELLED_CALL_COLUMNS`, as they are written to ``calls``."""
        return (self.agent, self.conversation_id, self.model, self.status, self.key_id or "",
                self.parent)

    def _params(self, codes: Sequence[int] | None) -> tuple:
        """The ``calls`` row (``_CALL_INSERT`` order), with the packed ``metrics`` copy.

        ``codes`` are the label ids of :meth:`_label_texts` (None: no metrics, readers then use
        the plain columns)."""
        usage = _NO_USAGE if self.usage is None else self.usage  # (bool() of it is slow)
        started = self.started_at
        if type(started) is not datetime or started.tzinfo is not timezone.utc:
            started = to_utc(started)
        turn, call, attempt = int(self.turn), int(self.call), int(self.attempt)
        tokens = (int(usage.input_tokens), int(usage.cached_tokens), int(usage.output_tokens),
                  int(usage.thought_tokens), int(usage.total_tokens))
        duration, waited = float(self.duration_s or 0.0), float(self.waited_s or 0.0)
        ttft = None if self.ttft_s is None else float(self.ttft_s)
        retry = None if self.retry_after_s is None else float(self.retry_after_s)
        try:
            metrics: bytes | None = None if codes is None else _METRICS.pack(
                turn, call, attempt, *tokens, (started - _EPOCH) // _MICROSECOND, duration,
                _NAN if ttft is None else ttft, _NAN if retry is None else retry, waited, *codes)
        except (struct.error, OverflowError):  # out of int64 range: readers use the columns
            metrics = None
        error = None if self.error is None else scrub_secrets(str(self.error))
        return (self.agent, self.conversation_id, turn, call, attempt, self.model, self.status,
                *tokens, started.isoformat(timespec="microseconds"), duration, ttft, retry,
                waited, self.key_id or "", error, self.parent, metrics)


_NO_USAGE = UsageMetadata()
_NAN = math.nan


# -- the store ------------------------------------------------------------------------------------

class Store:
    """History and usage of every agent, in one SQLite file (or in memory).

    ``Store()`` opens the default file (:meth:`default_path`), ``Store(":memory:")`` a private
    in-memory store, ``Store(path)`` that file (parent directories are created). Safe to share
    between threads; several processes may open the same file.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        if path is None:
            path = self.default_path()
        self._memory = isinstance(path, str) and path == _MEMORY
        if self._memory:
            self.path = _MEMORY
        else:
            raw = os.fspath(path)
            if not str(raw).strip():
                raise ConfigError("store path is empty; pass a file path, ':memory:' or None")
            self.path = str(Path(raw).expanduser())
        self._lock = threading.RLock()
        self._known_conversations: set[str] = set()
        # The labels table, as far as seen (it is append-only, so this never goes stale).
        self._label_ids: dict[str, int] = {}
        self._label_texts: dict[int, str] = {}
        self._conn: sqlite3.Connection | None = None
        self._conn = self._open()

    # -- opening ---------------------------------------------------------------------------------

    @staticmethod
    def default_path() -> Path:
        """``$AGENT_MAGICS_HOME/history.sqlite3``, else under the platform's user data dir."""
        home = os.environ.get(HOME_ENV, "").strip()
        if home:
            return Path(home).expanduser() / DEFAULT_FILENAME
        import platformdirs

        return Path(platformdirs.user_data_dir("agent_magics", appauthor=False)) / DEFAULT_FILENAME

    def _refuse(self, why: str) -> ConfigError:
        return ConfigError(
            f"{self.path} {why}; it was left untouched - move it away, pass another store path, "
            f"or set {HOME_ENV} to another directory")

    def _check_file(self) -> None:
        """Refuse, before SQLite touches it, a file that cannot be one of our databases."""
        path = Path(self.path)
        if path.is_dir():
            raise ConfigError(f"store path {self.path} is a directory; pass a file path "
                              f"(e.g. {path / DEFAULT_FILENAME})")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the directory for the store {self.path} ({exc}); "
                              f"set {HOME_ENV} to a writable directory") from None
        try:
            with path.open("rb") as fh:
                header = fh.read(100)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ConfigError(f"cannot read the store {self.path} ({exc}); "
                              f"set {HOME_ENV} to a readable directory") from None
        if header and (len(header) < 100 or not header.startswith(_SQLITE_MAGIC)):
            raise self._refuse("is not an SQLite database (unknown or damaged content)")

    def _open(self) -> sqlite3.Connection:
        if not self._memory:
            self._check_file()
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the store {self.path} ({exc}); "
                              f"set {HOME_ENV} to a writable directory") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            version = self._inspect(conn)  # read-only: nothing written before this passes
            if not self._memory:
                self._enable_wal(conn)
                conn.execute("PRAGMA synchronous = NORMAL")
            if version < len(MIGRATIONS):
                self._migrate(conn)
        except ConfigError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_busy(exc):
                raise ConfigError(f"the store {self.path} is locked by another process; "
                                  "try again, or use another store path") from None
            raise self._refuse(f"is not a usable SQLite database ({exc})") from None
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _enable_wal(conn: sqlite3.Connection) -> None:
        """Switch to WAL journaling, retrying while another process holds a lock.

        SQLite does not call the busy handler for a journal-mode change, so two processes
        opening a new file at once would otherwise see "database is locked" at once.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.002
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _inspect(self, conn: sqlite3.Connection) -> int:
        """The schema version of the open database (0 = empty), or ConfigError if not ours."""
        objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if not objects and app_id in (0, APPLICATION_ID):
            return 0
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if app_id != APPLICATION_ID or not has_table:
            raise self._refuse("is an SQLite database that agent_magics did not create")
        version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        if not isinstance(version, int) or version < 1:
            raise self._refuse("has no agent_magics schema version (damaged store)")
        latest = len(MIGRATIONS)
        if version > latest:
            raise ConfigError(
                f"{self.path} was written by a newer agent_magics (store schema v{version}, this "
                f"version knows up to v{latest}); upgrade agent_magics "
                f"(pip install -U agent_magics) or set {HOME_ENV} to another directory")
        return version

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # serialises concurrent upgraders (other processes)
        try:
            version = self._inspect(conn)  # again: another process may have upgraded meanwhile
            for number in range(version + 1, len(MIGRATIONS) + 1):
                migration = MIGRATIONS[number - 1]
                try:
                    if callable(migration):
                        migration(conn)
                    else:
                        for statement in migration:
                            conn.execute(statement)
                except sqlite3.Error as exc:
                    raise ConfigError(
                        f"could not upgrade the store {self.path} to schema v{number} ({exc}); "
                        f"it is unchanged - report this, or set {HOME_ENV} to another directory"
                    ) from None
                conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                             (number, format_ts(utcnow())))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._conn is None

    @property
    def schema_version(self) -> int:
        return int(self._read("SELECT MAX(version) FROM schema_version")[0][0])

    @property
    def journal_mode(self) -> str:
        return str(self._read("PRAGMA journal_mode")[0][0])

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise ConfigError(f"the store {self.path} is closed")
        return conn

    def _read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple]:
        with self._lock:
            return self._connection().execute(sql, params).fetchall()

    def _write(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        with self._lock:  # autocommit: the statement is committed when execute returns
            return self._connection().execute(sql, params).lastrowid or 0

    def close(self) -> None:
        """Close the connection (idempotent). Everything written is already committed."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._conn is None else ""
        return f"<Store {self.path}{state}>"

    # -- writing ---------------------------------------------------------------------------------

    def ensure_agent(self, name: str, model: str, config: dict) -> None:
        """Create or update the agent's row (its model and a JSON-safe config summary)."""
        now = format_ts(utcnow())
        self._write(
            "INSERT INTO agents (name, model, config, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET model = excluded.model, "
            "config = excluded.config, updated_at = excluded.updated_at",
            (name, model or "", _dump_json(_redact(dict(config or {}))) or "{}", now, now))

    def ensure_conversation(self, conversation_id: str, agent: str, model: str,
                            parent: str | None = None) -> None:
        """Record the conversation if it is new (idempotent; fills a missing model/parent)."""
        with self._lock:
            self._write(_CONVERSATION_UPSERT,
                        (conversation_id, agent, model, parent, format_ts(utcnow())))
            self._known_conversations.add(conversation_id)

    def _auto_conversation(self, conversation_id: str, agent: str, model: str | None,
                           parent: str | None) -> None:
        if conversation_id not in self._known_conversations:
            self.ensure_conversation(conversation_id, agent, model, parent)  # type: ignore[arg-type]

    def next_turn(self, conversation_id: str) -> int:
        """1 + the highest turn recorded in the conversation (1 for a new one)."""
        row = self._read(
            "SELECT MAX(t) FROM (SELECT MAX(turn) AS t FROM steps WHERE conversation_id = ? "
            "UNION ALL SELECT MAX(turn) FROM calls WHERE conversation_id = ?)",
            (conversation_id, conversation_id))
        return int(row[0][0] or 0) + 1

    def add_step(self, conversation_id: str, agent: str, step: Step) -> int:
        """Append a history step; its index within (conversation, turn) is assigned here.

        Returns the row id (for :meth:`update_step`).
        """
        params = {
            "conversation_id": conversation_id, "agent": agent, "turn": int(step.turn),
            "role": step.role, "kind": step.kind, "text": _scrub(step.text) or "",
            "tool_name": step.tool_name, "tool_call_id": step.tool_call_id,
            "data": _dump_json(step.data), "status": step.status or "ok",
            "started_at": format_ts(step.started_at or utcnow()),
            "finished_at": format_ts(step.finished_at),
        }
        with self._lock:
            self._auto_conversation(conversation_id, agent, None, None)
            return self._write(_STEP_INSERT, params)

    def update_step(self, step_id: int, *, text: str | None = None, status: str | None = None,
                    finished_at: datetime | None = None, data: Any = None) -> None:
        """Change a step in place (e.g. the streamed text so far, ``interrupted``, the arguments
        a hook gave a tool call)."""
        sets: list[str] = []
        params: list[Any] = []
        if text is not None:
            sets.append("text = ?")
            params.append(_scrub(text))
        if data is not None:
            sets.append("data = ?")
            params.append(_dump_json(data))
        if status is not None:
            sets.append("status = ?")
            params.append(status)
        if finished_at is not None:
            sets.append("finished_at = ?")
            params.append(format_ts(finished_at))
        if sets:
            self._write(f"UPDATE steps SET {', '.join(sets)} WHERE id = ?", (*params, step_id))

    def _add_labels(self, texts: Iterable[str]) -> None:
        """Make sure the texts have label ids, learning them (committed before any call uses
        them, so an id is never seen that a rollback could take back and hand to another text)."""
        with self._lock:
            new = [text for text in dict.fromkeys(texts) if text not in self._label_ids]
            if not new:
                return
            conn = self._connection()
            if len(new) == 1:
                conn.execute(_LABEL_INSERT, new)  # autocommit
            else:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(_LABEL_INSERT, [(text,) for text in new])
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            for start in range(0, len(new), _LABEL_CHUNK):
                part = new[start:start + _LABEL_CHUNK]
                for label_id, text in conn.execute(
                        f"SELECT id, text FROM labels WHERE text IN ({', '.join('?' * len(part))})",
                        part):
                    self._label_ids[text] = label_id
                    self._label_texts[label_id] = text

    def _codes(self, texts: tuple) -> tuple[int, ...] | None:
        """Label ids of a call's labelled texts (0 for NULL), adding new labels; None if a
        value is not a str (that call then has no metrics)."""
        known = self._label_ids
        try:
            return tuple([0 if text is None else known[text] for text in texts])
        except (KeyError, TypeError):
            pass
        if any(text is not None and type(text) is not str for text in texts):
            return None
        self._add_labels(text for text in texts if text is not None)
        codes = tuple([0 if text is None else known.get(text, -1) for text in texts])
        return None if -1 in codes else codes

    def add_call(self, record: CallRecord) -> int:
        """Append one model call (one attempt); returns its row id."""
        with self._lock:
            self._auto_conversation(record.conversation_id, record.agent, record.model,
                                    record.parent)
            params = record._params(self._codes(record._label_texts()))
            return self._write(_CALL_INSERT, params)

    def add_calls(self, records: Iterable[CallRecord]) -> int:
        """Append many calls in one transaction (imports, benchmarks); returns how many."""
        records = list(records)
        with self._lock:
            for record in records:
                self._auto_conversation(record.conversation_id, record.agent, record.model,
                                        record.parent)
            texts = [record._label_texts() for record in records]
            try:
                distinct = list(dict.fromkeys(itertools.chain.from_iterable(texts)))
            except TypeError:  # an unhashable value: those calls get no metrics
                distinct = [text for row in texts for text in row if type(text) is str]
            self._add_labels(text for text in distinct if type(text) is str)
            rows = [record._params(self._codes(row))
                    for record, row in zip(records, texts, strict=True)]
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_CALL_INSERT, rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return len(rows)

    # -- reading ---------------------------------------------------------------------------------

    @staticmethod
    def _where(alias: str, agent: Filter, conversation_id: Filter) -> tuple[str, list]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, wanted in (("agent", agent), ("conversation_id", conversation_id)):
            if wanted is None:
                continue
            if isinstance(wanted, str):
                clauses.append(f"{alias}{column} = ?")
                params.append(wanted)
            else:
                values = list(dict.fromkeys(wanted))
                clauses.append(f"{alias}{column} IN ({', '.join('?' * len(values))})"
                               if values else "0")
                params.extend(values)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def call_rows(self, *, agent: Filter = None, conversation_id: Filter = None) -> list[tuple]:
        """Raw ``calls`` rows as tuples in :data:`CALL_COLUMNS` order, in insertion order.

        Datetimes are the stored ISO text. This is what :func:`agent_magics.frames.usage_df`
        builds its frame from (one SELECT, no per-row Python work).
        """
        where, params = self._where("", agent, conversation_id)
        return self._read(f"{_CALL_SELECT}{where} ORDER BY id", params)

    def packed_call_rows(self, *, agent: Filter = None,
                         conversation_id: Filter = None) -> list[tuple]:
        """Calls for bulk readers: ``(metrics, error)`` tuples (:data:`PACKED_CALL_COLUMNS`),
        in insertion order.

        ``metrics`` is the :data:`METRICS_FORMAT` packing of :data:`METRICS_FIELDS` -- the
        numeric columns and the label ids of :data:`LABELLED_CALL_COLUMNS` (texts from
        :meth:`labels`, 0 = NULL) -- or ``None`` where it is missing or stale (then read that
        row with :meth:`call_rows`). Only two values per row cross into Python, and ``error``
        is usually NULL.
        """
        where, params = self._where("", agent, conversation_id)
        return self._read(f"{_PACKED_CALL_SELECT}{where} ORDER BY id", params)

    def labels(self, ids: Iterable[int]) -> dict[int, str]:
        """The texts of those label ids that exist (labels never change, so they are cached)."""
        wanted = list(dict.fromkeys(ids))
        with self._lock:
            known = self._label_texts
            missing = [label_id for label_id in wanted if label_id not in known]
            for start in range(0, len(missing), _LABEL_CHUNK):
                part = missing[start:start + _LABEL_CHUNK]
                for label_id, text in self._read(
                        f"SELECT id, text FROM labels WHERE id IN ({', '.join('?' * len(part))})",
                        part):
                    known[label_id] = text
                    self._label_ids[text] = label_id
            return {label_id: known[label_id] for label_id in wanted if label_id in known}

    def call_summary(self, by: str, *, agent: Filter = None,
                     conversation_id: Filter = None) -> list[tuple]:
        """Calls aggregated in SQL, one tuple per ``by`` value (sorted): the key (model, agent,
        or UTC day as ``YYYY-MM-DD``) then :data:`CALL_SUMMARY_COLUMNS`."""
        if by not in _SUMMARY_KEYS:
            raise ConfigError(f"cannot summarise usage by {by!r}; use one of "
                              f"{', '.join(repr(b) for b in CALL_SUMMARY_BY)}")
        where, params = self._where("", agent, conversation_id)
        return self._read(f"SELECT {_SUMMARY_KEYS[by]} AS key, {_SUMMARY_SELECT} FROM calls"
                          f"{where} GROUP BY key ORDER BY key", params)

    def step_rows(self, *, agent: Filter = None, conversation_id: Filter = None) -> list[tuple]:
        """Raw ``steps`` rows as tuples in :data:`STEP_COLUMNS` order (``data`` is JSON text),
        sorted by start time, then conversation, turn and step index."""
        where, params = self._where("s.", agent, conversation_id)
        return self._read(
            f"{_STEP_SELECT}{where} ORDER BY s.started_at, s.conversation_id, s.turn, s.step, s.id",
            params)

    def steps(self, *, agent: Filter = None, conversation_id: Filter = None) -> list[dict]:
        """History steps as dicts (tz-aware datetimes, decoded ``data``), in time order."""
        rows = self.step_rows(agent=agent, conversation_id=conversation_id)
        out = []
        for row in rows:
            item = dict(zip(STEP_COLUMNS, row, strict=True))
            item["started_at"] = parse_ts(item["started_at"])
            item["finished_at"] = parse_ts(item["finished_at"])
            item["data"] = _load_json(item["data"])
            out.append(item)
        return out

    def calls(self, *, agent: Filter = None, conversation_id: Filter = None) -> list[dict]:
        """Model calls as dicts (tz-aware ``started_at``), in the order they were recorded."""
        out = []
        for row in self.call_rows(agent=agent, conversation_id=conversation_id):
            item = dict(zip(CALL_COLUMNS, row, strict=True))
            item["started_at"] = parse_ts(item["started_at"])
            out.append(item)
        return out

    def load_steps(self, conversation_id: str) -> list[Step]:
        """The conversation's steps as :class:`Step` objects, in turn/step order (to resume)."""
        rows = self._read(
            "SELECT role, kind, text, turn, tool_name, tool_call_id, data, status, started_at, "
            "finished_at FROM steps WHERE conversation_id = ? ORDER BY turn, step, id",
            (conversation_id,))
        return [
            Step(role=role, kind=kind, text=text, turn=turn, tool_name=tool_name,
                 tool_call_id=tool_call_id, data=_load_json(data), status=status,
                 started_at=parse_ts(started), finished_at=parse_ts(finished))
            for role, kind, text, turn, tool_name, tool_call_id, data, status, started, finished
            in rows
        ]

    _CONVERSATION_SELECT = (
        "SELECT c.id, c.agent, c.model, c.parent, c.created_at, "
        "(SELECT MAX(turn) FROM steps WHERE conversation_id = c.id), "
        "(SELECT MAX(turn) FROM calls WHERE conversation_id = c.id), "
        "(SELECT COUNT(*) FROM steps WHERE conversation_id = c.id), "
        "(SELECT COUNT(*) FROM calls WHERE conversation_id = c.id), "
        "MAX(c.created_at, "
        "    IFNULL((SELECT MAX(started_at) FROM steps WHERE conversation_id = c.id), ''), "
        "    IFNULL((SELECT MAX(started_at) FROM calls WHERE conversation_id = c.id), '')) "
        "    AS updated_at, "
        "c.rowid AS seq "
        "FROM conversations AS c"
    )

    def conversations(self, agent: str | None = None) -> list[dict]:
        """Every conversation (of ``agent``), oldest first: ``id``, ``agent``, ``model``,
        ``parent``, ``created_at``, ``updated_at`` (last activity), ``last_turn``, ``steps``,
        ``calls``."""
        sql = self._CONVERSATION_SELECT
        params: tuple = ()
        if agent is not None:
            sql += " WHERE c.agent = ?"
            params = (agent,)
        out = []
        for (cid, name, model, parent, created, step_turn, call_turn, n_steps, n_calls,
             updated, _seq) in self._read(sql + " ORDER BY c.created_at, c.rowid", params):
            out.append({
                "id": cid, "agent": name, "model": model, "parent": parent,
                "created_at": parse_ts(created), "updated_at": parse_ts(updated),
                "last_turn": max(step_turn or 0, call_turn or 0),
                "steps": n_steps, "calls": n_calls,
            })
        return out

    def latest_conversation(self, agent: str) -> str | None:
        """The agent's most recently active conversation (last step or call), if any."""
        rows = self._read(
            f"SELECT id FROM ({self._CONVERSATION_SELECT} WHERE c.agent = ?) "
            "ORDER BY updated_at DESC, seq DESC LIMIT 1", (agent,))
        return rows[0][0] if rows else None

    def agents(self) -> list[dict]:
        """Every agent recorded: ``name``, ``model``, ``config`` (dict), ``created_at``,
        ``updated_at``."""
        return [
            {"name": name, "model": model, "config": _load_json(config),
             "created_at": parse_ts(created), "updated_at": parse_ts(updated)}
            for name, model, config, created, updated in self._read(
                "SELECT name, model, config, created_at, updated_at FROM agents "
                "ORDER BY created_at, name")
        ]


# -- shared stores --------------------------------------------------------------------------------

_shared_lock = threading.Lock()
_shared: dict[str, Store] = {}


def shared_store(path: str | bytes | os.PathLike | None = None) -> Store:
    """The process-wide :class:`Store` for ``path`` (``None`` = :meth:`Store.default_path`).

    Every caller asking for the same file (or ``":memory:"``) gets the same open store, so all
    handles of a kernel share one connection per file and one in-memory store. A store that was
    closed is reopened on the next call.
    """
    if path is None:
        path = Store.default_path()
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    key = path if path == _MEMORY else str(Path(os.fspath(path)).expanduser())
    with _shared_lock:
        store = _shared.get(key)
        if store is None or store.closed:
            store = _shared[key] = Store(key)
        return store


def default_store() -> Store:
    """The shared store at :meth:`Store.default_path` (honours ``AGENT_MAGICS_HOME`` as it is
    when called)."""
    return shared_store(None)
