"""``%%agent`` and ``%agent``: parsing and dispatch (design.md section 5).

Parsing is argparse over shlex, per call; a bad option is one line on stderr naming it, plus
the usage line, never a traceback. Defaults are traitlets (``%config AgentMagics.…``).

In ipykernel >= 7.4 a ``%%agent`` cell run by the frontend becomes an *async* cell (an input
transformer rewrites it to ``await …agent_cell_async(line, body)``): the kernel then keeps
dispatching comm messages while the turn runs -- which is what lets an ``ask_user`` policy show
Allow / Deny buttons in the cell and hear the click. A synchronous magic cannot: the kernel reads
comm messages only between cells (and a re-entrant run of its loop defers them, see
``_AsyncCells``). Everywhere else (other kernels, ``%autoawait`` off, nested ``run_cell``) the
cell stays synchronous and approvals use ``input()``.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import keyword
import shlex
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from traitlets import Bool, Enum, Float, Int, Unicode

from ..errors import AgentError, ConfigError, error_line
from .runner import TurnRunner

if TYPE_CHECKING:
    import pandas as pd

    from ..handle import Agent

__all__ = ["CELL_USAGE", "LINE_USAGE", "AgentMagics", "load_ipython_extension",
           "unload_ipython_extension"]

CELL_USAGE = ("%%agent [NAME] [-m MODEL] [-s SYSTEM] [-o VAR] [-f markdown|text|code|json] "
              "[--schema EXPR] [-t TOOL[,TOOL…]] [-a EXPR[,EXPR…]] [--new] [--no-stream] [--bg] "
              "[--no-interpolate] [--retries N] [--temperature T] [--max-tokens N]")
SUBCOMMANDS = ("help", "list", "new", "history", "usage", "quota", "clear", "cancel", "wait",
               "delete", "disconnect", "shutdown", "resume", "backends", "config", "map")
LINE_USAGE = "%agent {" + "|".join(SUBCOMMANDS) + "} …"

HELP = f"""agent_magics: chat with named LLM agents from notebook cells.

  {CELL_USAGE}
      The cell body is the prompt. NAME (default "default") is created on first use; later
      cells continue its conversation. {{name}}, {{obj.attr}}, {{d[key]}}, {{In[3]}}, {{Out[3]}} are
      filled from the namespace; other braces are left alone; {{{{ }}}} escape.

  %agent list                          agents in this kernel (a DataFrame)
  %agent new NAME [-m MODEL] [-s SYSTEM] [--retries N] …   create (or recreate) an agent
  %agent history [NAME]                every step recorded (a DataFrame)
  %agent usage [NAME] [--by model|agent|day]   every model call (a DataFrame)
  %agent quota                         live quota state of every API key
  %agent clear NAME                    forget the conversation so far
  %agent cancel NAME | wait NAME       stop / wait for a running (--bg) turn
  %agent delete NAME | disconnect NAME | shutdown [NAME|--all]
  %agent resume NAME [CONVERSATION_ID] continue a stored conversation (after a restart)
  %agent backends                      known providers and their set-up
  %agent config [key=value …]          show or change defaults (AgentMagics traits)
  %agent map EXPR [TEMPLATE] [-c N] [-m MODEL] [--schema EXPR] [--agent NAME]
                                       one prompt per item/row of EXPR (a list, Series or
                                       DataFrame; TEMPLATE fills {{column}}); a DataFrame back
"""


class _ArgError(Exception):
    def __init__(self, message: str, usage: str):
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise _ArgError(message, self.usage_line)

    def exit(self, status: int = 0, message: str | None = None):  # type: ignore[override]
        raise _ArgError(message or "", self.usage_line)

    usage_line = ""


def _agent_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model")
    parser.add_argument("-s", "--system")
    parser.add_argument("--retries", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--max-tokens", type=int, dest="max_tokens")
    parser.add_argument("-t", "--tools")


def _variable_name(text: str) -> str:
    """``-o``'s value: a name a later cell can use."""
    if not text.isidentifier() or keyword.iskeyword(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Python variable name")
    return text


def _cell_parser() -> _Parser:
    p = _Parser(prog="%%agent", add_help=False)
    p.usage_line = CELL_USAGE
    p.add_argument("name", nargs="?", default="default")
    _agent_options(p)
    p.add_argument("-o", "--output", dest="output", type=_variable_name)
    p.add_argument("-f", "--format", dest="fmt",
                   choices=("markdown", "text", "code", "json"))
    p.add_argument("--schema")
    p.add_argument("-a", "--attach")
    p.add_argument("--new", action="store_true")
    p.add_argument("--no-stream", action="store_true", dest="no_stream")
    p.add_argument("--bg", action="store_true")
    p.add_argument("--no-interpolate", action="store_true", dest="no_interpolate")
    return p


def _line_parser() -> _Parser:
    p = _Parser(prog="%agent", add_help=False)
    p.usage_line = LINE_USAGE
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    for name in SUBCOMMANDS:
        s = sub.add_parser(name, add_help=False)
        s.usage_line = f"%agent {name} " + {
            "new": "NAME [-m MODEL] [-s SYSTEM] [--retries N] [--temperature T] "
                   "[--max-tokens N] [-t TOOLS]",
            "history": "[NAME]", "usage": "[NAME] [--by model|agent|day]",
            "clear": "NAME", "cancel": "NAME", "wait": "NAME", "delete": "NAME",
            "disconnect": "NAME", "shutdown": "[NAME|--all]",
            "resume": "NAME [CONVERSATION_ID]", "config": "[key=value …]",
            "map": "EXPR [TEMPLATE] [-m MODEL] [-s SYSTEM] [-c N] [--schema EXPR] "
                   "[--agent NAME]",
        }.get(name, "")
        if name in ("new", "clear", "cancel", "wait", "delete", "disconnect", "resume"):
            s.add_argument("name")
        if name in ("history", "usage", "shutdown"):
            s.add_argument("name", nargs="?")
        if name == "new":
            _agent_options(s)
        elif name == "usage":
            s.add_argument("--by", choices=("model", "agent", "day"))
        elif name == "shutdown":
            s.add_argument("--all", action="store_true", dest="all")
        elif name == "resume":
            s.add_argument("conversation_id", nargs="?")
        elif name == "config":
            s.add_argument("settings", nargs="*")
        elif name == "map":
            s.add_argument("source")
            s.add_argument("template", nargs="?")
            s.add_argument("-m", "--model")
            s.add_argument("-s", "--system")
            s.add_argument("-c", "--concurrency", type=int, default=4)
            s.add_argument("--schema")
            s.add_argument("--agent", dest="agent_name")
    return p


def _in_kernel(shell: Any) -> bool:
    return getattr(shell, "kernel", None) is not None


# -- async cells --------------------------------------------------------------------------------

#: The first ipykernel that dispatches comm messages while an async cell awaits
#: (ipython/ipykernel#1565, "Allow async cell to process Comm messages", in 7.4.0).
_COMMS_DURING_ASYNC_CELLS = (7, 4)
_MAGIC_CALL = "get_ipython().run_cell_magic('agent', "


def _async_cells_possible(shell: Any) -> bool:
    """Can a cell of ``shell`` await on the kernel's loop while comm messages are handled?"""
    if not _in_kernel(shell) or not getattr(shell, "autoawait", False):
        return False
    try:
        import ipykernel
        from IPython.core.async_helpers import _asyncio_runner
    except Exception:
        return False
    version = tuple(getattr(ipykernel, "version_info", (0,))[:2])
    return version >= _COMMS_DURING_ASYNC_CELLS and shell.loop_runner is _asyncio_runner


class _AsyncCells:
    """``input_transformers_post`` entry: a ``%%agent`` cell executed by the frontend becomes
    ``await get_ipython().find_cell_magic('agent').__self__.agent_cell_async(line, body)``.

    Why not keep the magic synchronous and run the kernel's loop re-entrantly
    (nest_asyncio2) while waiting? ipykernel 7 dispatches every shell message of the main
    shell as a task in one shared ``contextvars.Context`` (``ipykernel.utils._async_in_context``
    wrapping ``Kernel.shell_main``), which the executing cell has entered; nest_asyncio2's
    ``_run_once`` defers handles whose Context is already entered until the nested run ends,
    so a click would only arrive after the cell. An awaiting async cell has left that Context,
    and ``Kernel.shell_main`` (7.4) dispatches ``comm_msg`` concurrently with it.

    The rewrite applies only when it is safe and useful: the cell is exactly one ``%%agent``
    magic, our magics own ``%%agent``, :func:`_async_cells_possible`, on the main thread, and the
    transform is asked for by the kernel's ``do_execute`` (not by a ``run_cell`` nested in a
    running cell, which could not await). Anything unexpected leaves the cell untouched.
    """

    __agent_magics_async_cells__ = True

    def __init__(self, shell: Any):
        self.shell = shell

    def __call__(self, lines: list[str]) -> list[str]:
        try:
            rewritten = self._rewrite(lines)
        except Exception:
            return lines
        return lines if rewritten is None else rewritten

    def _rewrite(self, lines: list[str]) -> list[str] | None:
        if len(lines) != 1 or not lines[0].startswith(_MAGIC_CALL):
            return None
        caller = sys._getframe(3)  # _rewrite <- __call__ <- transform_cell <- caller
        if caller.f_code.co_name != "do_execute":
            return None
        if threading.current_thread() is not threading.main_thread():
            return None
        magic = self.shell.find_cell_magic("agent")
        if not isinstance(getattr(magic, "__self__", None), AgentMagics):
            return None  # unloaded, or another extension's %%agent
        if not _async_cells_possible(self.shell):
            return None
        call = ast.parse(lines[0]).body
        if len(call) != 1 or not isinstance(call[0], ast.Expr) or \
                not isinstance(call[0].value, ast.Call):
            return None
        args = call[0].value.args
        if len(args) != 3 or call[0].value.keywords or \
                not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
            return None
        line, body = args[1].value, args[2].value
        return [f"await get_ipython().find_cell_magic('agent').__self__"
                f".agent_cell_async({line!r}, {body!r})\n"]


def _install_async_cells(shell: Any) -> None:
    """Add the :class:`_AsyncCells` transformer (replacing one from an earlier load). After
    ``%unload_ext`` it stays but does nothing, since ``%%agent`` is no longer ours."""
    transformers = getattr(shell, "input_transformers_post", None)
    if transformers is None:
        return
    transformers[:] = [t for t in transformers
                       if not getattr(t, "__agent_magics_async_cells__", False)]
    transformers.append(_AsyncCells(shell))


@magics_class
class AgentMagics(Magics):
    """The ``%%agent`` / ``%agent`` magics. Configure with ``%config AgentMagics.<trait>``."""

    default_model = Unicode(
        None, allow_none=True, config=True,
        help="Model for new agents ('provider:model'); default: $AGENT_MAGICS_MODEL or "
             "'scripted:echo'.")
    max_quota_retries = Int(3, config=True, help="Quota retries per model call.")
    stream_refresh_rate = Float(10.0, config=True,
                                help="Live updates per second while a reply streams (≤ 20).")
    interpolate = Bool(True, config=True, help="Fill {name} fields of prompts by default.")
    store = Unicode(None, allow_none=True, config=True,
                    help="SQLite file for records; default: the user data dir "
                         "($AGENT_MAGICS_HOME overrides); ':memory:' keeps nothing.")
    default_format = Enum(("markdown", "text", "code", "json"), "markdown", config=True,
                          help="How replies are shown.")
    show_widget = Bool(True, config=True, help="Show the status / quota widget during turns.")
    rpm = Float(None, allow_none=True, config=True,
                help="Client-side pacing: request starts per minute per API key (None: off).")
    tpm = Float(None, allow_none=True, config=True,
                help="Client-side pacing: tokens per minute per API key (None: off).")
    approval = Enum(
        ("auto", "widget", "stdin"), "auto", config=True,
        help="How ask_user policies ask: 'widget' shows Allow / Deny buttons in the cell when "
             "the cell can await them (ipykernel >= 7.4); 'stdin' uses input(); 'auto' uses "
             "the buttons for a notebook's cell run by a frontend that also allows stdin "
             "(JupyterLab, Notebook 7), else input(). With neither, the call is denied.")

    def __init__(self, shell: Any = None, **kwargs: Any):
        super().__init__(shell=shell, **kwargs)
        from .. import agents
        from ..loop import set_waiter
        from .mainthread import MainThread

        self.agents = agents
        try:
            kernel_loop = asyncio.get_running_loop()
        except RuntimeError:
            kernel_loop = None
        self.main = MainThread(kernel_loop)
        # agent.ask() in a cell blocks this thread: it runs the turn's notebook tools meanwhile
        set_waiter(self.main.block_on)
        #: Background (--bg) turns still being shown, per agent name.
        self.background: dict[str, list[TurnRunner]] = {}
        self._cell = _cell_parser()
        self._line = _line_parser()
        if shell is not None and _in_kernel(shell):
            _install_async_cells(shell)
        self._adopt_handles()

    # -- %%agent --------------------------------------------------------------------------------

    @cell_magic("agent")
    def agent_cell(self, line: str, cell: str) -> None:
        """Chat with an agent: the cell body is the prompt. See ``%agent help``."""
        try:
            args = self._parse(self._cell, line)
            self._turn(args, cell)
        except _ArgError as exc:
            self._usage_error(exc, "%%agent")
        except AgentError as exc:
            print(error_line(exc), file=sys.stderr)

    async def agent_cell_async(self, line: str, cell: str) -> None:
        """``%%agent`` as an async cell (see the module docstring): the same turn, awaited on
        the kernel's loop, so widget clicks reach the kernel while it runs."""
        line = self.shell.var_expand(line, 1)  # as run_cell_magic does for the sync magic
        try:
            args = self._parse(self._cell, line)
            started = self._start_turn(args, cell)
            if started is not None:
                runner, after = started
                after(await runner.wait_async())
        except _ArgError as exc:
            self._usage_error(exc, "%%agent")
        except AgentError as exc:
            print(error_line(exc), file=sys.stderr)

    def _turn(self, args: argparse.Namespace, cell: str) -> None:
        started = self._start_turn(args, cell)
        if started is not None:
            runner, after = started
            after(runner.wait())

    def _start_turn(self, args: argparse.Namespace, cell: str
                    ) -> tuple[TurnRunner, Callable[[Any], None]] | None:
        """Build and launch the turn; returns the runner to wait for and what to do with the
        response, or None for a --bg turn (already handed to a background thread)."""
        from .interpolate import LookupFailed, interpolate, lookup

        ns = self.shell.user_ns
        prompt = cell
        if self.interpolate and not args.no_interpolate:
            prompt = interpolate(cell, ns)
        prompt = prompt.strip("\n").rstrip()  # the cell's trailing newline is not the prompt's
        content: list[Any] = [prompt] if prompt.strip() else []
        if args.attach:
            from ..content import to_part

            for expr in _split(args.attach):
                try:
                    content.append(to_part(lookup(expr, ns), name=expr))
                except LookupFailed:
                    raise ConfigError(f"-a {expr}: no such name in the namespace") from None
        if not content:
            raise ConfigError("the cell is empty: write the prompt in the cell body")
        schema = None
        if args.schema:
            try:
                schema = lookup(args.schema, ns)
            except LookupFailed:
                raise ConfigError(f"--schema {args.schema}: no such name in the namespace") \
                    from None
        agent = self._get_agent(args.name, args, new=args.new)
        fmt = args.fmt or self.default_format
        terminal = not _in_kernel(self.shell)

        def done(run: TurnRunner) -> None:
            """``-o VAR``: the structured output with --schema, parsed JSON with -f json
            (the text if it does not parse), else the reply text."""
            response = run.response
            if response.error is not None or not args.output:
                return
            value: Any = response.partial_text()
            if schema is not None:
                value = agent.last_structured_output
            elif fmt == "json":
                from ..response import parse_json_text

                try:
                    value = parse_json_text(value)
                except AgentError:
                    pass
            ns[args.output] = value

        runner = TurnRunner(agent, content, main=self.main, schema=schema, fmt=fmt,
                            live=not args.no_stream, refresh_hz=self.stream_refresh_rate,
                            terminal=terminal, widget=self.show_widget and not terminal,
                            on_done=done)
        runner.start()
        if args.bg:
            running = [r for r in self.background.get(agent.name, []) if not r.finished.is_set()]
            self.background[agent.name] = [*running, runner]
            runner.run_in_background()
            return None

        def after(response: Any) -> None:
            if response.error is not None and not isinstance(response.error, AgentError):
                raise response.error  # unexpected: a normal traceback
            if response.error is None and fmt == "code":
                from .display import extract_code

                self.shell.set_next_input(extract_code(response.partial_text()), replace=False)

        return runner, after

    # -- agents ---------------------------------------------------------------------------------

    def _get_agent(self, name: str, args: argparse.Namespace, *, new: bool) -> Agent:
        from ..handle import Agent

        existing = self.agents.get(name)
        if existing is not None and (new or existing.is_shut_down):
            if not existing.is_shut_down:
                from ..loop import run_sync

                run_sync(existing.shutdown())
            existing = None
        tools = self._tools(args.tools)
        if existing is not None:
            if args.model and args.model != existing.model:
                raise ConfigError(f"agent {name!r} uses {existing.model}; add --new to start "
                                  f"a new conversation with {args.model}")
            self._apply(existing, args, tools)
            self._bind(existing)
            return existing
        config_fields: dict[str, Any] = {
            "max_quota_retries": self.max_quota_retries if args.retries is None
            else args.retries,
            "system_instructions": args.system, "temperature": args.temperature,
            "max_output_tokens": args.max_tokens, "tools": tools,
            "rpm": self.rpm, "tpm": self.tpm,
        }
        model = args.model or self.default_model
        if model:
            config_fields["model"] = model
        agent = Agent(name=name, store=self.store, **config_fields)
        self._bind(agent)
        self.agents[name] = agent
        return agent

    def _adopt_handles(self) -> None:
        """Handles bound by an earlier instance (before ``%reload_ext agent_magics``, which
        keeps the registry) run their tools and ask approvals through this one: the old
        instance's main-thread hand-over is no longer drained by any cell."""
        from .mainthread import MainThread
        from .panel import _walk

        for _, agent in _walk(self.agents):
            runner = getattr(agent, "tool_runner", None)
            owner = getattr(runner, "__self__", None)
            if isinstance(owner, MainThread) and owner is not self.main:
                agent.tool_runner = self.main.run
            asker = getattr(agent, "asker", None)
            owner = getattr(asker, "__agent_magics__", None)
            if owner is not None and owner is not self:
                agent.asker = self._asker_for(asker.__agent_magics_name__)

    def _bind(self, agent: Agent) -> None:
        """Notebook tools run on the kernel's main thread; approvals are asked there. Handles
        made in Python (``agents["x"] = Agent(...)``) get this when a cell first uses them."""
        if agent.tool_runner is None:
            agent.tool_runner = self.main.run
        if agent.asker is None:
            agent.asker = self._asker_for(agent.name)

    def _apply(self, agent: Agent, args: argparse.Namespace, tools: list[Any]) -> None:
        """Per-cell options on an existing agent (the runtime reads its config each call)."""
        config = agent.config
        if args.system is not None:
            config.system_instructions = args.system
        if args.retries is not None:
            if args.retries < 0:
                raise ConfigError("--retries must be >= 0")
            config.max_quota_retries = args.retries
        if args.temperature is not None:
            config.temperature = args.temperature
        if args.max_tokens is not None:
            config.max_output_tokens = args.max_tokens
        if tools:
            known = {getattr(t, "__name__", None) for t in config.tools}
            config.tools.extend(t for t in tools if getattr(t, "__name__", None) not in known)
            if agent.is_started:
                agent._validate()

    def _tools(self, spec: str | None) -> list[Any]:
        if not spec:
            return []
        from .interpolate import LookupFailed, lookup

        tools = []
        for expr in _split(spec):
            try:
                fn = lookup(expr, self.shell.user_ns)
            except LookupFailed:
                raise ConfigError(f"-t {expr}: no such name in the namespace") from None
            if not callable(fn):
                raise ConfigError(f"-t {expr}: not callable ({type(fn).__name__})")
            tools.append(fn)
        return tools

    def _asker_for(self, name: str) -> Callable[[Any], Any]:
        """The approval asker of agent ``name`` (its sub-agents inherit it)."""

        async def ask(call: Any) -> Any:
            return await self.main.run(lambda: self._prompt(call, name))

        ask.__name__ = ask.__qualname__ = "the notebook's prompt"  # in denial reasons
        ask.__agent_magics__ = self  # type: ignore[attr-defined]  # see _adopt_handles
        ask.__agent_magics_name__ = name  # type: ignore[attr-defined]
        return ask

    def _prompt(self, call: Any, who: str = "agent") -> Any:
        """Ask the person about ``call`` (main thread): Allow / Deny buttons when the cell can
        await a click (the result is then an awaitable of the answer), else ``input()``, else
        deny with a clear message."""
        if self._widget_approval():
            from .widgets import ApprovalPrompt

            prompt = ApprovalPrompt(call.text, who=who)
            if prompt.show():
                return prompt.answer()
        return self._prompt_stdin(call, who)

    def _widget_approval(self) -> bool:
        """Buttons need a cell awaiting on the kernel's loop; with ``approval='auto'`` also a
        notebook frontend (its execute request names the cell, ``cellId``, as JupyterLab and
        Notebook 7 do) that allows stdin -- nbclient (no stdin) and consoles (no cell) are
        asked the way they can answer."""
        if self.approval == "stdin" or not self.main.waiting_async:
            return False
        if self.approval == "widget":
            return True
        try:
            parent = self.shell.kernel.get_parent("shell") or {}
        except Exception:
            return False
        content = parent.get("content") or {}
        metadata = parent.get("metadata") or {}
        return bool(content.get("allow_stdin")) and bool(metadata.get("cellId"))

    def _prompt_stdin(self, call: Any, who: str = "agent") -> bool:
        from IPython.core.error import StdinNotImplementedError

        try:
            answer = input(f"{who} wants to run {call.text}. Allow? [y/N] ")
        except (StdinNotImplementedError, EOFError, RuntimeError, OSError):
            print(f"{call.name}: needs approval but this frontend cannot ask (no stdin); "
                  f"denied. Allow it with policies=[allow({call.name!r})].", file=sys.stderr)
            return False
        return answer.strip().lower() in ("y", "yes")

    # -- %agent ---------------------------------------------------------------------------------

    @line_magic("agent")
    def agent_line(self, line: str) -> Any:
        """Manage agents; ``%agent help`` lists the subcommands."""
        try:
            args = self._parse(self._line, line)
            if args.command is None:
                raise _ArgError("a subcommand is required", LINE_USAGE)
            return getattr(self, f"_cmd_{args.command}")(args)
        except _ArgError as exc:
            self._usage_error(exc, "%agent")
        except AgentError as exc:
            print(error_line(exc), file=sys.stderr)
        return None

    def _named(self, name: str) -> Agent:
        agent = self.agents.get(name)
        if agent is None:
            known = ", ".join(sorted(self.agents)) or "none yet"
            raise ConfigError(f"no agent named {name!r} in this kernel (agents: {known}); "
                              f"`%agent resume {name}` continues a stored one")
        return agent

    def _cmd_help(self, args: argparse.Namespace) -> None:
        print(HELP)

    def _cmd_list(self, args: argparse.Namespace) -> pd.DataFrame:
        import pandas as pd

        rows = [{"name": name, "model": a.model, "started": a.is_started,
                 "busy": not a.is_idle, "turns": a.turn_count,
                 "conversation_id": a.conversation_id, "key_id": a.quota.key_id,
                 "parent": a.parent.name if a.parent else None}
                for name, a in self.agents.items()]
        columns = ["name", "model", "started", "busy", "turns", "conversation_id", "key_id",
                   "parent"]
        return pd.DataFrame(rows, columns=columns)

    def _cmd_new(self, args: argparse.Namespace) -> None:
        args.output = None
        self._get_agent(args.name, args, new=True)

    def _cmd_history(self, args: argparse.Namespace) -> pd.DataFrame:
        if args.name:
            return self._named(args.name).history_df()
        from .. import history_df

        return history_df(self.store)

    def _cmd_usage(self, args: argparse.Namespace) -> pd.DataFrame:
        from ..frames import usage_df
        from ..store import shared_store

        if args.name:
            agent = self._named(args.name)
            return usage_df(agent.store, conversation_id=agent._conversation_ids(), by=args.by)
        return usage_df(shared_store(self.store), by=args.by)

    def _cmd_quota(self, args: argparse.Namespace) -> None:
        from ..quota import QuotaRegistry
        from .widgets import QuotaTable

        registries = [QuotaRegistry.default()]
        for agent in self.agents.values():
            registry = agent.runtime.quota_registry
            if all(registry is not r for r in registries):
                registries.append(registry)
        table = QuotaTable(registries)
        if _in_kernel(self.shell):
            table.show()
        else:
            print(table.text())

    def _cmd_clear(self, args: argparse.Namespace) -> None:
        self._named(args.name).clear_history()

    def _cmd_cancel(self, args: argparse.Namespace) -> None:
        from ..loop import run_sync

        run_sync(self._named(args.name).cancel())

    def _cmd_wait(self, args: argparse.Namespace) -> None:
        """Block until every background turn of NAME has finished and been shown."""
        self._named(args.name)
        for run in self.background.pop(args.name, []):
            response = run.wait_background()
            if response.error is not None and not isinstance(response.error, AgentError):
                raise response.error

    def _stop(self, name: str, how: str) -> None:
        from ..loop import run_sync

        agent = self._named(name)
        try:
            run_sync(getattr(agent, how)())
        finally:
            self.agents.pop(name, None)

    def _cmd_delete(self, args: argparse.Namespace) -> None:
        self._stop(args.name, "delete")

    def _cmd_disconnect(self, args: argparse.Namespace) -> None:
        self._stop(args.name, "disconnect")

    def _cmd_shutdown(self, args: argparse.Namespace) -> None:
        if args.all:
            for name in list(self.agents):
                self._stop(name, "shutdown")
            return
        self._stop(args.name or "default", "shutdown")

    def _cmd_resume(self, args: argparse.Namespace) -> None:
        from ..handle import Agent

        existing = self.agents.pop(args.name, None)
        if existing is not None and not existing.is_shut_down:
            from ..loop import run_sync

            run_sync(existing.shutdown())
        agent = Agent.resume(args.name, args.conversation_id, store=self.store)
        self._bind(agent)
        self.agents[args.name] = agent
        print(f"{args.name}: resumed conversation {agent.conversation_id} ({agent.model})")

    def _cmd_backends(self, args: argparse.Namespace) -> pd.DataFrame:
        import importlib.util

        import pandas as pd

        from ..config import KEY_ENV_VARS
        from ..runtimes import known_providers

        sdks = {"gemini": "google.genai", "openai": "openai", "ollama": "openai",
                "vllm": "openai", "lmstudio": "openai", "anthropic": "anthropic",
                "antigravity": "google.antigravity", "antigravity+openai": "google.antigravity",
                "antigravity+ollama": "google.antigravity"}
        rows = []
        import os

        def found(module: str) -> bool:
            try:  # the full name: "google" alone is any Google package's namespace
                return importlib.util.find_spec(module) is not None
            except ImportError:
                return False

        for provider in known_providers():
            module = sdks.get(provider)
            installed = True if module is None else found(module)
            env = KEY_ENV_VARS.get(provider, ())
            rows.append({"provider": provider, "sdk_installed": installed,
                         "key_env": " or ".join(env) or "-",
                         "key_set": any(os.environ.get(v) for v in env) if env else None})
        return pd.DataFrame(rows, columns=["provider", "sdk_installed", "key_env", "key_set"])

    def _cmd_map(self, args: argparse.Namespace) -> pd.DataFrame:
        from ..fanout import map as fan_out
        from .interpolate import LookupFailed, lookup

        ns = self.shell.user_ns
        try:
            source = lookup(args.source, ns)
            schema = lookup(args.schema, ns) if args.schema else None
        except LookupFailed as exc:
            raise ConfigError(f"map: {exc}") from None
        if args.agent_name:
            return fan_out(source, args.template, agent=self._named(args.agent_name),
                           concurrency=args.concurrency, schema=schema)
        config: dict[str, Any] = {"system_instructions": args.system, "store": self.store,
                                  "max_quota_retries": self.max_quota_retries,
                                  "rpm": self.rpm, "tpm": self.tpm}
        model = args.model or self.default_model
        if model:
            config["model"] = model
        return fan_out(source, args.template, concurrency=args.concurrency, schema=schema,
                       **config)

    _CONFIGURABLE = ("default_model", "max_quota_retries", "stream_refresh_rate", "interpolate",
                     "store", "default_format", "show_widget", "rpm", "tpm", "approval")

    def _cmd_config(self, args: argparse.Namespace) -> None:
        if not args.settings:
            for name in self._CONFIGURABLE:
                print(f"AgentMagics.{name} = {getattr(self, name)!r}")
            return
        for setting in args.settings:
            key, sep, raw = setting.partition("=")
            if not sep or key not in self._CONFIGURABLE:
                raise ConfigError(f"config: {setting!r} is not key=value with key one of "
                                  f"{', '.join(self._CONFIGURABLE)}")
            value = self._config_value(key, raw)
            try:
                setattr(self, key, value)
            except Exception as exc:
                raise ConfigError(f"config {key}: {error_line(exc)}") from None
            if key in ("rpm", "tpm"):  # pacing is per key: apply to the keys in use now
                for agent in self.agents.values():
                    agent.config.rpm, agent.config.tpm = self.rpm, self.tpm
                    agent.quota.set_limits(rpm=self.rpm, tpm=self.tpm)

    _TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

    def _config_value(self, key: str, raw: str) -> Any:
        """``raw`` (from ``%agent config key=raw``) as the trait's type, or a ConfigError."""
        trait = self.traits()[key]
        word = raw.strip().lower()
        try:
            if isinstance(trait, Int):
                return int(raw)
            if isinstance(trait, Float):
                return None if raw in ("None", "") else float(raw)
        except ValueError:
            kind = "a whole number" if isinstance(trait, Int) else "a number (or None)"
            raise ConfigError(f"config {key}: {raw!r} is not {kind}") from None
        if isinstance(trait, Bool):
            if word not in self._TRUE + self._FALSE:
                raise ConfigError(f"config {key}: {raw!r} is not true or false")
            return word in self._TRUE
        return None if raw in ("None", "") else raw

    # -- helpers --------------------------------------------------------------------------------

    def _parse(self, parser: _Parser, line: str) -> argparse.Namespace:
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise _ArgError(str(exc), parser.usage_line) from None
        return parser.parse_args(argv)

    @staticmethod
    def _usage_error(exc: _ArgError, prog: str) -> None:
        message = str(exc).strip()
        print(f"{prog}: {message}" if message else prog, file=sys.stderr)
        print(f"usage: {exc.usage}", file=sys.stderr)


def _split(spec: str) -> list[str]:
    return [part.strip() for part in spec.split(",") if part.strip()]


def load_ipython_extension(shell: Any) -> None:
    from . import panel

    magics = AgentMagics(shell=shell)
    shell.register_magics(magics)
    panel.install(shell, magics)  # the Agents panel's comm; a no-op without a kernel


def unload_ipython_extension(shell: Any) -> None:
    from ..loop import set_waiter
    from . import panel

    panel.uninstall()
    set_waiter(None)
    # IPython has no unregister; drop our magics from the table.
    for kind in ("line", "cell"):
        shell.magics_manager.magics[kind].pop("agent", None)
