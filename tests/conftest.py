"""Shared test helpers.

Real data lives outside the repository in ``../shared/data/real`` (or the folder named
by ``NANODEFECT_SHARED``); tests that need it skip with a clear reason when absent.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest



def _ensure_display() -> str | None:
    """napari needs OpenGL on a display. Without one (plain ``pytest`` on a headless box)
    start a private Xvfb when it is installed; otherwise GUI tests skip with the reason.
    CI runs the suite under ``xvfb-run`` (see .ci/run). Returns a skip reason or None."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform in ("win32", "darwin"):
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return "no display and no Xvfb: run the GUI tests under xvfb-run (apt-get install xvfb)"
    for n in range(90, 130):
        if os.path.exists(f"/tmp/.X11-unix/X{n}") or os.path.exists(f"/tmp/.X{n}-lock"):
            continue
        proc = subprocess.Popen([xvfb, f":{n}", "-screen", "0", "1600x1200x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            if os.path.exists(f"/tmp/.X11-unix/X{n}"):
                os.environ["DISPLAY"] = f":{n}"
                atexit.register(proc.terminate)
                return None
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.terminate()
    return "no display and Xvfb did not start: run the GUI tests under xvfb-run"


NO_DISPLAY = _ensure_display()


def pytest_collection_modifyitems(config, items):
    if NO_DISPLAY:
        skip = pytest.mark.skip(reason=NO_DISPLAY)
        for item in items:
            if "gui" in item.keywords:
                item.add_marker(skip)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NANODEFECT_SHARED", REPO.parent / "shared"))
REAL = SHARED / "data" / "real"


def real_file(*parts: str) -> Path:
    """Path of a file under ../shared/data/real; skips the test when it is absent."""
    p = REAL.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} (needs ../shared/data/real)")
    return p


@pytest.fixture
def real():
    """Fixture form of :func:`real_file`."""
    return real_file
