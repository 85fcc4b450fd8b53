"""pandas DataFrames of the recorded history and usage (design.md section 7).

pandas is imported inside the functions, so importing this module stays cheap.

Frames are built from one SELECT per call (a list of tuples straight from SQLite), turned into a
2-D object array once and converted column by column with vectorised numpy/pandas operations;
timestamps are parsed once per column. ``usage_df()`` reads only the packed ``metrics`` blob and
the (mostly NULL) ``error`` of each call (see :mod:`agent_magics.store`): one ``np.frombuffer``
decodes every numeric column and the label ids of the text columns, whose few distinct texts
come from the ``labels`` table, so text columns are built by indexing a small array of labels
and no per-row strings are created (0.12-0.2 s for 100,000 calls instead of ~0.55 s reading
the text columns, ``benchmarks/bench_usage_df.py``). Rows without valid metrics (edited by
hand) make it fall back to reading the plain columns. ``usage_df(by=...)`` is aggregated in
SQL.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .store import (
    CALL_COLUMNS,
    CALL_SUMMARY_BY,
    CALL_SUMMARY_COLUMNS,
    LABELLED_CALL_COLUMNS,
    METRICS_FIELDS,
    METRICS_FORMAT,
    STEP_COLUMNS,
    Filter,
    Store,
    _dump_json,
    default_store,
    format_ts,
    shared_store,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "HISTORY_COLUMNS",
    "USAGE_BY",
    "USAGE_COLUMNS",
    "USAGE_SUMMARY_COLUMNS",
    "empty_history_df",
    "empty_usage_df",
    "empty_usage_summary_df",
    "history_df",
    "history_df_from_steps",
    "usage_df",
]

# Column kinds: "int" -> int64, "float" -> float64 (NaN = unknown), "time" -> datetime64[ns, UTC],
# "text" -> pandas' default string dtype (missing = NA), "json" -> decoded Python objects.
_HISTORY_SPEC: dict[str, str] = {
    "agent": "text", "conversation_id": "text", "turn": "int", "step": "int", "role": "text",
    "kind": "text", "text": "text", "tool_name": "text", "started_at": "time",
    "finished_at": "time", "status": "text", "parent": "text", "tool_call_id": "text",
    "data": "json",
}
_USAGE_SPEC: dict[str, str] = {
    "agent": "text", "conversation_id": "text", "turn": "int", "call": "int", "attempt": "int",
    "model": "text", "status": "text", "input_tokens": "int", "cached_tokens": "int",
    "output_tokens": "int", "thought_tokens": "int", "total_tokens": "int", "started_at": "time",
    "duration_s": "float", "ttft_s": "float", "retry_after_s": "float", "waited_s": "float",
    "key_id": "text", "parent": "text", "error": "text",
}
assert tuple(_HISTORY_SPEC) == STEP_COLUMNS and tuple(_USAGE_SPEC) == CALL_COLUMNS

#: Columns of :func:`history_df`, in order.
HISTORY_COLUMNS: tuple[str, ...] = STEP_COLUMNS
#: Columns of :func:`usage_df`, in order.
USAGE_COLUMNS: tuple[str, ...] = CALL_COLUMNS
#: Allowed values of ``usage_df(by=...)``.
USAGE_BY: tuple[str, ...] = CALL_SUMMARY_BY
#: Columns of the aggregated ``usage_df(by=...)`` view (its index is named after ``by``).
USAGE_SUMMARY_COLUMNS: tuple[str, ...] = CALL_SUMMARY_COLUMNS
_SUMMARY_SPEC: dict[str, str] = {
    name: "float" if name in ("duration_s", "waited_s", "mean_ttft_s") else "int"
    for name in CALL_SUMMARY_COLUMNS
}

_text_dtype_cache: list[Any] = []


def _text_dtype() -> Any:
    """pandas' default dtype for strings: ``str`` on pandas 3, ``object`` before."""
    if not _text_dtype_cache:
        import pandas as pd

        _text_dtype_cache.append(pd.Series(["x"]).dtype)
    return _text_dtype_cache[0]


def _to_utc(values: Any) -> Any:
    import pandas as pd

    try:
        parsed = pd.to_datetime(values, utc=True, format="ISO8601")
    except (TypeError, ValueError):  # pandas < 2.0 has no format="ISO8601"
        parsed = pd.to_datetime(values, utc=True)
    return parsed.astype("datetime64[ns, UTC]")


def _decode(text: Any) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _frame(spec: dict[str, str], rows: list[tuple]) -> pd.DataFrame:
    """Build a frame from row tuples, converting each column once, vectorised."""
    import numpy as np
    import pandas as pd

    width = len(spec)
    if rows:
        table = np.empty((len(rows), width), dtype=object)
        table[:] = rows  # one C-level copy; tuples become rows of the 2-D object array
    else:
        table = np.empty((0, width), dtype=object)
    text_dtype = _text_dtype()
    columns: dict[str, Any] = {}
    for j, (name, kind) in enumerate(spec.items()):
        values = table[:, j]
        if kind == "int":
            columns[name] = values.astype(np.int64)
        elif kind == "float":
            columns[name] = values.astype(np.float64)  # None -> NaN
        elif kind == "time":
            columns[name] = _to_utc(values).array
        elif kind == "json":
            decoded = np.empty(len(values), dtype=object)
            decoded[:] = [_decode(v) for v in values]
            columns[name] = decoded
        else:
            columns[name] = pd.array(values, dtype=text_dtype)
    return pd.DataFrame(columns, copy=False)


# -- history --------------------------------------------------------------------------------------

def empty_history_df() -> pd.DataFrame:
    """A zero-row :func:`history_df` with the right columns and dtypes."""
    return _frame(_HISTORY_SPEC, [])


def _open(store: Store | str | os.PathLike | None) -> Store:
    """The store to read: ``None`` = the default store, a path (or ``":memory:"``) = the
    process-wide shared store for it (:func:`agent_magics.store.shared_store`)."""
    if store is None:
        return default_store()
    if isinstance(store, (str, bytes, os.PathLike)):
        return shared_store(store)
    if hasattr(store, "call_rows"):
        return store
    raise ConfigError(f"store must be a Store, a path or None, got {type(store).__name__}")


def history_df(store: Store | str | os.PathLike | None = None, *, agent: Filter = None,
               conversation_id: Filter = None) -> pd.DataFrame:
    """Every recorded step (of ``agent`` / ``conversation_id``), one row each.

    Columns: ``agent``, ``conversation_id``, ``turn``, ``step`` (int64), ``role``, ``kind``,
    ``text``, ``tool_name``, ``started_at``, ``finished_at`` (datetime64[ns, UTC]), ``status``,
    ``parent`` (the parent agent of a sub-agent, else missing), ``tool_call_id``, ``data``
    (decoded tool arguments / results). Sorted by start time, then step order.
    ``agent`` / ``conversation_id`` take one value or a list of values. ``store=None`` reads
    the default store; a path reads that file.
    """
    rows = _open(store).step_rows(agent=agent, conversation_id=conversation_id)
    return _frame(_HISTORY_SPEC, rows)


def history_df_from_steps(steps: Iterable[Any], *, agent: str = "", conversation_id: str = "",
                          parent: str | None = None) -> pd.DataFrame:
    """A :func:`history_df`-shaped frame from in-memory :class:`~agent_magics.types.Step`
    objects (e.g. ``agent.history`` of a handle), in the given order."""
    rows = []
    counters: dict[int, int] = {}
    for step in steps:
        index = counters.get(step.turn, 0)
        counters[step.turn] = index + 1
        data = _dump_json(step.data)
        rows.append((agent, conversation_id, step.turn, index, step.role, step.kind, step.text,
                     step.tool_name, format_ts(step.started_at), format_ts(step.finished_at),
                     step.status, parent, step.tool_call_id, data))
    return _frame(_HISTORY_SPEC, rows)


# -- usage ----------------------------------------------------------------------------------------

def empty_usage_df() -> pd.DataFrame:
    """A zero-row :func:`usage_df` with the right columns and dtypes."""
    return _frame(_USAGE_SPEC, [])


def usage_df(store: Store | str | os.PathLike | None = None, *, agent: Filter = None,
             conversation_id: Filter = None, by: str | None = None) -> pd.DataFrame:
    """One row per model call (each attempt), or an aggregate with ``by``.

    Columns: ``agent``, ``conversation_id``, ``turn``, ``call`` (the model call's 0-based index
    within its turn: the calls after each tool round and a structured-output repair count on),
    ``attempt`` (0-based retry of that call after a quota error), ``model``, ``status``
    (ok/quota/error/cancelled/interrupted), the token counts ``input_tokens``,
    ``cached_tokens``, ``output_tokens``, ``thought_tokens``, ``total_tokens`` (int64),
    ``started_at`` (datetime64[ns, UTC]), ``duration_s``, ``ttft_s``, ``retry_after_s``,
    ``waited_s`` (float64, NaN where unknown), ``key_id`` (key fingerprint), ``parent``,
    ``error``. Sorted by start time (ties in recording order).

    ``by="model" | "agent" | "day"`` returns one row per model / agent / UTC day instead, with
    :data:`USAGE_SUMMARY_COLUMNS`: call count, ok calls, quota hits, errors, token sums, total
    duration and wait, and mean time to first token (aggregated in SQL).

    ``agent`` / ``conversation_id`` take one value or a list of values. ``store=None`` reads
    the default store; a path reads that file.
    """
    if by is not None:
        _check_by(by)
    source = _open(store)
    if by is not None:  # aggregated in SQL: no per-call rows cross into Python
        return _summary_frame(by, source.call_summary(
            by, agent=agent, conversation_id=conversation_id))
    packed = getattr(source, "packed_call_rows", None)
    frame = None if packed is None or not hasattr(source, "labels") else _packed_usage_frame(
        packed(agent=agent, conversation_id=conversation_id), source)
    if frame is None:  # some rows have no packed metrics: read the plain columns
        frame = _frame(_USAGE_SPEC, source.call_rows(agent=agent, conversation_id=conversation_id))
    if len(frame) > 1 and not frame["started_at"].is_monotonic_increasing:
        # Recording order is almost always time order; fix the rare exception (a stable sort
        # keeps recording order among equal times).
        frame = frame.sort_values("started_at", kind="stable", ignore_index=True)
    return frame


_metrics_dtype_cache: list[Any] = []


def _metrics_dtype() -> Any:
    """The numpy record dtype matching the store's ``METRICS_FORMAT`` struct."""
    if not _metrics_dtype_cache:
        import numpy as np

        kinds = {"q": "<i8", "i": "<i4", "d": "<f8"}
        codes = "".join(code * int(count or 1)
                        for count, code in re.findall(r"(\d*)([qid])", METRICS_FORMAT))
        dtype = np.dtype([(name, kinds[code])
                          for name, code in zip(METRICS_FIELDS, codes, strict=True)])
        assert dtype.itemsize == struct.calcsize(METRICS_FORMAT)
        _metrics_dtype_cache.append(dtype)
    return _metrics_dtype_cache[0]


def _packed_usage_frame(rows: list[tuple], source: Any) -> pd.DataFrame | None:
    """The usage frame from :meth:`Store.packed_call_rows` and :meth:`Store.labels`, or None
    if a row lacks metrics or a label is missing (then the caller reads the plain columns).

    All numeric columns and the label ids are decoded at once from the concatenated
    ``metrics`` blobs with one ``np.frombuffer``; text columns index the array of labels.
    """
    import numpy as np
    import pandas as pd

    if not rows:
        return empty_usage_df()
    try:
        packed = b"".join([row[0] for row in rows])
    except TypeError:  # a None: missing or stale metrics
        return None
    metrics = np.frombuffer(packed, dtype=_metrics_dtype())
    if len(metrics) != len(rows):
        return None
    text = _label_columns(metrics, source)
    if text is None:
        return None
    text["error"] = _sparse_text([row[1] for row in rows])
    columns: dict[str, Any] = {}
    for name, kind in _USAGE_SPEC.items():
        if kind == "text":
            columns[name] = text[name]
        elif kind == "time":
            started = pd.to_datetime(metrics["started_at_us"], unit="us", utc=True)
            columns[name] = started.astype("datetime64[ns, UTC]").array
        else:
            columns[name] = metrics[name].astype(np.int64 if kind == "int" else np.float64)
    return pd.DataFrame(columns, copy=False)


def _label_columns(metrics: Any, source: Any) -> dict[str, Any] | None:
    """The :data:`LABELLED_CALL_COLUMNS` as text arrays from the label ids in ``metrics``
    (0 = NULL), or None if an id has no label."""
    import numpy as np
    import pandas as pd

    codes = np.stack([metrics[f"{name}_label"] for name in LABELLED_CALL_COLUMNS]).astype(np.intp)
    if codes.min() < 0:
        return None
    ids, positions = _compact(codes)
    texts = source.labels(ids.tolist())
    if len(texts) != len(ids):
        return None
    labels = np.empty(len(ids) + 1, dtype=object)  # the last one, None (NA), is position -1
    labels[:-1] = [texts[label_id] for label_id in ids.tolist()]
    array = pd.array(labels, dtype=_text_dtype())
    return {name: array.take(positions[j]) for j, name in enumerate(LABELLED_CALL_COLUMNS)}


def _compact(codes: Any) -> tuple[Any, Any]:
    """The distinct non-zero ``codes`` (sorted) and each code's position among them (-1 for
    0), same shape as ``codes``."""
    import numpy as np

    top = int(codes.max())
    if top <= 4 * codes.size + 4096:  # label ids are dense: a lookup table beats sorting
        seen = np.zeros(top + 1, dtype=bool)
        seen[codes.ravel()] = True
        seen[0] = False
        ids = np.flatnonzero(seen)
        lookup = np.full(top + 1, -1, dtype=np.intp)
        lookup[ids] = np.arange(len(ids))
        return ids, lookup[codes]
    ids, inverse = np.unique(codes, return_inverse=True)
    inverse = inverse.reshape(codes.shape)
    if ids[0] == 0:
        ids, inverse = ids[1:], inverse - 1
    return ids, inverse


def _sparse_text(values: list) -> Any:
    """A text array from values that are mostly None, converting only the others."""
    import numpy as np
    import pandas as pd

    where = [i for i, value in enumerate(values) if value is not None]
    present = np.empty(len(where) + 1, dtype=object)  # the last one, None (NA), is position -1
    present[:-1] = [values[i] for i in where]
    positions = np.full(len(values), -1, dtype=np.intp)
    positions[where] = np.arange(len(where))
    return pd.array(present, dtype=_text_dtype()).take(positions)


def empty_usage_summary_df(by: str) -> pd.DataFrame:
    """A zero-row ``usage_df(by=by)`` with the right index, columns and dtypes."""
    _check_by(by)
    return _summary_frame(by, [])


def _check_by(by: str) -> None:
    if by not in USAGE_BY:
        raise ConfigError(f"usage_df(by={by!r}) is not supported; use one of "
                          f"{', '.join(repr(b) for b in USAGE_BY)} (or None for one row per call)")


def _summary_frame(by: str, rows: list[tuple]) -> pd.DataFrame:
    import pandas as pd

    keys = [row[0] for row in rows]
    frame = _frame(_SUMMARY_SPEC, [row[1:] for row in rows])
    if by == "day":
        index = pd.DatetimeIndex(_to_utc(pd.Series(keys, dtype=object)), name=by)
    else:
        index = pd.Index(keys, dtype=_text_dtype(), name=by)
    frame.index = index
    return frame
