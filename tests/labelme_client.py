"""Run labelme's own ``LabelFile`` on our LabelMe JSON files, in a separate venv.

labelme (6.3.1) imports PyQt5 (and onnxruntime); neither may ever be imported in the
napari-nanodefect process (napari uses PyQt6). So labelme lives in its own virtual
environment and is driven through ``subprocess``:

* :func:`labelme_python` finds (or, with ``create=True``, creates) that venv's python:
  ``$NANODEFECT_LABELME_PYTHON`` if set, else
  ``~/.cache/napari-nanodefect/labelme-venv/bin/python``.
* :func:`load_with_labelme` runs :data:`CLIENT_SCRIPT` in it and returns, per file,
  what labelme saw (shape count, labels, shape types, decoded image shape, ...).

CI creates the venv up front with::

    python tests/labelme_client.py --setup

This file is not a test module (no ``test_`` prefix); ``tests/test_labelme_client.py``
imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

LABELME_VERSION = "6.3.1"
ENV_VAR = "NANODEFECT_LABELME_PYTHON"
DEFAULT_VENV = Path.home() / ".cache" / "napari-nanodefect" / "labelme-venv"
#: written into the venv once ``pip install labelme`` succeeded
MARKER = ".labelme-ok"


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def labelme_python(create: bool = False, venv: Path = DEFAULT_VENV, timeout: float = 1800) -> Path:
    """Path of a python that can ``import labelme``.

    Order: ``$NANODEFECT_LABELME_PYTHON``; the cached venv (if its marker file says the
    install finished); else, when ``create`` is true, build the venv (slow: a few minutes,
    needs network). Raises ``RuntimeError`` with the reason when none is available.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env)
        if not p.exists():
            raise RuntimeError(f"{ENV_VAR}={env} does not exist")
        return p
    py = _venv_python(venv)
    if py.exists() and (venv / MARKER).exists():
        return py
    if not create:
        raise RuntimeError(f"no labelme venv at {venv} (run: python tests/labelme_client.py --setup)")
    return setup_venv(venv, timeout=timeout)


def setup_venv(venv: Path = DEFAULT_VENV, timeout: float = 1800) -> Path:
    """Create ``venv`` and ``pip install labelme==6.3.1`` into it; return its python.

    A half-made venv (no marker file) is removed and rebuilt. Raises ``RuntimeError``
    with pip's last output lines when creation or installation fails (e.g. no network).
    """
    venv = Path(venv)
    if venv.exists() and not (venv / MARKER).exists():
        shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not _venv_python(venv).exists():
        r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"python -m venv failed: {(r.stderr or r.stdout)[-2000:]}")
    py = _venv_python(venv)
    cmd = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", f"labelme=={LABELME_VERSION}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"pip install labelme=={LABELME_VERSION} timed out after {timeout:.0f} s") from e
    if r.returncode != 0:
        raise RuntimeError(f"pip install labelme=={LABELME_VERSION} failed: {(r.stderr or r.stdout)[-2000:]}")
    (venv / MARKER).write_text(f"labelme=={LABELME_VERSION} installed in {time.time() - t0:.0f} s\n")
    return py


#: Runs inside the labelme venv. argv: JSON file paths. Prints one JSON list to stdout.
CLIENT_SCRIPT = r'''
import json, sys, os
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
import numpy as np
import labelme
try:
    from labelme import LabelFile
except ImportError:  # labelme < 6
    from labelme.label_file import LabelFile
from labelme import utils

app = None
try:
    from PyQt5 import QtGui
    app = QtGui.QGuiApplication([])
except Exception:
    QtGui = None

out = []
for path in sys.argv[1:]:
    rec = {"path": path}
    try:
        lf = LabelFile(path)
        img = utils.img_data_to_arr(lf.image_data)
        rec["ok"] = True
        rec["image_shape"] = list(img.shape)
        rec["image_dtype"] = str(img.dtype)
        rec["image_path"] = lf.image_path
        rec["n_shapes"] = len(lf.shapes)
        rec["labels"] = [s["label"] for s in lf.shapes]
        rec["shape_types"] = [s["shape_type"] for s in lf.shapes]
        rec["group_ids"] = [s["group_id"] for s in lf.shapes]
        rec["points"] = [s["points"] for s in lf.shapes]
        rec["flags"] = lf.flags
        rec["other_data"] = lf.other_data
        areas = []
        for s in lf.shapes:
            if s["shape_type"] == "mask":
                areas.append(int(np.asarray(s["mask"]).sum()))
                continue
            try:
                m = utils.shape_to_mask(img.shape[:2], s["points"], s["shape_type"])
                areas.append(int(m.sum()))
            except Exception as e:
                areas.append(None)
        rec["mask_areas"] = areas
        if QtGui is not None:
            q = QtGui.QImage.fromData(lf.image_data)
            rec["qimage"] = None if q.isNull() else [q.height(), q.width()]
    except Exception as e:
        rec["ok"] = False
        rec["error"] = f"{type(e).__name__}: {e}"
    out.append(rec)
print("LABELME-RESULT " + json.dumps({"labelme_version": labelme.__version__, "files": out}))
'''


def load_with_labelme(python: Path, paths: list[Path], timeout: float = 300) -> dict:
    """Load ``paths`` with labelme's ``LabelFile`` in the venv ``python``.

    Returns ``{"labelme_version": str, "files": [record, ...]}``; a record has ``ok`` and
    either ``error`` or ``n_shapes``, ``labels``, ``shape_types``, ``points``,
    ``image_shape`` (decoded imageData / image file), ``mask_areas`` (labelme's own
    ``shape_to_mask`` pixel counts) and ``qimage`` ([h, w] decoded by Qt, or None).
    """
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = "offscreen"
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    r = subprocess.run(
        [str(python), "-c", CLIENT_SCRIPT, *map(str, paths)], capture_output=True, text=True, timeout=timeout, env=env
    )
    for line in r.stdout.splitlines():
        if line.startswith("LABELME-RESULT "):
            return json.loads(line[len("LABELME-RESULT ") :])
    raise RuntimeError(f"labelme client failed (rc {r.returncode}): {r.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setup", action="store_true", help="create the cached labelme venv if missing")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("files", nargs="*", type=Path, help="LabelMe JSON files to load with labelme")
    a = ap.parse_args(argv)
    t0 = time.time()
    try:
        py = labelme_python(create=a.setup, venv=a.venv)
    except RuntimeError as e:
        print(f"labelme venv unavailable: {e}", file=sys.stderr)
        return 1
    print(f"labelme python: {py} ({time.time() - t0:.1f} s)")
    if a.files:
        print(json.dumps(load_with_labelme(py, a.files), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
