"""The lab extension as shipped: its TypeScript unit tests (vitest), the prebuilt extension
inside the wheel, and JupyterLab seeing it enabled. The browser test is test_lab_e2e.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXT = ROOT / "labextension"
SHARE = "share/jupyter/labextensions/agent-magics"

pytestmark = pytest.mark.timeout(300)


def test_typescript_unit_tests_pass():
    # node_modules comes from the build hook's npm install during `pip install -e .`
    npx = shutil.which("npx")
    assert npx, "Node.js (npx) is needed to build and test the lab extension"
    assert (EXT / "node_modules").is_dir(), "run `pip install -e .` first: it installs and builds"
    run = subprocess.run([npx, "vitest", "run", "--reporter=verbose"], cwd=EXT,
                         capture_output=True, text=True, timeout=240)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    # the suites really ran (a config mistake that collects nothing must not pass)
    for suite in ("protocol.test.ts", "model.test.ts", "render.test.ts", "cell.test.ts"):
        assert suite in out, out[-2000:]
    assert " failed" not in out.split("Tests")[-1]


def test_the_wheel_carries_the_prebuilt_extension(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path),
                          str(ROOT)], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    (wheel,) = tmp_path.glob("agent_magics-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        prefix = next(n.split(SHARE)[0] for n in names if SHARE in n)
        meta = json.loads(zf.read(f"{prefix}{SHARE}/package.json"))
        install = json.loads(zf.read(f"{prefix}{SHARE}/install.json"))
    assert meta["name"] == "agent-magics" and "_build" in meta["jupyterlab"]
    assert any(n.startswith(f"{prefix}{SHARE}/static/remoteEntry.") for n in names)
    assert install["packageName"] == "agent_magics"
    assert not any("node_modules" in n or n.endswith(".ts") for n in names)


def test_jupyterlab_lists_the_extension_enabled():
    run = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"],
                         capture_output=True, text=True, timeout=120)
    line = next((ln for ln in (run.stdout + run.stderr).splitlines() if "agent-magics" in ln), "")
    assert "enabled" in line and "OK" in line and "agent_magics" in line, run.stderr[-2000:]
