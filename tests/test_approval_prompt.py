"""ApprovalPrompt in-process: what it displays, one decision per prompt, clicks from any thread,
the record left for each outcome, and reporting when it cannot show (the caller then asks by
stdin)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent_magics.kernel import widgets
from agent_magics.kernel.widgets import ApprovalPrompt

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
CALL = 'remove({"path": "a.txt"})'


@pytest.fixture
def shown(monkeypatch):
    """Capture what the prompt displays: (data, display_id, update)."""
    calls: list[tuple[dict, str, bool]] = []
    monkeypatch.setattr(widgets, "_display",
                        lambda data, display_id, *, update=False, parent=None:
                        calls.append((data, display_id, update)))
    return calls


def buttons(prompt: ApprovalPrompt) -> dict[str, object]:
    return {w.description: w for w in prompt._widgets if type(w).__name__ == "Button"}


async def test_buttons_then_the_decision_replaces_them_in_place(shown):
    prompt = ApprovalPrompt(CALL, who="tidy")
    assert prompt.show()
    data, display_id, update = shown[0]
    assert WIDGET_MIME in data and not update
    assert data["text/plain"] == \
        f"🔐 tidy wants to run {CALL}: answer with the Allow / Deny buttons"
    allow = buttons(prompt)["Allow"]
    waiter = asyncio.ensure_future(prompt.answer())
    await asyncio.sleep(0)
    allow.click()  # what Button._handle_button_msg does for the frontend's click message
    assert await waiter is True
    assert shown[-1] == ({"text/plain": f"✓ allowed {CALL}"}, display_id, True)
    assert prompt._widgets == [] and prompt.decision is True


async def test_only_the_first_click_counts(shown):
    prompt = ApprovalPrompt(CALL)
    prompt.show()
    deny, allow = buttons(prompt)["Deny"], buttons(prompt)["Allow"]
    deny.click()
    allow.click()
    assert await prompt.answer() is False
    assert shown[-1][0] == {"text/plain": f"✗ denied {CALL}"}


async def test_a_click_from_another_thread_is_handed_to_the_loop(shown):
    prompt = ApprovalPrompt(CALL)
    prompt.show()
    clicker = threading.Thread(target=lambda: buttons(prompt)["Allow"].click())
    clicker.start()
    assert await asyncio.wait_for(prompt.answer(), 5) is True
    clicker.join()


async def test_cancelled_while_waiting_leaves_not_answered(shown):
    prompt = ApprovalPrompt(CALL)
    prompt.show()
    waiter = asyncio.ensure_future(prompt.answer())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert shown[-1][0] == {"text/plain": f"⏹ not answered (interrupted): {CALL}"}
    assert prompt.decision is None


def test_cannot_show_without_a_running_loop_or_ipywidgets(shown, monkeypatch):
    assert ApprovalPrompt(CALL).show() is False  # no loop to await a click on
    monkeypatch.setattr(widgets, "_widgets", lambda: None)

    async def attempt():
        return ApprovalPrompt(CALL).show()

    assert asyncio.run(attempt()) is False
    assert shown == []
