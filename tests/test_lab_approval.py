"""ask_user's Allow / Deny buttons in a real JupyterLab (127.0.0.1) driven through Debian's
Chromium with Playwright: JupyterLab's own execute request makes the prompt choose buttons, they
render in the running cell, a mouse click resumes the turn, and the saved notebook keeps the
decision as plain text (no widget state). A screenshot of the prompt is saved under
test-artifacts/lab/ (AGENT_MAGICS_ARTIFACTS)."""

from __future__ import annotations

import json
import re
import time

import pytest
from lab_server import ARTIFACTS, browser_page, jupyterlab, run_cell

pytestmark = pytest.mark.timeout(300)

SETUP = """\
from agent_magics import Agent, agents
from agent_magics.policies import ask_user
from agent_magics.runtimes.scripted import Reply, ScriptedRuntime
from agent_magics.types import ToolCall
removed = []
def remove(path: str) -> str:
    \"\"\"Delete a file.\"\"\"
    removed.append(path)
    return f"removed {path}"
agents['tidy'] = Agent(name='tidy', policies=[ask_user('remove')], tools=[remove],
    runtime=ScriptedRuntime([Reply('', tool_calls=[ToolCall('remove', {'path': 'a.txt'})]),
                             'Done: a.txt is gone.']))"""

CELLS = ["%load_ext agent_magics", SETUP, "%%agent tidy\nTidy up the folder.", "removed"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with jupyterlab(tmp_path_factory.mktemp("lab_approval"), "approve.ipynb", CELLS) as served:
        yield served


def test_allow_button_in_jupyterlab_resumes_the_turn_and_is_saved_as_text(lab):
    url, notebook = lab
    with browser_page(url, "approve.ipynb", width=1300, height=800, timeout_ms=60_000) as page:
        cells = page.locator(".jp-Notebook .jp-Cell")

        run_cell(page, 0)
        run_cell(page, 1)
        run_cell(page, 2, wait=False)
        agent_cell = cells.nth(2)
        output_buttons = agent_cell.locator(".jp-OutputArea button")
        allow = output_buttons.filter(has_text="Allow")
        allow.wait_for()
        assert output_buttons.all_inner_texts() == ["Allow", "Deny"]
        assert "tidy wants to run" in agent_cell.locator(".jp-OutputArea").inner_text()
        page.screenshot(path=str(ARTIFACTS / "approval-prompt.png"))
        allow.click()
        agent_cell.get_by_text('✓ allowed remove({"path": "a.txt"})').wait_for()
        agent_cell.get_by_text("Done: a.txt is gone.").first.wait_for()
        agent_cell.locator(".jp-InputPrompt").filter(
            has_text=re.compile(r"\[\d+\]")).wait_for()
        assert output_buttons.count() == 0  # replaced by the line of text
        run_cell(page, 3)
        assert "['a.txt']" in cells.nth(3).locator(".jp-OutputArea").inner_text()
        before = notebook.stat().st_mtime
        page.keyboard.press("Control+s")
        deadline = time.monotonic() + 30
        while notebook.stat().st_mtime == before and time.monotonic() < deadline:
            time.sleep(0.2)
    saved = json.loads(notebook.read_text())
    outputs = saved["cells"][2]["outputs"]
    texts = ["".join(o.get("data", {}).get("text/plain", [])) for o in outputs]
    assert '✓ allowed remove({"path": "a.txt"})' in texts, texts
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   for o in outputs), outputs
    assert "widgets" not in saved["metadata"]
