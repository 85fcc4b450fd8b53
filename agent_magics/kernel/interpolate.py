"""Fill ``{lookup}`` fields of a ``%%agent`` prompt from the user namespace (design.md section 5).

Only *lookups* are ever resolved -- a name followed by any chain of ``.attr`` and ``[key]``::

    {name}  {name.attr}  {cfg["a"]["b"]}  {row[city]}  {items[-1]}  {In[3]}  {Out[3]}

optionally followed by a conversion (``!r``, ``!s``, ``!a``) and/or a format spec
(``{x:>10}``, ``{price:,.2f}``).  Nothing is evaluated: no calls, operators, comprehensions or
builtins, and attribute names starting with ``_`` are refused.  Everything else in braces --
JSON, code, LaTeX, regexes, unknown names -- is left exactly as written.

Brace rules, applied in one linear scan:

* A field is a ``{...}`` with no brace inside whose *whole* content (no surrounding spaces) is a
  lookup; it is replaced by ``str(value)`` when the lookup resolves, kept verbatim when not.
* ``{{X}}`` -- two adjacent ``{`` whose matching ``}`` are also adjacent -- is an escape and
  becomes ``{X}`` (``{{name}}`` -> ``{name}``, ``{{{name}}}`` -> ``{<value>}``).
* An unmatched ``{{`` or ``}}`` becomes ``{`` or ``}`` (as in ``str.format``).
* Any other brace is literal.  Because braces are matched first, the ``}}`` that closes nested
  JSON/LaTeX (``{"a": {"b": {}}}``, ``\\sqrt{\\frac{a}{b}}``) is *not* an escape.

The module imports only the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

__all__ = ["LookupFailed", "fields", "interpolate", "lookup"]


class LookupFailed(KeyError, AttributeError):
    """A lookup expression did not resolve, or is not a pure lookup.

    ``expr`` is the expression; ``name`` the root or attribute name that was missing (``None``
    when the failure was a key, an index or the syntax).
    """

    def __init__(self, message: str, *, expr: str | None = None, name: str | None = None):
        super().__init__(message)
        self.message = message
        self.expr = expr
        self.name = name

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message

    def __reduce__(self):
        return (_rebuild_lookup_failed, (self.message, self.expr, self.name))


def _rebuild_lookup_failed(message: str, expr: str | None, name: str | None) -> LookupFailed:
    return LookupFailed(message, expr=expr, name=name)


# --- grammar -----------------------------------------------------------------------------------

_IDENT = r"[^\W\d]\w*"                       # a (unicode) identifier
_KEY = rf"""-?[0-9]+|'[^'\\\n]*'|"[^"\\\n]*"|{_IDENT}"""
_TRAILER = rf"\.(?!_){_IDENT}|\[(?:{_KEY})\]"
_EXPR = rf"{_IDENT}(?:{_TRAILER})*"

_EXPR_RE = re.compile(rf"{_EXPR}\Z")
_FIELD_RE = re.compile(rf"(?P<expr>{_EXPR})(?:!(?P<conv>[rsa]))?(?::(?P<spec>[^\n]*))?\Z")
_STEP_RE = re.compile(
    rf"""\.(?P<attr>{_IDENT})|\[(?:(?P<int>-?[0-9]+)|'(?P<sq>[^'\\\n]*)'|"(?P<dq>[^"\\\n]*)"|"""
    rf"""(?P<word>{_IDENT}))\]"""
)
_ROOT_RE = re.compile(_IDENT)

# The format-spec mini-language: [[fill]align][sign][z][#][0][width][grouping][.precision][type]
_SPEC_RE = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?[0-9]*[,_]?(?:\.[0-9]+)?[bcdeEfFgGnosxX%]?\Z")
# Specs that would turn code into a field: `{a: 1}`, `{x:1}`, `{k:-1.5}`, `{a:b}`.
_AMBIGUOUS_SPEC_RE = re.compile(rf"\s|[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)\Z|{_IDENT}\Z")

_ATTR, _ITEM = 0, 1
_Steps = tuple[tuple[int, Any], ...]


@lru_cache(maxsize=1024)
def _parse(expr: str) -> tuple[str, _Steps] | None:
    """``(root, steps)`` for a syntactically valid lookup expression, else ``None``."""
    if not _EXPR_RE.match(expr):
        return None
    root = _ROOT_RE.match(expr)
    assert root is not None
    steps: list[tuple[int, Any]] = []
    for m in _STEP_RE.finditer(expr, root.end()):
        if m["attr"] is not None:
            steps.append((_ATTR, m["attr"]))
        elif m["int"] is not None:
            steps.append((_ITEM, int(m["int"])))
        else:
            key = next(k for k in (m["sq"], m["dq"], m["word"]) if k is not None)
            steps.append((_ITEM, key))
    return root.group(), tuple(steps)


@lru_cache(maxsize=1024)
def _parse_field(content: str) -> tuple[str, str | None, str | None] | None:
    """``(expr, conversion, spec)`` when *content* is a lookup field, else ``None``."""
    m = _FIELD_RE.match(content)
    if m is None:
        return None
    spec = m["spec"]
    if spec is not None and (not _SPEC_RE.match(spec) or _AMBIGUOUS_SPEC_RE.match(spec)):
        return None
    return m["expr"], m["conv"], spec


# --- lookup ------------------------------------------------------------------------------------

_MISSING = object()


def _resolve(expr: str, root: str, steps: _Steps, namespace: Mapping[str, Any]) -> Any:
    if root not in namespace:
        raise LookupFailed(f"name {root!r} is not defined", expr=expr, name=root)
    obj = namespace[root]
    for kind, arg in steps:
        if kind == _ATTR:
            try:
                obj = getattr(obj, arg)
            except (AttributeError, LookupError):
                raise LookupFailed(f"{expr}: no attribute {arg!r}", expr=expr, name=arg) from None
            continue
        try:
            # .get on mappings: no defaultdict insertion, int keys of Out work as keys
            obj = obj.get(arg, _MISSING) if isinstance(obj, Mapping) else obj[arg]
        except (LookupError, TypeError, AttributeError):
            obj = _MISSING
        if obj is _MISSING:
            raise LookupFailed(f"{expr}: no item [{arg!r}]", expr=expr)
    return obj


def lookup(expr: str, namespace: Mapping[str, Any]) -> Any:
    """Resolve the lookup expression *expr* against *namespace* without evaluating code.

    *expr* is a name followed by any chain of ``.attr`` and ``[key]`` where a key is an int
    literal (``[0]``, ``[-1]``), a quoted string (``["a"]``, ``['a']``) or a bare identifier
    taken as a string key (``[city]``, as in ``str.format``).  Int keys index sequences and
    look up int keys of mappings alike (``In[3]``, ``Out[3]``).  Only the namespace is
    consulted (no builtins).  Attribute access may run properties / ``__getattr__`` and item
    access ``__getitem__`` of user objects; nothing else runs.

    Raises :class:`LookupFailed` when *expr* is not a pure lookup (calls, operators, spaces,
    attributes starting with ``_`` ...) or anything along the path is missing.  Other
    exceptions raised by a user property or ``__getitem__`` propagate.
    """
    parsed = _parse(expr) if isinstance(expr, str) else None
    if parsed is None:
        if isinstance(expr, str) and re.search(r"\.\s*_", expr):
            reason = "attribute names starting with '_' are refused"
        else:
            reason = "not a lookup expression (name, .attr and [key] only)"
        raise LookupFailed(f"{expr!r}: {reason}", expr=expr if isinstance(expr, str) else None)
    return _resolve(expr, parsed[0], parsed[1], namespace)


# --- templates ---------------------------------------------------------------------------------

_BRACE_RE = re.compile(r"[{}]")


def _scan(template: str, on_field: Callable[[str], str | None]) -> str:
    """Rewrite *template* by the brace rules in the module docstring (linear time).

    *on_field* gets the content of every brace-free ``{...}`` that is not part of an escape and
    returns its replacement, or ``None`` to keep the field verbatim.
    """
    if "{" not in template and "}" not in template:
        return template
    pos = [m.start() for m in _BRACE_RE.finditer(template)]
    opens = [template[p] == "{" for p in pos]
    n = len(pos)
    match = [-1] * n
    stack: list[int] = []
    for k in range(n):
        if opens[k]:
            stack.append(k)
        elif stack:
            j = stack.pop()
            match[j], match[k] = k, j

    drop = bytearray(n)  # 1: this brace is removed (half of an escape)
    out: list[str] = []
    last = 0
    k = 0
    while k < n:
        if drop[k]:
            out.append(template[last:pos[k]])
            last = pos[k] + 1
            k += 1
            continue
        nxt = k + 1
        adjacent_twin = nxt < n and opens[nxt] == opens[k] and pos[nxt] == pos[k] + 1
        if adjacent_twin and not drop[nxt]:
            if match[k] < 0 and match[nxt] < 0:  # unmatched `{{` / `}}`
                drop[nxt] = 1
                k = nxt
                continue
            close, inner_close = match[k], match[nxt]
            if (opens[k] and close >= 0 and inner_close >= 0
                    and close == inner_close + 1 and pos[close] == pos[inner_close] + 1):
                drop[nxt] = drop[inner_close] = 1  # `{{X}}` -> `{X}`
                k = nxt
                continue
        if opens[k] and match[k] == nxt:  # a brace-free `{...}`
            replacement = on_field(template[pos[k] + 1:pos[nxt]])
            if replacement is not None:
                out.append(template[last:pos[k]])
                out.append(replacement)
                last = pos[nxt] + 1
                k = nxt + 1
                continue
        k += 1
    out.append(template[last:])
    return "".join(out)


def _render(value: Any, conv: str | None, spec: str | None) -> str | None:
    if conv == "r":
        value = repr(value)
    elif conv == "a":
        value = ascii(value)
    elif conv == "s":
        value = str(value)
    if spec is None:
        return value if type(value) is str else str(value)
    try:
        return format(value, spec)
    except (ValueError, TypeError):  # spec does not fit this value: keep the field verbatim
        return None


def interpolate(template: str, namespace: Mapping[str, Any], *, strict: bool = False) -> str:
    """Fill the ``{lookup}`` fields of *template* from *namespace*; keep everything else.

    ``{name}``, ``{name.attr}``, ``{name[key]}``, ``{In[3]}``, ``{Out[3]}`` become
    ``str(value)``; ``{x!r}`` applies ``repr`` and ``{x:>10}`` a format spec.  ``{{``/``}}``
    escape.  A field whose lookup fails -- or anything in braces that is not exactly a lookup
    (JSON, code, LaTeX, regex, ``{ name }`` with spaces) -- is left byte for byte.

    To keep code such as ``{a: 1}``, ``{x:1}`` or ``{a:b}`` intact, a format spec that starts
    with whitespace or is just a number or an identifier is not treated as a spec.

    With ``strict=True`` a field that is a valid lookup whose *name* is not defined raises
    :class:`LookupFailed` naming it (missing attributes/keys are still left untouched).
    """

    def on_field(content: str) -> str | None:
        parsed = _parse_field(content)
        if parsed is None:
            return None
        expr, conv, spec = parsed
        parsed_expr = _parse(expr)
        assert parsed_expr is not None  # _FIELD_RE only accepts valid expressions
        root, steps = parsed_expr
        try:
            value = _resolve(expr, root, steps, namespace)
        except LookupFailed:
            if strict and root not in namespace:
                raise
            return None
        return _render(value, conv, spec)

    return _scan(template, on_field)


def fields(template: str) -> list[str]:
    """The lookup expressions :func:`interpolate` would try, in order (repeats included).

    Conversions and format specs are stripped (``{x!r:>5}`` gives ``"x"``); escaped fields,
    JSON, code and other non-lookups are not listed.
    """
    found: list[str] = []

    def on_field(content: str) -> None:
        parsed = _parse_field(content)
        if parsed is not None:
            found.append(parsed[0])

    _scan(template, on_field)
    return found
