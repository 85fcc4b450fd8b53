"""A JupyterLab server on 127.0.0.1 and Debian's Chromium through Playwright, for the browser
tests (test_lab_e2e.py, test_lab_approval.py): each server has its own config, settings,
runtime dir and AGENT_MAGICS_HOME, serves one notebook, and is stopped by the test that
started it. Screenshots go under test-artifacts/lab/ (or $AGENT_MAGICS_ARTIFACTS/lab)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("AGENT_MAGICS_ARTIFACTS", ROOT / "test-artifacts")) / "lab"
TOKEN = "e2e-token-not-a-secret"
# Flags for a root, offline, headless Chromium (no sandbox, no calls home).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
RAN = re.compile(r"\[(\d+|\*)\]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path, sources: list[str]) -> None:
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
              "outputs": [], "source": source} for i, source in enumerate(sources)]
    path.write_text(json.dumps({
        "cells": cells, "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
    }))


@contextlib.contextmanager
def jupyterlab(base: Path, notebook: str, sources: list[str]) -> Iterator[tuple[str, Path]]:
    """Start JupyterLab in ``base`` serving ``notebook`` made of ``sources``; yields
    ``(url, notebook path)`` and stops the server after."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError("Debian's chromium is needed for the browser tests: "
                           "apt-get install chromium")
    work = base / "work"
    work.mkdir()
    write_notebook(work / notebook, sources)
    # no "get notified about Jupyter news?" toast over the screenshots
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port = _free_port()
    env = {**os.environ, "AGENT_MAGICS_HOME": str(base / "home"),
           "JUPYTER_CONFIG_DIR": str(base / "config"), "JUPYTER_RUNTIME_DIR": str(base / "rt"),
           "JUPYTERLAB_SETTINGS_DIR": str(base / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces")}
    log_path = base / "server.log"
    with log_path.open("w") as log:
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
                                           log_path.read_text()[-3000:]) from None
                    time.sleep(0.25)
            yield url, work / notebook
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()


@contextlib.contextmanager
def browser_page(url: str, notebook: str, *, width: int = 1400, height: int = 900,
                 timeout_ms: int = 30_000) -> Iterator[Any]:
    """A Playwright page in headless Debian Chromium, open on ``notebook`` with its kernel
    idle."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_ms)
            page.goto(f"{url}/lab/tree/{notebook}?token={TOKEN}")
            page.wait_for_function(
                "() => !!document.querySelector("
                "'.jp-Notebook-ExecutionIndicator[data-status=\"idle\"]')", timeout=60_000)
            yield page
        finally:
            browser.close()


def run_cell(page: Any, index: int, *, wait: bool = True) -> None:
    """Run cell ``index`` with Shift+Enter (retried: a key press sent while Lab still settles
    can be lost); with ``wait``, until its prompt shows an execution count."""
    cells = page.locator(".jp-Notebook .jp-Cell")
    prompt = cells.nth(index).locator(".jp-InputPrompt")
    # A cell run before (e.g. ahead of a kernel restart) already shows a count, so it cannot
    # tell that the press took: press once; a fresh cell is pressed until it shows one.
    tries = 1 if RAN.search(prompt.inner_text()) else 5
    for _ in range(tries):
        prompt.click()
        page.keyboard.press("Shift+Enter")
        try:
            prompt.filter(has_text=RAN).wait_for(timeout=3_000)
            break
        except Exception:
            continue
    if wait:
        prompt.filter(has_text=re.compile(r"\[\d+\]")).wait_for(timeout=60_000)
