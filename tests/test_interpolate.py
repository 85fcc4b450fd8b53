"""``{lookup}`` interpolation of ``%%agent`` prompts (design.md section 5)."""

from __future__ import annotations

import ast
import pickle
import re
from collections import defaultdict
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import pytest

from agent_magics.kernel import interpolate as interp_module
from agent_magics.kernel.interpolate import LookupFailed, fields, interpolate, lookup


class Shown:
    """An object whose ``__str__`` (not ``__repr__``) must end up in the prompt."""

    def __str__(self) -> str:
        return "shown-by-str"

    def __repr__(self) -> str:
        return "Shown()"


class Props:
    calls = 0

    @property
    def missing(self):
        raise AttributeError("computed attribute is not available")

    @property
    def broken(self):
        raise ValueError("user bug")

    @property
    def counted(self):
        Props.calls += 1
        return "counted"


class Frame:
    """Just enough of a DataFrame: ``df.columns[0]``, ``df.shape[0]``, ``df["col"]``."""

    columns = ("city", "population")
    shape = (3, 2)

    def __getitem__(self, key):
        if key == "city":
            return ["Paris", "Lyon", "Nice"]
        raise KeyError(key)


@pytest.fixture
def ns():
    item = SimpleNamespace(name="third")
    return {
        "name": "Ada",
        "n": 42,
        "pi": 3.14159,
        "shown": Shown(),
        "obj": SimpleNamespace(title="Dr", inner=SimpleNamespace(depth=3),
                               items=["first", "second", item]),
        "cfg": {"a": {"b": "deep"}, "1": "string-one", 1: "int-one"},
        "row": {"city": "Paris"},
        "nums": [10, 20, 30],
        "df": Frame(),
        "props": Props(),
        "In": ["", "x = 1", "print(x)"],
        "Out": {2: 42},
    }


# --- names, attributes, items ---------------------------------------------------------------


def test_name_is_replaced(ns):
    assert interpolate("Hello {name}!", ns) == "Hello Ada!"


def test_non_str_values_use_str(ns):
    assert interpolate("{n} {pi} {shown}", ns) == "42 3.14159 shown-by-str"


def test_str_value_is_inserted_as_is(ns):
    ns["s"] = "it's \"quoted\"\nand multi-line"
    assert interpolate("<{s}>", ns) == "<it's \"quoted\"\nand multi-line>"


def test_inserted_values_are_not_interpolated_again(ns):
    ns["tricky"] = "{name} {{x}}"
    assert interpolate("{tricky}", ns) == "{name} {{x}}"


def test_attribute_chain(ns):
    assert interpolate("{obj.title} / {obj.inner.depth}", ns) == "Dr / 3"


def test_int_index(ns):
    assert interpolate("{nums[0]} {nums[2]}", ns) == "10 30"


def test_negative_index(ns):
    assert interpolate("{nums[-1]} {obj.items[-3]}", ns) == "30 first"


def test_quoted_string_keys(ns):
    assert interpolate("""{cfg["a"]["b"]} {cfg['a']['b']}""", ns) == "deep deep"


def test_bare_word_key_is_a_string_key(ns):
    ns["city"] = "NOT-USED"  # a bare key is never looked up in the namespace
    assert interpolate("{row[city]}", ns) == "Paris"


def test_int_and_string_keys_are_distinct(ns):
    assert interpolate("""{cfg[1]} {cfg["1"]}""", ns) == "int-one string-one"


def test_mixed_chains(ns):
    assert interpolate("{obj.items[2].name} {df.columns[0]} {df.shape[0]} {df[city][1]}",
                       ns) == "third city 3 Lyon"


def test_ipython_in_and_out(ns):
    assert interpolate("{In[2]} -> {Out[2]}", ns) == "print(x) -> 42"
    assert interpolate("{In[-1]}|{In[1]}", ns) == "print(x)|x = 1"


def test_missing_out_entry_and_out_of_range_in_stay(ns):
    assert interpolate("{Out[1]} {In[9]}", ns) == "{Out[1]} {In[9]}"


def test_any_mapping_works_as_namespace():
    assert interpolate("{a}", MappingProxyType({"a": 1})) == "1"


def test_defaultdict_is_not_mutated_by_a_missing_key():
    table = defaultdict(list, {"k": [1]})
    assert interpolate("{table[k]} {table[nope]}", {"table": table}) == "[1] {table[nope]}"
    assert set(table) == {"k"}


# --- format specs and conversions --------------------------------------------------------------


def test_conversions(ns):
    assert interpolate("{name!r} {shown!s} {shown!r} {name!a}", ns) == \
        "'Ada' shown-by-str Shown() 'Ada'"


def test_format_specs(ns):
    assert interpolate("[{pi:.2f}] [{name:>5}] [{n:03d}] [{n:,}] [{name!r:^7}]", ns) == \
        "[3.14] [  Ada] [042] [42] [ 'Ada' ]"


def test_spec_that_does_not_fit_the_value_leaves_the_field(ns):
    assert interpolate("{name:.2f} {n:%%}", ns) == "{name:.2f} {n:%%}"


@pytest.mark.parametrize("code", ["{n: 1}", "{n:1}", "{n:-1.5}", "{n:b}", "{n: d}", "{n:x}"])
def test_specs_that_look_like_dict_values_are_left_alone(ns, code):
    assert interpolate(code, ns) == code


# --- things that are not fields --------------------------------------------------------------


@pytest.mark.parametrize("text", [
    '{"a": 1}',
    '{"a": {"b": {"c": [1, 2, {}]}}}',
    '[{"name": "x"}, {"n": 42}]',
    '{\n  "name": "Ada",\n  "nested": {"n": 1}\n}',
])
def test_json_is_untouched(ns, text):
    assert interpolate(text, ns) == text


def test_json_with_a_known_name_as_key_is_untouched(ns):
    assert "name" in ns
    assert interpolate('{"name": 1}', ns) == '{"name": 1}'
    assert interpolate("{'name': 1}", ns) == "{'name': 1}"


@pytest.mark.parametrize("code", [
    "def f(x): return {k: v for k, v in x}",
    "squares = {n: n * n for n in nums}",
    "s = {n for n in nums}",
    "s = {name, n}",
    "d = {name: n}",
    "d = {**cfg, 'a': 1}",
    "if (x) { return {n}; }",  # the block is untouched; the exact `{n}` inside is a field
])
def test_python_and_c_like_code_is_untouched(ns, code):
    expected = code.replace("{n}", "42")  # only an exact `{n}` is a field
    assert interpolate(code, ns) == expected


@pytest.mark.parametrize("code", [
    'f"{n + 1}"', 'f"{len(nums)}"', 'f"{n=}"', 'f"{n!r:>{width}}"', 'f"{n if n else 0}"',
    'f"{name.upper()}"', 'f"{nums[0:2]}"', 'f"{nums[i + 1]}"', "f'{cfg[\"a\"]!x}'",
])
def test_fstring_expressions_are_untouched(ns, code):
    assert interpolate(code, ns) == code


def test_fstring_with_a_plain_known_name_is_filled(ns):
    assert interpolate('print(f"{name}")', ns) == 'print(f"Ada")'


@pytest.mark.parametrize("tex", [
    r"\frac{a}{b}",
    r"\sqrt{\frac{a}{b}}",
    r"e^{i\pi} + 1 = 0",
    r"\mathbf{x}_{i}^{2}",
    r"\begin{align} x &= \left\{ y \right\} \end{align}",
])
def test_latex_is_untouched(ns, tex):
    assert interpolate(tex, ns) == tex


@pytest.mark.parametrize("regex", [r"\d{3}", r"[a-z]{2,4}", r"x{,5}", r"^\w{1}-\d{10}$"])
def test_regex_quantifiers_are_untouched(ns, regex):
    assert interpolate(regex, ns) == regex
    assert re.compile(interpolate(regex, ns)).pattern == regex


def test_unknown_names_are_untouched(ns):
    assert interpolate("{nosuch} {name} {nosuch.attr} {nosuch[0]}", ns) == \
        "{nosuch} Ada {nosuch.attr} {nosuch[0]}"


def test_builtins_are_not_consulted(ns):
    assert interpolate("{len} {print} {True} {None}", ns) == "{len} {print} {True} {None}"


def test_missing_attribute_and_key_are_untouched(ns):
    assert interpolate("{obj.nope} {row[nope]} {nums[3]} {name[x]} {n[0]}", ns) == \
        "{obj.nope} {row[nope]} {nums[3]} {name[x]} {n[0]}"


def test_empty_braces_and_whitespace_fields_are_untouched(ns):
    text = "{} { } { name } {name } { name} {\tname}"
    assert interpolate(text, ns) == text


def test_spaces_inside_keys_are_not_lookups(ns):
    assert interpolate("{row[ city ]} {row[city] }", ns) == "{row[ city ]} {row[city] }"


# --- escapes ----------------------------------------------------------------------------------


def test_double_braces_escape_a_field(ns):
    assert interpolate("{{name}}", ns) == "{name}"


def test_escaped_braces_around_a_field(ns):
    assert interpolate("{{{name}}}", ns) == "{Ada}"
    assert interpolate("{{ {name} }}", ns) == "{ Ada }"


def test_escape_pairs_and_lone_doubles_match_str_format(ns):
    for text in ["{{ and }}", "{{}}", "a {{ b", "b }} a", "{{{{x}}}}"]:
        assert interpolate(text, ns) == text.format(), text


def test_closing_double_brace_of_nested_structures_is_not_an_escape(ns):
    text = "{outer: {inner}}"  # the `}}` closes two different braces
    assert interpolate(text, ns) == text


def test_non_adjacent_inner_braces_are_not_an_escape(ns):
    text = "int m[2][2] = {{1, 2}, {3, 4}};"
    assert interpolate(text, ns) == text


# --- unbalanced and multi-line ---------------------------------------------------------------


@pytest.mark.parametrize("text", ["a { b", "} x {", "{", "}", "{name", "name}", "}{", "{a { b"])
def test_unbalanced_braces_are_untouched(ns, text):
    assert interpolate(text, ns) == text


def test_fields_next_to_unbalanced_braces_still_fill(ns):
    assert interpolate("a { b {name} c", ns) == "a { b Ada c"
    assert interpolate("} {name} {", ns) == "} Ada {"
    assert interpolate("{name}}", ns) == "Ada}"


def test_multi_line_template(ns):
    template = (
        "Dear {name},\n"
        "```json\n{\n  \"n\": {n}\n}\n```\n"
        "Last input: {In[2]}\n"
        "def f():\n    return {k: v for k, v in {}.items()}\n"
    )
    assert interpolate(template, ns) == (
        "Dear Ada,\n"
        "```json\n{\n  \"n\": 42\n}\n```\n"
        "Last input: print(x)\n"
        "def f():\n    return {k: v for k, v in {}.items()}\n"
    )


def test_a_field_never_spans_lines(ns):
    assert interpolate("{name\n}", ns) == "{name\n}"


def test_template_without_braces_is_returned_unchanged(ns):
    text = "no braces here\n" * 3
    assert interpolate(text, ns) == text


# --- safety ------------------------------------------------------------------------------------


class Spy:
    """Callable and attribute target that records anything done to it."""

    def __init__(self):
        object.__setattr__(self, "log", [])

    def __call__(self, *args, **kwargs):
        self.log.append(("call", args))
        return self

    def __getattribute__(self, attr):
        if attr not in ("log", "__class__", "__dict__"):
            object.__getattribute__(self, "log").append(("getattr", attr))
        return object.__getattribute__(self, attr)

    def __getitem__(self, key):
        self.log.append(("getitem", key))
        return self


def test_nothing_is_evaluated(tmp_path):
    spy = Spy()
    target = tmp_path / "f"
    namespace = {"__import__": spy, "open": spy, "os": spy, "x": spy, "eval": spy, "exec": spy}
    template = (
        "{__import__('os').system('touch " + str(target) + "')} "
        "{open('" + str(target) + "', 'w')} "
        "{x.__class__} {x.__class__.__subclasses__} {x._private} {x.__dict__} "
        "{eval('1+1')} {exec('y=1')} {x()} {x.attr()} {x[0]()} {x if x else x} "
        "{x + x} {[x for x in x]} {lambda: x} {(x)} {x, x} {x[0:1]} {not x} {-x} "
        "{x.attr.__globals__} {x[0].__class__}"
    )
    assert interpolate(template, namespace) == template
    assert spy.log == []
    assert not target.exists()
    assert fields(template) == []


def test_underscore_attributes_are_refused_without_being_accessed():
    spy = Spy()
    assert interpolate("{x._secret} {x.__class__} {x.ok._no}", {"x": spy}) == \
        "{x._secret} {x.__class__} {x.ok._no}"
    assert spy.log == []
    with pytest.raises(LookupFailed, match="'_'"):
        lookup("x.__class__", {"x": spy})
    assert spy.log == []


def test_underscore_root_names_and_keys_are_plain_lookups():
    namespace = {"_": "last output", "_private": {"__key__": 1}}
    assert interpolate("{_} {_private[__key__]}", namespace) == "last output 1"


def test_property_raising_attribute_error_leaves_the_field(ns):
    assert interpolate("{props.missing} {props.counted}", ns) == "{props.missing} counted"


def test_property_raising_another_error_propagates(ns):
    with pytest.raises(ValueError, match="user bug"):
        interpolate("{props.broken}", ns)


def test_properties_run_once_per_field(ns):
    before = Props.calls
    assert interpolate("{props.counted}{props.counted}", ns) == "countedcounted"
    assert Props.calls - before == 2


# --- strict mode -------------------------------------------------------------------------------


def test_strict_raises_for_an_unknown_name(ns):
    with pytest.raises(LookupFailed, match="nosuch") as info:
        interpolate("{name} {nosuch.attr}", ns, strict=True)
    assert info.value.name == "nosuch"
    assert info.value.expr == "nosuch.attr"


def test_strict_ignores_non_fields_escapes_and_missing_members(ns):
    text = '{"nosuch": 1} {{nosuch}} {nosuch()} { nosuch } {obj.nope} {row[nope]}'
    assert interpolate(text, ns, strict=True) == '{"nosuch": 1} {nosuch} {nosuch()} ' \
        "{ nosuch } {obj.nope} {row[nope]}"


def test_strict_still_fills_known_names(ns):
    assert interpolate("{name} {n}", ns, strict=True) == "Ada 42"


def test_non_strict_default_leaves_unknown_names(ns):
    assert interpolate("{nosuch}", ns) == "{nosuch}"


# --- fields() -----------------------------------------------------------------------------------


def test_fields_lists_lookup_expressions_in_order():
    template = (
        '{b} {"json": 1} {a.x[0]} {{escaped}} {b} {cfg["k"]!r:>5} {x + 1} {In[3]} '
        r"\d{3} {_} {obj._hidden} { spaced } {{{inner}}}"
    )
    assert fields(template) == ["b", "a.x[0]", "b", 'cfg["k"]', "In[3]", "_", "inner"]


def test_fields_of_plain_text_is_empty():
    assert fields("no fields {} here {1} {'a'}") == []


# --- lookup() ----------------------------------------------------------------------------------


def test_lookup_resolves_chains(ns):
    assert lookup("obj.items[2].name", ns) == "third"
    assert lookup('cfg["a"]["b"]', ns) == "deep"
    assert lookup("Out[2]", ns) == 42
    assert lookup("In[-1]", ns) == "print(x)"
    assert lookup("row[city]", ns) == "Paris"
    assert lookup("nums", ns) is ns["nums"]


@pytest.mark.parametrize("expr", ["nosuch", "obj.nope", "row[nope]", "nums[3]", "n[0]",
                                  "nums[city]", "props.missing"])
def test_lookup_raises_lookup_failed_for_missing(ns, expr):
    with pytest.raises(LookupFailed):
        lookup(expr, ns)


@pytest.mark.parametrize("expr", ["", "1", "n + 1", "f()", "nums[0:1]", " n", "n ", "n.",
                                  "n[]", "n[1.5]", "n['a\\'b']", "n!r", "n:>3", "x.y()",
                                  "obj.__class__", "obj._x", "[n]", "n..x", 'n["a"'])
def test_lookup_rejects_non_lookups(ns, expr):
    with pytest.raises(LookupFailed):
        lookup(expr, ns)


def test_lookup_failed_is_a_key_and_attribute_error(ns):
    with pytest.raises(KeyError):
        lookup("row[nope]", ns)
    with pytest.raises(AttributeError):
        lookup("obj.nope", ns)
    with pytest.raises(LookupFailed) as info:
        lookup("obj.nope", ns)
    assert info.value.name == "nope"
    assert str(info.value) == "obj.nope: no attribute 'nope'"  # not KeyError's repr quoting


def test_lookup_failed_pickles():
    err = LookupFailed("name 'q' is not defined", expr="q.x", name="q")
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.expr, copy.name) == (str(err), "q.x", "q")


def test_public_names():
    assert sorted(interp_module.__all__) == ["LookupFailed", "fields", "interpolate", "lookup"]


def test_module_imports_only_the_standard_library():
    tree = ast.parse(Path(interp_module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "re", "ast", "collections", "functools", "typing"}, imported


# --- large templates ----------------------------------------------------------------------------


def test_large_template_is_correct(ns):
    pieces, expected = [], []
    chunks = [
        ("Hello {name}! ", "Hello Ada! "),
        ('{"json": {"nested": {}}} ', '{"json": {"nested": {}}} '),
        ("{k: v for k, v in x} ", "{k: v for k, v in x} "),
        ("{{name}} ", "{name} "),
        (r"\frac{a}{b} \d{3} ", r"\frac{a}{b} \d{3} "),
        ("{nums[-1]}/{Out[2]} ", "30/42 "),
        ("{nosuch}\n", "{nosuch}\n"),
    ]
    for i in range(20_000):
        template_part, expected_part = chunks[i % len(chunks)]
        pieces.append(template_part)
        expected.append(expected_part)
    template = "".join(pieces)
    assert len(template) > 300_000
    assert interpolate(template, ns) == "".join(expected)
    assert fields(template).count("name") == 20_000 // len(chunks) + 1


def test_deeply_nested_braces_do_not_recurse(ns):
    depth = 100_000
    text = "{" * depth + "name" + "}" * depth  # 50 000 escape pairs around a literal name
    assert interpolate(text, ns) == "{" * (depth // 2) + "name" + "}" * (depth // 2)
    unbalanced = "{[" * depth
    assert interpolate(unbalanced, ns) == unbalanced
