"""Tools: plain Python callables an agent may call (design.md 3 "Tools", 9).

``AgentConfig(tools=[fn, ...])`` takes ordinary functions, sync or async. :class:`ToolSpec`
describes one: its name, description (the docstring's summary), a JSON schema of its parameters
built from the signature, type hints and the docstring's parameter descriptions (Google, NumPy or
Sphinx style), and whether it writes. :func:`tool` attaches a spec to a function without wrapping
it, so the notebook user still calls it normally::

    @tool(write=True)
    def save(path: str, text: str, ctx: ToolContext) -> str:
        \"\"\"Write text to a file.

        Args:
            path: Where to write.
            text: What to write.
        \"\"\"

A parameter annotated :class:`ToolContext` is hidden from the schema and injected with the
agent's shared per-agent state. Arguments coming from a model are validated and coerced with
pydantic when it is installed (``"3"`` becomes ``3`` for an ``int`` parameter); without pydantic a
small built-in checker covers the basic types.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import inspect
import json
import re
import threading
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ToolError

__all__ = [
    "ToolContext",
    "ToolSet",
    "ToolSpec",
    "format_result",
    "get_tool_spec",
    "parse_docstring",
    "tool",
]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_MISSING = inspect.Parameter.empty


# -- per-agent state --------------------------------------------------------------------------

class ToolContext:
    """Thread-safe state shared by one agent's tool calls (a dict behind a lock).

    A tool parameter annotated ``ToolContext`` receives it; it is not part of the tool's schema.
    """

    def __init__(self, agent_name: str | None = None, data: Mapping[str, Any] | None = None):
        self.agent_name = agent_name
        self._lock = threading.RLock()
        self._data: dict[str, Any] = dict(data or {})

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = value

    def update(self, mapping: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /,
               **kv: Any) -> None:
        with self._lock:
            self._data.update(mapping, **kv)

    def setdefault(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._data.setdefault(key, default)

    def pop(self, key: str, *default: Any) -> Any:
        with self._lock:
            return self._data.pop(key, *default)

    def as_dict(self) -> dict[str, Any]:
        """A shallow copy of the current state."""
        with self._lock:
            return dict(self._data)

    @property
    def lock(self) -> threading.RLock:
        """The lock, for read-modify-write sequences: ``with ctx.lock: ...``."""
        return self._lock

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        with self._lock:
            del self._data[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __repr__(self) -> str:
        return f"ToolContext(agent_name={self.agent_name!r}, keys={sorted(map(str, self))!r})"


# -- docstrings ---------------------------------------------------------------------------------

_GOOGLE_PARAM_HEADERS = {"args", "arguments", "parameters", "params", "keyword args",
                         "keyword arguments", "other parameters"}
_GOOGLE_OTHER_HEADERS = {"returns", "return", "yields", "yield", "raises", "raise", "examples",
                         "example", "notes", "note", "see also", "warnings", "warning",
                         "references", "attributes", "todo", "warns"}
_GOOGLE_HEADER = re.compile(r"^([A-Za-z][A-Za-z ]*?)\s*:\s*$")
_GOOGLE_ITEM = re.compile(r"^\*{0,2}(\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_NUMPY_ITEM = re.compile(r"^\*{0,2}(\w+(?:\s*,\s*\*{0,2}\w+)*)\s*(?::.*)?$")
_SPHINX_PARAM = re.compile(r"^:(?:param|parameter|arg|argument|key|keyword)\s+"
                           r"(?:[^:]*?\s+)?\*{0,2}(\w+)\s*:\s*(.*)$")
_SPHINX_FIELD = re.compile(r"^:\w+")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a docstring into its description and per-parameter descriptions.

    Understands Google (``Args:``), NumPy (``Parameters`` + dashes) and Sphinx (``:param x:``)
    styles. Returns ``(description, {param: text})``.
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    i, n = 0, len(lines)
    in_summary = True

    def numpy_header(k: int) -> bool:
        return (k + 1 < n and lines[k].strip() != "" and _indent(lines[k]) == 0
                and re.fullmatch(r"\s*-{3,}\s*", lines[k + 1]) is not None)

    while i < n:
        line = lines[i]
        stripped = line.strip()
        google = _GOOGLE_HEADER.match(line) if _indent(line) == 0 else None
        if google and google.group(1).strip().lower() in (_GOOGLE_PARAM_HEADERS
                                                          | _GOOGLE_OTHER_HEADERS):
            in_summary = False
            is_params = google.group(1).strip().lower() in _GOOGLE_PARAM_HEADERS
            i += 1
            current: str | None = None
            base: int | None = None
            while i < n:
                body = lines[i]
                if body.strip() and _indent(body) == 0:
                    break
                if not body.strip():
                    i += 1
                    continue
                if base is None:
                    base = _indent(body)
                item = _GOOGLE_ITEM.match(body.strip()) if _indent(body) == base else None
                if is_params and item:
                    current = item.group(1)
                    params[current] = item.group(3).strip()
                elif is_params and current is not None:
                    params[current] = f"{params[current]} {body.strip()}".strip()
                i += 1
            continue
        if numpy_header(i):
            in_summary = False
            is_params = stripped.lower() in _GOOGLE_PARAM_HEADERS
            i += 2
            names: list[str] = []
            while i < n and not numpy_header(i):
                body = lines[i]
                if not body.strip():
                    i += 1
                    continue
                if _indent(body) == 0:
                    item = _NUMPY_ITEM.match(body.strip())
                    names = [s.strip().lstrip("*") for s in item.group(1).split(",")] \
                        if (is_params and item) else []
                    for name in names:
                        params.setdefault(name, "")
                else:
                    for name in names:
                        params[name] = f"{params[name]} {body.strip()}".strip()
                i += 1
            continue
        if _SPHINX_FIELD.match(stripped):
            in_summary = False
            item = _SPHINX_PARAM.match(stripped)
            name = item.group(1) if item else None
            if name:
                params[name] = item.group(2).strip()
            i += 1
            while i < n and lines[i].strip() and _indent(lines[i]) > 0 \
                    and not _SPHINX_FIELD.match(lines[i].strip()):
                if name:
                    params[name] = f"{params[name]} {lines[i].strip()}".strip()
                i += 1
            continue
        if in_summary:
            summary.append(line)
        i += 1
    return "\n".join(summary).strip(), params


# -- schema and validation ----------------------------------------------------------------------

def _import_pydantic():
    """pydantic, or ``None`` when it is not installed (then the basic checker is used)."""
    try:
        import pydantic
    except ImportError:  # pragma: no cover - exercised by monkeypatching in tests
        return None
    return pydantic


def _is_context_annotation(annotation: Any) -> bool:
    if annotation is ToolContext:
        return True
    if isinstance(annotation, str):
        return annotation.replace(" ", "") in {"ToolContext", "ToolContext|None",
                                               "Optional[ToolContext]", "tools.ToolContext"}
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_context_annotation(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(args) == 1 and args[0] is ToolContext
    return isinstance(annotation, type) and issubclass(annotation, ToolContext)


def _annotated_description(annotation: Any) -> str | None:
    """``Annotated[int, "the count"]`` -> ``"the count"``."""
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in typing.get_args(annotation)[1:]:
            if isinstance(meta, str):
                return meta
    return None


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def _basic_schema(annotation: Any) -> dict[str, Any]:
    """A JSON schema for common annotations, without pydantic."""
    if annotation is Any or annotation is _MISSING:
        return {}
    if annotation is None or annotation is type(None):
        return {"type": "null"}
    simple = {str: "string", int: "integer", float: "number", bool: "boolean",
              list: "array", tuple: "array", set: "array", frozenset: "array", dict: "object",
              bytes: "string"}
    if annotation in simple:
        return {"type": simple[annotation]}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [m.value for m in annotation]}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _basic_schema(args[0])
    if origin is typing.Literal:
        values = [_json_default(a) for a in args]
        schema: dict[str, Any] = {"enum": values}
        kinds = {type(v) for v in values}
        if len(kinds) == 1 and next(iter(kinds)) in simple:
            schema["type"] = simple[next(iter(kinds))]
        return schema
    if origin is typing.Union or origin is types.UnionType:
        return {"anyOf": [_basic_schema(a) for a in args]}
    if origin in (list, set, frozenset) or (origin is not None and isinstance(origin, type)
                                            and issubclass(origin, (list, set, frozenset))):
        return {"type": "array", "items": _basic_schema(args[0])} if args else {"type": "array"}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _basic_schema(args[0])}
        return {"type": "array", "prefixItems": [_basic_schema(a) for a in args]}
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        if len(args) == 2:
            return {"type": "object", "additionalProperties": _basic_schema(args[1])}
        return {"type": "object"}
    if origin is not None and isinstance(origin, type):
        from collections.abc import Sequence
        if issubclass(origin, Sequence) and not issubclass(origin, (str, bytes)):
            return {"type": "array", "items": _basic_schema(args[0])} if args \
                else {"type": "array"}
    return {}


_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def _basic_coerce(value: Any, annotation: Any) -> Any:
    """Check / coerce ``value`` to ``annotation`` for the basic types; raise ValueError."""
    if annotation is Any or annotation is _MISSING:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _basic_coerce(value, args[0])
    if annotation is None or annotation is type(None):
        if value is None:
            return None
        raise ValueError(f"expected null, got {value!r}")
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _basic_coerce(value, arg)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors) or f"unexpected value {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        for arg in args:  # "3" for Literal[3]
            if not isinstance(arg, bool) and isinstance(arg, (int, float)):
                try:
                    if type(arg)(value) == arg:
                        return arg
                except (TypeError, ValueError):
                    pass
        raise ValueError(f"expected one of {list(args)!r}, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"expected a boolean, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            raise ValueError(f"expected one of {[m.value for m in annotation]!r}, "
                             f"got {value!r}") from None
    container = origin or annotation
    if isinstance(container, type) and issubclass(container, (list, tuple, set, frozenset)):
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise ValueError(f"expected an array, got {value!r}")
        item = args[0] if args and not (container is tuple and len(args) != 2) else Any
        items = [_basic_coerce(v, item) for v in value]
        return container(items) if container in (list, tuple, set, frozenset) else items
    if isinstance(container, type) and issubclass(container, Mapping):
        if not isinstance(value, Mapping):
            raise ValueError(f"expected an object, got {value!r}")
        return dict(value)
    return value


def _strip_titles(node: Any, *, in_properties: bool = False) -> Any:
    """Drop pydantic's auto ``title`` keys (but keep a property that is *named* title)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "title" and not in_properties and isinstance(value, str):
                continue
            out[key] = _strip_titles(value, in_properties=key in ("properties", "$defs")
                                     and not in_properties)
        return out
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


@dataclass
class _Param:
    name: str
    annotation: Any
    default: Any
    kind: Any
    description: str | None

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def _callable_parts(fn: Any) -> tuple[Any, Any, str | None]:
    """(object whose type hints describe ``fn``, its doc source, its natural name)."""
    base = fn
    while isinstance(base, functools.partial):
        base = base.func
    if inspect.ismethod(base):
        base = base.__func__
    name = getattr(base, "__name__", None)
    if inspect.isfunction(inspect.unwrap(base)) or inspect.isbuiltin(base):
        return inspect.unwrap(base), base.__doc__, name
    if isinstance(base, type):
        return base.__init__, base.__doc__, name
    call = vars(type(base)).get("__call__") or type(base).__call__
    doc = getattr(call, "__doc__", None) or type(base).__doc__
    return (call or base), doc, name or type(base).__name__


def _type_hints(target: Any, sig: inspect.Signature) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:
        pass
    hints: dict[str, Any] = {}
    namespace = getattr(target, "__globals__", {})
    for pname, param in sig.parameters.items():
        ann = param.annotation
        if isinstance(ann, str):
            try:
                ann = eval(ann, dict(namespace))  # annotations only; same as get_type_hints
            except Exception:
                ann = ToolContext if _is_context_annotation(ann) else Any
        hints[pname] = ann
    return hints


# -- the spec -----------------------------------------------------------------------------------

@dataclass
class ToolSpec:
    """Everything needed to offer a callable to a model and call it back."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    write: bool = False
    is_async: bool = False
    context_param: str | None = None
    _params: list[_Param] = field(default_factory=list, repr=False, compare=False)
    _model: Any = field(default=None, repr=False, compare=False)

    # building

    @classmethod
    def from_callable(cls, fn: Callable[..., Any], *, name: str | None = None,
                      description: str | None = None, write: bool | None = None) -> ToolSpec:
        """Describe ``fn`` (function, async function, partial, bound method, callable object or
        an object already decorated with :func:`tool`). Raises :class:`ToolError` for a lambda
        without ``name=``, ``*args``/``**kwargs`` parameters, or an unusable name."""
        if isinstance(fn, ToolSpec):
            return fn.with_options(name=name, description=description, write=write)
        if not callable(fn):
            raise ToolError(f"{fn!r} ({type(fn).__name__}) is not callable, so it cannot be a "
                            "tool; pass a function")
        existing = getattr(fn, "__agent_tool__", None)
        if isinstance(existing, ToolSpec):
            if existing.fn is fn or getattr(fn, "__agent_tool_of__", None) is existing.fn:
                return existing.with_options(name=name, description=description, write=write)
            # e.g. a bound method of a decorated function, or a functools.wraps wrapper:
            # rebuild from this callable but keep the decorator's options.
            name = name if name is not None else existing.name
            description = description if description is not None else existing.description
            write = write if write is not None else existing.write
        return cls._build(fn, name=name, description=description, write=bool(write))

    @classmethod
    def _build(cls, fn: Callable[..., Any], *, name: str | None, description: str | None,
               write: bool) -> ToolSpec:
        hint_target, doc, natural = _callable_parts(fn)
        tool_name = name if name is not None else natural
        if tool_name == "<lambda>" or tool_name is None:
            raise ToolError("a lambda cannot be a tool without a name; define it with def, or "
                            "give it one: tool(lambda ...: ..., name='my_tool')")
        _check_name(tool_name)
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise ToolError(f"tool {tool_name!r}: cannot read its signature ({exc}); wrap it "
                            "in a def with named parameters") from exc
        summary, param_docs = parse_docstring(doc)
        hints = _type_hints(hint_target, sig)
        params: list[_Param] = []
        context_param = None
        for pname, param in sig.parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                star = "*" if param.kind is param.VAR_POSITIONAL else "**"
                raise ToolError(f"tool {tool_name!r} takes {star}{pname}; tools need named "
                                "parameters so the model knows what to pass")
            annotation = hints.get(pname, param.annotation)
            if _is_context_annotation(annotation):
                if context_param is not None:
                    raise ToolError(f"tool {tool_name!r} has two ToolContext parameters "
                                    f"({context_param!r} and {pname!r}); keep one")
                context_param = pname
                continue
            if annotation is _MISSING:
                annotation = Any
            desc = param_docs.get(pname) or _annotated_description(annotation) or None
            params.append(_Param(pname, annotation, param.default, param.kind, desc))
        spec = cls(name=tool_name,
                   description=(description if description is not None else summary) or "",
                   parameters={}, fn=fn, write=bool(write), is_async=_is_async(fn),
                   context_param=context_param, _params=params)
        spec.parameters, spec._model = _build_schema(tool_name, params)
        return spec

    def with_options(self, *, name: str | None = None, description: str | None = None,
                     write: bool | None = None) -> ToolSpec:
        """A copy with a new name / description / write flag (``None`` keeps the current)."""
        if name is None and description is None and write is None:
            return self
        if name is not None:
            _check_name(name)
        spec = copy.copy(self)
        if name is not None:
            spec.name = name
        if description is not None:
            spec.description = description
        if write is not None:
            spec.write = bool(write)
        return spec

    # using

    def schema(self) -> dict[str, Any]:
        """``{"name", "description", "parameters"}`` as most providers expect it."""
        return {"name": self.name, "description": self.description,
                "parameters": copy.deepcopy(self.parameters)}

    def validate(self, args: Mapping[str, Any] | str | None) -> dict[str, Any]:
        """Check and coerce a model's arguments; returns only the arguments that were given
        (parameters left out keep the function's own defaults). Raises :class:`ToolError`."""
        if args is None:
            args = {}
        if isinstance(args, (str, bytes)):
            try:
                args = json.loads(args) if str(args).strip() else {}
            except ValueError as exc:
                raise ToolError(f"tool {self.name!r}: arguments are not valid JSON "
                                f"({exc})") from exc
        if not isinstance(args, Mapping):
            raise ToolError(f"tool {self.name!r}: arguments must be an object of name: value, "
                            f"got {type(args).__name__}")
        known = {p.name for p in self._params}
        unknown = [k for k in args if k not in known]
        if unknown:
            takes = ", ".join(p.name for p in self._params) or "no arguments"
            raise ToolError(f"tool {self.name!r} got unknown argument(s) "
                            f"{', '.join(map(repr, unknown))}; it takes: {takes}")
        missing = [p.name for p in self._params if p.required and p.name not in args]
        if missing:
            raise ToolError(f"tool {self.name!r} is missing required argument(s) "
                            f"{', '.join(map(repr, missing))}")
        if self._model is not None:
            return self._validate_pydantic(dict(args))
        out = {}
        for p in self._params:
            if p.name in args:
                try:
                    out[p.name] = _basic_coerce(args[p.name], p.annotation)
                except ValueError as exc:
                    raise ToolError(f"tool {self.name!r}: argument {p.name!r}: {exc}") from None
        return out

    def _validate_pydantic(self, args: dict[str, Any]) -> dict[str, Any]:
        pydantic = _import_pydantic()
        try:
            instance = self._model.model_validate(args)
        except pydantic.ValidationError as exc:
            problems = []
            for err in exc.errors(include_url=False):
                loc = ".".join(str(part) for part in err.get("loc", ()))
                shown = repr(err.get("input"))
                if len(shown) > 40:
                    shown = shown[:37] + "..."
                problems.append(f"argument {loc!r}: {err.get('msg')} (got {shown})")
            raise ToolError(f"tool {self.name!r}: {'; '.join(problems)}") from None
        by_field = {f"p{i}": p.name for i, p in enumerate(self._params)}
        return {by_field[f]: getattr(instance, f) for f in instance.model_fields_set}

    def bind(self, args: Mapping[str, Any] | str | None, *,
             context: ToolContext | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Validated ``(positional, keyword)`` arguments for calling :attr:`fn`."""
        values = self.validate(args)
        if self.context_param is not None:
            values[self.context_param] = context if context is not None else ToolContext()
        positional: list[Any] = []
        keywords: dict[str, Any] = {}
        try:
            sig_params = list(inspect.signature(self.fn).parameters.values())
        except (TypeError, ValueError):  # pragma: no cover - signature was readable at build
            sig_params = []
        pos_only = [p for p in sig_params if p.kind is p.POSITIONAL_ONLY]
        last_given = max((i for i, p in enumerate(pos_only) if p.name in values), default=-1)
        for p in pos_only[:last_given + 1]:
            positional.append(values.pop(p.name) if p.name in values else p.default)
        for key in pos_only[last_given + 1:]:
            values.pop(key.name, None)
        keywords.update(values)
        return tuple(positional), keywords

    def prepare(self, args: Mapping[str, Any] | str | None, *,
                context: ToolContext | None = None) -> Callable[[], Any]:
        """Validate now; return a zero-argument callable that runs the tool (returning its
        result, or a coroutine for async tools) -- to be run on whichever thread suits."""
        positional, keywords = self.bind(args, context=context)
        return functools.partial(self.fn, *positional, **keywords)

    async def invoke(self, args: Mapping[str, Any] | str | None = None, *,
                     context: ToolContext | None = None) -> Any:
        """Validate ``args``, call the tool (sync ones directly on this thread, async ones
        awaited) and return its result. Bad arguments raise :class:`ToolError`; an exception
        raised by the tool itself propagates unchanged."""
        result = self.prepare(args, context=context)()
        while inspect.isawaitable(result):
            result = await result
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly (no validation)."""
        return self.fn(*args, **kwargs)


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ToolError(f"tool name {name!r} is not usable by models: use 1-64 letters, digits, "
                        "'_' or '-', starting with a letter or '_' (e.g. @tool(name='my_tool'))")


def _is_async(fn: Any) -> bool:
    base = fn
    while isinstance(base, functools.partial):
        base = base.func
    if inspect.iscoroutinefunction(base) or inspect.iscoroutinefunction(inspect.unwrap(base)):
        return True
    if not inspect.isroutine(base) and not isinstance(base, type):
        return inspect.iscoroutinefunction(type(base).__call__)
    return False


def _build_schema(tool_name: str, params: list[_Param]) -> tuple[dict[str, Any], Any]:
    """(JSON schema, pydantic validation model or None)."""
    pydantic = _import_pydantic()
    if pydantic is not None:
        try:
            return _pydantic_schema(tool_name, params, pydantic)
        except Exception:  # fall back to the basic builder for exotic annotations
            pass
    properties: dict[str, Any] = {}
    for p in params:
        prop = dict(_basic_schema(p.annotation))
        if p.description:
            prop["description"] = p.description
        if not p.required:
            try:
                default = _json_default(p.default)
                json.dumps(default)
                prop["default"] = default
            except (TypeError, ValueError):
                pass
        properties[p.name] = prop
    return ({"type": "object", "properties": properties,
             "required": [p.name for p in params if p.required]}, None)


def _pydantic_schema(tool_name: str, params: list[_Param], pydantic: Any
                     ) -> tuple[dict[str, Any], Any]:
    config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True,
                                 coerce_numbers_to_str=True)
    fields: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, p in enumerate(params):
            annotation = p.annotation
            try:  # a type pydantic cannot express in JSON schema is accepted as anything
                pydantic.TypeAdapter(annotation, config=None).json_schema()
            except Exception:
                annotation = Any
            kwargs: dict[str, Any] = {"alias": p.name}
            if p.description:
                kwargs["description"] = p.description
            default = ... if p.required else p.default
            fields[f"p{i}"] = (annotation, pydantic.Field(default, **kwargs))
        model = pydantic.create_model(f"{tool_name}_args", __config__=config, **fields)
        schema = model.model_json_schema(by_alias=True)
    schema = _strip_titles(schema)
    schema.pop("additionalProperties", None)
    schema.pop("description", None)
    out: dict[str, Any] = {"type": "object", "properties": schema.get("properties", {}),
                           "required": [p.name for p in params if p.required]}
    if "$defs" in schema:
        out = _inline_refs(out, schema["$defs"])
    return out, model


def _inline_refs(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Replace ``{"$ref": "#/$defs/X"}`` by the definition (many providers reject ``$ref``).
    Recursive models cannot be inlined; then the ``$defs`` are kept."""
    recursive = False

    def walk(node: Any, seen: tuple[str, ...]) -> Any:
        nonlocal recursive
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                key = ref[len("#/$defs/"):]
                if key in seen or key not in defs:
                    recursive = True
                    return node
                merged = {**walk(defs[key], (*seen, key)),
                          **{k: walk(v, seen) for k, v in node.items() if k != "$ref"}}
                return merged
            return {k: walk(v, seen) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, seen) for v in node]
        return node

    out = walk(schema, ())
    if recursive:
        out["$defs"] = defs
    return out


# -- the decorator ------------------------------------------------------------------------------

def get_tool_spec(obj: Any) -> ToolSpec | None:
    """The :class:`ToolSpec` attached by :func:`tool`, if any."""
    spec = getattr(obj, "__agent_tool__", None)
    return spec if isinstance(spec, ToolSpec) else None


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         description: str | None = None, write: bool = False) -> Any:
    """Mark a callable as a tool: ``@tool``, ``@tool(write=True)``, ``tool(fn, name="x")``.

    Returns the function itself (with ``fn.__agent_tool__`` set to its :class:`ToolSpec`), so
    it is still called normally. ``write=True`` marks a tool that changes things; such a tool
    needs a covering policy or a ``pre_tool_call`` hook.
    """
    def decorate(target: Callable[..., Any]) -> Callable[..., Any]:
        existing = get_tool_spec(target)
        if existing is not None and (existing.fn is target
                                     or getattr(target, "__agent_tool_of__", None)
                                     is existing.fn):
            spec = existing.with_options(name=name, description=description, write=write)
        else:
            spec = ToolSpec.from_callable(target, name=name, description=description,
                                          write=write)
        try:
            target.__agent_tool__ = spec
            return target
        except (AttributeError, TypeError):  # bound methods, builtins: wrap thinly
            pass
        if spec.is_async:
            async def wrapper(*args, **kwargs):
                return await target(*args, **kwargs)
        else:
            def wrapper(*args, **kwargs):
                return target(*args, **kwargs)
        functools.update_wrapper(wrapper, target)
        wrapper.__agent_tool__ = spec
        wrapper.__agent_tool_of__ = target
        return wrapper

    if fn is None:
        return decorate
    return decorate(fn)


# -- a set of tools -----------------------------------------------------------------------------

class ToolSet:
    """The tools of one agent, by name. Build it with :meth:`from_config`."""

    def __init__(self, specs: Iterable[ToolSpec] = ()):
        self._specs: dict[str, ToolSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ToolError(f"two tools are named {spec.name!r}; rename one with "
                                "@tool(name=...)")
            self._specs[spec.name] = spec

    @classmethod
    def from_config(cls, tools: Any) -> ToolSet:
        """Validate ``AgentConfig.tools``: callables (sync/async, decorated or not) or
        :class:`ToolSpec` objects. Raises :class:`ToolError` naming a bad element or a
        duplicated name. The same function listed twice counts once."""
        if tools is None:
            return cls()
        if isinstance(tools, ToolSet):
            return tools
        if callable(tools) or isinstance(tools, (str, bytes)):
            tools = [tools]
        specs: list[ToolSpec] = []
        where: dict[str, int] = {}
        seen: dict[int, ToolSpec] = {}
        for i, element in enumerate(tools):
            if isinstance(element, ToolSpec):
                spec = element
            elif isinstance(element, str):
                raise ToolError(f"tools[{i}]: {element!r} is a string, not a callable; pass the "
                                f"function itself, e.g. tools=[{element}]")
            elif not callable(element):
                raise ToolError(f"tools[{i}]: {element!r} ({type(element).__name__}) is not "
                                "callable; pass functions, e.g. tools=[my_function]")
            else:
                if id(element) in seen and seen[id(element)].fn is element:
                    continue
                try:
                    spec = ToolSpec.from_callable(element)
                except ToolError as exc:
                    raise ToolError(f"tools[{i}]: {exc}") from exc
                seen[id(element)] = spec
            if spec.name in where:
                raise ToolError(f"tools[{where[spec.name]}] and tools[{i}] are both named "
                                f"{spec.name!r}; rename one with @tool(name=...)")
            where[spec.name] = i
            specs.append(spec)
        return cls(specs)

    def get(self, name: str) -> ToolSpec | None:
        return self._specs.get(name)

    def require(self, name: str) -> ToolSpec:
        """The tool called ``name``, or :class:`ToolError` listing the available ones."""
        spec = self._specs.get(name)
        if spec is None:
            have = ", ".join(self._specs) or "none"
            raise ToolError(f"unknown tool {name!r}; available tools: {have}")
        return spec

    def __getitem__(self, name: str) -> ToolSpec:
        return self.require(name)

    @property
    def specs(self) -> list[ToolSpec]:
        return list(self._specs.values())

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    @property
    def write_tools(self) -> list[ToolSpec]:
        return [s for s in self._specs.values() if s.write]

    def schemas(self) -> list[dict[str, Any]]:
        return [spec.schema() for spec in self._specs.values()]

    def merged(self, other: Any) -> ToolSet:
        """These tools plus ``other``'s (duplicate names raise :class:`ToolError`)."""
        return ToolSet([*self.specs, *ToolSet.from_config(other).specs])

    async def invoke(self, name: str, args: Mapping[str, Any] | str | None = None, *,
                     context: ToolContext | None = None) -> Any:
        return await self.require(name).invoke(args, context=context)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(list(self._specs.values()))

    def __len__(self) -> int:
        return len(self._specs)

    def __bool__(self) -> bool:
        return bool(self._specs)

    def __repr__(self) -> str:
        return f"ToolSet({self.names!r})"


# -- results ------------------------------------------------------------------------------------

def _to_jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        try:
            return dump(mode="json")
        except Exception:
            pass
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return repr(value)
    return str(value)


def format_result(value: Any) -> str:
    """A tool's result as text for the model: strings unchanged, everything else JSON
    (pydantic models, dataclasses, sets handled; anything else via ``str``)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=_to_jsonable, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)
