"""The JupyterLab extension end to end: a real JupyterLab server on 127.0.0.1 and Debian's
Chromium driven by Playwright. A notebook loads agent_magics and runs a %%agent cell whose
scripted model answers 429 once: the Agents panel must show the agent, the quota wait with its
countdown, then the token counts; a kernel restart empties it until the extension is loaded
again. Screenshots of the panel are saved under test-artifacts/lab/ (AGENT_MAGICS_ARTIFACTS).
"""

from __future__ import annotations

import re
import time

import pytest
from lab_server import ARTIFACTS, browser_page, jupyterlab
from lab_server import run_cell as _run_cell

pytestmark = pytest.mark.timeout(300)

SETUP = """\
from agent_magics import Agent, agents
from agent_magics.errors import QuotaExceeded
from agent_magics.runtimes.scripted import Reply, ScriptedRuntime
agents['analyst'] = Agent(name='analyst', runtime=ScriptedRuntime(
    [QuotaExceeded('429 rate limited', retry_after=4),
     Reply('The mean is 42, from the two hundred rows you gave me.', delay=0.5)]))
agents['storyteller'] = Agent(name='storyteller', runtime=ScriptedRuntime(
    [' '.join(['once upon a time'] * 150)] * 2, chunk_delay=0.05))"""

CELLS = ["%load_ext agent_magics", SETUP, "%%agent analyst\nWhat is the mean of the data?",
         "%%agent storyteller --bg\nTell me a long story.",
         "%%agent storyteller\nAnother long one, please."]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with jupyterlab(tmp_path_factory.mktemp("lab"), "agents.ipynb", CELLS) as (url, _), \
            browser_page(url, "agents.ipynb") as page:
        yield page


def panel(page):
    return page.locator("#agent-magics-panel")


def shot(page, name: str) -> None:
    panel(page).screenshot(path=str(ARTIFACTS / f"{name}.png"))


def run_cell(page, index: int) -> None:
    _run_cell(page, index, wait=False)  # the tests wait on what the panel shows instead


def command(page, label: str) -> None:
    page.keyboard.press("Control+Shift+C")
    palette = page.locator(".lm-CommandPalette-input")
    palette.fill(label)
    page.locator(".lm-CommandPalette-item.lm-mod-active").click()


def test_panel_follows_an_agent_through_a_quota_wait_to_its_tokens(page):
    # The panel opens from its tab in the right sidebar.
    page.locator('.jp-SideBar.jp-mod-right li[data-id="agent-magics-panel"]').click()
    empty = panel(page).locator('[data-testid="empty"]')
    empty.wait_for()
    page.wait_for_function(
        "() => document.querySelector('#agent-magics-panel [data-testid=empty]')"
        "?.dataset.connection === 'not-loaded'")
    assert "%load_ext agent_magics" in empty.inner_text()
    shot(page, "1-not-loaded")

    run_cell(page, 0)  # %load_ext: the kernel opens the comm
    panel(page).locator('[data-testid="empty"][data-connection="connected"]').wait_for()
    assert "No agents yet" in panel(page).inner_text()
    run_cell(page, 1)  # the scripted agent
    card = panel(page).locator('[data-testid="agent"][data-agent="analyst"]')
    card.wait_for()
    assert card.get_attribute("data-status") == "idle"
    assert "scripted" in card.inner_text()

    run_cell(page, 2)  # %%agent: 429 first, the retry after ~4 s answers
    panel(page).locator('[data-testid="agent"][data-status="waiting"]').wait_for(timeout=15_000)
    status = card.locator('[data-testid="status"]').inner_text()
    assert re.fullmatch(r"waiting for quota · \ds( · attempt \d/\d+)?", status), status
    key = panel(page).locator('[data-testid="quota"]').first
    assert "backing off" in key.inner_text() and "1 rate-limit hit" in key.inner_text()
    shot(page, "2-waiting-for-quota")
    # the countdown runs in the browser between kernel messages
    first = int(re.search(r"(\d)s", status).group(1))
    page.wait_for_function(
        "(first) => { const s = document.querySelector("
        "'#agent-magics-panel [data-agent=analyst] [data-testid=status]')?.textContent || '';"
        " const m = s.match(/(\\d)s/); return !m || Number(m[1]) < first; }", arg=first)

    panel(page).locator('[data-testid="agent"][data-agent="analyst"][data-status="idle"]') \
        .wait_for(timeout=20_000)
    tokens = card.locator('[data-testid="tokens"]').inner_text()
    match = re.fullmatch(r"1 turn · ([\d,]+) in · ([\d,]+) out", tokens)
    assert match and int(match.group(1).replace(",", "")) > 0 \
        and int(match.group(2).replace(",", "")) > 0, tokens
    assert "1 rate-limit hit" in panel(page).locator('[data-testid="quota"]').first.inner_text()
    # the reply itself reached the notebook
    page.locator(".jp-Notebook .jp-Cell").nth(2).get_by_text("The mean is 42").wait_for()
    shot(page, "3-tokens-after-reply")

    command(page, "JupyterLab Dark")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
    shot(page, "4-dark-theme")
    command(page, "JupyterLab Light")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'")


def test_panel_empties_on_restart_and_reconnects_when_loaded_again(page):
    command(page, "Restart Kernel")
    dialog = page.locator(".jp-Dialog")
    if dialog.count():
        dialog.locator(".jp-mod-accept").click()
    page.wait_for_function(
        "() => ['restarting', 'not-loaded'].includes(document.querySelector("
        "'#agent-magics-panel [data-testid=empty]')?.dataset.connection)")
    assert panel(page).locator('[data-testid="agent"]').count() == 0
    page.wait_for_function(
        "() => document.querySelector('#agent-magics-panel [data-testid=empty]')"
        "?.dataset.connection === 'not-loaded'", timeout=30_000)
    shot(page, "5-after-restart")
    run_cell(page, 0)
    panel(page).locator('[data-testid="empty"][data-connection="connected"]').wait_for()
    run_cell(page, 1)
    panel(page).locator('[data-testid="agent"][data-agent="analyst"][data-status="idle"]') \
        .wait_for()
    assert "0 turns" in panel(page).locator('[data-agent="analyst"] [data-testid="tokens"]') \
        .inner_text()


def agent_card(page, name: str, status: str | None = None):
    selector = f'[data-testid="agent"][data-agent="{name}"]'
    return panel(page).locator(selector + (f'[data-status="{status}"]' if status else ""))


def test_panel_actions_cancel_clear_and_usage(page):
    # The story would stream for ~30 s; Cancel in the panel stops it (a --bg turn: the
    # panel sends a cancel over the comm).
    run_cell(page, 3)
    agent_card(page, "storyteller", "streaming").wait_for(timeout=20_000)
    shot(page, "7-streaming")
    start = time.monotonic()
    agent_card(page, "storyteller").locator('[data-action="cancel"]').click()
    agent_card(page, "storyteller", "idle").wait_for(timeout=10_000)
    assert time.monotonic() - start < 10
    stopped = re.compile(r"⏹ storyteller .* (cancelled|interrupted)")
    page.locator(".jp-Notebook .jp-Cell").nth(3).get_by_text(stopped).first.wait_for()
    assert "1 turn" in agent_card(page, "storyteller").inner_text()

    # A foreground cell: the click still reaches the kernel while the cell runs, and the cell
    # ends well before the story would.
    run_cell(page, 4)
    agent_card(page, "storyteller", "streaming").wait_for(timeout=20_000)
    start = time.monotonic()
    agent_card(page, "storyteller").locator('[data-action="cancel"]').click()
    agent_card(page, "storyteller", "idle").wait_for(timeout=10_000)
    page.locator(".jp-Notebook .jp-Cell").nth(4).get_by_text(stopped).first \
        .wait_for(timeout=10_000)
    assert time.monotonic() - start < 10
    assert "2 turns" in agent_card(page, "storyteller").inner_text()

    # Clear forgets the conversation (turns and tokens stay: they count usage).
    agent_card(page, "storyteller").locator('[data-action="clear"]').click()
    # the notice of the cancel above may still show: wait for the answer to this click
    notice = panel(page).locator('[data-testid="notice"]').filter(has_text="history cleared")
    notice.wait_for(timeout=10_000)
    assert notice.inner_text() == "storyteller: history cleared"

    # Usage opens `%agent usage NAME` in a new cell below and runs it: a DataFrame.
    before = page.locator(".jp-Notebook .jp-Cell").count()
    agent_card(page, "analyst").locator('[data-action="usage"]').click()
    page.wait_for_function(f"() => document.querySelectorAll('.jp-Notebook .jp-Cell').length "
                           f"> {before}")
    usage_cell = page.locator(".jp-Notebook .jp-Cell", has_text="%agent usage analyst")
    usage_cell.locator(".jp-OutputArea-output table").wait_for(timeout=20_000)
    headers = usage_cell.locator(".jp-OutputArea-output table th").all_inner_texts()
    assert "attempt" in headers and "input_tokens" in headers, headers


def test_insert_agent_cell_from_the_toolbar_gets_prose_highlighting(page):
    cells = page.locator(".jp-Notebook .jp-Cell")
    before = cells.count()
    page.locator('[data-jp-item-name="agentMagicsInsertCell"] button, '
                 '[data-jp-item-name="agentMagicsInsertCell"]').first.click()
    page.wait_for_function(f"() => document.querySelectorAll('.jp-Notebook .jp-Cell').length "
                           f"> {before}")
    cell = page.locator(".jp-Notebook .jp-Cell.jp-mod-active")
    # the cursor waits after "%%agent ": finish the line and write prose with an apostrophe,
    # which Python highlighting would take for the start of a string
    page.keyboard.type("analyst")
    page.keyboard.press("End")
    page.keyboard.press("ArrowDown")
    page.keyboard.type("Summarise {df.shape[0]} rows; don't print('code') here.")
    editor = cell.locator(".cm-content")
    assert editor.inner_text().startswith("%%agent analyst\nSummarise")
    assert cell.locator(".cm-agentMagic-line").count() == 1
    assert cell.locator(".cm-agentProse").count() == 1
    assert cell.locator(".cm-agentInterpolation").inner_text() == "{df.shape[0]}"
    colours = cell.locator(".cm-agentProse").evaluate(
        "line => [...line.querySelectorAll('span')]"
        ".filter(s => !s.closest('.cm-agentInterpolation'))"
        ".map(s => getComputedStyle(s).color).concat([getComputedStyle(line).color])")
    assert len(colours) > 3 and len(set(colours)) == 1, colours  # no Python colours in prose
    page.screenshot(path=str(ARTIFACTS / "6-notebook-with-agent-cell.png"))
