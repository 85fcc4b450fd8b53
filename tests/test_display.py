"""StreamView: throttled, incremental, deterministic live output and a plain final bundle.

Output contract: every live block is displayed empty, updated in place while streaming, and
emptied again at the end; the final bundle is a new output below the blocks. A client that
ignores ``update_display_data`` (nbval) then records exactly what a saved notebook keeps.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass

import pytest

from agent_magics.kernel.display import StreamView, extract_code, render_markdown, tool_line
from agent_magics.response import ChatResponse
from agent_magics.types import Text, Thought, ToolCall, ToolResult, UsageMetadata


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Published:
    """What went through the shell's display publisher, and what a frontend would show."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False,
                **kwargs):
        self.messages.append({"data": data, "metadata": metadata or {},
                              "display_id": (transient or {}).get("display_id"),
                              "update": update, "thread": threading.current_thread().name})

    def outputs(self) -> list[dict]:
        """The output area after applying display / update_display messages in order."""
        shown: list[dict] = []
        for m in self.messages:
            if m["update"]:
                for out in shown:
                    if out["display_id"] == m["display_id"]:
                        out["data"], out["metadata"] = m["data"], m["metadata"]
            else:
                shown.append(dict(m))
        return shown

    def block_markdown(self) -> list[str]:
        """The last Markdown each live block (an output with a display id) showed, in order."""
        last: dict[str, str] = {}
        for m in self.messages:
            if m["display_id"] is not None and "text/markdown" in m["data"]:
                last[m["display_id"]] = m["data"]["text/markdown"]
        return list(last.values())

    def recorded_by_nbval(self) -> list[dict]:
        """What a client that ignores display updates records (nbval: display_data only)."""
        return [{"data": m["data"], "metadata": m["metadata"]}
                for m in self.messages if not m["update"]]

    def saved_notebook(self) -> list[dict]:
        """What a saved notebook keeps: every display update applied by display id."""
        return [{"data": o["data"], "metadata": o["metadata"]} for o in self.outputs()]


@pytest.fixture
def pub(monkeypatch) -> Published:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    recorder = Published()
    monkeypatch.setattr(shell.display_pub, "publish", recorder.publish)
    return recorder


def response_of(*chunks, usage=None, finish=True) -> ChatResponse:
    r = ChatResponse(agent="bot", model="scripted:echo", conversation_id="conv-1", turn=3)
    for c in chunks:
        r._append(c)
    if finish:
        r._finish(usage=usage)
    return r


def stream(view: StreamView, chunks, clock: Clock, *, step: float = 0.0, every: int = 1,
           force: bool = False) -> ChatResponse:
    """Feed chunks one by one, refreshing after every ``every``-th, advancing the clock."""
    r = ChatResponse(agent="bot", model="m", conversation_id="c", turn=1)
    for i, c in enumerate(chunks, 1):
        r._append(c)
        clock.now += step
        if i % every == 0:
            view.refresh(r, force=force)
    r._finish(usage=UsageMetadata.of(10, 20))
    return r


def words(text: str) -> list[Text]:
    return [Text(w) for w in re.findall(r"\S+\s*|\s+", text)]


def long_reply(paragraphs: int = 60, size: int = 500) -> str:
    return "".join(f"Paragraph {i}: " + ("lorem ipsum " * (size // 12)) + "\n\n"
                   for i in range(paragraphs))


# -- throttling -----------------------------------------------------------------------------

def test_thousand_refreshes_in_one_second_publish_at_most_hz_plus_one(pub):
    clock = Clock()
    view = StreamView(agent="bot", model="m", refresh_hz=10, clock=clock)
    r = ChatResponse()
    published = 0
    for i in range(1000):
        r._append(Text(f"w{i} "))
        published += view.refresh(r)
        clock.now += 0.001
    assert 10 <= published <= 11
    # the first publish displays the block empty and updates it; later ones only update it
    first, *updates = pub.messages
    assert first["update"] is False and first["data"] == {"text/plain": ""}
    assert all(m["update"] and m["display_id"] == first["display_id"] for m in updates)
    assert len(updates) == published
    assert len(pub.messages) == view.updates


def test_force_bypasses_the_throttle_and_nothing_new_publishes_nothing(pub):
    clock = Clock()
    view = StreamView(agent="bot", model="m", refresh_hz=10, clock=clock)
    r = ChatResponse()
    r._append(Text("a"))
    assert view.refresh(r) is True
    r._append(Text("b"))
    assert view.refresh(r) is False  # same instant: throttled
    assert view.refresh(r, force=True) is True
    assert pub.messages[-1]["data"]["text/markdown"] == "ab"
    assert view.refresh(r, force=True) is False  # no new chunks: no message
    # the empty display, then one update per successful refresh ("a", "ab")
    assert [m["update"] for m in pub.messages] == [False, True, True]
    assert pub.messages[0]["data"] == {"text/plain": ""}
    assert [m["data"]["text/markdown"] for m in pub.messages[1:]] == ["a", "ab"]


def test_start_shows_an_empty_output_that_the_stream_updates_in_place(pub):
    view = StreamView(agent="bot", model="m", clock=Clock())
    view.start()
    (first,) = pub.messages
    assert first["update"] is False and first["data"] == {"text/plain": ""}
    assert view.display_ids == [first["display_id"]] and first["display_id"] is not None
    view.start()  # idempotent
    r = ChatResponse()
    r._append(Text("Hello"))
    view.refresh(r, force=True)
    first, second = pub.messages  # no second display: the stream updates the first one
    assert second["update"] is True and second["display_id"] == first["display_id"]
    assert second["data"] == {"text/markdown": "Hello", "text/plain": "Hello"}


# -- incremental work ---------------------------------------------------------------------

class SpyItems(list):
    """A chunk list that records every slice taken of it."""

    def __init__(self):
        super().__init__()
        self.slices: list[int] = []

    def __getitem__(self, index):
        result = super().__getitem__(index)
        if isinstance(index, slice):
            self.slices.append(len(result))
        return result


def test_each_chunk_is_consumed_once_and_the_tail_stays_bounded(pub):
    block = 2000
    view = StreamView(agent="bot", model="m", block_chars=block, clock=Clock())
    r = ChatResponse()
    r._items = SpyItems()
    text = long_reply(paragraphs=80, size=500)  # ~42k chars, 80 paragraphs
    chunks = words(text)
    for i, c in enumerate(chunks):
        r._append(c)
        if i % 7 == 0:
            view.refresh(r, force=True)
    view.refresh(r, force=True)
    assert sum(r._items.slices) == len(chunks)  # a cursor: no chunk is looked at twice
    longest_paragraph = max(len(p) + 2 for p in text.split("\n\n"))
    displays = [m for m in pub.messages if not m["update"]]
    assert all(m["data"] == {"text/plain": ""} for m in displays)  # each block starts empty
    updates = [m for m in pub.messages if m["update"]]
    assert len(updates) == len(pub.messages) - len(displays)
    sizes = [len(m["data"]["text/markdown"]) for m in updates]
    assert max(sizes) <= block + longest_paragraph
    assert len(pub.outputs()) >= len(text) // (block + longest_paragraph)


def test_blocks_reassemble_the_text_and_split_at_paragraph_boundaries(pub):
    text = long_reply(paragraphs=30, size=400)
    clock = Clock()
    view = StreamView(agent="bot", model="m", block_chars=1000, clock=clock)
    stream(view, words(text), clock, every=5, force=True)
    outputs = pub.outputs()
    assert len(outputs) > 3
    pieces = [o["data"]["text/markdown"] for o in outputs]
    assert "".join(pieces) == text
    assert all(p.endswith("\n\n") for p in pieces[:-1])
    assert all(len(p) >= 1000 for p in pieces[:-1])


@pytest.mark.parametrize(("every", "step", "chunker"), [
    (1, 0.0, "words"),
    (13, 0.05, "words"),
    (1000, 0.2, "chars"),
    (3, 0.01, "lines"),
])
def test_block_splitting_depends_only_on_the_text(monkeypatch, every, step, chunker):
    text = long_reply(paragraphs=25, size=300) + "```python\nx = 1\n\n\ny = 2\n```\n\nThe end."
    split = {
        "words": words,
        "chars": lambda t: [Text(ch) for ch in t],
        "lines": lambda t: [Text(line) for line in t.splitlines(keepends=True)],
    }[chunker]

    def blocks(chunks, every, step):
        from IPython.core.interactiveshell import InteractiveShell

        rec = Published()
        monkeypatch.setattr(InteractiveShell.instance().display_pub, "publish", rec.publish)
        clock = Clock()
        view = StreamView(agent="bot", model="m", block_chars=700, clock=clock)
        view.start()
        r = stream(view, chunks, clock, every=every, step=step)
        view.refresh(r, force=True)
        live = [o["data"]["text/markdown"] for o in rec.outputs()]
        view.finish(r, turn=1, conversation_id="c")
        return live, rec.block_markdown(), rec.outputs()

    reference = blocks(words(text), 1, 0.0)
    live, shown, final = blocks(split(text), every, step)
    assert live == reference[0]
    assert shown == reference[1] == live  # each block's last content, whatever the timing
    assert "".join(shown) == text
    assert [o["data"] for o in final] == [o["data"] for o in reference[2]]
    assert len(shown) >= 5
    assert [o["data"] for o in final] == [{"text/plain": ""}] * len(shown) + [
        {"text/markdown": text, "text/plain": text}]


def test_no_block_boundary_inside_a_code_fence(pub):
    code = "```python\n" + "".join(f"x{i} = {i}\n\n" for i in range(200)) + "```\n\n"
    text = "Intro paragraph.\n\n" + code + "After the code.\n\n" + "tail " * 50
    clock = Clock()
    view = StreamView(agent="bot", model="m", block_chars=100, clock=clock)
    stream(view, words(text), clock, force=True)
    pieces = [o["data"]["text/markdown"] for o in pub.outputs()]
    assert "".join(pieces) == text
    for piece in pieces:
        assert piece.count("```") % 2 == 0, piece[:80]
    assert any(p.endswith(code) for p in pieces)  # the whole code block stayed in one block
    assert len(pieces) >= 2


# -- live rendering of thoughts and tools -------------------------------------------------

def test_thoughts_are_collapsed_and_escaped_text_is_not(pub):
    view = StreamView(agent="bot", model="m", clock=Clock())
    r = response_of(Thought("Is <script>alert(1)</script> *safe*?\n\nNo."),
                    Text("Use <b>bold</b> and *emphasis*."), finish=False)
    view.refresh(r, force=True)
    md = pub.messages[-1]["data"]["text/markdown"]
    assert md.startswith("<details><summary>Thinking…</summary>")
    assert "<details open" not in md
    assert "&lt;script&gt;" in md and "<script>" not in md
    assert "&#42;safe&#42;" in md
    assert "\n\n" not in md.split("</details>")[0]  # one HTML block: no blank line inside
    assert md.endswith("Use <b>bold</b> and *emphasis*.")
    assert "Thinking" not in pub.messages[-1]["data"]["text/plain"]


def test_tool_calls_and_results_are_one_line_each(pub):
    view = StreamView(agent="bot", model="m", clock=Clock())
    r = response_of(
        ToolCall("add", {"a": 2, "b": 3}, id="1"),
        ToolCall("rm", {"path": "<root>"}, id="2"),
        ToolCall("div", {"a": 1, "b": 0}, id="3"),
        finish=False)
    view.refresh(r, force=True)
    assert "🔧 <code>add(a=2, b=3)</code> …" in pub.messages[-1]["data"]["text/markdown"]
    r._append(ToolResult("add", 5, id="1"))
    r._append(ToolResult("rm", "denied: tool 'rm' is denied by policy", id="2", is_error=True))
    r._append(ToolResult("div", "error: ZeroDivisionError: division by zero", id="3",
                         is_error=True))
    view.refresh(r, force=True)
    lines = pub.messages[-1]["data"]["text/markdown"].split("\n\n")
    assert lines == [
        "🔧 <code>add(a=2, b=3)</code> → <code>5</code>",
        '🔧 <code>rm(path="&lt;root&gt;")</code> → ⛔ denied: tool \'rm\' is denied by policy',
        "🔧 <code>div(a=1, b=0)</code> → ⚠️ error: ZeroDivisionError: division by zero",
    ]


async def turn_chunks(*script, coalesce=False) -> list:
    """The chunks of one turn played by a real handle (tool ``add``) over ``script``."""
    from agent_magics import Agent
    from agent_magics.runtimes.scripted import ScriptedRuntime

    def add(a: int, b: int) -> int:
        return a + b

    agent = Agent(runtime=ScriptedRuntime(script, coalesce=coalesce), store=False, tools=[add])
    response = await agent.chat("go")
    await response.wait()
    await agent.shutdown()
    return response.snapshot()


async def test_text_of_two_model_calls_reads_as_two_paragraphs(pub):
    from agent_magics.runtimes.scripted import Reply

    chunks = await turn_chunks(Reply("checking first", tool_calls=[ToolCall("add", {"a": 2,
                                                                                  "b": 3})]),
                               "finished")
    clock = Clock()
    view = StreamView(agent="bot", model="m", clock=clock)
    view.start()
    r = stream(view, chunks, clock, force=True)
    line = "🔧 <code>add(a=2, b=3)</code> → <code>5</code>"
    # live: the tool line parts the two texts; the break adds no further blank lines
    assert pub.messages[-1]["data"] == {
        "text/markdown": f"checking first\n\n{line}\n\nfinished",
        "text/plain": "checking first\n\n🔧 add(a=2, b=3) → 5\n\nfinished"}
    view.finish(r, turn=1, conversation_id="c")
    # final: the tool lines come first, then the reply's text as two paragraphs
    assert pub.outputs()[-1]["data"] == {
        "text/markdown": f"{line}\n\nchecking first\n\nfinished",
        "text/plain": "checking first\n\nfinished\n\n[1 tool call]"}


async def test_a_later_calls_code_fence_after_tool_lines_is_seen_as_one(pub):
    from agent_magics.runtimes.scripted import Reply

    code = "```python\nx = 1\n\n\ny = 2\n\n\nz = 3\n```\n\n"
    chunks = await turn_chunks(Reply("Let me look.", tool_calls=[ToolCall("add", {"a": 1,
                                                                                "b": 1})]),
                               code + "That is all.")
    clock = Clock()
    view = StreamView(agent="bot", model="m", block_chars=10, clock=clock)
    stream(view, chunks, clock, force=True)
    pieces = [o["data"]["text/markdown"] for o in pub.outputs()]
    assert any(p.endswith(code) for p in pieces)  # the code block stayed in one block
    for piece in pieces:
        assert piece.count("```") % 2 == 0, piece


async def test_terminal_mode_parts_the_texts_of_two_model_calls(pub, capsys):
    from agent_magics.runtimes.scripted import Reply

    chunks = await turn_chunks(Reply("checking first", tool_calls=[ToolCall("add", {"a": 2,
                                                                                  "b": 3})]),
                               "finished")
    clock = Clock()
    view = StreamView(agent="bot", model="m", terminal=True, clock=clock)
    r = stream(view, chunks, clock, force=True)
    view.finish(r, turn=1, conversation_id=None)
    assert capsys.readouterr().out == ("checking first\n🔧 add(a=2, b=3) …\n   → 5\n"
                                       "finished\n")


def test_a_paragraph_break_right_after_text_is_shown_as_it_is(pub, capsys):
    from agent_magics.types import PARAGRAPH_BREAKS

    chunks = [Text("first"), PARAGRAPH_BREAKS[1], Text("second")]
    view = StreamView(agent="bot", model="m", clock=Clock())
    view.refresh(response_of(*chunks, finish=False), force=True)
    assert pub.messages[-1]["data"]["text/markdown"] == "first\n\nsecond"
    view = StreamView(agent="bot", model="m", terminal=True, clock=Clock())
    r = response_of(*chunks)
    view.refresh(r, force=True)
    view.finish(r, turn=1, conversation_id=None)
    assert capsys.readouterr().out == "first\n\nsecond\n"


def test_tool_line_is_compact():
    call = ToolCall("echo", {"text": "line one\nline two " * 50})
    line = tool_line(call, ToolResult("echo", "x\n" * 500, id=call.id), markdown=False)
    assert "\n" not in line
    assert len(line) < 300
    assert line.startswith("🔧 echo(text=")


# -- the final bundle ---------------------------------------------------------------------

def finished_view(pub, fmt="markdown", *chunks, structured=None, status="ok", block=4000):
    view = StreamView(agent="bot", model="scripted:echo", fmt=fmt, block_chars=block,
                      clock=Clock())
    view.start()
    r = response_of(*chunks, usage=UsageMetadata.of(5, 7))
    view.refresh(r, force=True)
    view.finish(r, turn=3, conversation_id="conv-1", status=status, structured=structured)
    return view, pub.outputs()


def split_final(view, outputs):
    """(emptied live blocks, final output), checking the finished layout: every block the
    view showed, in order and emptied, then one new output that no later message updates."""
    *blocks, final = outputs
    assert [o["display_id"] for o in blocks] == view.display_ids
    assert all(o["data"] == {"text/plain": ""} for o in blocks)
    assert final["update"] is False
    assert final["display_id"] is None or final["display_id"] not in view.display_ids
    return blocks, final


EXPECTED_META = {"agent_magics": {
    "agent": "bot", "model": "scripted:echo", "conversation_id": "conv-1", "turn": 3,
    "usage": {"input_tokens": 5, "cached_tokens": 0, "output_tokens": 7, "thought_tokens": 0,
              "total_tokens": 12},
    "status": "ok"}}


def test_final_markdown_bundle_has_thoughts_tools_text_and_metadata(pub):
    view, outputs = finished_view(
        pub, "markdown",
        Thought("plan"), ToolCall("add", {"a": 2, "b": 3}, id="c"), ToolResult("add", 5, id="c"),
        Text("The sum is **5**."))
    assert len(outputs) == 2
    blocks, out = split_final(view, outputs)
    assert len(blocks) == 1
    assert set(out["data"]) == {"text/markdown", "text/plain"}
    md = out["data"]["text/markdown"]
    assert md.index("<details>") < md.index("🔧 <code>add(a=2, b=3)</code> → <code>5</code>") \
        < md.index("The sum is **5**.")
    assert out["data"]["text/plain"] == "The sum is **5**.\n\n[1 tool call]"
    assert out["metadata"] == EXPECTED_META
    json.dumps(out["data"]), json.dumps(out["metadata"])  # a notebook can store it
    assert blocks[0]["metadata"] == {}  # the emptied block keeps no agent_magics metadata


def test_final_bundle_is_a_new_output_below_the_emptied_blocks(pub):
    text = long_reply(paragraphs=20, size=300)
    view, outputs = finished_view(pub, "markdown", *words(text), block=500)
    blocks, final = split_final(view, outputs)
    assert len(blocks) > 3
    assert final["data"] == {"text/markdown": text, "text/plain": text}
    assert final["metadata"]["agent_magics"]["turn"] == 3
    # finish() empties every block in order, then displays the final bundle, and nothing else
    tail = pub.messages[-len(blocks) - 1:]
    assert [(m["update"], m["display_id"], m["data"]) for m in tail[:-1]] == [
        (True, b["display_id"], {"text/plain": ""}) for b in blocks]
    assert tail[-1]["update"] is False and tail[-1]["data"] == final["data"]


def test_final_text_format(pub):
    view, outputs = finished_view(pub, "text", Thought("hmm"), Text("just *text*"))
    _, final = split_final(view, outputs)
    assert final["data"] == {"text/plain": "just *text*"}
    assert final["metadata"] == EXPECTED_META


def test_final_json_format_parses_the_reply(pub):
    view, outputs = finished_view(pub, "json", Text('```json\n{"a": 1, "b": [2, 3]}\n```'))
    _, final = split_final(view, outputs)
    data = final["data"]
    assert set(data) == {"application/json", "text/plain"}
    assert data["application/json"] == {"a": 1, "b": [2, 3]}
    assert json.loads(data["text/plain"]) == {"a": 1, "b": [2, 3]}
    assert final["metadata"] == EXPECTED_META


def test_final_json_format_prefers_structured_output(pub):
    import pydantic

    class City(pydantic.BaseModel):
        name: str
        population: int

    @dataclass
    class Point:
        x: int
        y: int

    view, outputs = finished_view(pub, "json", Text("ignored"),
                                  structured=City(name="Oslo", population=700000))
    _, final = split_final(view, outputs)
    assert final["data"]["application/json"] == {"name": "Oslo", "population": 700000}
    pub.messages.clear()
    view, outputs = finished_view(pub, "json", Text("ignored"), structured=Point(1, 2))
    _, final = split_final(view, outputs)
    assert final["data"]["application/json"] == {"x": 1, "y": 2}


def test_final_json_format_falls_back_to_markdown(pub):
    view, outputs = finished_view(pub, "json", Text("not *json* at all"))
    _, final = split_final(view, outputs)
    assert final["data"] == {"text/markdown": "not *json* at all",
                             "text/plain": "not *json* at all"}


def test_final_code_format(pub):
    reply = "Here you go:\n\n```python\ndef f():\n    return 1\n```\n\nEnjoy."
    view, outputs = finished_view(pub, "code", Text(reply))
    _, final = split_final(view, outputs)
    assert final["data"] == {
        "text/markdown": "```python\ndef f():\n    return 1\n```",
        "text/plain": "def f():\n    return 1",
    }


def test_final_status_is_marked(pub):
    view, outputs = finished_view(pub, "markdown", Text("partial"), status="interrupted")
    _, final = split_final(view, outputs)
    assert final["data"]["text/plain"] == "partial\n[interrupted]"
    assert final["data"]["text/markdown"].endswith("*[interrupted]*")
    assert final["metadata"]["agent_magics"]["status"] == "interrupted"


def test_a_client_ignoring_display_updates_records_what_a_saved_notebook_keeps(monkeypatch):
    """nbval records display_data only (never update_display_data): it must see the same
    outputs whatever the refresh timing, and exactly what the notebook saves after updates."""
    from IPython.core.interactiveshell import InteractiveShell

    text = long_reply(paragraphs=12, size=250) + "```python\nx = 1\n\n\ny = 2\n```\n\nDone."
    reply = [Thought("plan the answer\n\nthen write it"),
             ToolCall("add", {"a": 2, "b": 3}, id="t1"), ToolResult("add", 5, id="t1")]

    def run(chunks, *, every, step, refresh_until):
        rec = Published()
        monkeypatch.setattr(InteractiveShell.instance().display_pub, "publish", rec.publish)
        clock = Clock()
        view = StreamView(agent="bot", model="m", block_chars=600, clock=clock)
        view.start()
        r = ChatResponse(agent="bot", model="m", conversation_id="c", turn=1)
        for i, c in enumerate(chunks, 1):
            r._append(c)
            clock.now += step
            if i <= refresh_until and i % every == 0:
                view.refresh(r)  # throttled to refresh_hz by the clock
        r._finish(usage=UsageMetadata.of(10, 20))
        view.finish(r, turn=1, conversation_id="c")  # consumes what was never refreshed
        return rec

    by_words = reply + words(text)
    by_chars = reply + [Text(ch) for ch in text]
    fast = run(by_words, every=1, step=0.001, refresh_until=len(by_words))
    slow = run(by_chars, every=97, step=0.05, refresh_until=len(by_chars) // 2)
    assert len(fast.messages) != len(slow.messages)  # the two runs did publish differently

    recorded = fast.recorded_by_nbval()
    assert slow.recorded_by_nbval() == recorded  # (a) timing never changes what is recorded
    assert fast.saved_notebook() == recorded  # (b) ... and it is what the notebook keeps
    assert slow.saved_notebook() == recorded

    # and what both keep is right: the emptied blocks, then the whole reply with metadata
    md, plain = render_markdown(by_words)
    *blocks, final = recorded
    assert len(blocks) >= 4
    assert blocks == [{"data": {"text/plain": ""}, "metadata": {}}] * len(blocks)
    assert final["data"] == {"text/markdown": md, "text/plain": plain}
    assert plain == text + "\n\n[1 tool call]"
    assert final["metadata"]["agent_magics"]["turn"] == 1


def test_no_stream_shows_nothing_until_finish(pub):
    clock = Clock()
    view = StreamView(agent="bot", model="scripted:echo", live=False, clock=clock)
    view.start()
    r = stream(view, words("one two three"), clock, step=1.0)
    assert pub.messages == []
    view.finish(r, turn=1, conversation_id="c")
    assert len(pub.messages) == 1 and pub.messages[0]["update"] is False
    assert pub.messages[0]["data"]["text/plain"] == "one two three"


def test_fail_keeps_the_partial_text_and_adds_one_error_line(pub):
    view = StreamView(agent="bot", model="m", clock=Clock(), block_chars=20)
    view.start()
    r = response_of(*words("First paragraph is long enough.\n\n"), finish=False)
    view.refresh(r, force=True)
    assert len(view.display_ids) == 1  # block 1 has no text yet
    for chunk in words("Second one, cut"):  # arrives after the last refresh
        r._append(chunk)
    view.fail("QuotaExceeded: quota exceeded; retry in 2s")
    outputs = pub.outputs()
    # fail() consumed the rest first: the second block exists as if it had been refreshed
    assert len(view.display_ids) == 2
    assert pub.block_markdown() == ["First paragraph is long enough.\n\n", "Second one, cut"]
    blocks, final = split_final(view, outputs)
    data = final["data"]
    assert data["text/plain"] == ("First paragraph is long enough.\n\nSecond one, cut\n"
                                  "⚠️ QuotaExceeded: quota exceeded; retry in 2s")
    assert data["text/markdown"].endswith("\n\n⚠️ QuotaExceeded: quota exceeded; retry in 2s")
    assert final["metadata"]["agent_magics"]["status"] == "error"
    assert final["metadata"]["agent_magics"]["error"] == ("QuotaExceeded: quota exceeded; "
                                                          "retry in 2s")
    assert len(blocks) == 2
    n = len(pub.messages)
    view.finish(r, turn=1, conversation_id=None)  # after fail: nothing more
    assert len(pub.messages) == n
    assert pub.outputs()[-1]["data"] == data


def test_fail_without_any_reply_is_one_line(pub):
    view = StreamView(agent="bot", model="m", clock=Clock())
    view.start()
    view.fail("ConfigError: set GEMINI_API_KEY")
    blocks, final = split_final(view, pub.outputs())
    assert len(blocks) == 1  # the block start() showed, emptied
    assert final["data"] == {"text/markdown": "⚠️ ConfigError: set GEMINI_API_KEY",
                             "text/plain": "⚠️ ConfigError: set GEMINI_API_KEY"}
    assert final["metadata"]["agent_magics"]["status"] == "error"


def test_refresh_from_a_background_thread(pub):
    view = StreamView(agent="bot", model="m", clock=Clock())
    r = response_of(Text("from a thread"))
    worker = threading.Thread(target=view.refresh, args=(r,), kwargs={"force": True},
                              name="bg-view")
    worker.start()
    worker.join(5)
    assert pub.messages[-1]["thread"] == "bg-view"
    assert pub.messages[-1]["data"]["text/markdown"] == "from a thread"


def test_dropped_chunks_of_an_aborted_attempt_restart_the_view(pub):
    view = StreamView(agent="bot", model="m", clock=Clock())
    r = ChatResponse()
    mark = r._mark()
    r._append(Thought("aborted attempt"))
    view.refresh(r, force=True)
    r._truncate(mark)
    r._append(Text("fresh"))
    view.refresh(r, force=True)
    assert pub.outputs()[-1]["data"]["text/markdown"] == "fresh"


# -- extract_code ---------------------------------------------------------------------------

@pytest.mark.parametrize(("reply", "code"), [
    ("```python\nprint(1)\n```", "print(1)"),
    ("Text first.\n\n```\na\n\nb\n```\nthen ```js\nno\n```", "a\n\nb"),
    ("no fence at all\n", "no fence at all"),
    ("```py\nunterminated = True\n", "unterminated = True"),
    ("~~~\ntilde\n~~~", "tilde"),
    ("````md\n```python\ninner\n```\n````", "```python\ninner\n```"),
    ("inline ```not a fence``` here", "inline ```not a fence``` here"),
])
def test_extract_code(reply, code):
    assert extract_code(reply) == code


# -- terminal mode --------------------------------------------------------------------------

def test_terminal_mode_writes_deltas_append_only(pub, capsys):
    clock = Clock()
    view = StreamView(agent="bot", model="m", terminal=True, clock=clock)
    view.start()
    r = ChatResponse()
    seen = ""
    chunks = [Thought("let me think\nabout it"), Text("Hello "), Text("world."),
              ToolCall("add", {"a": 1}, id="t"), ToolResult("add", 2, id="t"), Text("Done")]
    for c in chunks:
        r._append(c)
        assert view.refresh(r, force=True)
        out = capsys.readouterr().out
        seen += out
        assert out  # only the new part is written each time
    r._finish()
    view.finish(r, turn=1, conversation_id=None)
    tail = capsys.readouterr().out
    assert tail == "\n"
    assert seen == ("[thinking] let me think\n[thinking] about it\n"
                    "Hello world.\n🔧 add(a=1) …\n   → 2\nDone")
    assert pub.messages == []


def test_terminal_no_stream_prints_the_reply_once(pub, capsys):
    view = StreamView(agent="bot", model="m", terminal=True, live=False, clock=Clock())
    r = response_of(Text("whole reply"))
    assert view.refresh(r, force=True) is False
    view.finish(r, turn=1, conversation_id=None)
    assert capsys.readouterr().out == "whole reply\n"


def test_background_outputs_are_routed_to_the_cell_that_started_the_view(monkeypatch):
    """ipykernel routes a thread's output by its parent header: a --bg view must publish new
    blocks as replies to the cell that started it, not to whichever cell runs later."""
    import contextvars

    from IPython.core.interactiveshell import InteractiveShell

    pub_obj = InteractiveShell.instance().display_pub
    current = contextvars.ContextVar("parent", default=None)
    global_parent = {"header": {"msg_id": "cell-1"}}
    parents: list = []

    def publish(data, metadata=None, source=None, *, transient=None, update=False, **kw):
        parents.append((current.get() or global_parent["header"])["msg_id"])

    monkeypatch.setattr(pub_obj, "publish", publish)
    monkeypatch.setattr(pub_obj, "parent_header", {"msg_id": "cell-1"}, raising=False)
    monkeypatch.setattr(pub_obj, "set_thread_parent", lambda p: current.set(dict(p)),
                        raising=False)
    monkeypatch.setattr(pub_obj, "reset_thread_parent", current.reset, raising=False)

    view = StreamView(agent="bot", model="m", block_chars=20, clock=Clock())
    view.start()
    global_parent["header"] = {"msg_id": "cell-2"}  # the user runs another cell meanwhile
    pub_obj.parent_header = {"msg_id": "cell-2"}
    r = response_of(*words("A first paragraph here.\n\nAnd a second one.\n\nThird."))
    worker = threading.Thread(target=lambda: (view.refresh(r, force=True),
                                              view.finish(r, turn=1, conversation_id=None)))
    worker.start()
    worker.join(5)
    assert len(parents) >= 4
    assert set(parents) == {"cell-1"}
