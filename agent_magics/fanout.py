"""Fan-out: one prompt per row, many at once, one DataFrame back (``agent_magics.map``).

Every row is its own single-turn conversation on a sub-agent of one base agent, so all rows
share the runtime and the API key's QuotaState (backoff and rpm/tpm pacing hold across them)
and show up in ``usage_df()`` with the base agent as ``parent``. Failures are recorded per row,
not raised; results come back in input order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .errors import AgentError, ConfigError, QuotaExceeded, error_line

if TYPE_CHECKING:
    import pandas as pd

    from .handle import Agent

__all__ = ["amap", "map"]

COLUMNS = ["input", "reply", "output", "status", "error", "input_tokens", "output_tokens",
           "total_tokens", "latency_s", "attempts"]


def _inputs(prompts: Any, template: str | None) -> tuple[list[Any], list[str]]:
    """(index labels, prompt texts) from a list, a Series or a DataFrame (+ template)."""
    from .kernel.interpolate import interpolate

    kind = type(prompts).__name__
    if kind == "DataFrame":
        if template is None:
            raise ConfigError("map over a DataFrame needs a template with {column} fields, "
                              "e.g. map(df, 'Summarise {text}')")
        rows = prompts.to_dict("records")
        return list(prompts.index), [interpolate(template, {**row, "index": i})
                                     for i, row in zip(prompts.index, rows, strict=True)]
    if kind == "Series":
        labels, values = list(prompts.index), list(prompts)
    elif isinstance(prompts, str) or not isinstance(prompts, Iterable):
        raise ConfigError("map needs a list of prompts, a pandas Series or a DataFrame "
                          f"(got {type(prompts).__name__})")
    else:
        values = list(prompts)
        labels = list(range(len(values)))
    if template is None:
        return labels, [str(v) for v in values]
    return labels, [interpolate(template, {"value": v, "index": i})
                    for i, v in zip(labels, values, strict=True)]


async def amap(prompts: Any, template: str | None = None, *, agent: Agent | None = None,
               concurrency: int = 4, schema: Any = None, name: str = "map",
               progress: Callable[[int, int], None] | None = None,
               **config: Any) -> pd.DataFrame:
    """Async :func:`map`."""
    from .loop import run_async

    return await run_async(_run(prompts, template, agent=agent, concurrency=concurrency,
                                schema=schema, name=name, progress=progress, config=config))


def map(prompts: Any, template: str | None = None, *, agent: Agent | None = None,
        concurrency: int = 4, schema: Any = None, name: str = "map",
        progress: bool | Callable[[int, int], None] | None = None,
        **config: Any) -> pd.DataFrame:
    """Send one prompt per item of ``prompts`` and collect the replies as a DataFrame.

    ``prompts`` is a list of strings, a Series, or a DataFrame with ``template`` (``{column}``
    fields filled per row, lookup-only, as in ``%%agent``; with a list or Series the fields
    are ``{value}`` and ``{index}``). ``agent`` is the base handle (its runtime, key, config
    and policies are used); otherwise one is made from ``config`` (``model=``,
    ``system_instructions=``, ``store=``…). At most ``concurrency`` rows run at once.
    ``schema`` asks for structured output (column ``output``). ``progress``: a bar in
    notebooks (default there), or a callback ``(done, total)``.

    Columns: input, reply, output, status (ok/quota/error), error, input/output/total
    tokens, latency_s, attempts; the index is the input's.
    """
    from .loop import run_sync

    callback, bar = _progress(progress)
    try:
        return run_sync(_run(prompts, template, agent=agent, concurrency=concurrency,
                             schema=schema, name=name, progress=callback, config=config))
    finally:
        if bar is not None:
            bar.close()


async def _run(prompts: Any, template: str | None, *, agent: Agent | None, concurrency: int,
               schema: Any, name: str, progress: Callable[[int, int], None] | None,
               config: dict[str, Any]) -> pd.DataFrame:
    import pandas as pd

    from .handle import Agent

    if not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be an int >= 1, got {concurrency!r}")
    labels, texts = _inputs(prompts, template)
    if agent is None:
        store = config.pop("store", None)
        agent = Agent(name=name, store=store, **config)
    elif config:
        raise ConfigError("pass either agent= or config fields to map, not both")
    await agent.start()
    gate = asyncio.Semaphore(concurrency)
    rows: list[dict[str, Any]] = [{} for _ in texts]
    done = 0

    async def one(i: int, text: str) -> None:
        nonlocal done
        async with gate:
            child = agent.spawn_subagent(f"{agent.name}[{i}]")
            child.tool_runner = None  # rows run off the main thread: tools in workers
            row: dict[str, Any] = {"input": text, "reply": None, "output": None,
                                   "status": "ok", "error": None}
            start = time.perf_counter()
            response = None
            try:
                response = await child.chat(text, schema=schema)
                row["reply"] = await response.text()
                if schema is not None:
                    row["output"] = await response.structured_output()
            except QuotaExceeded as exc:
                row.update(status="quota", error=f"QuotaExceeded: {exc}")
            except Exception as exc:  # recorded per row, never raised
                row.update(status="error", error=error_line(exc))
            finally:
                usage = child.total_usage
                row.update(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                           total_tokens=usage.total_tokens,
                           latency_s=time.perf_counter() - start,
                           attempts=response.attempts if response is not None else 0)
                try:
                    await child.shutdown()
                except AgentError:
                    pass
                agent.subagents.pop(child.name, None)
            rows[i] = row
            done += 1
            if progress is not None:
                progress(done, len(texts))

    await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
    frame = pd.DataFrame(rows, columns=COLUMNS, index=pd.Index(labels))
    for column in ("input_tokens", "output_tokens", "total_tokens", "attempts"):
        frame[column] = frame[column].astype("int64")
    return frame


def _progress(progress: Any) -> tuple[Callable[[int, int], None] | None, Any]:
    """A callback for the caller's choice; in a kernel, an ipywidgets bar by default."""
    if callable(progress):
        return progress, None
    if progress is False:
        return None, None
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if getattr(shell, "kernel", None) is None:
        return None, None
    try:
        import ipywidgets
        from IPython.display import display
    except ImportError:
        return None, None
    bar = ipywidgets.IntProgress(value=0, min=0, max=1, description="map")
    display(bar)

    def update(done: int, total: int) -> None:
        bar.max = total
        bar.value = done
        bar.description = f"{done}/{total}"

    return update, bar
