"""StatusWidget and QuotaTable: a readable status line, widget + text bundles, live quota."""

from __future__ import annotations

import threading
import time

import pytest

from agent_magics.config import key_fingerprint
from agent_magics.kernel import widgets as widgets_mod
from agent_magics.kernel.widgets import QuotaTable, StatusWidget, format_duration

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
SECRET = "sk-test-0123456789abcdefSECRET"


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.lock = threading.Lock()

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False,
                **kwargs):
        with self.lock:
            self.messages.append({"data": data, "update": update,
                                  "display_id": (transient or {}).get("display_id")})


@pytest.fixture
def pub(monkeypatch) -> Recorder:
    from IPython.core.interactiveshell import InteractiveShell

    recorder = Recorder()
    monkeypatch.setattr(InteractiveShell.instance().display_pub, "publish", recorder.publish)
    return recorder


@pytest.fixture
def quota(registry):
    return registry.state_for_key(SECRET)


# -- the status line ------------------------------------------------------------------------

def test_status_line_for_each_state(clock, quota):
    w = StatusWidget(agent="bot", model="gemini:flash", max_attempts=4, quota=quota,
                     terminal=True, clock=clock)
    assert w.text == "🕓 queued"
    w.set("calling")
    clock.now += 0.5
    assert w.text == "📡 calling gemini:flash · 0.5 s"
    w.set("streaming", tokens=0)
    clock.now += 2.0
    w.set("streaming", tokens=100)
    assert w.text == "✍️ streaming · 100 tokens · 50.0 tok/s · 2.5 s"
    w.set("tool", message="add")
    assert w.text.startswith("🔧 running tool add · 100 tokens")
    w.set("done", tokens=120)
    clock.now += 10
    assert w.text == "✅ done · 120 tokens · 2.5 s"  # the clock stops at the end state
    w.set("error", message="BackendError: boom")
    assert w.text.startswith("❌ error: BackendError: boom")
    for state, head in [("interrupted", "⏹ interrupted"), ("cancelled", "🚫 cancelled")]:
        w.set(state)
        assert w.text.startswith(head)


def test_waiting_shows_a_countdown_attempt_and_key_hits(clock, quota):
    w = StatusWidget(agent="bot", model="m", max_attempts=4, quota=quota, terminal=True,
                     clock=clock)
    quota.record_quota_hit(3.2)
    quota.record_quota_hit(3.2)
    w.set("waiting", attempt=2)
    key_id = key_fingerprint(SECRET)
    assert w.text == f"⏳ waiting for quota · retry in 3.2 s · attempt 2/4 · key {key_id}: 2 hits"
    clock.now += 1.0
    assert "retry in 2.2 s" in w.text
    quota.record_success()
    clock.now += 5.0
    w.set("streaming", attempt=2, tokens=5)
    text = w.text
    assert "retry in" not in text
    assert "attempt 2/4" in text  # attempt shown when k > 1
    assert f"key {key_id}: 2 hits (0 in a row)" in text
    assert SECRET not in text


def test_first_attempt_and_clean_key_are_not_mentioned(clock, quota):
    w = StatusWidget(agent="bot", model="m", max_attempts=4, quota=quota, terminal=True,
                     clock=clock)
    w.set("streaming", attempt=1, tokens=3)
    assert "attempt" not in w.text and "key" not in w.text


def test_format_duration():
    assert format_duration(3.44) == "3.4 s"
    assert format_duration(65) == "1 m 05 s"


# -- the widget -----------------------------------------------------------------------------

def test_widget_bundle_has_the_widget_view_and_an_empty_text_line(pub, clock, quota):
    w = StatusWidget(agent="bot", model="m", max_attempts=3, quota=quota, clock=clock)
    w.show()
    assert w.has_widget
    (msg,) = pub.messages
    assert set(msg["data"]) == {WIDGET_VIEW, "text/plain"}
    assert msg["data"][WIDGET_VIEW]["model_id"] == w._box.model_id
    # the text fallback is empty (as after close), the status line lives in the widget only
    assert msg["data"]["text/plain"] == ""
    assert w.text == "🕓 queued" and "🕓 queued" in w._html.value
    assert msg["update"] is False and msg["display_id"] == w.display_id
    w.close("✓ bot · 12 tokens")


def test_widget_assigns_only_changed_values(pub, clock, quota):
    w = StatusWidget(agent="bot", model="m", max_attempts=3, quota=quota, clock=clock)
    w.show()
    changes: list[str] = []
    w._html.observe(lambda change: changes.append(change["new"]), names="value")
    bar_changes: list[int] = []
    w._bar.observe(lambda change: bar_changes.append(change["new"]), names="value")
    quota.record_quota_hit(5.0)
    w.set("waiting", attempt=2)
    assert len(changes) == 1 and "retry in 5.0 s" in changes[-1]
    for _ in range(20):
        w.tick()  # nothing visible changed
        w.set("waiting", attempt=2)
    clock.now += 0.04  # below the 0.1 s resolution
    w.tick()
    assert len(changes) == 1
    assert w._bar.layout.display is None  # the countdown bar is visible while waiting
    clock.now += 0.06
    w.tick()
    assert len(changes) == 2 and "retry in 4.9 s" in changes[-1]
    assert bar_changes[-1] == 1 and w._bar.max == 50
    clock.now += 5.0
    w.set("calling", attempt=2)
    assert w._bar.layout.display == "none"
    w.close("done")


def saved_notebook(messages: list[dict]) -> list[dict]:
    """The outputs after applying every display update by display id."""
    shown: list[dict] = []
    for m in messages:
        if m["update"]:
            for out in shown:
                if out["display_id"] == m["display_id"]:
                    out["data"] = m["data"]
        else:
            shown.append(dict(m))
    return [o["data"] for o in shown]


def test_close_empties_the_widget_and_shows_the_summary_below(pub, clock, quota):
    w = StatusWidget(agent="bot", model="m", max_attempts=3, quota=quota, clock=clock)
    w.show()
    box = w._box
    w.set("done", tokens=10)
    w.close("✓ bot · 10 tokens · 1.2 s")
    shown, emptied, summary = pub.messages  # set() changes the widget only, no message
    assert shown["update"] is False and WIDGET_VIEW in shown["data"]
    assert emptied["update"] is True and emptied["display_id"] == w.display_id
    assert emptied["data"] == {"text/plain": ""}
    assert summary["update"] is False
    assert summary["display_id"] == f"{w.display_id}-summary"
    assert summary["data"] == {"text/plain": "✓ bot · 10 tokens · 1.2 s"}
    assert box.comm is None  # the widget model is closed
    # a client that ignores updates (nbval, which also skips the widget view when comparing)
    # records what the saved notebook keeps
    recorded = [{k: v for k, v in m["data"].items() if k != WIDGET_VIEW}
                for m in pub.messages if not m["update"]]
    assert recorded == saved_notebook(pub.messages) == [
        {"text/plain": ""}, {"text/plain": "✓ bot · 10 tokens · 1.2 s"}]
    n = len(pub.messages)
    w.set("error", message="late")
    w.tick()
    w.close("again")
    assert len(pub.messages) == n


def test_terminal_mode_prints_state_changes_only(pub, capsys, clock, quota):
    w = StatusWidget(agent="bot", model="m", max_attempts=3, quota=quota, terminal=True,
                     clock=clock)
    w.show()
    for tokens in range(10):
        w.set("streaming", attempt=1, tokens=tokens)
        clock.now += 0.1
        w.tick()
    w.set("done", tokens=10)
    w.close("✓ bot · 10 tokens")
    err = capsys.readouterr().err.splitlines()
    assert err == ["[bot] 🕓 queued", "[bot] ✍️ streaming · 0.0 s",
                   "[bot] ✅ done · 10 tokens · 1.0 s", "✓ bot · 10 tokens"]
    assert pub.messages == []


def test_without_ipywidgets_status_falls_back_to_stderr(pub, capsys, monkeypatch, clock):
    monkeypatch.setattr(widgets_mod, "_widgets", lambda: None)
    w = StatusWidget(agent="bot", model="m", max_attempts=2, clock=clock)
    w.show()
    w.set("calling")
    assert not w.has_widget
    assert capsys.readouterr().err.splitlines() == ["[bot] 🕓 queued",
                                                    "[bot] 📡 calling m · 0.0 s"]
    assert pub.messages == []


def test_status_widget_is_usable_from_threads(pub, clock, quota):
    w = StatusWidget(agent="bot", model="m", max_attempts=3, quota=quota, clock=clock)
    w.show()
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for k in range(200):
                w.set("streaming", tokens=i * 1000 + k)
                w.tick()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert w.text.startswith("✍️ streaming")
    w.close("ok")


# -- the quota table ------------------------------------------------------------------------

def test_quota_table_shows_fingerprints_only(registry, clock):
    registry.state_for_key(SECRET).record_quota_hit(2.0)
    registry.state_for_key("another-secret-key-value")
    table = QuotaTable([registry])
    text = table.text()
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["key_id", "status"]
    assert len(lines) == 3
    assert key_fingerprint(SECRET) in text and key_fingerprint("another-secret-key-value") in text
    assert "backing_off" in text and "2 s" in text
    for secret in (SECRET, "another-secret-key-value", SECRET[:12]):
        assert secret not in text and secret not in table.html()
    assert QuotaTable([]).text() == "no API keys used yet"


def test_quota_table_updates_on_observer_callbacks_and_its_ticker_stops(pub, registry, clock):
    state = registry.state_for_key(SECRET)
    table = QuotaTable([registry, registry], interval=0.01)  # a registry twice: one row
    table.show()
    (msg,) = pub.messages
    assert WIDGET_VIEW in msg["data"] and "ok" in msg["data"]["text/plain"]
    assert len(table.states()) == 1
    assert not table.ticking

    state.record_quota_hit(3.0)  # observer fires
    assert "backing_off" in table._widget.value
    assert table.ticking
    renders = table.renders
    clock.now += 1.0
    deadline = time.monotonic() + 5
    while table.renders == renders and time.monotonic() < deadline:
        time.sleep(0.01)
    assert table.renders > renders  # the countdown moved by the ticker alone
    assert "2 s" in table._widget.value

    clock.now += 5.0  # backoff over: the ticker notices and stops
    deadline = time.monotonic() + 5
    while table.ticking and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not table.ticking
    assert "backing_off" not in table._widget.value

    new_state = registry.state_for_key("late-key")  # a key that appears later
    state.record_success()  # any change re-renders and subscribes to new keys
    new_state.record_quota_hit(1.0)
    assert key_fingerprint("late-key") in table._widget.value

    table.close()
    assert state._observers == [] and new_state._observers == []
    assert not table.ticking
    final = pub.messages[-1]
    assert final["update"] is True and final["display_id"] == msg["display_id"]
    assert set(final["data"]) == {"text/html", "text/plain"}
    assert key_fingerprint("late-key") in final["data"]["text/plain"]


def test_quota_table_observer_errors_never_propagate(pub, registry, clock, monkeypatch, caplog):
    state = registry.state_for_key(SECRET)
    table = QuotaTable(registry)  # a single registry works too
    table.show()

    def broken(*args, **kwargs):
        raise RuntimeError("display is gone")

    monkeypatch.setattr(table, "_render_locked", broken)
    with caplog.at_level("ERROR", logger="agent_magics.quota"):
        state.record_quota_hit(1.0)  # must not raise
    assert not [r for r in caplog.records if r.name == "agent_magics.quota"]
    table.close()


def test_quota_table_without_ipywidgets_updates_a_plain_display(pub, registry, clock,
                                                                 monkeypatch):
    monkeypatch.setattr(widgets_mod, "_widgets", lambda: None)
    state = registry.state_for_key(SECRET)
    table = QuotaTable([registry], interval=60)
    table.show()
    assert set(pub.messages[0]["data"]) == {"text/html", "text/plain"}
    state.record_quota_hit(2.0)
    assert pub.messages[-1]["update"] is True
    assert "backing_off" in pub.messages[-1]["data"]["text/plain"]
    table.close()
    assert not table.ticking
