"""Tools: schema generation, docstrings, ToolContext, validation/coercion, decorator, ToolSet."""

import asyncio
import dataclasses
import enum
import functools
import json
import threading
from typing import Annotated, Literal, Optional

import pytest

from agent_magics import tools as tools_mod
from agent_magics.errors import ToolError
from agent_magics.tools import (
    ToolContext,
    ToolSet,
    ToolSpec,
    format_result,
    get_tool_spec,
    parse_docstring,
    tool,
)


def props(fn):
    return ToolSpec.from_callable(fn).parameters["properties"]


# -- ToolContext --------------------------------------------------------------------------------

def test_tool_context_dict_operations():
    ctx = ToolContext("bot", {"a": 1})
    assert ctx.agent_name == "bot"
    assert ctx.get("a") == 1 and ctx.get("missing", 7) == 7
    ctx.set("b", 2)
    ctx.update({"c": 3}, d=4)
    ctx.update(e=5)
    assert "c" in ctx and "zz" not in ctx
    assert ctx.as_dict() == {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    snapshot = ctx.as_dict()
    snapshot["a"] = 99
    assert ctx["a"] == 1  # as_dict is a copy
    assert ctx.pop("e") == 5 and len(ctx) == 4


def test_tool_context_is_thread_safe():
    ctx = ToolContext()
    ctx.set("n", 0)

    def bump():
        for _ in range(1000):
            with ctx.lock:
                ctx.set("n", ctx.get("n") + 1)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ctx.get("n") == 8000


# -- schema generation --------------------------------------------------------------------------

class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def test_basic_types_schema():
    def f(i: int, s: str, x: float, b: bool, tags: list[str]) -> None:
        """Do f."""

    spec = ToolSpec.from_callable(f)
    p = spec.parameters
    assert p["type"] == "object"
    assert p["required"] == ["i", "s", "x", "b", "tags"]
    assert {k: v["type"] for k, v in p["properties"].items()} == {
        "i": "integer", "s": "string", "x": "number", "b": "boolean", "tags": "array"}
    assert p["properties"]["tags"]["items"] == {"type": "string"}
    assert spec.name == "f" and spec.description == "Do f."


def test_optional_literal_enum_and_defaults():
    def g(mode: Literal["fast", "slow"], n: int = 3, note: Optional[str] = None,  # noqa: UP045
          color: Color = Color.RED) -> None:
        pass

    spec = ToolSpec.from_callable(g)
    p = spec.parameters["properties"]
    assert spec.parameters["required"] == ["mode"]
    assert p["mode"]["enum"] == ["fast", "slow"]
    assert p["n"] == {"default": 3, "type": "integer"}
    assert p["note"]["default"] is None
    assert {"type": "string"} in p["note"]["anyOf"] and {"type": "null"} in p["note"]["anyOf"]
    assert "title" not in json.dumps(spec.parameters)  # pydantic's auto titles removed
    assert json.loads(json.dumps(spec.parameters)) == spec.parameters


def test_unannotated_parameter_accepts_anything():
    def h(x, y=2):
        return x

    spec = ToolSpec.from_callable(h)
    assert spec.parameters["properties"]["x"] == {}
    assert spec.parameters["required"] == ["x"]


def test_property_named_title_is_kept():
    def post(title: str, body: str = "") -> None: ...

    assert "title" in props(post) and props(post)["title"]["type"] == "string"


def test_no_parameters():
    def now() -> str:
        return "t"

    assert ToolSpec.from_callable(now).parameters == {
        "type": "object", "properties": {}, "required": []}


def test_google_docstring_descriptions():
    def f(a: int, b: str = "x") -> int:
        """Add something.

        Longer explanation.

        Args:
            a (int): The first
                number.
            b: The second.

        Returns:
            The result.
        """

    spec = ToolSpec.from_callable(f)
    assert spec.description == "Add something.\n\nLonger explanation."
    assert spec.parameters["properties"]["a"]["description"] == "The first number."
    assert spec.parameters["properties"]["b"]["description"] == "The second."


def test_numpy_docstring_descriptions():
    def f(a: int, b: int) -> int:
        """Sum.

        Parameters
        ----------
        a : int
            Left
            operand.
        b : int
            Right operand.

        Returns
        -------
        int
        """

    p = props(f)
    assert p["a"]["description"] == "Left operand." and p["b"]["description"] == "Right operand."
    assert ToolSpec.from_callable(f).description == "Sum."


def test_sphinx_docstring_descriptions():
    def f(a: int, b: int) -> int:
        """Multiply.

        :param a: The first factor.
        :param int b: The second
            factor.
        :returns: the product
        """

    p = props(f)
    assert p["a"]["description"] == "The first factor."
    assert p["b"]["description"] == "The second factor."


def test_parse_docstring_without_sections():
    assert parse_docstring("Just text.\n\nMore.") == ("Just text.\n\nMore.", {})
    assert parse_docstring(None) == ("", {})


def test_annotated_string_description():
    def f(q: Annotated[str, "the search query"]) -> None: ...

    assert props(f)["q"]["description"] == "the search query"


def test_explicit_name_and_description_override():
    def f(a: int) -> int:
        """Docstring."""
        return a

    spec = ToolSpec.from_callable(f, name="renamed", description="Custom.")
    assert (spec.name, spec.description) == ("renamed", "Custom.")


def test_tool_context_parameter_hidden_from_schema():
    def f(a: int, ctx: ToolContext) -> int:
        return a

    spec = ToolSpec.from_callable(f)
    assert spec.context_param == "ctx"
    assert list(spec.parameters["properties"]) == ["a"]
    assert spec.parameters["required"] == ["a"]


def test_optional_tool_context_also_detected():
    def f(a: int, state: ToolContext | None = None) -> int:
        return a

    assert ToolSpec.from_callable(f).context_param == "state"


def test_two_context_parameters_rejected():
    def f(a: ToolContext, b: ToolContext) -> None: ...

    with pytest.raises(ToolError, match="two ToolContext parameters"):
        ToolSpec.from_callable(f)


@pytest.mark.parametrize("sig", ["*args", "**kwargs"])
def test_var_args_rejected_at_definition(sig):
    ns = {}
    exec(f"def f(a, {sig}): pass", ns)
    with pytest.raises(ToolError, match=r"tool 'f' takes \*"):
        ToolSpec.from_callable(ns["f"])
    with pytest.raises(ToolError):
        tool(ns["f"])


def test_lambda_needs_a_name():
    with pytest.raises(ToolError, match="lambda"):
        ToolSpec.from_callable(lambda x: x)
    spec = ToolSpec.from_callable(lambda x: x, name="ident")
    assert spec.name == "ident"


def test_bad_name_rejected():
    def f() -> None: ...

    with pytest.raises(ToolError, match="not usable by models"):
        ToolSpec.from_callable(f, name="has space")


def test_not_callable_rejected():
    with pytest.raises(ToolError, match="not callable"):
        ToolSpec.from_callable(42)


def test_partial_hides_bound_arguments():
    def power(base: int, exp: int) -> int:
        """Raise base to exp."""
        return base**exp

    spec = ToolSpec.from_callable(functools.partial(power, 2))
    assert spec.name == "power" and spec.description == "Raise base to exp."
    assert list(spec.parameters["properties"]) == ["exp"]


async def test_partial_invokes():
    def power(base: int, exp: int) -> int:
        return base**exp

    spec = ToolSpec.from_callable(functools.partial(power, exp=3))
    assert spec.parameters["required"] == ["base"]
    assert await spec.invoke({"base": "2"}) == 8


class Counter:
    def __init__(self):
        self.total = 0

    def add(self, n: int) -> int:
        """Add n to the total."""
        self.total += n
        return self.total

    @tool(write=True)
    def reset(self, to: int = 0) -> int:
        """Reset."""
        self.total = to
        return to


async def test_bound_method_excludes_self():
    c = Counter()
    spec = ToolSpec.from_callable(c.add)
    assert spec.name == "add" and list(spec.parameters["properties"]) == ["n"]
    assert await spec.invoke({"n": 5}) == 5 and c.total == 5


async def test_bound_method_of_decorated_function_keeps_options():
    c = Counter()
    spec = ToolSpec.from_callable(c.reset)
    assert spec.write is True and list(spec.parameters["properties"]) == ["to"]
    assert await spec.invoke({"to": 4}) == 4 and c.total == 4


class Greeter:
    """Greets people."""

    def __call__(self, who: str) -> str:
        return f"hi {who}"


async def test_callable_object():
    spec = ToolSpec.from_callable(Greeter())
    assert spec.name == "Greeter" and spec.description == "Greets people."
    assert await spec.invoke({"who": "bo"}) == "hi bo"


# -- validation and invocation ------------------------------------------------------------------

def add(a: int, b: int = 10) -> int:
    """Add two numbers."""
    return a + b


async def test_invoke_coerces_strings():
    spec = ToolSpec.from_callable(add)
    assert await spec.invoke({"a": "3", "b": "4"}) == 7


async def test_invoke_uses_function_defaults_for_omitted_args():
    assert await ToolSpec.from_callable(add).invoke({"a": 1}) == 11


async def test_invoke_accepts_json_string_args():
    assert await ToolSpec.from_callable(add).invoke('{"a": 1, "b": 2}') == 3


async def test_missing_argument_error():
    with pytest.raises(ToolError) as info:
        await ToolSpec.from_callable(add).invoke({"b": 1})
    assert str(info.value) == "tool 'add' is missing required argument(s) 'a'"


async def test_unknown_argument_error():
    with pytest.raises(ToolError) as info:
        await ToolSpec.from_callable(add).invoke({"a": 1, "c": 2})
    assert "unknown argument(s) 'c'" in str(info.value) and "it takes: a, b" in str(info.value)


async def test_wrong_type_error_names_argument():
    with pytest.raises(ToolError, match=r"tool 'add': argument 'a': .*integer.*'x'"):
        await ToolSpec.from_callable(add).invoke({"a": "x"})


async def test_non_mapping_args_rejected():
    with pytest.raises(ToolError, match="arguments must be an object"):
        await ToolSpec.from_callable(add).invoke([1, 2])
    with pytest.raises(ToolError, match="not valid JSON"):
        await ToolSpec.from_callable(add).invoke("{nope")


async def test_literal_and_list_validation():
    def f(mode: Literal["a", "b"], tags: list[str], flag: bool = False) -> tuple:
        return mode, tags, flag

    spec = ToolSpec.from_callable(f)
    assert await spec.invoke({"mode": "a", "tags": ["x"], "flag": "true"}) == ("a", ["x"], True)
    with pytest.raises(ToolError, match="'mode'"):
        await spec.invoke({"mode": "c", "tags": []})
    with pytest.raises(ToolError, match="'tags'"):
        await spec.invoke({"mode": "a", "tags": "notalist"})


async def test_enum_argument_is_converted():
    def paint(color: Color) -> Color:
        return color

    spec = ToolSpec.from_callable(paint)
    assert spec.parameters["properties"]["color"]["enum"] == ["red", "blue"]
    assert await spec.invoke({"color": "blue"}) is Color.BLUE


async def test_context_injected():
    def remember(key: str, value: int, ctx: ToolContext) -> dict:
        ctx.set(key, value)
        return ctx.as_dict()

    spec = ToolSpec.from_callable(remember)
    ctx = ToolContext("a1")
    assert await spec.invoke({"key": "k", "value": "2"}, context=ctx) == {"k": 2}
    assert ctx.get("k") == 2
    # the model cannot pass the context itself
    with pytest.raises(ToolError, match="unknown argument"):
        await spec.invoke({"key": "k", "value": 1, "ctx": {}}, context=ctx)


async def test_context_created_when_none_given():
    def f(ctx: ToolContext) -> bool:
        return isinstance(ctx, ToolContext)

    assert await ToolSpec.from_callable(f).invoke({}) is True


async def test_async_tool_is_awaited():
    async def slow(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    spec = ToolSpec.from_callable(slow)
    assert spec.is_async is True
    assert await spec.invoke({"x": "21"}) == 42
    assert ToolSpec.from_callable(add).is_async is False


async def test_sync_tool_runs_on_calling_thread():
    seen = []

    def where() -> None:
        seen.append(threading.get_ident())

    await ToolSpec.from_callable(where).invoke({})
    assert seen == [threading.get_ident()]


async def test_tool_exception_propagates_unchanged():
    def bad() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await ToolSpec.from_callable(bad).invoke({})


async def test_positional_only_parameters():
    def f(a: int, b: int = 1, /, c: int = 0) -> tuple:
        return a, b, c

    spec = ToolSpec.from_callable(f)
    assert await spec.invoke({"a": 5, "c": 2}) == (5, 1, 2)
    assert await spec.invoke({"a": 5, "b": 6}) == (5, 6, 0)


async def test_prepare_returns_runnable_callable():
    run = ToolSpec.from_callable(add).prepare({"a": "1", "b": 1})
    assert run() == 2


def test_validate_returns_only_given_arguments():
    assert ToolSpec.from_callable(add).validate({"a": "4"}) == {"a": 4}


async def test_basic_fallback_without_pydantic(monkeypatch):
    monkeypatch.setattr(tools_mod, "_import_pydantic", lambda: None)

    def f(n: int, x: float, ok: bool, tags: list[str], mode: Literal["a", "b"] = "a",
          note: str | None = None) -> tuple:
        """F.

        Args:
            n: how many
        """
        return n, x, ok, tags, mode, note

    spec = ToolSpec.from_callable(f)
    p = spec.parameters
    assert p["required"] == ["n", "x", "ok", "tags"]
    assert p["properties"]["n"] == {"type": "integer", "description": "how many"}
    assert p["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    assert p["properties"]["mode"] == {"enum": ["a", "b"], "type": "string", "default": "a"}
    result = await spec.invoke({"n": "3", "x": "1.5", "ok": "false", "tags": ["t"]})
    assert result == (3, 1.5, False, ["t"], "a", None)
    with pytest.raises(ToolError, match="argument 'n': expected an integer"):
        await spec.invoke({"n": "x", "x": 1, "ok": True, "tags": []})
    with pytest.raises(ToolError, match="argument 'mode'"):
        await spec.invoke({"n": 1, "x": 1, "ok": True, "tags": [], "mode": "z"})


class Opaque:
    pass


async def test_type_without_json_schema_is_accepted_as_anything():
    def f(o: Opaque = None, n: int = 0) -> object:
        return o

    spec = ToolSpec.from_callable(f)
    assert spec.parameters["properties"]["o"] == {"default": None}
    assert spec.parameters["properties"]["n"]["type"] == "integer"
    assert await spec.invoke({"o": {"k": 1}}) == {"k": 1}


# -- the decorator ------------------------------------------------------------------------------

def test_bare_decorator_returns_function_itself():
    @tool
    def double(x: int) -> int:
        """Double it."""
        return 2 * x

    assert double(4) == 8  # still a normal function
    spec = get_tool_spec(double)
    assert isinstance(spec, ToolSpec) and spec.fn is double and spec.write is False
    assert ToolSpec.from_callable(double) is spec


def test_decorator_with_options():
    @tool(write=True, name="delete_file", description="Delete a file.")
    def rm(path: str) -> None: ...

    spec = ToolSpec.from_callable(rm)
    assert (spec.name, spec.description, spec.write) == ("delete_file", "Delete a file.", True)
    assert rm.__name__ == "rm"


async def test_decorator_on_async_function():
    @tool
    async def fetch(url: str) -> str:
        return url.upper()

    assert asyncio.iscoroutinefunction(fetch)
    assert get_tool_spec(fetch).is_async
    assert await get_tool_spec(fetch).invoke({"url": "a"}) == "A"


def test_redecorating_updates_options():
    @tool
    def f(x: int) -> int:
        return x

    tool(f, write=True)
    assert get_tool_spec(f).write is True


def test_decorating_a_bound_method_wraps_it():
    c = Counter()
    wrapped = tool(c.add, name="add_n")
    assert wrapped(2) == 2 and c.total == 2
    spec = ToolSpec.from_callable(wrapped)
    assert spec.name == "add_n" and list(spec.parameters["properties"]) == ["n"]


def test_from_callable_respects_overrides_on_decorated():
    @tool
    def f() -> None: ...

    assert ToolSpec.from_callable(f, write=True).write is True
    assert get_tool_spec(f).write is False  # the attached spec is not mutated


def test_functools_wraps_wrapper_is_rebuilt_from_wrapper():
    @tool(write=True)
    def base(x: int) -> int:
        return x

    @functools.wraps(base)
    def wrapper(*args, **kwargs):
        return base(*args, **kwargs) + 1

    spec = ToolSpec.from_callable(wrapper)
    assert spec.fn is wrapper and spec.write is True
    assert list(spec.parameters["properties"]) == ["x"]


# -- ToolSet ------------------------------------------------------------------------------------

def test_toolset_from_config():
    async def ping() -> str:
        return "pong"

    ts = ToolSet.from_config([add, ping])
    assert len(ts) == 2 and ts.names == ["add", "ping"]
    assert ts.get("add").fn is add and ts.get("nope") is None
    assert "ping" in ts and [s.name for s in ts.specs] == ["add", "ping"]
    schemas = ts.schemas()
    assert schemas[0]["name"] == "add" and schemas[0]["description"] == "Add two numbers."
    assert set(schemas[0]) == {"name", "description", "parameters"}
    assert schemas[1]["parameters"] == {"type": "object", "properties": {}, "required": []}


def test_toolset_schemas_are_copies():
    ts = ToolSet.from_config([add])
    ts.schemas()[0]["parameters"]["properties"].clear()
    assert "a" in ts.get("add").parameters["properties"]


def test_toolset_none_and_empty():
    assert len(ToolSet.from_config(None)) == 0 and not ToolSet.from_config([])


def test_toolset_rejects_non_callable_naming_element():
    with pytest.raises(ToolError, match=r"tools\[1\]: 42 \(int\) is not callable"):
        ToolSet.from_config([add, 42])


def test_toolset_rejects_string_name():
    with pytest.raises(ToolError, match=r"tools\[0\]: 'add' is a string"):
        ToolSet.from_config(["add"])


def test_toolset_rejects_duplicate_names():
    def other() -> None: ...

    dup = tool(other, name="add")
    with pytest.raises(ToolError, match=r"tools\[0\] and tools\[1\] are both named 'add'"):
        ToolSet.from_config([add, dup])


def test_toolset_same_function_twice_counts_once():
    assert ToolSet.from_config([add, add]).names == ["add"]


def test_toolset_prefixes_definition_errors_with_index():
    with pytest.raises(ToolError, match=r"tools\[1\]: a lambda"):
        ToolSet.from_config([add, lambda: 1])


async def test_toolset_invoke_and_unknown_tool():
    ts = ToolSet.from_config([add])
    assert await ts.invoke("add", {"a": 1, "b": 1}) == 2
    with pytest.raises(ToolError, match="unknown tool 'sub'; available tools: add"):
        await ts.invoke("sub", {})


def test_toolset_write_tools_and_merge():
    @tool(write=True)
    def rm(path: str) -> None: ...

    ts = ToolSet.from_config([add]).merged([rm])
    assert ts.names == ["add", "rm"] and [s.name for s in ts.write_tools] == ["rm"]
    with pytest.raises(ToolError, match="named 'add'"):
        ts.merged([add])


# -- format_result ------------------------------------------------------------------------------

@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_format_result():
    assert format_result("plain") == "plain"
    assert format_result({"a": [1, 2]}) == '{"a": [1, 2]}'
    assert format_result(3) == "3"
    assert format_result(None) == "null"
    assert format_result(Point(1, 2)) == '{"x": 1, "y": 2}'
    assert format_result({"c": Color.RED}) == '{"c": "red"}'
    assert format_result("é") == "é" and format_result(["é"]) == '["é"]'
    assert json.loads(format_result({"o": Opaque()}))["o"].startswith("<")


def test_format_result_pydantic_model():
    pydantic = pytest.importorskip("pydantic")

    class M(pydantic.BaseModel):
        a: int

    assert format_result(M(a=1)) == '{"a": 1}'


async def test_pydantic_model_parameter_is_inlined_and_validated():
    pydantic = pytest.importorskip("pydantic")

    class Address(pydantic.BaseModel):
        """A postal address."""

        city: str
        zip: int

    def ship(to: Address) -> str:
        return f"{to.city}:{to.zip}"

    spec = ToolSpec.from_callable(ship)
    assert "$ref" not in json.dumps(spec.parameters) and "$defs" not in spec.parameters
    assert spec.parameters["properties"]["to"]["properties"]["zip"] == {"type": "integer"}
    assert await spec.invoke({"to": {"city": "Oslo", "zip": "150"}}) == "Oslo:150"
    with pytest.raises(ToolError, match=r"argument 'to\.zip'"):
        await spec.invoke({"to": {"city": "Oslo", "zip": "x"}})


def test_typing_optional_tool_context_detected():
    def f(a: int, state: Optional[ToolContext] = None) -> int:  # noqa: UP045
        return a

    spec = ToolSpec.from_callable(f)
    assert spec.context_param == "state" and list(spec.parameters["properties"]) == ["a"]
