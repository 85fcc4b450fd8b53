"""ask_user's Allow / Deny buttons in a real JupyterLab (127.0.0.1) driven through Debian's
Chromium with Playwright: JupyterLab's own execute request makes the prompt choose buttons, they
render in the running cell, a mouse click resumes the turn, and the saved notebook keeps the
decision as plain text (no widget state). A screenshot of the prompt is saved under
test-artifacts/lab/ (AGENT_MAGICS_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("AGENT_MAGICS_ARTIFACTS", ROOT / "test-artifacts")) / "lab"
TOKEN = "e2e-token-not-a-secret"

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server of its own (config, data, home) serving one notebook."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the browser test: apt-get install chromium")
    base = tmp_path_factory.mktemp("lab_approval")
    work = base / "work"
    work.mkdir()
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
              "outputs": [], "source": source} for i, source in enumerate(CELLS)]
    (work / "approve.ipynb").write_text(json.dumps({
        "cells": cells, "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}}}))
    notification = base / "settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port = _free_port()
    env = {**os.environ, "AGENT_MAGICS_HOME": str(base / "home"),
           "JUPYTER_CONFIG_DIR": str(base / "config"), "JUPYTER_RUNTIME_DIR": str(base / "rt"),
           "JUPYTERLAB_SETTINGS_DIR": str(base / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces")}
    log = (base / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={work}",
         "--ServerApp.allow_root=True", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" +
                                       (base / "server.log").read_text()[-3000:]) from None
                time.sleep(0.25)
        yield url, work / "approve.ipynb"
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_allow_button_in_jupyterlab_resumes_the_turn_and_is_saved_as_text(lab):
    from playwright.sync_api import sync_playwright

    url, notebook = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 800})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/lab/tree/approve.ipynb?token={TOKEN}")
            page.wait_for_function(
                "() => !!document.querySelector("
                "'.jp-Notebook-ExecutionIndicator[data-status=\"idle\"]')")
            cells = page.locator(".jp-Notebook .jp-Cell")

            def run(i: int, wait: bool = True) -> None:
                prompt = cells.nth(i).locator(".jp-InputPrompt")
                for _ in range(5):  # a Shift+Enter sent while Lab still settles can be lost
                    prompt.click()
                    page.keyboard.press("Shift+Enter")
                    try:
                        prompt.filter(has_text=re.compile(r"\[(\d+|\*)\]")).wait_for(
                            timeout=3_000)
                        break
                    except Exception:
                        continue
                if wait:
                    cells.nth(i).locator(".jp-InputPrompt").filter(
                        has_text=re.compile(r"\[\d+\]")).wait_for()

            run(0)
            run(1)
            run(2, wait=False)
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
            run(3)
            assert "['a.txt']" in cells.nth(3).locator(".jp-OutputArea").inner_text()
            before = notebook.stat().st_mtime
            page.keyboard.press("Control+s")
            deadline = time.monotonic() + 30
            while notebook.stat().st_mtime == before and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            browser.close()
    saved = json.loads(notebook.read_text())
    outputs = saved["cells"][2]["outputs"]
    texts = ["".join(o.get("data", {}).get("text/plain", [])) for o in outputs]
    assert '✓ allowed remove({"path": "a.txt"})' in texts, texts
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   for o in outputs), outputs
    assert "widgets" not in saved["metadata"]
